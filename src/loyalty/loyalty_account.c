/*
 * loyalty_account.c
 *		The business rules on one member's account, in memory: the points an
 *		order earns, earning (debt repaid first), clawback and reinstatement
 *		when an order's net amount changes, the monthly qualifying-spend
 *		buckets (12 counted, 13 kept) and the tier a rolling spend reaches.
 *		Each rule lives here once; the SQL paths call it through the
 *		functions at the end (crm.tier_for_spend, crm.tier_held,
 *		crm.spend_buckets, crm.spend_buckets_total).
 *
 * Also the CHECK functions of account and journal rows
 * (crm.loyalty_account_valid, crm.points_journal_entry_valid).
 *
 * The rules report the journal rows and tier changes they make to a
 * LoyaltyBatch (loyalty_triggers.c buffers and writes them).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "loyalty_internal.h"

/* ------------------------------------------------------------------------
 * Row rules: the CHECK functions
 * ------------------------------------------------------------------------
 */

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
 * debt >= 0; spend_cents has 13 elements (12: a row written before 0.2.0,
 * its 13th month counting 0), none NULL.
 */
Datum
crm_loyalty_account_valid(PG_FUNCTION_ARGS)
{
	int64		debt = PG_GETARG_INT64(0);
	ArrayType  *spend = PG_GETARG_ARRAYTYPE_P(1);
	int			n = ARR_NDIM(spend) == 1 ? ArrayGetNItems(1, ARR_DIMS(spend)) : -1;

	PG_RETURN_BOOL(debt >= 0 && (n == SPEND_SLOTS || n == SPEND_MONTHS) && !array_contains_nulls(spend));
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
 * Qualifying spend: 12 monthly buckets, and the tier a spend reaches
 * ------------------------------------------------------------------------
 */

static void
spend_out_of_range(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("qualifying spend out of range")));
}

/* The programme month of a time, kept while the time and configuration stay. */
typedef struct MonthCache
{
	TimestampTz at;
	uint64		generation;
	bool		valid;
	int32		month;
} MonthCache;

static int32
month_cached(MonthCache *c, TimestampTz at)
{
	uint64		g = crm_config_generation();

	if (!c->valid || c->at != at || c->generation != g)
	{
		c->month = loyalty_month_index(at);
		c->at = at;
		c->generation = g;
		c->valid = true;
	}
	return c->month;
}

/*
 * The newest month the window may move to: the month after that of now()
 * (the transaction start, which crm.max_future measures from), in the
 * programme time zone.  Asked on every move of a window, so kept.
 */
static int32
spend_month_limit(void)
{
	static MonthCache c;

	return month_cached(&c, GetCurrentTransactionStartTimestamp()) + 1;
}

/*
 * Adds cents (may be negative; a bucket never drops below 0) to month's
 * bucket.  A newer month than w->month moves the window on; a month older
 * than the window counts no more.  False when the month was too old.
 *
 * The window keeps SPEND_SLOTS months, one more than a rolling spend counts,
 * and never moves past next month (spend_month_limit): an order dated into
 * next month (within crm.max_future) keeps every month that counts now,
 * whatever order the rows arrive in.  Spend dated later still (only with
 * a crm.max_future of more than a month) counts in next month's bucket.
 */
static bool
spend_window_add(SpendWindow *w, int32 month, int64 cents)
{
	int			k;

	if (month > w->month)
	{
		int64		shift;

		month = Min(month, spend_month_limit());
		shift = (int64) month - w->month;
		if (shift >= SPEND_SLOTS)
			memset(w->cents, 0, sizeof(w->cents));
		else if (shift > 0)
		{
			memmove(&w->cents[shift], &w->cents[0], sizeof(int64) * (SPEND_SLOTS - shift));
			memset(&w->cents[0], 0, sizeof(int64) * shift);
		}
		w->month = Max(w->month, month);
	}
	k = w->month - month;
	if (k >= SPEND_SLOTS)
		return false;
	if (pg_add_s64_overflow(w->cents[k], cents, &w->cents[k]))
		spend_out_of_range();
	if (w->cents[k] < 0)
		w->cents[k] = 0;
	return true;
}

/*
 * The rolling spend as of month as_of: the buckets cents[0..n) (cents[k]
 * is month newest - k; NULL ones count 0) of as_of and the 11 months before
 * (SPEND_MONTHS in all).
 */
static int128
spend_in_window(int32 newest, const int64 *cents, const bool *nulls, int n, int32 as_of)
{
	int128		total = 0;
	int			k;

	for (k = 0; k < n; k++)
	{
		int64		month = (int64) newest - k;

		if ((nulls && nulls[k]) || month <= (int64) as_of - SPEND_MONTHS || month > as_of)
			continue;
		total += cents[k];
	}
	return total;
}

/* Qualifying spend: add cents (may be negative) to the month's bucket. */
void
loyalty_spend_add(Acct *ac, int32 month, int64 cents)
{
	if (spend_window_add(&ac->spend, month, cents))
		ac->changed = true;
}

/*
 * The account's rolling spend as of its newest month (the column
 * qualifying_spend): the newest SPEND_MONTHS buckets.
 */
int64
loyalty_spend_total(const Acct *ac)
{
	int128		q = spend_in_window(ac->spend.month, ac->spend.cents, NULL, SPEND_MONTHS, ac->spend.month);

	if (q > PG_INT64_MAX || q < PG_INT64_MIN)
		spend_out_of_range();
	return (int64) q;
}

/*
 * The tier a rolling spend reaches: the highest rank whose threshold is at
 * most spend_cents; -1 for none (a negative spend: the lowest tier's
 * threshold is 0).
 */
int
loyalty_tier_for_spend(int64 spend_cents)
{
	int			t;

	for (t = loyalty_conf.ntiers - 1; t >= 0; t--)
		if (loyalty_conf.tiers[t].threshold_cents <= spend_cents)
			return t;
	return -1;
}

/*
 * The rolling spend as of month as_of of buckets whose newest month is
 * newest; when newest is the month after as_of (an order dated into next
 * month), the higher of that and the spend as of newest, so the order
 * counts at once.  What the tier policy (upgrades, crm.tier_held) goes by.
 */
static int128
spend_as_of(int32 newest, const int64 *cents, const bool *nulls, int n, int32 as_of)
{
	int128		q = spend_in_window(newest, cents, nulls, n, as_of);

	if ((int64) newest - as_of == 1)
	{
		int128		q_next = spend_in_window(newest, cents, nulls, n, newest);

		if (q_next > q)
			q = q_next;
	}
	return q;
}

/* A spend in cents as int64 for loyalty_tier_for_spend (never negative here). */
static int64
spend_clamp(int128 q)
{
	return q > PG_INT64_MAX ? PG_INT64_MAX : (q < 0 ? 0 : (int64) q);
}

/*
 * The rolling spend an upgrade goes by: as of the window's newest month, and
 * when that is the month after that of crm.loyalty_now() (an order dated
 * into next month, within crm.max_future), the higher of that and the spend
 * as of now (the window holds all its months): an old order arriving after
 * one dated into next month still upgrades.
 */
static int64
spend_for_upgrade(const Acct *ac)
{
	static MonthCache c;
	int32		now = month_cached(&c, loyalty_now());

	if ((int64) ac->spend.month - now == 1)
		return spend_clamp(spend_as_of(ac->spend.month, ac->spend.cents, NULL, SPEND_SLOTS, now));
	return loyalty_spend_total(ac);
}

/* Raises the tier at once when the rolling spend now reaches a higher one. */
void
loyalty_upgrade_on_spend(LoyaltyBatch *batch, Acct *ac, int64 order_id, TimestampTz at)
{
	int64		q = spend_for_upgrade(ac);
	int			t = loyalty_tier_for_spend(q);

	if (t <= ac->tier)
		return;
	loyalty_tier_change_add(batch, ac->cust, ac->tier, t, at, order_id, q);
	ac->tier = t;
	ac->tier_since = at;
	ac->changed = true;
}

/* ------------------------------------------------------------------------
 * Points: earning, clawback, reinstatement, debt
 * ------------------------------------------------------------------------
 */

/*
 * The points a paid order of amount_cents earns under rule at local time
 * local: points per unit, times the tier's multiplier, the birthday month's
 * and member day's.  Points are computed on the full amount; an order
 * inserted already partly refunded then gives back its share at once, so
 * every later refund is proportional to the same base.
 */
int64
loyalty_order_points(const Acct *ac, const RuleConf *rule, const struct pg_tm *local,
					 int64 amount_cents, int64 order_id)
{
	int128		v = (int128) amount_cents * rule->ppu_e4;	/* points x 10^6 */
	int128		limit = (int128) PG_INT64_MAX * 1000000;

	v = v * loyalty_conf.tiers[ac->tier].mult_milli / 1000;
	if (ac->birth_month != 0 && ac->birth_month == local->tm_mon)
		v = v * rule->bday_milli / 1000;
	if (rule->member_day != 0 && rule->member_day == local->tm_mday)
		v = v * rule->md_milli / 1000;
	if (v >= limit)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("points of order " INT64_FORMAT " out of range", order_id)));
	return (int64) (v / 1000000);
}

/* Extra points per currency unit x 10^4 for a line of category under rule. */
int64
loyalty_bonus_of(const RuleConf *rule, const char *category)
{
	int			k;

	for (k = 0; k < rule->nbonus; k++)
		if (strcmp(rule->bonus_cat[k], category) == 0)
			return rule->bonus_e4[k];
	return 0;
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
void
loyalty_earn(LoyaltyBatch *batch, Acct *ac, const char *kind, int64 origin, int64 order_id,
			 int64 points, TimestampTz earned_at, TimestampTz expires, TimestampTz at,
			 const char *reason)
{
	if (points <= 0)
		return;
	if (expires <= earned_at)
		expires = earned_at + 1;	/* a policy cannot expire points before they exist */
	lotbuf_add(&ac->lots, points, expires, earned_at, order_id);
	loyalty_journal_add(batch, ac->cust, origin, kind, points,
						single_lot(points, expires, earned_at, order_id), 0, order_id, at, reason);
	if (ac->debt > 0)
	{
		LotBuf		taken;
		int64		got;

		lotbuf_init(&taken, 1);
		got = lotbuf_take(&ac->lots, Min(ac->debt, points), expires, DT_NOBEGIN, &taken);
		ac->debt -= got;
		loyalty_journal_add(batch, ac->cust, origin, "clawback", -got, lotbuf_to_ledger(&taken),
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
void
loyalty_clawback(LoyaltyBatch *batch, Acct *ac, int64 origin, int64 order_id, int64 earned,
				 int64 clawed, TimestampTz ordered_at, TimestampTz expires, int64 net_cents,
				 int64 amount_cents, TimestampTz at, const char *reason)
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
		loyalty_earn(batch, ac, "reinstate", origin, order_id, -delta, ordered_at, expires, at, reason);
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
	loyalty_journal_add(batch, ac->cust, origin, "clawback", -got, lotbuf_to_ledger(&taken),
						delta - got, order_id, at, reason);
	ac->changed = true;
}

/* ------------------------------------------------------------------------
 * The rules as SQL functions
 * ------------------------------------------------------------------------
 */

/* cents (any int128) as a numeric with two decimals */
static Datum
cents_to_numeric(int128 cents)
{
	char		buf[48];
	char	   *p = buf + sizeof(buf);
	bool		neg = cents < 0;
	int			digits = 0;

	if (cents >= PG_INT64_MIN && cents <= PG_INT64_MAX)
		return crm_cents_to_numeric((int64) cents);
	/* beyond int64: through the text form (|cents| < 2^127, at most 39 digits) */
	*--p = '\0';
	do
	{
		int			d = (int) (cents % 10);

		*--p = '0' + (neg ? -d : d);
		cents /= 10;
		if (++digits == 2)
			*--p = '.';
	} while (cents != 0 || digits < 3);
	if (neg)
		*--p = '-';
	return DirectFunctionCall3(numeric_in, CStringGetDatum(p), ObjectIdGetDatum(InvalidOid),
							   Int32GetDatum(-1));
}

/* floor(spend * 100), clamped to the int64 range (NaN is an error) */
static int64
spend_floor_cents(Numeric spend)
{
	Datum		c;

	if (numeric_is_nan(spend))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("spend must be a number, not NaN")));
	c = DirectFunctionCall1(numeric_floor,
							DirectFunctionCall2(numeric_mul, NumericGetDatum(spend),
												NumericGetDatum(int64_to_numeric(100))));
	if (DatumGetBool(DirectFunctionCall2(numeric_gt, c, NumericGetDatum(int64_to_numeric(PG_INT64_MAX)))))
		return PG_INT64_MAX;
	if (DatumGetBool(DirectFunctionCall2(numeric_lt, c, NumericGetDatum(int64_to_numeric(PG_INT64_MIN)))))
		return PG_INT64_MIN;
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, c));
}

PG_FUNCTION_INFO_V1(crm_tier_for_spend);

/*
 * crm.tier_for_spend(spend numeric): the tier a rolling 12-month spend
 * reaches (loyalty_tier_for_spend), NULL for a negative spend.
 */
Datum
crm_tier_for_spend(PG_FUNCTION_ARGS)
{
	int64		cents = spend_floor_cents(PG_GETARG_NUMERIC(0));
	int			t;

	loyalty_connect_and_load();
	t = loyalty_tier_for_spend(cents);
	SPI_finish();
	if (t < 0)
		PG_RETURN_NULL();
	/* the cache outlives SPI_finish: it is in its own context */
	PG_RETURN_TEXT_P(cstring_to_text(loyalty_conf.tiers[t].name));
}

PG_FUNCTION_INFO_V1(crm_spend_buckets_total);

/*
 * crm.spend_buckets_total(spend_month, spend_cents, at): the rolling spend
 * at "at" of an account's buckets (spend_cents[1] is month spend_month,
 * [k] month spend_month - k + 1): those of the month of "at" and the 11
 * before it, NULL elements counting 0, as numeric with two decimals.
 */
Datum
crm_spend_buckets_total(PG_FUNCTION_ARGS)
{
	int32		newest = PG_GETARG_INT32(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(2);
	Datum	   *d;
	bool	   *nulls;
	int64	   *cents;
	int			n,
				k;
	int32		as_of;

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite timestamp")));
	loyalty_connect_and_load();
	as_of = loyalty_month_index(at);
	SPI_finish();
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &d, &nulls, &n);
	cents = palloc(sizeof(int64) * Max(n, 1));
	for (k = 0; k < n; k++)
		cents[k] = nulls[k] ? 0 : DatumGetInt64(d[k]);
	PG_RETURN_DATUM(cents_to_numeric(spend_in_window(newest, cents, nulls, n, as_of)));
}

PG_FUNCTION_INFO_V1(crm_tier_held);

/*
 * crm.tier_held(tier, tier_since, spend_month, spend_cents, at): the tier
 * policy, once: the tier an account holds at "at" is the higher of the tier
 * its rolling spend as of the month of "at" reaches (spend_as_of) and its
 * tier while that is protected, i.e. reached less than tier_hold_months
 * before "at".  Merges and unmerges set it, crm.tick's downgrade lowers an
 * unprotected tier to it, and orders only raise a tier, so an account is
 * never below it (what crm.verify can check).
 */
Datum
crm_tier_held(PG_FUNCTION_ARGS)
{
	char	   *tier = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz since = PG_GETARG_TIMESTAMPTZ(1);
	int32		newest = PG_GETARG_INT32(2);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(3);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(4);
	Interval	hold;
	Datum	   *d;
	bool	   *nulls;
	int64	   *cents;
	int			n,
				k,
				cur = -1,
				t;
	TimestampTz protected_from;

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite timestamp")));
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &d, &nulls, &n);
	cents = palloc(sizeof(int64) * Max(n, 1));
	for (k = 0; k < n; k++)
		cents[k] = nulls[k] ? 0 : DatumGetInt64(d[k]);
	loyalty_connect_and_load();
	for (k = 0; k < loyalty_conf.ntiers; k++)
		if (strcmp(loyalty_conf.tiers[k].name, tier) == 0)
			cur = k;
	if (cur < 0)
	{
		SPI_finish();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tier \"%s\" is not a tier of crm.tier", tier)));
	}
	t = loyalty_tier_for_spend(spend_clamp(spend_as_of(newest, cents, nulls, n, loyalty_month_index(at))));
	memset(&hold, 0, sizeof(hold));
	hold.month = loyalty_conf.tier_hold_months;
	protected_from = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
															 TimestampTzGetDatum(at),
															 IntervalPGetDatum(&hold)));
	/* crm.tick lowers a tier once tier_since <= at - tier_hold_months */
	if (cur > t && since > protected_from)
		t = cur;
	SPI_finish();
	/* the cache outlives SPI_finish: it is in its own context */
	PG_RETURN_TEXT_P(cstring_to_text(loyalty_conf.tiers[t].name));
}

PG_FUNCTION_INFO_V1(crm_spend_buckets);

/*
 * crm.spend_buckets(ordered_at[], net_amount[]): an account's buckets built
 * from its orders (pairs of ordered_at and net_amount): orders with a net
 * amount above 0 count in whole cents in the month of ordered_at; the
 * newest such month is spend_month (0 when there is none), but never past
 * next month (spend_window_add).  Pairs with a NULL are skipped.  Returns
 * (spend_month, spend_cents: SPEND_SLOTS months, qualifying_spend).
 */
Datum
crm_spend_buckets(PG_FUNCTION_ARGS)
{
	ArrayType  *ats = PG_GETARG_ARRAYTYPE_P(0);
	ArrayType  *nets = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *ad,
			   *nd;
	bool	   *anull,
			   *nnull;
	int			na,
				nn,
				i,
				n = 0;
	int32	   *months;
	int64	   *cents;
	SpendWindow w;
	Datum		zero = NumericGetDatum(int64_to_numeric(0));
	Datum		cd[SPEND_SLOTS];
	Datum		values[3];
	bool		isnull[3] = {false, false, false};
	TupleDesc	desc;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "crm.spend_buckets must return a record");
	deconstruct_array(ats, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &ad, &anull, &na);
	deconstruct_array(nets, NUMERICOID, -1, false, TYPALIGN_INT, &nd, &nnull, &nn);
	if (na != nn)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ordered_at and net_amount must have the same number of elements")));
	months = palloc(sizeof(int32) * Max(na, 1));
	cents = palloc(sizeof(int64) * Max(na, 1));
	memset(&w, 0, sizeof(w));
	loyalty_connect_and_load();
	for (i = 0; i < na; i++)
	{
		if (anull[i] || nnull[i] || !DatumGetBool(DirectFunctionCall2(numeric_gt, nd[i], zero)))
			continue;
		if (TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(ad[i])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ordered_at must hold finite timestamps")));
		months[n] = Min(loyalty_month_index(DatumGetTimestampTz(ad[i])), spend_month_limit());
		cents[n] = crm_numeric_to_cents(nd[i]);
		if (n == 0 || months[n] > w.month)
			w.month = months[n];
		n++;
	}
	SPI_finish();
	for (i = 0; i < n; i++)
		spend_window_add(&w, months[i], cents[i]);
	for (i = 0; i < SPEND_SLOTS; i++)
		cd[i] = Int64GetDatum(w.cents[i]);
	values[0] = Int32GetDatum(w.month);
	values[1] = PointerGetDatum(construct_array(cd, SPEND_SLOTS, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = cents_to_numeric(spend_in_window(w.month, w.cents, NULL, SPEND_MONTHS, w.month));
	desc = BlessTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, isnull)));
}
