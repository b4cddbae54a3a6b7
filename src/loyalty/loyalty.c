/*
 * loyalty.c
 *		The member programme's triggers (statement-level, over transition
 *		tables) and the per-backend configuration cache.
 *
 * crm.loyalty_orders_insert	paid orders earn points (rules, tier and
 *								birthday/member-day multipliers), add
 *								qualifying spend, upgrade tiers at once
 * crm.loyalty_orders_update	refunds claw points back proportionally
 * crm.loyalty_lines_insert		category bonus for the lines of paid orders
 *
 * Each trigger reads its transition table sorted by customer in batches,
 * locks the affected accounts in customer-id order (as redemptions and
 * crm.tick do), changes each account in memory and writes the journal rows
 * and accounts back with one INSERT and one UPDATE per batch over unnest()
 * arrays.  Plans are prepared once per backend; the configuration (programme,
 * tiers, earn rules) is cached and invalidated through the relcache when the
 * configuration tables change (crm.loyalty_config_changed).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/date.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "crm_ext.h"
#include "loyalty.h"
#include "loyalty_ledger.h"

#define BATCH_ROWS	10000

/* ------------------------------------------------------------------------
 * Configuration cache
 * ------------------------------------------------------------------------
 */
typedef struct TierConf
{
	char	   *name;
	int			rank;
	int64		threshold_cents;
	int64		mult_milli;
} TierConf;

typedef struct RuleConf
{
	TimestampTz valid_from;
	TimestampTz valid_to;
	int64		ppu_e4;			/* points per unit x 10^4 */
	int64		bday_milli;
	int			member_day;		/* 0 = none */
	int64		md_milli;
	int			nbonus;
	char	  **bonus_cat;
	int64	   *bonus_e4;
} RuleConf;

typedef struct LoyaltyConf
{
	bool		loaded;
	uint64		generation;		/* crm_config_generation() when loaded */
	MemoryContext cxt;
	pg_tz	   *tz;
	int			expiry_months;
	bool		month_end;
	int			ntiers;
	TierConf   *tiers;			/* by rank ascending */
	int			nrules;
	RuleConf   *rules;			/* priority desc, valid_from desc */
	bool		any_bonus;
	Oid			ledger_type;
	Oid			ledger_array_type;
	/* crm.customer, its primary key and birthday column (see birth_month) */
	Oid			customer_relid;
	Oid			customer_pkey;
	AttrNumber	birthday_att;
	/* crm.loyalty_account, its primary key and the columns parse_account reads */
	Oid			account_relid;
	Oid			account_pkey;
	AttrNumber	account_cols[7];
} LoyaltyConf;

static LoyaltyConf conf;

/*
 * crm.loyalty_now: the time the loyalty entry points take for "now" when
 * they decide which lots have expired; empty (the default) is the
 * transaction start.  Superusers only (tests and replays of history set it):
 * an ordinary session must not bring expired points back.
 */
static char *loyalty_now_text = NULL;
static bool loyalty_now_set = false;
static TimestampTz loyalty_now_value = 0;

/* A finite timestamptz from text without raising an error (GUC check hook). */
static bool
parse_timestamptz_quietly(const char *str, TimestampTz *out)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	int			tz;
	struct pg_tm tm;
	fsec_t		fsec;

	if (strlen(str) > MAXDATELEN)
		return false;
	if (ParseDateTime(str, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf) != 0)
		return false;
	if (DecodeDateTime(field, ftype, nf, &dtype, &tm, &fsec, &tz) != 0 || dtype != DTK_DATE)
		return false;
	return tm2timestamp(&tm, fsec, &tz, out) == 0 && !TIMESTAMP_NOT_FINITE(*out);
}

static bool
check_loyalty_now(char **newval, void **extra, GucSource source)
{
	TimestampTz *keep;
	TimestampTz t = 0;

	if (*newval != NULL && (*newval)[0] != '\0' && !parse_timestamptz_quietly(*newval, &t))
	{
		GUC_check_errdetail("crm.loyalty_now must be empty or a finite timestamp with time zone.");
		return false;
	}
	keep = (TimestampTz *) malloc(sizeof(TimestampTz) + 1);
	if (keep == NULL)
		return false;
	*keep = t;
	((char *) keep)[sizeof(TimestampTz)] = (*newval != NULL && (*newval)[0] != '\0');
	*extra = keep;
	return true;
}

static void
assign_loyalty_now(const char *newval, void *extra)
{
	loyalty_now_value = *(TimestampTz *) extra;
	loyalty_now_set = ((char *) extra)[sizeof(TimestampTz)] != 0;
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

PG_FUNCTION_INFO_V1(crm_loyalty_now);

/* crm.loyalty_now(): setting crm.loyalty_now if set, else the transaction start */
Datum
crm_loyalty_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(loyalty_now_set ? loyalty_now_value : GetCurrentTransactionStartTimestamp());
}

static int64
getint64(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

/* Loads the configuration if needed; the caller is connected to SPI. */
static void
load_conf(void)
{
	MemoryContext old;
	int			ret,
				i;
	bool		isnull;
	char	   *tzname = "UTC";
	uint64		generation = crm_config_generation();

	if (conf.loaded && conf.generation == generation)
		return;
	conf.loaded = false;
	if (conf.cxt == NULL)
		conf.cxt = AllocSetContextCreate(TopMemoryContext, "crm loyalty config",
										 ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(conf.cxt);
	conf.tz = NULL;
	conf.expiry_months = 12;
	conf.month_end = true;
	conf.ntiers = 0;
	conf.nrules = 0;
	conf.any_bonus = false;

	ret = SPI_execute("SELECT 'crm.loyalty_ledger'::pg_catalog.regtype::pg_catalog.oid, "
					  "'crm.customer'::pg_catalog.regclass::pg_catalog.oid, "
					  "'crm.loyalty_account'::pg_catalog.regclass::pg_catalog.oid, "
					  "p.time_zone, p.expiry_months, p.expiry_rounding "
					  "FROM (SELECT 1) one LEFT JOIN crm.loyalty_program p ON true LIMIT 1",
					  true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read crm.loyalty_program");
	old = MemoryContextSwitchTo(conf.cxt);
	{
		enum
		{
			PROG_LEDGER_TYPE = 1, PROG_CUSTOMER, PROG_ACCOUNT, PROG_TIME_ZONE, PROG_EXPIRY_MONTHS, PROG_ROUNDING
		};
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		conf.ledger_type = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_LEDGER_TYPE, &isnull));
		conf.customer_relid = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_CUSTOMER, &isnull));
		conf.account_relid = DatumGetObjectId(SPI_getbinval(tup, desc, PROG_ACCOUNT, &isnull));
		if (SPI_getbinval(tup, desc, PROG_TIME_ZONE, &isnull), !isnull)
		{
			tzname = SPI_getvalue(tup, desc, PROG_TIME_ZONE);
			conf.expiry_months = DatumGetInt32(SPI_getbinval(tup, desc, PROG_EXPIRY_MONTHS, &isnull));
			conf.month_end = strcmp(SPI_getvalue(tup, desc, PROG_ROUNDING), "month_end") == 0;
		}
	}
	conf.ledger_array_type = get_array_type(conf.ledger_type);
	{
		Relation	crel = table_open(conf.customer_relid, AccessShareLock);
		Relation	arel = table_open(conf.account_relid, AccessShareLock);
		static const char *const cols[7] = {"customer_id", "ledger", "debt", "tier",
		"tier_since", "spend_month", "spend_cents"};

		conf.customer_pkey = RelationGetPrimaryKeyIndex(crel);
		conf.birthday_att = SPI_fnumber(RelationGetDescr(crel), "birthday");
		conf.account_pkey = RelationGetPrimaryKeyIndex(arel);
		for (i = 0; i < 7; i++)
			if ((conf.account_cols[i] = SPI_fnumber(RelationGetDescr(arel), cols[i])) <= 0)
				elog(ERROR, "crm.loyalty_account has no column %s", cols[i]);
		table_close(arel, AccessShareLock);
		table_close(crel, AccessShareLock);
		if (!OidIsValid(conf.customer_pkey) || conf.birthday_att <= 0 || !OidIsValid(conf.account_pkey))
			elog(ERROR, "crm.customer or crm.loyalty_account lacks its primary key, or crm.customer its birthday");
	}
	conf.tz = pg_tzset(tzname);
	if (conf.tz == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crm.loyalty_program has an unknown time zone \"%s\"", tzname)));
	MemoryContextSwitchTo(old);

	ret = SPI_execute("SELECT t.tier, t.rank, (t.threshold OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (t.multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 "
					  "FROM crm.tier t ORDER BY t.rank", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tier");
	old = MemoryContextSwitchTo(conf.cxt);
	conf.ntiers = (int) SPI_processed;
	conf.tiers = palloc0(sizeof(TierConf) * Max(conf.ntiers, 1));
	for (i = 0; i < conf.ntiers; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		conf.tiers[i].name = SPI_getvalue(tup, desc, 1);
		conf.tiers[i].rank = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		conf.tiers[i].threshold_cents = getint64(tup, desc, 3, &isnull);
		conf.tiers[i].mult_milli = getint64(tup, desc, 4, &isnull);
	}
	MemoryContextSwitchTo(old);
	if (conf.ntiers == 0 || conf.tiers[0].threshold_cents != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the loyalty programme needs a lowest tier with threshold 0"),
				 errhint("Add a row to crm.tier with threshold 0 and the lowest rank.")));

	ret = SPI_execute("SELECT r.valid_from, r.valid_to, (r.points_per_unit OPERATOR(pg_catalog.*) 10000)::pg_catalog.int8, "
					  "(r.birthday_multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, coalesce(r.member_day, 0), "
					  "(r.member_day_multiplier OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, "
					  "ARRAY(SELECT b.key FROM pg_catalog.jsonb_each(r.category_bonus) b ORDER BY 1), "
					  "ARRAY(SELECT (b.value::pg_catalog.text::pg_catalog.numeric OPERATOR(pg_catalog.*) 10000)::pg_catalog.int8 FROM pg_catalog.jsonb_each(r.category_bonus) b ORDER BY b.key) "
					  "FROM crm.earn_rule r ORDER BY r.priority DESC, r.valid_from DESC, r.rule", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.earn_rule");
	old = MemoryContextSwitchTo(conf.cxt);
	conf.nrules = (int) SPI_processed;
	conf.rules = palloc0(sizeof(RuleConf) * Max(conf.nrules, 1));
	for (i = 0; i < conf.nrules; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		RuleConf   *r = &conf.rules[i];
		ArrayType  *cats,
				   *vals;
		Datum	   *cd,
				   *vd;
		int			nc,
					nv,
					k;

		r->valid_from = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
		r->valid_to = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		r->ppu_e4 = getint64(tup, desc, 3, &isnull);
		r->bday_milli = getint64(tup, desc, 4, &isnull);
		r->member_day = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		r->md_milli = getint64(tup, desc, 6, &isnull);
		cats = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 7, &isnull));
		vals = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 8, &isnull));
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
				conf.any_bonus = true;
		}
	}
	MemoryContextSwitchTo(old);
	conf.generation = generation;
	conf.loaded = true;
}

static const RuleConf *
rule_at(TimestampTz t)
{
	int			i;

	for (i = 0; i < conf.nrules; i++)
		if (conf.rules[i].valid_from <= t && t < conf.rules[i].valid_to)
			return &conf.rules[i];
	return NULL;
}

static int
tier_index(const char *name)
{
	int			i;

	for (i = 0; i < conf.ntiers; i++)
		if (strcmp(conf.tiers[i].name, name) == 0)
			return i;
	return 0;
}

/* Local calendar fields of t in the programme time zone. */
static void
local_tm(TimestampTz t, struct pg_tm *tm, fsec_t *fsec)
{
	int			tzoff;

	if (timestamp2tm(t, &tzoff, tm, fsec, NULL, conf.tz) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
}

static int32
month_index(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	local_tm(t, &tm, &fsec);
	return tm.tm_year * 12 + tm.tm_mon - 1;
}

static TimestampTz
local_to_ts(struct pg_tm *tm, fsec_t fsec)
{
	int			tzoff = DetermineTimeZoneOffset(tm, conf.tz);
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

/* When points earned at t expire, by the programme's policy. */
static TimestampTz
expiry_of(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			m;

	if (conf.month_end && memo_tz == conf.tz && memo_months == conf.expiry_months &&
		t >= memo_from && t < memo_to)
		return memo_expiry;
	local_tm(t, &tm, &fsec);
	if (conf.month_end)
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
		memo_tz = conf.tz;
		memo_months = conf.expiry_months;

		m = tm.tm_year * 12 + (tm.tm_mon - 1) + conf.expiry_months + 1;
		memset(&tm, 0, sizeof(tm));
		tm.tm_year = m / 12;
		tm.tm_mon = m % 12 + 1;
		tm.tm_mday = 1;
		memo_expiry = local_to_ts(&tm, 0);
		return memo_expiry;
	}
	m = tm.tm_year * 12 + (tm.tm_mon - 1) + conf.expiry_months;
	tm.tm_year = m / 12;
	tm.tm_mon = m % 12 + 1;
	tm.tm_mday = Min(tm.tm_mday, day_tab[isleap(tm.tm_year)][tm.tm_mon - 1]);
	tm.tm_isdst = -1;
	return local_to_ts(&tm, fsec);
}

static void
connect_and_load(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_kept_plans_check();
	load_conf();
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

	connect_and_load();
	r = expiry_of(t);
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

	connect_and_load();
	m = month_index(t);
	SPI_finish();
	PG_RETURN_INT32(m);
}

/* The sign rules of a journal entry by kind (false for an unknown kind). */
static bool
journal_kind_sign_ok(const char *kind, int64 points, int64 debt)
{
	if (strcmp(kind, "earn") == 0 || strcmp(kind, "reinstate") == 0)
		return points > 0 && debt == 0;
	if (strcmp(kind, "spend") == 0 || strcmp(kind, "expire") == 0)
		return points < 0 && debt == 0;
	if (strcmp(kind, "clawback") == 0)
		return points <= 0;
	return strcmp(kind, "adjust") == 0 || strcmp(kind, "merge") == 0;
}

/* An idempotency key is 1 to 200 characters and not only spaces. */
static bool
idempotency_key_ok(text *key)
{
	const char *k = VARDATA_ANY(key);
	int			len = VARSIZE_ANY_EXHDR(key);
	int			i;

	if (pg_mbstrlen_with_len(k, len) > 200)
		return false;
	for (i = 0; i < len; i++)
		if (k[i] != ' ')
			return true;
	return false;
}

PG_FUNCTION_INFO_V1(crm_loyalty_account_valid);

/*
 * crm.loyalty_account_valid(debt, spend_cents): the CHECK of an account
 * row (a C call for the reason given at crm_points_journal_entry_valid):
 * debt >= 0; spend_cents has 12 elements, none NULL.
 */
Datum
crm_loyalty_account_valid(PG_FUNCTION_ARGS)
{
	int64		debt = PG_GETARG_INT64(0);
	ArrayType  *spend = PG_GETARG_ARRAYTYPE_P(1);

	PG_RETURN_BOOL(debt >= 0 && ARR_NDIM(spend) == 1 && ArrayGetNItems(1, ARR_DIMS(spend)) == 12 &&
				   !array_contains_nulls(spend));
}

PG_FUNCTION_INFO_V1(crm_points_journal_entry_valid);

/*
 * crm.points_journal_entry_valid(kind, points, lots, debt, at, key): the
 * CHECK of a journal row.  One C call instead of SQL expressions because
 * PostgreSQL re-reads and re-plans every CHECK expression of a table at the
 * start of each statement that writes it, and the journal and the account
 * are written by every paid order's statement: as SQL, the two tables'
 * rules cost about a fifth of the points trigger on single-row inserts.
 *   - kind is one of earn, spend, expire, adjust, clawback, reinstate, merge;
 *   - points is the signed total of lots (>= 0 adds them, < 0 takes them);
 *   - earn and reinstate add points, spend and expire take them, none of
 *     these changes the debt; clawback never adds points;
 *   - at is finite; a key, when there is one, as idempotency_key_ok.
 * NULL (passes) when a NOT NULL column is NULL: its own constraint reports it.
 */
Datum
crm_points_journal_entry_valid(PG_FUNCTION_ARGS)
{
	char	   *kind;
	int64		points,
				debt,
				total;
	TimestampTz at;
	bool		lots_match;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		PG_RETURN_NULL();
	kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	points = PG_GETARG_INT64(1);
	total = ledger_balance_at(PG_GETARG_LEDGER_P(2), DT_NOBEGIN);
	debt = PG_GETARG_INT64(3);
	at = PG_GETARG_TIMESTAMPTZ(4);
	/* total >= 0, so PG_INT64_MIN (whose negation overflows) never matches */
	lots_match = points >= 0 ? points == total : points != PG_INT64_MIN && -points == total;
	PG_RETURN_BOOL(lots_match && journal_kind_sign_ok(kind, points, debt) &&
				   !TIMESTAMP_NOT_FINITE(at) &&
				   (PG_ARGISNULL(5) || idempotency_key_ok(PG_GETARG_TEXT_PP(5))));
}

/* ------------------------------------------------------------------------
 * Accounts in memory and the write buffers
 * ------------------------------------------------------------------------
 */
typedef struct Acct
{
	int64		cust;
	LotBuf		lots;
	int64		debt;
	int			tier;			/* index into conf.tiers */
	TimestampTz tier_since;
	int32		spend_month;
	int64		spend[12];		/* [0] = spend_month */
	int			birth_month;	/* 0 = unknown */
	bool		changed;
	ItemPointerData tid;		/* the row version read (run_unlocked) */
} Acct;

typedef struct DatumBuf
{
	int			n;
	int			cap;
	Datum	   *v;
	bool	   *null;
} DatumBuf;

#define J_COLS	9
#define A_COLS	8
#define H_COLS	6

typedef struct Ctx
{
	MemoryContext batch_cxt;
	MemoryContext carry_cxt[2];
	int			carry_i;
	DatumBuf	j[J_COLS];		/* journal rows */
	DatumBuf	h[H_COLS];		/* tier history rows */
	Acct	   *accts;			/* this batch's accounts, by customer */
	int			naccts;
	Acct	   *carry;			/* the last customer of the previous batch */
	TimestampTz now;
	bool		single_batch;	/* the statement's rows are this one batch (run_unlocked) */
} Ctx;

static void
dbuf_push(DatumBuf *b, Datum v, bool isnull)
{
	if (b->n == b->cap)
	{
		b->cap = b->cap ? b->cap * 2 : 256;
		b->v = b->v ? repalloc(b->v, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
		b->null = b->null ? repalloc(b->null, sizeof(bool) * b->cap) : palloc(sizeof(bool) * b->cap);
	}
	b->v[b->n] = v;
	b->null[b->n] = isnull;
	b->n++;
}

static Datum
dbuf_array(DatumBuf *b, Oid elemtype)
{
	int16		typlen;
	bool		byval;
	char		align;
	int			dims[1];
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
	dims[0] = b->n;
	return PointerGetDatum(construct_md_array(b->v, b->null, 1, dims, lbs,
											  elemtype, typlen, byval, align));
}

static void
journal_add(Ctx *ctx, int64 cust, int64 origin, const char *kind, int64 points,
			Ledger *lots, int64 debt, int64 order_id, TimestampTz at, const char *reason)
{
	dbuf_push(&ctx->j[0], Int64GetDatum(cust), false);
	dbuf_push(&ctx->j[1], Int64GetDatum(origin), false);
	dbuf_push(&ctx->j[2], CStringGetTextDatum(kind), false);
	dbuf_push(&ctx->j[3], Int64GetDatum(points), false);
	dbuf_push(&ctx->j[4], PointerGetDatum(lots), false);
	dbuf_push(&ctx->j[5], Int64GetDatum(debt), false);
	dbuf_push(&ctx->j[6], Int64GetDatum(order_id), order_id == 0);
	dbuf_push(&ctx->j[7], TimestampTzGetDatum(at), false);
	dbuf_push(&ctx->j[8], reason ? CStringGetTextDatum(reason) : (Datum) 0, reason == NULL);
}

/*
 * The statements that take arrays of accounts or journal rows come in two
 * variants: [0] always planned for the actual arrays (bulk batches, where
 * planning is cheap against the work), [1] generic (a few rows, where
 * planning would dominate).
 */
#define SMALL_BATCH 32
static SPIPlanPtr plan_write[2],
			plan_lock[2],
			plan_ensure[2];
static SPIPlanPtr plan_history;
static SPIPlanPtr plan_lock_one,
			plan_write_one,
			plan_cas_one,
			plan_cas_none;
static int	plan_variant;		/* the variant the current batch uses */

/*
 * Generic plans: with array parameters the planner would otherwise keep
 * choosing a fresh custom plan for every statement, and for a handful of
 * rows planning costs more than the work.
 */
static SPIPlanPtr
prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return crm_prepare_kept(slot, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

static void
prepare_common_plans(void)
{
	if (plan_write[0] == NULL)
	{
		Oid			t[J_COLS + A_COLS] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, INT8ARRAYOID,
			conf.ledger_array_type, INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID,
			INT8ARRAYOID, conf.ledger_array_type, INT8ARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		/* One statement writes the journal rows and the changed accounts. */
		crm_prepare_kept(&plan_write[0], "WITH j AS (INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
								  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), "
								  "pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9))) "
								  "UPDATE crm.loyalty_account a SET ledger = u.ledger, debt = u.debt, tier = u.tier, "
								  "tier_since = u.tier_since, spend_month = u.spend_month, "
								  "spend_cents = $16[((u.ord OPERATOR(pg_catalog.*) 12) OPERATOR(pg_catalog.-) 11)::pg_catalog.int4 : (u.ord OPERATOR(pg_catalog.*) 12)::pg_catalog.int4], "
								  "qualifying_spend = u.q::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
								  "FROM ROWS FROM (pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), "
								  "pg_catalog.unnest($14), pg_catalog.unnest($15), pg_catalog.unnest($17)) WITH ORDINALITY "
								  "AS u(customer_id, ledger, debt, tier, tier_since, spend_month, q, ord) "
								  "WHERE a.customer_id OPERATOR(pg_catalog.=) u.customer_id",
								  J_COLS + A_COLS, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_write[1], "WITH j AS (INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
								  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), "
								  "pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9))) "
								  "UPDATE crm.loyalty_account a SET ledger = u.ledger, debt = u.debt, tier = u.tier, "
								  "tier_since = u.tier_since, spend_month = u.spend_month, "
								  "spend_cents = $16[((u.ord OPERATOR(pg_catalog.*) 12) OPERATOR(pg_catalog.-) 11)::pg_catalog.int4 : (u.ord OPERATOR(pg_catalog.*) 12)::pg_catalog.int4], "
								  "qualifying_spend = u.q::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
								  "FROM ROWS FROM (pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), "
								  "pg_catalog.unnest($14), pg_catalog.unnest($15), pg_catalog.unnest($17)) WITH ORDINALITY "
								  "AS u(customer_id, ledger, debt, tier, tier_since, spend_month, q, ord) "
								  "WHERE a.customer_id OPERATOR(pg_catalog.=) u.customer_id",
								  J_COLS + A_COLS, t);
	}
	if (plan_write_one == NULL)
	{
		Oid			t[J_COLS + A_COLS] = {INT8OID, INT8OID, TEXTOID, INT8OID, conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT8OID};

		/*
		 * One journal row and one account, the common case of a checkout:
		 * without the arrays' function scans and join the statement costs
		 * about half as much to start and run.
		 */
		prepare_kept(&plan_write_one, "WITH j AS (INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
									  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)) "
									  "UPDATE crm.loyalty_account a SET ledger = $11, debt = $12, tier = $13, "
									  "tier_since = $14, spend_month = $15, spend_cents = $16, "
									  "qualifying_spend = $17::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
									  "WHERE a.customer_id OPERATOR(pg_catalog.=) $10",
									  J_COLS + A_COLS, t);
	}
	if (plan_cas_one == NULL)
	{
		Oid			t[J_COLS + A_COLS + 1] = {INT8OID, INT8OID, TEXTOID, INT8OID, conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT8OID, TIDOID};

		/*
		 * The account only if its row is still the version read ($18, its
		 * ctid), then the journal row only if the account was written: both
		 * or nothing.  In READ COMMITTED a concurrent update makes the
		 * recheck fail rather than apply this statement to the new version.
		 * "ctid = $18" makes it a TID scan, a direct fetch; the same test
		 * again as tideq() is a filter, which EvalPlanQual re-evaluates on
		 * the newest version like any qual: a TID scan's own recheck of its
		 * condition only came with the minor releases of late 2025.
		 */
		prepare_kept(&plan_cas_one, "WITH u AS (UPDATE crm.loyalty_account a SET ledger = $11, debt = $12, tier = $13, "
									"tier_since = $14, spend_month = $15, spend_cents = $16, "
									"qualifying_spend = $17::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
									"WHERE a.customer_id OPERATOR(pg_catalog.=) $10 AND a.ctid OPERATOR(pg_catalog.=) $18 AND pg_catalog.tideq(a.ctid, $18) "
									"RETURNING 1) "
									"INSERT INTO crm.points_journal (customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
									"SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM u",
									J_COLS + A_COLS + 1, t);
		prepare_kept(&plan_cas_none, "UPDATE crm.loyalty_account a SET ledger = $11, debt = $12, tier = $13, "
									 "tier_since = $14, spend_month = $15, spend_cents = $16, "
									 "qualifying_spend = $17::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
									 "WHERE a.customer_id OPERATOR(pg_catalog.=) $10 AND a.ctid OPERATOR(pg_catalog.=) $18 AND pg_catalog.tideq(a.ctid, $18)",
									 J_COLS + A_COLS + 1, t);
	}
	if (plan_history == NULL)
	{
		Oid			t[H_COLS] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, INT8ARRAYOID};

		prepare_kept(&plan_history, "INSERT INTO crm.tier_history (customer_id, from_tier, to_tier, changed_at, reason, order_id, qualifying_spend) "
					  "SELECT u.c, u.f, u.t, u.at, 'upgrade', u.o, u.q::pg_catalog.numeric OPERATOR(pg_catalog./) 100 "
					  "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(c, f, t, at, o, q)",
									H_COLS, t);
	}
	if (plan_lock[0] == NULL)
	{
		Oid			t[1] = {INT8ARRAYOID};

		crm_prepare_kept(&plan_lock[0], "SELECT a.customer_id, a.ledger, a.debt, a.tier, a.tier_since, a.spend_month, a.spend_cents, "
								 "pg_catalog.date_part('month', c.birthday)::pg_catalog.int4 "
								 "FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) a.customer_id "
								 "WHERE a.customer_id OPERATOR(pg_catalog.=) ANY ($1) "
								 "ORDER BY a.customer_id FOR UPDATE OF a",
								 1, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_lock[1], "SELECT a.customer_id, a.ledger, a.debt, a.tier, a.tier_since, a.spend_month, a.spend_cents, "
								 "pg_catalog.date_part('month', c.birthday)::pg_catalog.int4 "
								 "FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) a.customer_id "
								 "WHERE a.customer_id OPERATOR(pg_catalog.=) ANY ($1) "
								 "ORDER BY a.customer_id FOR UPDATE OF a",
								 1, t);
	}
	if (plan_lock_one == NULL)
	{
		Oid			t[1] = {INT8OID};

		/* The birthday comes from birth_month: a join would cost more. */
		prepare_kept(&plan_lock_one, "SELECT a.customer_id, a.ledger, a.debt, a.tier, a.tier_since, a.spend_month, a.spend_cents "
									 "FROM crm.loyalty_account a "
									 "WHERE a.customer_id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF a",
									 1, t);
	}
	if (plan_ensure[0] == NULL)
	{
		Oid			t[3] = {INT8ARRAYOID, TEXTOID, TIMESTAMPTZARRAYOID};

		crm_prepare_kept(&plan_ensure[0], "INSERT INTO crm.loyalty_account (customer_id, tier, tier_since) "
								   "SELECT u.c, $2, u.t FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($3)) AS u(c, t) ORDER BY u.c "
								   "ON CONFLICT (customer_id) DO NOTHING",
								   3, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_ensure[1], "INSERT INTO crm.loyalty_account (customer_id, tier, tier_since) "
								   "SELECT u.c, $2, u.t FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($3)) AS u(c, t) ORDER BY u.c "
								   "ON CONFLICT (customer_id) DO NOTHING",
								   3, t);
	}
}

/* Writes the buffered tier changes. */
static void
flush_history(Ctx *ctx)
{
	Datum		hargs[H_COLS];
	Oid			hel[H_COLS] = {INT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID};
	int			i;

	if (ctx->h[0].n == 0)
		return;
	for (i = 0; i < H_COLS; i++)
		hargs[i] = dbuf_array(&ctx->h[i], hel[i]);
	if (SPI_execute_plan(plan_history, hargs, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "tier history insert failed");
	for (i = 0; i < H_COLS; i++)
		ctx->h[i].n = 0;
}

/* Appends the columns of account ac to a[0..A_COLS) (a[6]: its 12 months). */
static void
push_account(DatumBuf *a, Acct *ac)
{
	int64		q = 0;
	int			k;

	for (k = 0; k < 12; k++)
		q += ac->spend[k];
	dbuf_push(&a[0], Int64GetDatum(ac->cust), false);
	dbuf_push(&a[1], PointerGetDatum(lotbuf_to_ledger(&ac->lots)), false);
	dbuf_push(&a[2], Int64GetDatum(ac->debt), false);
	dbuf_push(&a[3], CStringGetTextDatum(conf.tiers[ac->tier].name), false);
	dbuf_push(&a[4], TimestampTzGetDatum(ac->tier_since), false);
	dbuf_push(&a[5], Int32GetDatum(ac->spend_month), false);
	for (k = 0; k < 12; k++)
		dbuf_push(&a[6], Int64GetDatum(ac->spend[k]), false);
	dbuf_push(&a[7], Int64GetDatum(q), false);
}

/*
 * The parameters of plan_write_one and plan_cas_*: the journal row (when
 * there is one) then account a, whose months become an array.
 */
static void
one_row_args(Ctx *ctx, DatumBuf *a, Datum *args, char *nulls)
{
	int			i;

	for (i = 0; i < J_COLS; i++)
	{
		args[i] = ctx->j[i].n ? ctx->j[i].v[0] : (Datum) 0;
		nulls[i] = (ctx->j[i].n == 0 || ctx->j[i].null[0]) ? 'n' : ' ';
	}
	for (i = 0; i < A_COLS; i++)
	{
		args[J_COLS + i] = i == 6 ? dbuf_array(&a[6], INT8OID) : a[i].v[0];
		nulls[J_COLS + i] = ' ';
	}
	nulls[J_COLS + A_COLS] = '\0';
}

/* Writes the buffered journal rows, tier changes and changed accounts. */
static void
flush(Ctx *ctx, bool include_carry)
{
	int			i;
	DatumBuf	a[A_COLS];
	int			total = ctx->naccts + (include_carry && ctx->carry ? 1 : 0);

	flush_history(ctx);
	memset(a, 0, sizeof(a));
	for (i = 0; i < total; i++)
	{
		Acct	   *ac = (i < ctx->naccts) ? &ctx->accts[i] : ctx->carry;

		if (!ac->changed)
			continue;
		push_account(a, ac);
		ac->changed = false;
	}
	if (ctx->j[0].n == 0 && a[0].n == 0)
		return;
	if (ctx->j[0].n == 1 && a[0].n == 1)
	{
		Datum		args[J_COLS + A_COLS];
		char		nulls[J_COLS + A_COLS + 1];

		one_row_args(ctx, a, args, nulls);
		if (SPI_execute_plan(plan_write_one, args, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "journal and account write failed");
	}
	else
	{
		Datum		args[J_COLS + A_COLS];
		Oid			el[J_COLS + A_COLS] = {INT8OID, INT8OID, TEXTOID, INT8OID, conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
			INT8OID, conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8OID, INT8OID};

		for (i = 0; i < J_COLS; i++)
			args[i] = dbuf_array(&ctx->j[i], el[i]);
		for (i = 0; i < A_COLS; i++)
			args[J_COLS + i] = dbuf_array(&a[i], el[J_COLS + i]);
		if (SPI_execute_plan(plan_write[plan_variant], args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "journal and account write failed");
	}
	for (i = 0; i < J_COLS; i++)
		ctx->j[i].n = 0;
}

/*
 * The write of run_unlocked: account ctx->accts[0] and at most one journal
 * row, only if the account row is still the version read (its ctid; a row
 * updated since has another).  False when it is not, with nothing written.
 */
static bool
write_if_unchanged(Ctx *ctx)
{
	Acct	   *ac = &ctx->accts[0];
	DatumBuf	a[A_COLS];
	Datum		args[J_COLS + A_COLS + 1];
	char		nulls[J_COLS + A_COLS + 2];
	int			i;

	if (!ac->changed)
		return ctx->j[0].n == 0 && ctx->h[0].n == 0;
	if (ctx->j[0].n > 1)
		return false;
	memset(a, 0, sizeof(a));
	push_account(a, ac);
	one_row_args(ctx, a, args, nulls);
	args[J_COLS + A_COLS] = PointerGetDatum(&ac->tid);
	nulls[J_COLS + A_COLS] = ' ';
	nulls[J_COLS + A_COLS + 1] = '\0';
	if (SPI_execute_plan(ctx->j[0].n ? plan_cas_one : plan_cas_none, args, nulls, false, 0) < 0)
		elog(ERROR, "journal and account write failed");
	if (SPI_processed == 0)
		return false;
	for (i = 0; i < J_COLS; i++)
		ctx->j[i].n = 0;
	ac->changed = false;
	flush_history(ctx);
	return true;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a,
				y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* Appends the accounts of a lock query's result to ctx->accts. */
/* The columns of an account in the lock queries. */
static const AttrNumber query_cols[7] = {1, 2, 3, 4, 5, 6, 7};

/* The month (1-12) of customer cust's birthday, 0 if unknown. */
static int
birth_month(int64 cust)
{
	Datum		key = Int64GetDatum(cust);
	Datum		birthday;
	bool		isnull = true;
	int			y,
				m,
				d;

	if (!crm_first_row_by_index(conf.customer_relid, conf.customer_pkey, &key, conf.birthday_att,
								&birthday, &isnull) || isnull)
		return 0;
	if (DATE_NOT_FINITE(DatumGetDateADT(birthday)))
		return 0;
	j2date(DatumGetDateADT(birthday) + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return m;
}

/*
 * An account from its row: cols are the attribute numbers of customer_id,
 * ledger, debt, tier, tier_since, spend_month and spend_cents; birth_col is
 * the attribute holding the birthday month, or 0 to look it up.
 */
static void
parse_account(Acct *ac, HeapTuple tup, TupleDesc desc, const AttrNumber *cols, int birth_col)
{
	bool		isnull;
	Datum	   *sd;
	int			ns,
				k;

	ac->cust = DatumGetInt64(heap_getattr(tup, cols[0], desc, &isnull));
	lotbuf_from_ledger(&ac->lots, DatumGetLedgerP(heap_getattr(tup, cols[1], desc, &isnull)));
	ac->debt = DatumGetInt64(heap_getattr(tup, cols[2], desc, &isnull));
	ac->tier = tier_index(TextDatumGetCString(heap_getattr(tup, cols[3], desc, &isnull)));
	ac->tier_since = DatumGetTimestampTz(heap_getattr(tup, cols[4], desc, &isnull));
	ac->spend_month = DatumGetInt32(heap_getattr(tup, cols[5], desc, &isnull));
	deconstruct_array(DatumGetArrayTypeP(heap_getattr(tup, cols[6], desc, &isnull)),
					  INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &sd, NULL, &ns);
	for (k = 0; k < 12; k++)
		ac->spend[k] = k < ns ? DatumGetInt64(sd[k]) : 0;
	if (birth_col)
	{
		Datum		bm = heap_getattr(tup, birth_col, desc, &isnull);

		ac->birth_month = isnull ? 0 : DatumGetInt32(bm);
	}
	else
		ac->birth_month = birth_month(ac->cust);
	ac->changed = false;
	ac->tid = tup->t_self;
}

static void
parse_accounts(Ctx *ctx, SPITupleTable *tt, uint64 rows)
{
	uint64		i;

	for (i = 0; i < rows; i++)
		parse_account(&ctx->accts[ctx->naccts++], tt->vals[i], tt->tupdesc, query_cols,
					  tt->tupdesc->natts >= 8 ? 8 : 0);
	SPI_freetuptable(tt);
}

static int
cmp_acct(const void *a, const void *b)
{
	return cmp_int64(&((const Acct *) a)->cust, &((const Acct *) b)->cust);
}

/*
 * Locks and loads the accounts of custs[0..n) (sorted, distinct) into
 * ctx->accts, in customer-id order.  With ensure, accounts that do not
 * exist yet are then created at the lowest tier (tier_since = since[i]) and
 * locked too.
 */
static void
load_accounts(Ctx *ctx, int64 *custs, TimestampTz *since, int n, bool ensure)
{
	DatumBuf	cb = {0};
	Datum		arg;
	int			i;

	ctx->naccts = 0;
	ctx->accts = palloc0(sizeof(Acct) * Max(n, 1));
	if (n == 0)
		return;
	if (n == 1)
		arg = Int64GetDatum(custs[0]);
	else
	{
		for (i = 0; i < n; i++)
			dbuf_push(&cb, Int64GetDatum(custs[i]), false);
		arg = dbuf_array(&cb, INT8OID);
	}
	if (SPI_execute_plan(n == 1 ? plan_lock_one : plan_lock[plan_variant], &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "account lock failed");
	parse_accounts(ctx, SPI_tuptable, SPI_processed);
	if (ensure && ctx->naccts < n)
	{
		DatumBuf	mb = {0},
					sb = {0};
		Datum		eargs[3];
		int			j = 0;

		/* both lists are sorted: collect the customers without an account */
		for (i = 0; i < n; i++)
		{
			while (j < ctx->naccts && ctx->accts[j].cust < custs[i])
				j++;
			if (j < ctx->naccts && ctx->accts[j].cust == custs[i])
				continue;
			dbuf_push(&mb, Int64GetDatum(custs[i]), false);
			dbuf_push(&sb, TimestampTzGetDatum(since ? since[i] : ctx->now), false);
		}
		eargs[0] = dbuf_array(&mb, INT8OID);
		eargs[1] = CStringGetTextDatum(conf.tiers[0].name);
		eargs[2] = dbuf_array(&sb, TIMESTAMPTZOID);
		if (SPI_execute_plan(plan_ensure[plan_variant], eargs, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "account insert failed");
		if (SPI_execute_plan(plan_lock[plan_variant], eargs, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "account lock failed");
		parse_accounts(ctx, SPI_tuptable, SPI_processed);
		qsort(ctx->accts, ctx->naccts, sizeof(Acct), cmp_acct);
	}
}

static Acct *
find_acct(Ctx *ctx, int64 cust)
{
	int			lo = 0,
				hi = ctx->naccts;

	if (ctx->carry && ctx->carry->cust == cust)
		return ctx->carry;
	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (ctx->accts[mid].cust < cust)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < ctx->naccts && ctx->accts[lo].cust == cust)
		return &ctx->accts[lo];
	return NULL;
}

/* Qualifying spend: add cents (may be negative) to the month's bucket. */
static void
spend_add(Acct *ac, int32 month, int64 cents)
{
	int			k;

	if (month > ac->spend_month)
	{
		int64		shift = (int64) month - ac->spend_month;

		if (shift >= 12)
			memset(ac->spend, 0, sizeof(ac->spend));
		else
		{
			memmove(&ac->spend[shift], &ac->spend[0], sizeof(int64) * (12 - shift));
			memset(&ac->spend[0], 0, sizeof(int64) * shift);
		}
		ac->spend_month = month;
	}
	k = ac->spend_month - month;
	if (k >= 12)
		return;					/* older than the window: counts no more */
	if (pg_add_s64_overflow(ac->spend[k], cents, &ac->spend[k]))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("qualifying spend out of range")));
	if (ac->spend[k] < 0)
		ac->spend[k] = 0;
	ac->changed = true;
}

static int64
spend_total(const Acct *ac)
{
	int64		q = 0;
	int			k;

	for (k = 0; k < 12; k++)
		if (pg_add_s64_overflow(q, ac->spend[k], &q))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("qualifying spend out of range")));
	return q;
}

static Ledger *
single_lot(int64 points, TimestampTz expires, TimestampTz earned, int64 source)
{
	LotBuf		b;

	lotbuf_init(&b, 1);
	lotbuf_add(&b, points, expires, earned, source);
	return lotbuf_to_ledger(&b);
}

/*
 * Earn (kind "earn", or "reinstate" for points a refund reversal gives
 * back): a lot for the order earned at earned_at, journaled at "at"; then
 * any debt is repaid from it.
 */
static void
earn(Ctx *ctx, Acct *ac, const char *kind, int64 origin, int64 order_id, int64 points,
	 TimestampTz earned_at, TimestampTz expires, TimestampTz at, const char *reason)
{
	if (points <= 0)
		return;
	if (expires <= earned_at)
		expires = earned_at + 1;	/* a policy cannot expire points before they exist */
	lotbuf_add(&ac->lots, points, expires, earned_at, order_id);
	journal_add(ctx, ac->cust, origin, kind, points,
				single_lot(points, expires, earned_at, order_id), 0, order_id, at, reason);
	if (ac->debt > 0)
	{
		LotBuf		taken;
		int64		got;

		lotbuf_init(&taken, 1);
		got = lotbuf_take(&ac->lots, Min(ac->debt, points), expires, DT_NOBEGIN, &taken);
		ac->debt -= got;
		journal_add(ctx, ac->cust, origin, "clawback", -got, lotbuf_to_ledger(&taken),
					-got, 0, at, "debt repayment");
	}
	ac->changed = true;
}

/*
 * Claw back what an order's net amount no longer covers: target clawed =
 * earned - floor(earned * net / amount); the difference to what was already
 * clawed is taken from the order's lot first, then FIFO, the shortfall
 * becoming debt.  When the net amount rose again (a refund reversed), the
 * difference is given back instead, as a "reinstate" lot earned at the
 * order's time (ordered_at) and expiring with its own lot, so points past
 * their expiry come back expired; debt is first repaid from it, as from any
 * points earned.  Journaled at "at".
 */
static void
clawback(Ctx *ctx, Acct *ac, int64 origin, int64 order_id, int64 earned, int64 clawed,
		 TimestampTz ordered_at, TimestampTz expires, int64 net_cents, int64 amount_cents,
		 TimestampTz at, const char *reason)
{
	int128		keep;
	int64		delta,
				got;
	LotBuf		taken;

	if (earned <= 0)
		return;
	keep = (amount_cents > 0 && net_cents > 0) ?
		((int128) earned * net_cents) / amount_cents : 0;
	delta = earned - (int64) keep - clawed;
	if (delta < 0)
	{
		earn(ctx, ac, "reinstate", origin, order_id, -delta, ordered_at, expires, at, reason);
		return;
	}
	if (delta == 0)
		return;
	lotbuf_init(&taken, 2);
	got = lotbuf_take(&ac->lots, delta, expires, DT_NOBEGIN, &taken);
	if (pg_add_s64_overflow(ac->debt, delta - got, &ac->debt))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("points debt out of range")));
	journal_add(ctx, ac->cust, origin, "clawback", -got, lotbuf_to_ledger(&taken),
				delta - got, order_id, at, reason);
	ac->changed = true;
}

/* ------------------------------------------------------------------------
 * The batch driver
 * ------------------------------------------------------------------------
 */
typedef void (*RowFn) (Ctx *ctx, Acct *ac, HeapTuple tup, TupleDesc desc);

/*
 * One customer with an account, in a statement of one batch (a checkout;
 * nothing carries this account's state on, and its row is not locked when
 * nothing was written): read the account without a lock, compute, and
 * write only if the row is still the version read (write_if_unchanged).
 * That saves the locking query, about a quarter of a single-row order's
 * points cost.  False, with nothing written and the buffers cleared, when
 * the account is missing or was changed meanwhile, or the result needs more
 * than one journal row: the caller then locks.
 */
static bool
run_unlocked(Ctx *ctx, HeapTuple *rows, uint64 nrows, TupleDesc desc, int64 cust, RowFn fn)
{
	Datum		key = Int64GetDatum(cust);
	Relation	rel = table_open(conf.account_relid, AccessShareLock);
	HeapTuple	tup = crm_row_by_index(rel, conf.account_pkey, &key);
	uint64		i;
	int			k;

	ctx->accts = palloc0(sizeof(Acct));
	if (tup)
		parse_account(&ctx->accts[0], tup, RelationGetDescr(rel), conf.account_cols, 0);
	/* Keep the table lock: no rewrite (VACUUM FULL) may move rows to other ctids meanwhile. */
	table_close(rel, NoLock);
	if (!tup)
		return false;
	ctx->naccts = 1;
	for (i = 0; i < nrows; i++)
	{
		CHECK_FOR_INTERRUPTS();
		fn(ctx, &ctx->accts[0], rows[i], desc);
	}
	if (write_if_unchanged(ctx))
		return true;
	for (k = 0; k < J_COLS; k++)
		ctx->j[k].n = 0;
	for (k = 0; k < H_COLS; k++)
		ctx->h[k].n = 0;
	ctx->naccts = 0;
	return false;
}

/*
 * Handles one batch of rows (sorted by customer_id in column 1): locks the
 * customers' accounts, calls fn per row and writes the results.  The last
 * customer's account is carried to the next batch, which may continue it.
 * since_col: column of the time that starts a new account's tier (with
 * ensure).
 */
static void
run_batch(Ctx *ctx, HeapTuple *rows, uint64 nrows, TupleDesc desc, bool ensure,
		  int since_col, RowFn fn)
{
	uint64		i;
	int64	   *custs;
	TimestampTz *since;
	int			nc = 0;
	MemoryContext old;

	plan_variant = nrows <= SMALL_BATCH ? 1 : 0;
	old = MemoryContextSwitchTo(ctx->batch_cxt);
	custs = palloc(sizeof(int64) * nrows);
	since = palloc(sizeof(TimestampTz) * nrows);
	for (i = 0; i < nrows; i++)
	{
		bool		isnull;
		int64		c = getint64(rows[i], desc, 1, &isnull);

		if (ctx->carry && ctx->carry->cust == c)
			continue;
		if (nc > 0 && custs[nc - 1] == c)
			continue;
		custs[nc] = c;
		since[nc] = since_col ? DatumGetTimestampTz(SPI_getbinval(rows[i], desc, since_col, &isnull)) : ctx->now;
		nc++;
	}
	if (nc == 1 && ctx->single_batch && run_unlocked(ctx, rows, nrows, desc, custs[0], fn))
	{
		/* done; nothing to carry: a single batch */
	}
	else
	{
		load_accounts(ctx, custs, since, nc, ensure);
		for (i = 0; i < nrows; i++)
		{
			bool		isnull;
			Acct	   *ac = find_acct(ctx, getint64(rows[i], desc, 1, &isnull));

			CHECK_FOR_INTERRUPTS();
			if (ac)
				fn(ctx, ac, rows[i], desc);
		}
		flush(ctx, true);
	}
	/* Keep the batch's last customer (it may continue) in the other carry context. */
	{
		bool		isnull;
		Acct	   *ac = find_acct(ctx, getint64(rows[nrows - 1], desc, 1, &isnull));
		MemoryContext cc = ctx->carry_cxt[ctx->carry_i ^ 1];
		Acct	   *copy = NULL;

		if (ac)
		{
			copy = MemoryContextAlloc(cc, sizeof(Acct));
			*copy = *ac;
			copy->lots.cap = Max(ac->lots.n, 4);
			copy->lots.lots = MemoryContextAlloc(cc, sizeof(LedgerLot) * copy->lots.cap);
			memcpy(copy->lots.lots, ac->lots.lots, sizeof(LedgerLot) * ac->lots.n);
		}
		MemoryContextReset(ctx->carry_cxt[ctx->carry_i]);
		ctx->carry_i ^= 1;
		ctx->carry = copy;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(ctx->batch_cxt);
	memset(ctx->j, 0, sizeof(ctx->j));
	memset(ctx->h, 0, sizeof(ctx->h));
	ctx->accts = NULL;
	ctx->naccts = 0;
}

/* Runs plan as a cursor and hands its rows to run_batch, BATCH_ROWS at a time. */
static void
drive(Ctx *ctx, SPIPlanPtr plan, Datum *args, bool ensure, int since_col, RowFn fn)
{
	Portal		portal = SPI_cursor_open(NULL, plan, args, NULL, true);
	MemoryContext outer = CurrentMemoryContext;

	for (;;)
	{
		SPITupleTable *tt;
		uint64		rows;

		SPI_cursor_fetch(portal, true, BATCH_ROWS);
		tt = SPI_tuptable;
		rows = SPI_processed;
		if (rows == 0)
			break;
		run_batch(ctx, tt->vals, rows, tt->tupdesc, ensure, since_col, fn);
		SPI_freetuptable(tt);
		if (rows < BATCH_ROWS)
			break;
	}
	SPI_cursor_close(portal);
	MemoryContextSwitchTo(outer);
}

static void
ctx_init(Ctx *ctx)
{
	memset(ctx, 0, sizeof(Ctx));
	ctx->batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "crm loyalty batch", ALLOCSET_DEFAULT_SIZES);
	ctx->carry_cxt[0] = AllocSetContextCreate(CurrentMemoryContext, "crm loyalty carry", ALLOCSET_SMALL_SIZES);
	ctx->carry_cxt[1] = AllocSetContextCreate(CurrentMemoryContext, "crm loyalty carry", ALLOCSET_SMALL_SIZES);
	ctx->now = GetCurrentTransactionStartTimestamp();
}

/* The statement event a loyalty trigger handles. */
typedef enum LoyaltyEvent
{
	LOY_INSERT,
	LOY_UPDATE,
	LOY_DELETE
} LoyaltyEvent;

static void
check_statement_trigger(FunctionCallInfo fcinfo, const char *name, LoyaltyEvent ev)
{
	static const int ev_flag[] = {CRM_TG_INSERT, CRM_TG_UPDATE, CRM_TG_DELETE};
	TriggerData *td = crm_check_trigger(fcinfo, name, CRM_TG_AFTER, CRM_TG_STATEMENT, ev_flag[ev], 0);
	bool		wants_new = ev != LOY_DELETE;
	bool		wants_old = ev != LOY_INSERT;
	if ((wants_new && td->tg_newtable == NULL) || (wants_old && td->tg_oldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs its transition tables", name),
				 errhint("Create the trigger with REFERENCING %s.",
						 ev == LOY_INSERT ? "NEW TABLE AS loyalty_new" :
						 ev == LOY_UPDATE ? "OLD TABLE AS loyalty_old NEW TABLE AS loyalty_new" :
						 "OLD TABLE AS loyalty_old")));
	if ((wants_new && strcmp(td->tg_trigger->tgnewtable, "loyalty_new") != 0) ||
		(wants_old && strcmp(td->tg_trigger->tgoldtable, "loyalty_old") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs its transition tables named loyalty_new and loyalty_old", name)));
}

/* ------------------------------------------------------------------------
 * Orders inserted
 * ------------------------------------------------------------------------
 * Columns: 1 customer_id, 2 order_id, 3 origin_customer_id, 4 ordered_at,
 * 5 net cents, 6 amount cents.
 */
static SPIPlanPtr plan_new_orders;

/* The highest tier the rolling spend now reaches, if above the current one. */
static void
upgrade_on_spend(Ctx *ctx, Acct *ac, int64 order_id, TimestampTz at)
{
	int64		q = spend_total(ac);
	int			t;

	for (t = conf.ntiers - 1; t > ac->tier; t--)
		if (conf.tiers[t].threshold_cents <= q)
		{
			dbuf_push(&ctx->h[0], Int64GetDatum(ac->cust), false);
			dbuf_push(&ctx->h[1], CStringGetTextDatum(conf.tiers[ac->tier].name), false);
			dbuf_push(&ctx->h[2], CStringGetTextDatum(conf.tiers[t].name), false);
			dbuf_push(&ctx->h[3], TimestampTzGetDatum(at), false);
			dbuf_push(&ctx->h[4], Int64GetDatum(order_id), false);
			dbuf_push(&ctx->h[5], Int64GetDatum(q), false);
			ac->tier = t;
			ac->tier_since = at;
			ac->changed = true;
			return;
		}
}

static void
order_row(Ctx *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, 2, &isnull);
	int64		origin = getint64(tup, desc, 3, &isnull);
	TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	int64		net = getint64(tup, desc, 5, &isnull);
	int64		amount = getint64(tup, desc, 6, &isnull);
	const RuleConf *rule = rule_at(at);
	struct pg_tm tm;
	fsec_t		fsec;

	local_tm(at, &tm, &fsec);
	if (rule && net > 0)
	{
		/*
		 * Points are computed on the full amount; an order inserted already
		 * partly refunded then gives back its share at once, so every later
		 * refund is proportional to the same base.
		 */
		int128		v = (int128) amount * rule->ppu_e4;	/* points x 10^6 */
		int64		points;
		TimestampTz expires = expiry_of(at);
		int128		limit = (int128) PG_INT64_MAX * 1000000;

		v = v * conf.tiers[ac->tier].mult_milli / 1000;
		if (ac->birth_month != 0 && ac->birth_month == tm.tm_mon)
			v = v * rule->bday_milli / 1000;
		if (rule->member_day != 0 && rule->member_day == tm.tm_mday)
			v = v * rule->md_milli / 1000;
		if (v >= limit)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("points of order " INT64_FORMAT " out of range", order_id)));
		points = (int64) (v / 1000000);
		earn(ctx, ac, "earn", origin, order_id, points, at, expires, at, NULL);
		if (net < amount)
			clawback(ctx, ac, origin, order_id, points, 0, at, expires, net, amount, at, "refund");
	}
	if (net > 0)
	{
		spend_add(ac, tm.tm_year * 12 + tm.tm_mon - 1, net);
		/* Crossing a threshold upgrades at once (after this order's points). */
		upgrade_on_spend(ctx, ac, order_id, at);
	}
}

/*
 * A statement that inserted a few orders (a checkout at the till or in the
 * app) is read straight from its transition table: planning and running a
 * query over it cost more than the points work.  The rows, their columns and
 * their order are those of plan_new_orders' query.
 */
typedef int (*SmallReader) (TriggerData *td, HeapTuple **rows);
static TupleDesc small_desc;

typedef struct NewOrder
{
	int64		cust;
	TimestampTz at;
	int64		order_id;
	HeapTuple	tup;
} NewOrder;

static int
cmp_new_order(const void *a, const void *b)
{
	const NewOrder *x = a,
			   *y = b;

	if (x->cust != y->cust)
		return x->cust < y->cust ? -1 : 1;
	if (x->at != y->at)
		return x->at < y->at ? -1 : 1;
	return x->order_id < y->order_id ? -1 : (x->order_id > y->order_id ? 1 : 0);
}

/* (numeric) * 100 as bigint, as the query's cast rounds it. */
static int64
numeric_cents(Datum n)
{
	Datum		hundred = NumericGetDatum(int64_to_numeric(100));

	return DatumGetInt64(DirectFunctionCall1(numeric_int8,
											 DirectFunctionCall2(numeric_mul, n, hundred)));
}

static int
read_new_orders(TriggerData *td, HeapTuple **rows)
{
	Tuplestorestate *ts = td->tg_newtable;
	Relation	rel = td->tg_relation;
	const char *fn = "crm.loyalty_orders_insert()";
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	int			a_cust = crm_trigger_attnum(rel, "customer_id", fn),
				a_order = crm_trigger_attnum(rel, "order_id", fn),
				a_origin = crm_trigger_attnum(rel, "origin_customer_id", fn),
				a_at = crm_trigger_attnum(rel, "ordered_at", fn),
				a_amount = crm_trigger_attnum(rel, "amount", fn),
				a_refunded = crm_trigger_attnum(rel, "refunded_amount", fn),
				a_status = crm_trigger_attnum(rel, "status", fn);
	NewOrder   *found = palloc(sizeof(NewOrder) * Max(tuplestore_tuple_count(ts), 1));
	int			n = 0,
				i;

	if (small_desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	d = CreateTemplateTupleDesc(6);

		TupleDescInitEntry(d, 1, "customer_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, 2, "order_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, 3, "origin_customer_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, 4, "ordered_at", TIMESTAMPTZOID, -1, 0);
		TupleDescInitEntry(d, 5, "net_cents", INT8OID, -1, 0);
		TupleDescInitEntry(d, 6, "amount_cents", INT8OID, -1, 0);
		MemoryContextSwitchTo(old);
		small_desc = d;
	}
	/* A read pointer of our own: the other triggers read the same store. */
	tuplestore_select_read_pointer(ts, tuplestore_alloc_read_pointer(ts, EXEC_FLAG_REWIND));
	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull;
		Datum		v[6];
		bool		nulls[6] = {false};
		Datum		amount;
		char	   *status = TextDatumGetCString(slot_getattr(slot, a_status, &isnull));

		if (strcmp(status, "paid") != 0)
			continue;
		amount = slot_getattr(slot, a_amount, &isnull);
		v[0] = slot_getattr(slot, a_cust, &isnull);
		v[1] = slot_getattr(slot, a_order, &isnull);
		v[2] = slot_getattr(slot, a_origin, &isnull);
		v[3] = slot_getattr(slot, a_at, &isnull);
		v[4] = Int64GetDatum(numeric_cents(DirectFunctionCall2(numeric_sub, amount,
															   slot_getattr(slot, a_refunded, &isnull))));
		v[5] = Int64GetDatum(numeric_cents(amount));
		found[n].cust = DatumGetInt64(v[0]);
		found[n].order_id = DatumGetInt64(v[1]);
		found[n].at = DatumGetTimestampTz(v[3]);
		found[n].tup = heap_form_tuple(small_desc, v, nulls);
		n++;
	}
	ExecDropSingleTupleTableSlot(slot);
	qsort(found, n, sizeof(NewOrder), cmp_new_order);
	*rows = palloc(sizeof(HeapTuple) * Max(n, 1));
	for (i = 0; i < n; i++)
		(*rows)[i] = found[i].tup;
	return n;
}

/*
 * The body both order triggers share: load the configuration, expose the
 * transition tables, plan the statement once per backend, then feed each
 * customer's rows to row_fn.
 */
static void
run_order_trigger(FunctionCallInfo fcinfo, const char *name, LoyaltyEvent ev,
				  SPIPlanPtr *plan, const char *sql, SmallReader read_small,
				  bool ensure, int since_col, RowFn row_fn)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Ctx			ctx;

	check_statement_trigger(fcinfo, name, ev);
	connect_and_load();
	prepare_common_plans();
	ctx_init(&ctx);
	if (read_small && tuplestore_tuple_count(td->tg_newtable) <= SMALL_BATCH)
	{
		HeapTuple  *rows;
		int			n = read_small(td, &rows);

		ctx.single_batch = true;
		if (n > 0)
			run_batch(&ctx, rows, n, small_desc, ensure, since_col, row_fn);
	}
	else
	{
		SPI_register_trigger_data(td);
		if (*plan == NULL)
			prepare_kept(plan, sql, 0, NULL);
		drive(&ctx, *plan, NULL, ensure, since_col, row_fn);
	}
	SPI_finish();
}

PG_FUNCTION_INFO_V1(crm_loyalty_orders_insert);

/* crm.loyalty_orders_insert(): AFTER INSERT statement trigger on crm.orders. */
Datum
crm_loyalty_orders_insert(PG_FUNCTION_ARGS)
{
	run_order_trigger(fcinfo, "crm.loyalty_orders_insert()", LOY_INSERT, &plan_new_orders,
					  "SELECT n.customer_id, n.order_id, n.origin_customer_id, n.ordered_at, "
					  "((n.amount OPERATOR(pg_catalog.-) n.refunded_amount) OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (n.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8 "
					  "FROM loyalty_new n WHERE n.status OPERATOR(pg_catalog.=) 'paid' "
					  "ORDER BY n.customer_id, n.ordered_at, n.order_id",
					  read_new_orders, true, 4, order_row);
	return PointerGetDatum(NULL);
}

/* ------------------------------------------------------------------------
 * Refunds (orders whose net amount fell), their reversals (net amount rose
 * again) and deleted orders (all of the net amount gone): the order keeps
 * points in proportion to its net amount, the rest clawed back or given back.
 * Columns: 1 customer_id, 2 order_id, 3 origin_customer_id, 4 ordered_at,
 * 5 amount cents, 6 new net cents, 7 old net cents, 8 earned, 9 clawed,
 * 10 earned lot expiry, 11 journal reason.
 * ------------------------------------------------------------------------
 */
static SPIPlanPtr plan_refunds;
static SPIPlanPtr plan_deleted;

/* What the journal holds for the order of alias.order_id so far. */
#define ORDER_POINTS_SO_FAR(alias) \
	"LEFT JOIN LATERAL (SELECT " \
	"  pg_catalog.sum(p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'earn')::pg_catalog.int8 AS earned, " \
	"  pg_catalog.sum(p.debt OPERATOR(pg_catalog.-) p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY ('{clawback,reinstate}'))::pg_catalog.int8 AS clawed, " \
	"  pg_catalog.min(crm.ledger_next_expiry(p.lots)) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'earn') AS expires " \
	"  FROM crm.points_journal p WHERE p.order_id OPERATOR(pg_catalog.=) " alias ".order_id) j ON true "

static void
refund_row(Ctx *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, 2, &isnull);
	int64		origin = getint64(tup, desc, 3, &isnull);
	TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	int64		amount = getint64(tup, desc, 5, &isnull);
	int64		net = getint64(tup, desc, 6, &isnull);
	int64		old_net = getint64(tup, desc, 7, &isnull);
	int64		earned = getint64(tup, desc, 8, &isnull);
	int64		clawed = getint64(tup, desc, 9, &isnull);
	Datum		e = SPI_getbinval(tup, desc, 10, &isnull);
	TimestampTz expires = isnull ? DT_NOBEGIN : DatumGetTimestampTz(e);

	spend_add(ac, month_index(at), net - old_net);
	clawback(ctx, ac, origin, order_id, earned, clawed, at, expires, net, amount, ctx->now,
			 SPI_getvalue(tup, desc, 11));
	if (net > old_net)
		upgrade_on_spend(ctx, ac, order_id, ctx->now);
}

PG_FUNCTION_INFO_V1(crm_loyalty_orders_update);

/* crm.loyalty_orders_update(): AFTER UPDATE statement trigger on crm.orders. */
Datum
crm_loyalty_orders_update(PG_FUNCTION_ARGS)
{
	run_order_trigger(fcinfo, "crm.loyalty_orders_update()", LOY_UPDATE, &plan_refunds,
					  "SELECT n.customer_id, n.order_id, n.origin_customer_id, n.ordered_at, "
					  "(n.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (n.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (o.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  "coalesce(j.earned, 0), coalesce(j.clawed, 0), j.expires, "
					  "CASE WHEN n.net_amount OPERATOR(pg_catalog.<) o.net_amount THEN 'refund' ELSE 'refund reversed' END "
					  "FROM loyalty_new n JOIN loyalty_old o ON o.order_id OPERATOR(pg_catalog.=) n.order_id "
					  ORDER_POINTS_SO_FAR("n")
					  "WHERE n.net_amount OPERATOR(pg_catalog.<>) o.net_amount "
					  "ORDER BY n.customer_id, n.order_id",
					  NULL, false, 0, refund_row);
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(crm_loyalty_orders_delete);

/*
 * crm.loyalty_orders_delete(): AFTER DELETE statement trigger on crm.orders.
 * A deleted paid order takes its points and qualifying spend with it, as a
 * full refund would.
 */
Datum
crm_loyalty_orders_delete(PG_FUNCTION_ARGS)
{
	run_order_trigger(fcinfo, "crm.loyalty_orders_delete()", LOY_DELETE, &plan_deleted,
					  "SELECT o.customer_id, o.order_id, o.origin_customer_id, o.ordered_at, "
					  "(o.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, 0::pg_catalog.int8, (o.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  "coalesce(j.earned, 0), coalesce(j.clawed, 0), j.expires, 'order deleted' "
					  "FROM loyalty_old o "
					  ORDER_POINTS_SO_FAR("o")
					  "WHERE o.status OPERATOR(pg_catalog.=) 'paid' AND o.net_amount OPERATOR(pg_catalog.>) 0 "
					  "ORDER BY o.customer_id, o.order_id",
					  NULL, false, 0, refund_row);
	return PointerGetDatum(NULL);
}

/* ------------------------------------------------------------------------
 * Order lines: category bonus.
 * Columns: 1 customer_id, 2 order_id, 3 origin_customer_id, 4 ordered_at,
 * 5 amount cents, 6 net cents, 7 category, 8 line cents, 9 earned so far,
 * 10 clawed so far.
 * ------------------------------------------------------------------------
 */
static SPIPlanPtr plan_lines;

static int64
bonus_of(const RuleConf *rule, const char *cat)
{
	int			k;

	for (k = 0; k < rule->nbonus; k++)
		if (strcmp(rule->bonus_cat[k], cat) == 0)
			return rule->bonus_e4[k];
	return 0;
}

typedef struct LinesState
{
	int64		order_id;
	int64		cust;
	int64		origin;
	TimestampTz at;
	int64		amount;
	int64		net;
	int128		bonus;			/* x 10^6 */
	int64		earned;
	int64		clawed;
} LinesState;

static LinesState lines_cur;

static void
lines_finish_order(Ctx *ctx, Acct *ac)
{
	int64		points;
	TimestampTz expires;

	if (lines_cur.order_id == 0 || ac == NULL)
		return;
	if (lines_cur.bonus >= (int128) PG_INT64_MAX * 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bonus points of order " INT64_FORMAT " out of range", lines_cur.order_id)));
	points = (int64) (lines_cur.bonus / 1000000);
	if (points > 0)
	{
		expires = expiry_of(lines_cur.at);
		earn(ctx, ac, "earn", lines_cur.origin, lines_cur.order_id, points, lines_cur.at, expires,
			 lines_cur.at, "category bonus");
		/* A partly refunded order keeps only its share of the bonus. */
		if (lines_cur.net < lines_cur.amount)
			clawback(ctx, ac, lines_cur.origin, lines_cur.order_id, lines_cur.earned + points,
					 lines_cur.clawed, lines_cur.at, expires, lines_cur.net, lines_cur.amount,
					 ctx->now, "refund");
	}
	lines_cur.order_id = 0;
}

static void
line_row(Ctx *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, 2, &isnull);
	const RuleConf *rule;
	char	   *cat;

	if (order_id != lines_cur.order_id)
	{
		/* the previous order's customer is in this batch or carried over */
		if (lines_cur.order_id != 0)
			lines_finish_order(ctx, find_acct(ctx, lines_cur.cust));
		lines_cur.order_id = order_id;
		lines_cur.cust = ac->cust;
		lines_cur.origin = getint64(tup, desc, 3, &isnull);
		lines_cur.at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		lines_cur.amount = getint64(tup, desc, 5, &isnull);
		lines_cur.net = getint64(tup, desc, 6, &isnull);
		lines_cur.earned = getint64(tup, desc, 9, &isnull);
		lines_cur.clawed = getint64(tup, desc, 10, &isnull);
		lines_cur.bonus = 0;
	}
	rule = rule_at(lines_cur.at);
	if (rule == NULL)
		return;
	cat = SPI_getvalue(tup, desc, 7);
	lines_cur.bonus += (int128) getint64(tup, desc, 8, &isnull) * bonus_of(rule, cat);
	if (lines_cur.bonus >= (int128) PG_INT64_MAX * 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bonus points of order " INT64_FORMAT " out of range", order_id)));
}

PG_FUNCTION_INFO_V1(crm_loyalty_lines_insert);

/* crm.loyalty_lines_insert(): AFTER INSERT statement trigger on crm.order_line. */
Datum
crm_loyalty_lines_insert(PG_FUNCTION_ARGS)
{
	Ctx			ctx;
	DatumBuf	cats = {0};
	Datum		arg;
	int			r,
				k;

	check_statement_trigger(fcinfo, "crm.loyalty_lines_insert()", LOY_INSERT);
	connect_and_load();
	if (!conf.any_bonus)
	{
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	SPI_register_trigger_data((TriggerData *) fcinfo->context);
	prepare_common_plans();
	if (plan_lines == NULL)
	{
		Oid			t[1] = {TEXTARRAYOID};

		/* lines of bonus categories, per order and category, by customer */
		prepare_kept(&plan_lines, "SELECT o.customer_id, o.order_id, o.origin_customer_id, o.ordered_at, "
								  "(o.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (o.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, l.category, "
								  "pg_catalog.sum((l.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8)::pg_catalog.int8, "
								  "coalesce(j.earned, 0), coalesce(j.clawed, 0) "
								  "FROM loyalty_new l JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
								  "LEFT JOIN LATERAL (SELECT "
								  "  pg_catalog.sum(p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'earn')::pg_catalog.int8 AS earned, "
								  "  pg_catalog.sum(p.debt OPERATOR(pg_catalog.-) p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY ('{clawback,reinstate}'))::pg_catalog.int8 AS clawed "
								  "  FROM crm.points_journal p WHERE p.order_id OPERATOR(pg_catalog.=) o.order_id) j ON true "
								  "WHERE o.status OPERATOR(pg_catalog.=) 'paid' AND l.category OPERATOR(pg_catalog.=) ANY ($1) "
								  "GROUP BY 1, 2, 3, 4, 5, 6, 7, 9, 10 "
								  "ORDER BY 1, 2, 7", 1, t);
	}
	for (r = 0; r < conf.nrules; r++)
		for (k = 0; k < conf.rules[r].nbonus; k++)
			if (conf.rules[r].bonus_e4[k] > 0)
				dbuf_push(&cats, CStringGetTextDatum(conf.rules[r].bonus_cat[k]), false);
	arg = dbuf_array(&cats, TEXTOID);
	ctx_init(&ctx);
	memset(&lines_cur, 0, sizeof(lines_cur));
	drive(&ctx, plan_lines, &arg, false, 0, line_row);
	/* the last order */
	if (lines_cur.order_id != 0)
	{
		lines_finish_order(&ctx, find_acct(&ctx, lines_cur.cust));
		flush(&ctx, true);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
