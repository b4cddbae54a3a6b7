# crm_ext: PGXS build.  The version lives once, in crm_ext.control.
EXTENSION   = crm_ext
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

# One C file per concept (see src/).  Keep this list explicit.
MODULE_big  = crm_ext
OBJS = \
	src/crm_ext.o \
	src/sample.o \
	src/triggers.o \
	src/loyalty_ledger.o \
	src/loyalty_ledger_parse.o \
	src/loyalty.o \
	src/id_merge.o \
	src/id_merge_parse.o \
	src/identity.o \
	src/seg_config.o \
	src/rfm_score.o \
	src/rfm_score_parse.o \
	src/rfm.o \
	src/tag_rule.o \
	src/tag_rule_parse.o \
	src/customer_stats.o \
	src/segment.o \
	src/clv_models.o \
	src/optimize.o \
	src/clv.o \
	src/associations.o \
	src/replenishment.o

# The install script is the concatenation of each concept's SQL, in
# dependency order: the core schema first.
SQL_SOURCES = \
	src/header.sql \
	src/core.sql \
	src/sample.sql \
	src/loyalty_ledger.sql \
	src/loyalty.sql \
	src/id_merge.sql \
	src/identity.sql \
	src/rfm_score.sql \
	src/rfm.sql \
	src/customer_stats.sql \
	src/segment.sql \
	src/clv.sql \
	src/associations.sql \
	src/replenishment.sql

DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
DATA        = $(wildcard src/updates/$(EXTENSION)--*.sql)
EXTRA_CLEAN = $(EXTENSION)--$(EXTVERSION).sql test/fuzz/build

# pg_regress: every sql/*.sql, in name order, in one fresh database that
# already has the extension.
REGRESS      = $(sort $(patsubst sql/%.sql,%,$(wildcard sql/*.sql)))
REGRESS_OPTS = --load-extension=$(EXTENSION)

# isolationtester: every test/isolation/specs/*.spec.
ISOLATION      = $(sort $(patsubst test/isolation/specs/%.spec,%,$(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=$(EXTENSION)

PG_CPPFLAGS = -Isrc
# Our own files compile warning-free with these; PostgreSQL's headers trip
# -Wunused-parameter and -Wsign-compare, so those two stay quiet.
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers

# META.json (PGXN) names the version twice; both must be the control file's.
ifneq ($(shell grep -c '"version": "$(EXTVERSION)"' META.json),2)
$(error META.json must give version $(EXTVERSION) (crm_ext.control) at the top and under "provides")
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES) $(EXTENSION).control
	cat $(SQL_SOURCES) > $@

.PHONY: pgtap valgrind-check
# pgTAP tests against the server PG* variables point at (the database must
# have crm_ext and pgtap; scripts/test prepares one).
pgtap:
	pg_prove --verbose --ext .sql -r test/pgtap

# The regression and isolation suites with every backend under valgrind.
valgrind-check:
	scripts/valgrind

# Fuzzing (TESTING.md kind 7): each parser's pure core with libFuzzer,
# AddressSanitizer and UBSan, built with clang outside PGXS and run for
# FUZZ_SECONDS each, one target after the other.  Not part of scripts/test.
# New inputs go to test/fuzz/build/corpus/<target>; the checked-in seeds in
# test/fuzz/corpus/<target> are only read.  A crash leaves its input in
# test/fuzz/build/ and fails the target.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_TARGETS  = loyalty_ledger rfm_score id_merge tag_rule
FUZZ_CFLAGS   = -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all -Wall -Wno-ignored-attributes -Isrc -I$(shell $(PG_CONFIG) --includedir-server)
# the port library provides pg_qsort and pg_snprintf, which port.h maps qsort and snprintf to
FUZZ_LIBS     = $(shell $(PG_CONFIG) --pkglibdir)/libpgport.a
fuzz_src_loyalty_ledger = src/loyalty_ledger_parse.c
fuzz_src_rfm_score      = src/rfm_score_parse.c
fuzz_src_id_merge       = src/id_merge_parse.c
fuzz_src_tag_rule       = src/tag_rule_parse.c

.PHONY: fuzz fuzz-build
fuzz-build: $(patsubst %,test/fuzz/build/fuzz_%,$(FUZZ_TARGETS))

test/fuzz/build/fuzz_%: test/fuzz/fuzz_%.c src/*_parse.c src/*.h
	@mkdir -p test/fuzz/build
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(fuzz_src_$*) $(FUZZ_LIBS)

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p test/fuzz/build/corpus/$$t; \
		echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
		rc=0; \
		(cd test/fuzz/build && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=20000 \
			-print_final_stats=1 corpus/$$t ../corpus/$$t >fuzz_$$t.log 2>&1) || rc=$$?; \
		grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==ERROR|SUMMARY)' \
			test/fuzz/build/fuzz_$$t.log || true; \
		if [ $$rc -ne 0 ]; then echo "fuzz_$$t failed: see test/fuzz/build/fuzz_$$t.log"; exit 1; fi; \
	done
