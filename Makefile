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
EXTRA_CLEAN = $(EXTENSION)--$(EXTVERSION).sql

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
