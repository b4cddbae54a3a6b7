/*
 * loyalty_config.c
 *		The member programme's configuration as each backend caches it
 *		(crm.loyalty_program, crm.tier, crm.earn_rule), and the rules that
 *		read only the configuration: which earn rule applies at a time, the
 *		expiry policy, programme months (crm.loyalty_expires_at,
 *		crm.loyalty_month), and the setting crm.loyalty_now.
 *
 * The cache is rebuilt when crm_config_generation() moves on (a
 * configuration table changed; src/common/config_cache.c).
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "crm_ext.h"
#include "loyalty_internal.h"

LoyaltyConf loyalty_conf;

/*
 * crm.loyalty_now: the time the loyalty entry points take for "now" when
 * they decide which lots have expired; empty (the default) is the
 * transaction start.  Superusers only (tests and replays of history set it):
 * an ordinary session must not bring expired points back.
 */
static char *loyalty_now_text = NULL;
static bool loyalty_now_set = false;
static bool loyalty_now_unparsed = false;
static TimestampTz loyalty_now_value = 0;

/* What *extra holds after the check hook: the time, and whether it is set. */
#define LOYALTY_NOW_EMPTY		0
#define LOYALTY_NOW_PARSED		1
#define LOYALTY_NOW_UNPARSED	2

/*
 * GUC check hook: empty or a finite timestamptz, kept parsed in *extra with
 * whether it is set.  A parallel worker restores the leader's settings before
 * the ones date parsing needs (timezone_abbreviations): parsing then crashed
 * the worker, so there the value (which the leader checked) is taken as it is
 * and parsed when it is first read.
 */
static bool
check_loyalty_now(char **newval, void **extra, GucSource source)
{
	TimestampTz *keep;
	TimestampTz t = 0;
	char		state = LOYALTY_NOW_EMPTY;

	if (*newval != NULL && (*newval)[0] != '\0')
	{
		if (InitializingParallelWorker)
			state = LOYALTY_NOW_UNPARSED;
		else if (crm_parse_timestamptz_quietly(*newval, &t))
			state = LOYALTY_NOW_PARSED;
		else
		{
			GUC_check_errdetail("crm.loyalty_now must be empty or a finite timestamp with time zone.");
			return false;
		}
	}
	keep = (TimestampTz *) malloc(sizeof(TimestampTz) + 1);
	if (keep == NULL)
		return false;
	*keep = t;
	((char *) keep)[sizeof(TimestampTz)] = state;
	*extra = keep;
	return true;
}

static void
assign_loyalty_now(const char *newval, void *extra)
{
	char		state = ((char *) extra)[sizeof(TimestampTz)];

	loyalty_now_value = *(TimestampTz *) extra;
	loyalty_now_set = state != LOYALTY_NOW_EMPTY;
	loyalty_now_unparsed = state == LOYALTY_NOW_UNPARSED;
}

void
crm_loyalty_init(void)
{
	DefineCustomStringVariable("crm.loyalty_now",
							   "The time loyalty redemptions take for now() when deciding which points have expired.",
							   "Empty: the transaction start.  For tests and replays of history.",
							   &loyalty_now_text,
							   "",
							   PGC_SUSET,
							   0,
							   check_loyalty_now, assign_loyalty_now, NULL);
}

/* The loyalty "now": setting crm.loyalty_now if set, else the transaction start. */
TimestampTz
loyalty_now(void)
{
	/* a parallel worker's copy of the setting, parsed now that it can be */
	if (loyalty_now_unparsed)
	{
		if (!crm_parse_timestamptz_quietly(loyalty_now_text, &loyalty_now_value))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("crm.loyalty_now is not a finite timestamp with time zone: \"%s\"", loyalty_now_text)));
		loyalty_now_unparsed = false;
	}
	return loyalty_now_set ? loyalty_now_value : GetCurrentTransactionStartTimestamp();
}

PG_FUNCTION_INFO_V1(crm_loyalty_now);

/* crm.loyalty_now(): setting crm.loyalty_now if set, else the transaction start */
Datum
crm_loyalty_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(loyalty_now());
}

static int64
getint64(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

/*
 * The programme row (time zone, expiry policy) and the OIDs, indexes and
 * columns of the tables the triggers read directly.
 */
static void
load_programme(void)
{
	enum
	{
		PROG_LEDGER_TYPE = 1, PROG_CUSTOMER, PROG_ACCOUNT, PROG_TIME_ZONE, PROG_EXPIRY_MONTHS, PROG_ROUNDING,
		PROG_TIER_HOLD
	};
	static const char *const account_cols[ACCT_NFIELDS] = {
		[ACCT_CUSTOMER_ID] = "customer_id",[ACCT_LEDGER] = "ledger",[ACCT_DEBT] = "debt",
		[ACCT_TIER] = "tier",[ACCT_TIER_SINCE] = "tier_since",[ACCT_SPEND_MONTH] = "spend_month",
		[ACCT_SPEND_CENTS] = "spend_cents"
	};
	LoyaltyConf *c = &loyalty_conf;
	MemoryContext old;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *tzname = "UTC";
	int			ret,
				i;

	ret = SPI_execute(crm_config_sql("SELECT 'crm.loyalty_ledger'::pg_catalog.regtype::pg_catalog.oid, "
					  "'crm.customer'::pg_catalog.regclass::pg_catalog.oid, "
					  "'crm.loyalty_account'::pg_catalog.regclass::pg_catalog.oid, "
					  "p.time_zone, p.expiry_months, p.expiry_rounding, p.tier_hold_months "
					  "FROM (SELECT 1) one LEFT JOIN crm.loyalty_program p ON true LIMIT 1"),
					  true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read crm.loyalty_program");
	old = MemoryContextSwitchTo(c->cxt);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c->ledger_type = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_LEDGER_TYPE, &isnull));
	c->customer_relid = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_CUSTOMER, &isnull));
	c->account_relid = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_ACCOUNT, &isnull));
	if (SPI_getbinval(tup, desc, PROG_TIME_ZONE, &isnull), !isnull)
	{
		tzname = SPI_getvalue(tup, desc, PROG_TIME_ZONE);
		c->expiry_months = DatumGetInt32(SPI_getbinval(tup, desc, PROG_EXPIRY_MONTHS, &isnull));
		c->month_end = strcmp(SPI_getvalue(tup, desc, PROG_ROUNDING), "month_end") == 0;
		c->tier_hold_months = DatumGetInt32(SPI_getbinval(tup, desc, PROG_TIER_HOLD, &isnull));
	}
	c->ledger_array_type = get_array_type(c->ledger_type);
	{
		Relation	crel = table_open(c->customer_relid, AccessShareLock);
		Relation	arel = table_open(c->account_relid, AccessShareLock);

		c->customer_pkey = RelationGetPrimaryKeyIndex(crel);
		c->birthday_att = SPI_fnumber(RelationGetDescr(crel), "birthday");
		c->account_pkey = RelationGetPrimaryKeyIndex(arel);
		for (i = 0; i < ACCT_NFIELDS; i++)
			if ((c->account_cols[i] = SPI_fnumber(RelationGetDescr(arel), account_cols[i])) <= 0)
				elog(ERROR, "crm.loyalty_account has no column %s", account_cols[i]);
		table_close(arel, AccessShareLock);
		table_close(crel, AccessShareLock);
		if (!OidIsValid(c->customer_pkey) || c->birthday_att <= 0 || !OidIsValid(c->account_pkey))
			elog(ERROR, "crm.customer or crm.loyalty_account lacks its primary key, or crm.customer its birthday");
	}
	c->tz = pg_tzset(tzname);
	if (c->tz == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crm.loyalty_program has an unknown time zone \"%s\"", tzname)));
	MemoryContextSwitchTo(old);
}

/* The tiers by rank; the lowest must have threshold 0. */
static void
load_tiers(void)
{
	enum
	{
		TIER_NAME = 1, TIER_RANK, TIER_THRESHOLD_CENTS, TIER_MULT_MILLI
	};
	LoyaltyConf *c = &loyalty_conf;
	MemoryContext old;
	bool		isnull;
	int			ret,
				i;

	ret = SPI_execute(crm_config_sql("SELECT t.tier, t.rank, (t.threshold OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (t.multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 "
					  "FROM crm.tier t ORDER BY t.rank"), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tier");
	old = MemoryContextSwitchTo(c->cxt);
	c->ntiers = (int) SPI_processed;
	c->tiers = palloc0(sizeof(TierConf) * Max(c->ntiers, 1));
	for (i = 0; i < c->ntiers; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		c->tiers[i].name = SPI_getvalue(tup, desc, TIER_NAME);
		c->tiers[i].rank = DatumGetInt32(SPI_getbinval(tup, desc, TIER_RANK, &isnull));
		c->tiers[i].threshold_cents = getint64(tup, desc, TIER_THRESHOLD_CENTS, &isnull);
		c->tiers[i].mult_milli = getint64(tup, desc, TIER_MULT_MILLI, &isnull);
	}
	MemoryContextSwitchTo(old);
	if (c->ntiers == 0 || c->tiers[0].threshold_cents != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the loyalty programme needs a lowest tier with threshold 0"),
				 errhint("Add a row to crm.tier with threshold 0 and the lowest rank.")));
}

/* The earn rules, the first that applies first, with their category bonuses. */
static void
load_rules(void)
{
	enum
	{
		RULE_VALID_FROM = 1, RULE_VALID_TO, RULE_PPU_E4, RULE_BDAY_MILLI, RULE_MEMBER_DAY,
		RULE_MD_MILLI, RULE_BONUS_CATS, RULE_BONUS_E4
	};
	LoyaltyConf *c = &loyalty_conf;
	MemoryContext old;
	bool		isnull;
	int			ret,
				i;

	ret = SPI_execute(crm_config_sql("SELECT r.valid_from, r.valid_to, (r.points_per_unit OPERATOR(pg_catalog.*) 10000)::pg_catalog.int8, "
					  "(r.birthday_multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, coalesce(r.member_day, 0), "
					  "(r.member_day_multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, "
					  "ARRAY(SELECT b.key FROM pg_catalog.jsonb_each(r.category_bonus) b ORDER BY 1), "
					  "ARRAY(SELECT (b.value::pg_catalog.text::pg_catalog.numeric OPERATOR(pg_catalog.*) 10000)::pg_catalog.int8 FROM pg_catalog.jsonb_each(r.category_bonus) b ORDER BY b.key) "
					  "FROM crm.earn_rule r ORDER BY r.priority DESC, r.valid_from DESC, r.rule"), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.earn_rule");
	old = MemoryContextSwitchTo(c->cxt);
	c->nrules = (int) SPI_processed;
	c->rules = palloc0(sizeof(RuleConf) * Max(c->nrules, 1));
	for (i = 0; i < c->nrules; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		RuleConf   *r = &c->rules[i];
		ArrayType  *cats,
				   *vals;
		Datum	   *cd,
				   *vd;
		int			nc,
					nv,
					k;

		r->valid_from = DatumGetTimestampTz(SPI_getbinval(tup, desc, RULE_VALID_FROM, &isnull));
		r->valid_to = DatumGetTimestampTz(SPI_getbinval(tup, desc, RULE_VALID_TO, &isnull));
		r->ppu_e4 = getint64(tup, desc, RULE_PPU_E4, &isnull);
		r->bday_milli = getint64(tup, desc, RULE_BDAY_MILLI, &isnull);
		r->member_day = DatumGetInt32(SPI_getbinval(tup, desc, RULE_MEMBER_DAY, &isnull));
		r->md_milli = getint64(tup, desc, RULE_MD_MILLI, &isnull);
		cats = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, RULE_BONUS_CATS, &isnull));
		vals = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, RULE_BONUS_E4, &isnull));
		deconstruct_array(cats, TEXTOID, -1, false, TYPALIGN_INT, &cd, NULL, &nc);
		deconstruct_array(vals, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &vd, NULL, &nv);
		r->nbonus = Min(nc, nv);
		r->bonus_cat = palloc(sizeof(char *) * Max(r->nbonus, 1));
		r->bonus_e4 = palloc(sizeof(int64) * Max(r->nbonus, 1));
		for (k = 0; k < r->nbonus; k++)
		{
			r->bonus_cat[k] = TextDatumGetCString(cd[k]);
			r->bonus_e4[k] = DatumGetInt64(vd[k]);
			if (r->bonus_e4[k] > 0)
				c->any_bonus = true;
		}
	}
	MemoryContextSwitchTo(old);
}

/* Loads the configuration if needed; the caller is connected to SPI. */
static void
load_conf(void)
{
	LoyaltyConf *c = &loyalty_conf;
	uint64		generation = crm_config_generation();

	if (c->loaded && c->generation == generation)
		return;
	c->loaded = false;
	if (c->cxt == NULL)
		c->cxt = AllocSetContextCreate(TopMemoryContext, "crm loyalty config",
									   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(c->cxt);
	c->tz = NULL;
	c->expiry_months = 12;
	c->month_end = true;
	c->tier_hold_months = 12;
	c->ntiers = 0;
	c->nrules = 0;
	c->any_bonus = false;
	load_programme();
	load_tiers();
	load_rules();
	c->generation = generation;
	c->loaded = true;
}

/* Connects to SPI (the caller calls SPI_finish) with the configuration loaded. */
void
loyalty_connect_and_load(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_kept_plans_check();
	load_conf();
}

/* The earn rule that applies to an order at t, NULL for none. */
const RuleConf *
loyalty_rule_at(TimestampTz t)
{
	int			i;

	for (i = 0; i < loyalty_conf.nrules; i++)
		if (loyalty_conf.rules[i].valid_from <= t && t < loyalty_conf.rules[i].valid_to)
			return &loyalty_conf.rules[i];
	return NULL;
}

/* The index of the tier called name (the lowest tier when none is). */
int
loyalty_tier_index(const char *name)
{
	int			i;

	for (i = 0; i < loyalty_conf.ntiers; i++)
		if (strcmp(loyalty_conf.tiers[i].name, name) == 0)
			return i;
	return 0;
}

/* Local calendar fields of t in the programme time zone. */
void
loyalty_local_tm(TimestampTz t, struct pg_tm *tm, fsec_t *fsec)
{
	int			tzoff;

	if (timestamp2tm(t, &tzoff, tm, fsec, NULL, loyalty_conf.tz) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
}

/* The programme month of t: year * 12 + month - 1 in the programme time zone. */
int32
loyalty_month_index(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	loyalty_local_tm(t, &tm, &fsec);
	return tm.tm_year * 12 + tm.tm_mon - 1;
}

static TimestampTz
local_to_ts(struct pg_tm *tm, fsec_t fsec)
{
	int			tzoff = DetermineTimeZoneOffset(tm, loyalty_conf.tz);
	TimestampTz result;

	if (tm2timestamp(tm, fsec, &tzoff, &result) != 0 || !IS_VALID_TIMESTAMP(result))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("expiry timestamp out of range")));
	return result;
}

/* The last month_end expiry computed: orders of one month share it. */
static TimestampTz memo_from = DT_NOEND,
			memo_to = DT_NOBEGIN,
			memo_expiry;
static pg_tz *memo_tz;
static int	memo_months;

/* When points earned at t expire, by the programme's policy (month_end or exact). */
TimestampTz
loyalty_expiry_of(TimestampTz t)
{
	LoyaltyConf *c = &loyalty_conf;
	struct pg_tm tm;
	fsec_t		fsec;
	int			m;

	if (c->month_end && memo_tz == c->tz && memo_months == c->expiry_months &&
		t >= memo_from && t < memo_to)
		return memo_expiry;
	loyalty_local_tm(t, &tm, &fsec);
	if (c->month_end)
	{
		struct pg_tm mt;

		/* remember [start of this month, start of next month) */
		memset(&mt, 0, sizeof(mt));
		mt.tm_year = tm.tm_year;
		mt.tm_mon = tm.tm_mon;
		mt.tm_mday = 1;
		memo_from = local_to_ts(&mt, 0);
		m = tm.tm_year * 12 + tm.tm_mon;
		memset(&mt, 0, sizeof(mt));
		mt.tm_year = m / 12;
		mt.tm_mon = m % 12 + 1;
		mt.tm_mday = 1;
		memo_to = local_to_ts(&mt, 0);
		memo_tz = c->tz;
		memo_months = c->expiry_months;

		m = tm.tm_year * 12 + (tm.tm_mon - 1) + c->expiry_months + 1;
		memset(&tm, 0, sizeof(tm));
		tm.tm_year = m / 12;
		tm.tm_mon = m % 12 + 1;
		tm.tm_mday = 1;
		memo_expiry = local_to_ts(&tm, 0);
		return memo_expiry;
	}
	m = tm.tm_year * 12 + (tm.tm_mon - 1) + c->expiry_months;
	tm.tm_year = m / 12;
	tm.tm_mon = m % 12 + 1;
	tm.tm_mday = Min(tm.tm_mday, day_tab[isleap(tm.tm_year)][tm.tm_mon - 1]);
	tm.tm_isdst = -1;
	return local_to_ts(&tm, fsec);
}

/* The first argument, a timestamptz that must be finite. */
static TimestampTz
finite_time_arg(FunctionCallInfo fcinfo, const char *name)
{
	TimestampTz t = PG_GETARG_TIMESTAMPTZ(0);

	if (TIMESTAMP_NOT_FINITE(t))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a finite timestamp", name)));
	return t;
}

PG_FUNCTION_INFO_V1(crm_loyalty_expires_at);

/* crm.loyalty_expires_at(earned_at): the expiry policy applied. */
Datum
crm_loyalty_expires_at(PG_FUNCTION_ARGS)
{
	TimestampTz t = finite_time_arg(fcinfo, "earned_at");
	TimestampTz r;

	loyalty_connect_and_load();
	r = loyalty_expiry_of(t);
	SPI_finish();
	PG_RETURN_TIMESTAMPTZ(r);
}

PG_FUNCTION_INFO_V1(crm_loyalty_month);

/* crm.loyalty_month(at): year * 12 + month - 1 in the programme time zone. */
Datum
crm_loyalty_month(PG_FUNCTION_ARGS)
{
	TimestampTz t = finite_time_arg(fcinfo, "at");
	int32		m;

	loyalty_connect_and_load();
	m = loyalty_month_index(t);
	SPI_finish();
	PG_RETURN_INT32(m);
}
