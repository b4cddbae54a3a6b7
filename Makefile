# crm_ext: PGXS build.  The version lives once, in crm_ext.control.
EXTENSION   = crm_ext
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

# One folder per feature (DEVELOPER.md, "Layout"); each lists its C files
# and the SQL that declares their objects.  Features depend on common, not on
# each other.  Keep the lists explicit.
MODULE_big  = crm_ext

COMMON_OBJS = \
	src/common/crm_ext.o \
	src/common/kept_plans.o \
	src/common/shard.o \
	src/common/config_cache.o \
	src/common/trigger_check.o \
	src/common/rows.o \
	src/common/customer.o \
	src/common/references.o \
	src/common/money.o \
	src/common/int64_util.o \
	src/common/settings.o
CORE_OBJS = \
	src/core/origin.o \
	src/core/order_line.o \
	src/core/sample.o
IDENTITY_OBJS = \
	src/identity/id_merge.o \
	src/identity/id_merge_parse.o \
	src/identity/identity_policy.o \
	src/identity/identity.o
LOYALTY_OBJS = \
	src/loyalty/loyalty_ledger.o \
	src/loyalty/loyalty_ledger_parse.o \
	src/loyalty/loyalty_config.o \
	src/loyalty/loyalty_account.o \
	src/loyalty/loyalty_triggers.o
SEGMENTATION_OBJS = \
	src/segmentation/seg_config.o \
	src/segmentation/rfm_score.o \
	src/segmentation/rfm_score_parse.o \
	src/segmentation/rfm.o \
	src/segmentation/tag_rule.o \
	src/segmentation/tag_rule_parse.o \
	src/segmentation/stats_fold.o \
	src/segmentation/stats_batch.o \
	src/segmentation/stats_trigger.o \
	src/segmentation/segment.o
PREDICTION_OBJS = \
	src/prediction/clv_models.o \
	src/prediction/optimize.o \
	src/prediction/clv.o \
	src/prediction/associations.o \
	src/prediction/replenishment.o
COUPONS_OBJS = \
	src/coupons/coupon_code.o
OBJS = $(COMMON_OBJS) $(CORE_OBJS) $(IDENTITY_OBJS) $(LOYALTY_OBJS) $(SEGMENTATION_OBJS) $(PREDICTION_OBJS) $(COUPONS_OBJS)

# The install script is the concatenation of each feature's SQL, in
# dependency order: the core schema first.
CORE_SQL = \
	src/core/header.sql \
	src/core/core.sql \
	src/common/common.sql \
	src/core/sample.sql
LOYALTY_SQL = \
	src/loyalty/loyalty_ledger.sql \
	src/loyalty/loyalty.sql
IDENTITY_SQL = \
	src/identity/id_merge.sql \
	src/identity/identity.sql
SEGMENTATION_SQL = \
	src/segmentation/rfm_score.sql \
	src/segmentation/rfm.sql \
	src/segmentation/customer_stats.sql \
	src/segmentation/segment.sql
PREDICTION_SQL = \
	src/prediction/clv.sql \
	src/prediction/associations.sql \
	src/prediction/replenishment.sql
COUPONS_SQL = \
	src/coupons/coupons.sql \
	src/rewards/rewards.sql
WALLET_SQL = \
	src/wallet/wallet.sql
ENGAGEMENT_SQL = \
	src/engagement/consent.sql \
	src/engagement/outbox.sql \
	src/engagement/journey.sql \
	src/engagement/campaign.sql
SCALE_SQL = \
	src/scale/distribute.sql
# crm.verify checks where the features meet, so it comes after all of them.
VERIFY_SQL = \
	src/verify/verify.sql
SQL_SOURCES = $(CORE_SQL) $(LOYALTY_SQL) $(IDENTITY_SQL) $(SEGMENTATION_SQL) $(PREDICTION_SQL) $(COUPONS_SQL) $(WALLET_SQL) $(ENGAGEMENT_SQL) $(SCALE_SQL) $(VERIFY_SQL)
# crm.generate_sample_activity calls every feature (coupons, rewards,
# loyalty), so it comes after all of them.
SAMPLE_ACTIVITY_SQL = \
	src/core/sample_activity.sql
SQL_SOURCES += $(SAMPLE_ACTIVITY_SQL)

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

PG_CPPFLAGS = -Isrc/common -Isrc
# Our own files compile warning-free with these; PostgreSQL's headers trip
# -Wunused-parameter and -Wsign-compare, so those two stay quiet.
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
# CI (CI=true in its environment) turns any warning in our files into an error.
ifneq ($(CI),)
PG_CFLAGS  += -Werror
endif

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
	-fno-sanitize-recover=all -Wall -Wno-ignored-attributes -Isrc/common -Isrc/identity -Isrc/loyalty -Isrc/segmentation -I$(shell $(PG_CONFIG) --includedir-server)
# the port library provides pg_qsort and pg_snprintf, which port.h maps qsort and snprintf to
FUZZ_LIBS     = $(shell $(PG_CONFIG) --pkglibdir)/libpgport.a
fuzz_src_loyalty_ledger = src/loyalty/loyalty_ledger_parse.c
fuzz_src_rfm_score      = src/segmentation/rfm_score_parse.c
fuzz_src_id_merge       = src/identity/id_merge_parse.c
fuzz_src_tag_rule       = src/segmentation/tag_rule_parse.c

.PHONY: fuzz fuzz-build
fuzz-build: $(patsubst %,test/fuzz/build/fuzz_%,$(FUZZ_TARGETS))

test/fuzz/build/fuzz_%: test/fuzz/fuzz_%.c src/*/*_parse.c src/*/*.h
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
