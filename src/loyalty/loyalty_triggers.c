/*
 * loyalty_triggers.c
 *		The member programme's statement triggers (over transition tables):
 *
 * crm.loyalty_orders_insert	paid orders earn points (rules, tier and
 *								birthday/member-day multipliers), add
 *								qualifying spend, upgrade tiers at once
 * crm.loyalty_orders_update	refunds claw points back proportionally;
 *								an order re-assigned takes its points along
 * crm.loyalty_orders_delete	deleted paid orders take their points back
 * crm.loyalty_lines_insert		category bonus for the lines of paid orders
 *
 * Each trigger reads its transition table sorted by customer in batches,
 * locks the affected accounts in customer-id order (as redemptions and
 * crm.tick do), changes each account in memory by the rules of
 * loyalty_account.c and writes the journal rows and accounts back with one
 * INSERT and one UPDATE per batch over unnest() arrays.  Plans are prepared
 * once per backend and kept (crm_prepare_kept); the configuration comes
 * from loyalty_config.c.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datum.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "crm_ext.h"
#include "loyalty_internal.h"

#define BATCH_ROWS	10000

/* ------------------------------------------------------------------------
 * Write buffers: journal rows, tier changes, accounts
 * ------------------------------------------------------------------------
 */
typedef struct DatumBuf
{
	int			n;
	int			cap;
	Datum	   *v;
	bool	   *null;
} DatumBuf;

/*
 * The columns of a journal row as the write statements take them ($1 ..
 * $9), then those of an account ($10 .. $17; spend_cents holds SPEND_SLOTS
 * values per account), then of a tier change (the history statement's $1 .. $6).
 */
typedef enum JournalParam
{
	JP_CUSTOMER, JP_ORIGIN, JP_KIND, JP_POINTS, JP_LOTS, JP_DEBT, JP_ORDER, JP_AT, JP_REASON,
	J_COLS
} JournalParam;

typedef enum AccountParam
{
	AP_CUSTOMER, AP_LEDGER, AP_DEBT, AP_TIER, AP_TIER_SINCE, AP_SPEND_MONTH, AP_SPEND_CENTS,
	AP_QUALIFYING_SPEND,
	A_COLS
} AccountParam;

typedef enum HistoryParam
{
	HP_CUSTOMER, HP_FROM_TIER, HP_TO_TIER, HP_AT, HP_ORDER, HP_SPEND,
	H_COLS
} HistoryParam;

/* One trigger call's state: its batch of accounts and write buffers. */
struct LoyaltyBatch
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
};

static int64
getint64(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

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

/* Buffers a journal row (order_id 0 and reason NULL are NULL). */
void
loyalty_journal_add(LoyaltyBatch *ctx, int64 cust, int64 origin, const char *kind, int64 points,
					Ledger *lots, int64 debt, int64 order_id, TimestampTz at, const char *reason)
{
	dbuf_push(&ctx->j[JP_CUSTOMER], Int64GetDatum(cust), false);
	dbuf_push(&ctx->j[JP_ORIGIN], Int64GetDatum(origin), false);
	dbuf_push(&ctx->j[JP_KIND], CStringGetTextDatum(kind), false);
	dbuf_push(&ctx->j[JP_POINTS], Int64GetDatum(points), false);
	dbuf_push(&ctx->j[JP_LOTS], PointerGetDatum(lots), false);
	dbuf_push(&ctx->j[JP_DEBT], Int64GetDatum(debt), false);
	dbuf_push(&ctx->j[JP_ORDER], Int64GetDatum(order_id), order_id == 0);
	dbuf_push(&ctx->j[JP_AT], TimestampTzGetDatum(at), false);
	dbuf_push(&ctx->j[JP_REASON], reason ? CStringGetTextDatum(reason) : (Datum) 0, reason == NULL);
}

/* Buffers an upgrade for crm.tier_history (tiers are indexes into the configuration). */
void
loyalty_tier_change_add(LoyaltyBatch *ctx, int64 cust, int from_tier, int to_tier,
						TimestampTz at, int64 order_id, int64 spend_cents)
{
	dbuf_push(&ctx->h[HP_CUSTOMER], Int64GetDatum(cust), false);
	dbuf_push(&ctx->h[HP_FROM_TIER], CStringGetTextDatum(loyalty_conf.tiers[from_tier].name), false);
	dbuf_push(&ctx->h[HP_TO_TIER], CStringGetTextDatum(loyalty_conf.tiers[to_tier].name), false);
	dbuf_push(&ctx->h[HP_AT], TimestampTzGetDatum(at), false);
	dbuf_push(&ctx->h[HP_ORDER], Int64GetDatum(order_id), false);
	dbuf_push(&ctx->h[HP_SPEND], Int64GetDatum(spend_cents), false);
}

/* ------------------------------------------------------------------------
 * Kept plans
 * ------------------------------------------------------------------------
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

/* The columns of plan_lock (customer_id first) and plan_lock_one (without the last). */
typedef enum LockCol
{
	LOCK_CUSTOMER_ID = 1, LOCK_LEDGER, LOCK_DEBT, LOCK_TIER, LOCK_TIER_SINCE, LOCK_SPEND_MONTH,
	LOCK_SPEND_CENTS, LOCK_BIRTH_MONTH
} LockCol;

/* The account columns of the lock queries, in AccountField order. */
static const AttrNumber lock_cols[ACCT_NFIELDS] = {
	[ACCT_CUSTOMER_ID] = LOCK_CUSTOMER_ID,[ACCT_LEDGER] = LOCK_LEDGER,[ACCT_DEBT] = LOCK_DEBT,
	[ACCT_TIER] = LOCK_TIER,[ACCT_TIER_SINCE] = LOCK_TIER_SINCE,[ACCT_SPEND_MONTH] = LOCK_SPEND_MONTH,
	[ACCT_SPEND_CENTS] = LOCK_SPEND_CENTS
};

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

/* One statement writes the journal rows ($1 .. $9) and the changed accounts ($10 .. $17). */
#define WRITE_SQL \
	"WITH j AS (INSERT INTO crm.points_journal (journal_id, customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) " \
	"SELECT pg_catalog.nextval('crm.points_journal_id_seq'::pg_catalog.regclass), * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), " \
	"pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9))) " \
	"UPDATE crm.loyalty_account a SET ledger = u.ledger, debt = u.debt, tier = u.tier, " \
	"tier_since = u.tier_since, spend_month = u.spend_month, " \
	"spend_cents = $16[((u.ord OPERATOR(pg_catalog.*) 13) OPERATOR(pg_catalog.-) 12)::pg_catalog.int4 : (u.ord OPERATOR(pg_catalog.*) 13)::pg_catalog.int4], " \
	"qualifying_spend = u.q::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() " \
	"FROM ROWS FROM (pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), " \
	"pg_catalog.unnest($14), pg_catalog.unnest($15), pg_catalog.unnest($17)) WITH ORDINALITY " \
	"AS u(customer_id, ledger, debt, tier, tier_since, spend_month, q, ord) " \
	"WHERE a.customer_id OPERATOR(pg_catalog.=) u.customer_id"

/* The customers' accounts, with their birthday month (LockCol), locked in customer order. */
#define LOCK_SQL \
	"SELECT a.customer_id, a.ledger, a.debt, a.tier, a.tier_since, a.spend_month, a.spend_cents, " \
	"pg_catalog.date_part('month', c.birthday)::pg_catalog.int4 " \
	"FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) a.customer_id " \
	"WHERE a.customer_id OPERATOR(pg_catalog.=) ANY ($1) " \
	"ORDER BY a.customer_id FOR UPDATE OF a"

/* Accounts at the lowest tier ($2) for customers ($1) without one, tier_since $3. */
#define ENSURE_SQL \
	"INSERT INTO crm.loyalty_account (customer_id, tier, tier_since) " \
	"SELECT u.c, $2, u.t FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($3)) AS u(c, t) ORDER BY u.c " \
	"ON CONFLICT (customer_id) DO NOTHING"

/* The statements that write many rows at once (plan_write, plan_history). */
static void
prepare_batch_write_plans(void)
{
	if (plan_write[0] == NULL)
	{
		Oid			t[J_COLS + A_COLS] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, INT8ARRAYOID,
			loyalty_conf.ledger_array_type, INT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID,
			INT8ARRAYOID, loyalty_conf.ledger_array_type, INT8ARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		crm_prepare_kept(&plan_write[0], WRITE_SQL, J_COLS + A_COLS, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_write[1], WRITE_SQL, J_COLS + A_COLS, t);
	}
	if (plan_history == NULL)
	{
		Oid			t[H_COLS] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, INT8ARRAYOID};

		prepare_kept(&plan_history, "INSERT INTO crm.tier_history (tier_history_id, customer_id, from_tier, to_tier, changed_at, reason, order_id, qualifying_spend) "
					 "SELECT pg_catalog.nextval('crm.tier_history_id_seq'::pg_catalog.regclass), u.c, u.f, u.t, u.at, 'upgrade', u.o, u.q::pg_catalog.numeric OPERATOR(pg_catalog./) 100 "
					 "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(c, f, t, at, o, q)",
					 H_COLS, t);
	}
}

/* The statements that write one account (plan_write_one, plan_cas_one, plan_cas_none). */
static void
prepare_single_write_plans(void)
{
	if (plan_write_one == NULL)
	{
		Oid			t[J_COLS + A_COLS] = {INT8OID, INT8OID, TEXTOID, INT8OID, loyalty_conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, loyalty_conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT8OID};

		/*
		 * One journal row and one account, the common case of a checkout:
		 * without the arrays' function scans and join the statement costs
		 * about half as much to start and run.
		 */
		prepare_kept(&plan_write_one, "WITH j AS (INSERT INTO crm.points_journal (journal_id, customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
					 "VALUES (pg_catalog.nextval('crm.points_journal_id_seq'::pg_catalog.regclass), $1, $2, $3, $4, $5, $6, $7, $8, $9)) "
					 "UPDATE crm.loyalty_account a SET ledger = $11, debt = $12, tier = $13, "
					 "tier_since = $14, spend_month = $15, spend_cents = $16, "
					 "qualifying_spend = $17::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
					 "WHERE a.customer_id OPERATOR(pg_catalog.=) $10",
					 J_COLS + A_COLS, t);
	}
	if (plan_cas_one == NULL)
	{
		Oid			t[J_COLS + A_COLS + 1] = {INT8OID, INT8OID, TEXTOID, INT8OID, loyalty_conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, loyalty_conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT8OID, TIDOID};

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
					 "INSERT INTO crm.points_journal (journal_id, customer_id, origin_customer_id, kind, points, lots, debt, order_id, at, reason) "
					 "SELECT pg_catalog.nextval('crm.points_journal_id_seq'::pg_catalog.regclass), $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM u",
					 J_COLS + A_COLS + 1, t);
		prepare_kept(&plan_cas_none, "UPDATE crm.loyalty_account a SET ledger = $11, debt = $12, tier = $13, "
					 "tier_since = $14, spend_month = $15, spend_cents = $16, "
					 "qualifying_spend = $17::pg_catalog.numeric OPERATOR(pg_catalog./) 100, updated_at = pg_catalog.now() "
					 "WHERE a.customer_id OPERATOR(pg_catalog.=) $10 AND a.ctid OPERATOR(pg_catalog.=) $18 AND pg_catalog.tideq(a.ctid, $18)",
					 J_COLS + A_COLS + 1, t);
	}
}

/* The statements that lock accounts or create missing ones. */
static void
prepare_lock_plans(void)
{
	if (plan_lock[0] == NULL)
	{
		Oid			t[1] = {INT8ARRAYOID};

		crm_prepare_kept(&plan_lock[0], LOCK_SQL, 1, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_lock[1], LOCK_SQL, 1, t);
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

		crm_prepare_kept(&plan_ensure[0], ENSURE_SQL, 3, t, CURSOR_OPT_CUSTOM_PLAN);
		prepare_kept(&plan_ensure[1], ENSURE_SQL, 3, t);
	}
}

static void
prepare_common_plans(void)
{
	prepare_batch_write_plans();
	prepare_single_write_plans();
	prepare_lock_plans();
}

/* ------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------
 */

/* Writes the buffered tier changes. */
static void
flush_history(LoyaltyBatch *ctx)
{
	Datum		hargs[H_COLS];
	Oid			hel[H_COLS] = {INT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID};
	int			i;

	if (ctx->h[HP_CUSTOMER].n == 0)
		return;
	for (i = 0; i < H_COLS; i++)
		hargs[i] = dbuf_array(&ctx->h[i], hel[i]);
	if (SPI_execute_plan(plan_history, hargs, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "tier history insert failed");
	for (i = 0; i < H_COLS; i++)
		ctx->h[i].n = 0;
}

/* Appends the columns of account ac to a[0..A_COLS) (a[AP_SPEND_CENTS]: its SPEND_SLOTS months). */
static void
push_account(DatumBuf *a, Acct *ac)
{
	int64		q = loyalty_spend_total(ac);
	int			k;

	/* WRITE_SQL slices $16 into accounts of 13 months */
	StaticAssertStmt(SPEND_SLOTS == 13, "WRITE_SQL takes 13 months per account");

	dbuf_push(&a[AP_CUSTOMER], Int64GetDatum(ac->cust), false);
	dbuf_push(&a[AP_LEDGER], PointerGetDatum(lotbuf_to_ledger(&ac->lots)), false);
	dbuf_push(&a[AP_DEBT], Int64GetDatum(ac->debt), false);
	dbuf_push(&a[AP_TIER], CStringGetTextDatum(loyalty_conf.tiers[ac->tier].name), false);
	dbuf_push(&a[AP_TIER_SINCE], TimestampTzGetDatum(ac->tier_since), false);
	dbuf_push(&a[AP_SPEND_MONTH], Int32GetDatum(ac->spend.month), false);
	for (k = 0; k < SPEND_SLOTS; k++)
		dbuf_push(&a[AP_SPEND_CENTS], Int64GetDatum(ac->spend.cents[k]), false);
	dbuf_push(&a[AP_QUALIFYING_SPEND], Int64GetDatum(q), false);
}

/*
 * The parameters of plan_write_one and plan_cas_*: the journal row (when
 * there is one) then account a, whose months become an array.
 */
static void
one_row_args(LoyaltyBatch *ctx, DatumBuf *a, Datum *args, char *nulls)
{
	int			i;

	for (i = 0; i < J_COLS; i++)
	{
		args[i] = ctx->j[i].n ? ctx->j[i].v[0] : (Datum) 0;
		nulls[i] = (ctx->j[i].n == 0 || ctx->j[i].null[0]) ? 'n' : ' ';
	}
	for (i = 0; i < A_COLS; i++)
	{
		args[J_COLS + i] = i == AP_SPEND_CENTS ? dbuf_array(&a[AP_SPEND_CENTS], INT8OID) : a[i].v[0];
		nulls[J_COLS + i] = ' ';
	}
	nulls[J_COLS + A_COLS] = '\0';
}

/* Writes the buffered journal rows, tier changes and changed accounts. */
static void
flush(LoyaltyBatch *ctx, bool include_carry)
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
	if (ctx->j[JP_CUSTOMER].n == 0 && a[AP_CUSTOMER].n == 0)
		return;
	if (ctx->j[JP_CUSTOMER].n == 1 && a[AP_CUSTOMER].n == 1)
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
		Oid			el[J_COLS + A_COLS] = {INT8OID, INT8OID, TEXTOID, INT8OID, loyalty_conf.ledger_type,
			INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID,
			INT8OID, loyalty_conf.ledger_type, INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8OID, INT8OID};

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
write_if_unchanged(LoyaltyBatch *ctx)
{
	Acct	   *ac = &ctx->accts[0];
	DatumBuf	a[A_COLS];
	Datum		args[J_COLS + A_COLS + 1];
	char		nulls[J_COLS + A_COLS + 2];
	int			i;

	if (!ac->changed)
		return ctx->j[JP_CUSTOMER].n == 0 && ctx->h[HP_CUSTOMER].n == 0;
	if (ctx->j[JP_CUSTOMER].n > 1)
		return false;
	memset(a, 0, sizeof(a));
	push_account(a, ac);
	one_row_args(ctx, a, args, nulls);
	args[J_COLS + A_COLS] = PointerGetDatum(&ac->tid);
	nulls[J_COLS + A_COLS] = ' ';
	nulls[J_COLS + A_COLS + 1] = '\0';
	if (SPI_execute_plan(ctx->j[JP_CUSTOMER].n ? plan_cas_one : plan_cas_none, args, nulls, false, 0) < 0)
		elog(ERROR, "journal and account write failed");
	if (SPI_processed == 0)
		return false;
	for (i = 0; i < J_COLS; i++)
		ctx->j[i].n = 0;
	ac->changed = false;
	flush_history(ctx);
	return true;
}

/* ------------------------------------------------------------------------
 * Reading and locking accounts
 * ------------------------------------------------------------------------
 */
static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a,
				y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

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

	if (!crm_first_row_by_index(crm_shard_relid(loyalty_conf.customer_relid), crm_shard_index(loyalty_conf.customer_pkey),
								&key, loyalty_conf.birthday_att, &birthday, &isnull) || isnull)
		return 0;
	if (DATE_NOT_FINITE(DatumGetDateADT(birthday)))
		return 0;
	j2date(DatumGetDateADT(birthday) + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return m;
}

/*
 * An account from its row: cols are the attribute numbers of its columns
 * (AccountField order); birth_col is the attribute holding the birthday
 * month, or 0 to look it up.
 */
static void
parse_account(Acct *ac, HeapTuple tup, TupleDesc desc, const AttrNumber *cols, int birth_col)
{
	bool		isnull;
	Datum	   *sd;
	int			ns,
				k;

	ac->cust = DatumGetInt64(heap_getattr(tup, cols[ACCT_CUSTOMER_ID], desc, &isnull));
	lotbuf_from_ledger(&ac->lots, DatumGetLedgerP(heap_getattr(tup, cols[ACCT_LEDGER], desc, &isnull)));
	ac->debt = DatumGetInt64(heap_getattr(tup, cols[ACCT_DEBT], desc, &isnull));
	ac->tier = loyalty_tier_index(TextDatumGetCString(heap_getattr(tup, cols[ACCT_TIER], desc, &isnull)));
	ac->tier_since = DatumGetTimestampTz(heap_getattr(tup, cols[ACCT_TIER_SINCE], desc, &isnull));
	ac->spend.month = DatumGetInt32(heap_getattr(tup, cols[ACCT_SPEND_MONTH], desc, &isnull));
	deconstruct_array(DatumGetArrayTypeP(heap_getattr(tup, cols[ACCT_SPEND_CENTS], desc, &isnull)),
					  INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &sd, NULL, &ns);
	/* a row written before 0.2.0 has 12 months: the 13th counts 0 */
	for (k = 0; k < SPEND_SLOTS; k++)
		ac->spend.cents[k] = k < ns ? DatumGetInt64(sd[k]) : 0;
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

/* Appends the accounts of a lock query's result to ctx->accts. */
static void
parse_accounts(LoyaltyBatch *ctx, SPITupleTable *tt, uint64 rows)
{
	uint64		i;

	for (i = 0; i < rows; i++)
		parse_account(&ctx->accts[ctx->naccts++], tt->vals[i], tt->tupdesc, lock_cols,
					  tt->tupdesc->natts >= LOCK_BIRTH_MONTH ? LOCK_BIRTH_MONTH : 0);
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
load_accounts(LoyaltyBatch *ctx, int64 *custs, TimestampTz *since, int n, bool ensure)
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
		eargs[1] = CStringGetTextDatum(loyalty_conf.tiers[0].name);
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
find_acct(LoyaltyBatch *ctx, int64 cust)
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

/* ------------------------------------------------------------------------
 * The batch driver
 * ------------------------------------------------------------------------
 * Every query that feeds a trigger has customer_id as its first column.
 */
#define ROW_CUSTOMER_ID 1

typedef void (*RowFn) (LoyaltyBatch *ctx, Acct *ac, HeapTuple tup, TupleDesc desc);

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
run_unlocked(LoyaltyBatch *ctx, HeapTuple *rows, uint64 nrows, TupleDesc desc, int64 cust, RowFn fn)
{
	Datum		key = Int64GetDatum(cust);
	Relation	rel = table_open(crm_shard_relid(loyalty_conf.account_relid), AccessShareLock);
	HeapTuple	tup = crm_row_by_index(rel, crm_shard_index(loyalty_conf.account_pkey), &key);
	uint64		i;
	int			k;

	ctx->accts = palloc0(sizeof(Acct));
	if (tup)
		parse_account(&ctx->accts[0], tup, RelationGetDescr(rel), loyalty_conf.account_cols, 0);
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

/* Keeps the batch's last customer (the next batch may continue it) in the other carry context. */
static void
carry_last(LoyaltyBatch *ctx, HeapTuple last, TupleDesc desc)
{
	bool		isnull;
	Acct	   *ac = find_acct(ctx, getint64(last, desc, ROW_CUSTOMER_ID, &isnull));
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

/*
 * Handles one batch of rows (sorted by customer_id, ROW_CUSTOMER_ID): locks
 * the customers' accounts, calls fn per row and writes the results.  The
 * last customer's account is carried to the next batch, which may continue
 * it.  since_col: column of the time that starts a new account's tier
 * (with ensure).
 */
static void
run_batch(LoyaltyBatch *ctx, HeapTuple *rows, uint64 nrows, TupleDesc desc, bool ensure,
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
		int64		c = getint64(rows[i], desc, ROW_CUSTOMER_ID, &isnull);

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
			Acct	   *ac = find_acct(ctx, getint64(rows[i], desc, ROW_CUSTOMER_ID, &isnull));

			CHECK_FOR_INTERRUPTS();
			if (ac)
				fn(ctx, ac, rows[i], desc);
		}
		flush(ctx, true);
	}
	carry_last(ctx, rows[nrows - 1], desc);
	MemoryContextSwitchTo(old);
	MemoryContextReset(ctx->batch_cxt);
	memset(ctx->j, 0, sizeof(ctx->j));
	memset(ctx->h, 0, sizeof(ctx->h));
	ctx->accts = NULL;
	ctx->naccts = 0;
}

/* Runs plan as a cursor and hands its rows to run_batch, BATCH_ROWS at a time. */
static void
drive(LoyaltyBatch *ctx, SPIPlanPtr plan, Datum *args, bool ensure, int since_col, RowFn fn)
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
ctx_init(LoyaltyBatch *ctx)
{
	memset(ctx, 0, sizeof(LoyaltyBatch));
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
 */
static SPIPlanPtr plan_new_orders;

/* The columns of plan_new_orders' query, and of the rows read_new_orders makes. */
typedef enum NewOrderCol
{
	NEW_CUSTOMER_ID = ROW_CUSTOMER_ID, NEW_ORDER_ID, NEW_ORIGIN, NEW_ORDERED_AT, NEW_NET_CENTS,
	NEW_AMOUNT_CENTS,
	NEW_NCOLS = NEW_AMOUNT_CENTS
} NewOrderCol;

/* A paid order: points (then the refunded share back), qualifying spend, an upgrade. */
static void
order_row(LoyaltyBatch *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, NEW_ORDER_ID, &isnull);
	int64		origin = getint64(tup, desc, NEW_ORIGIN, &isnull);
	TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tup, desc, NEW_ORDERED_AT, &isnull));
	int64		net = getint64(tup, desc, NEW_NET_CENTS, &isnull);
	int64		amount = getint64(tup, desc, NEW_AMOUNT_CENTS, &isnull);
	const RuleConf *rule = loyalty_rule_at(at);
	struct pg_tm tm;
	fsec_t		fsec;

	loyalty_local_tm(at, &tm, &fsec);
	if (rule && net > 0)
	{
		TimestampTz expires = loyalty_expiry_of(at);
		int64		points = loyalty_order_points(ac, rule, &tm, amount, order_id);

		loyalty_earn(ctx, ac, "earn", origin, order_id, points, at, expires, at, NULL);
		if (net < amount)
			loyalty_clawback(ctx, ac, origin, order_id, points, 0, at, expires, net, amount, at, "refund");
	}
	if (net > 0)
	{
		loyalty_spend_add(ac, tm.tm_year * 12 + tm.tm_mon - 1, net);
		/* Crossing a threshold upgrades at once (after this order's points). */
		loyalty_upgrade_on_spend(ctx, ac, order_id, at);
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

/* The tuple descriptor of the rows read_new_orders makes (NewOrderCol). */
static TupleDesc
new_order_desc(void)
{
	if (small_desc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	d = CreateTemplateTupleDesc(NEW_NCOLS);

		TupleDescInitEntry(d, NEW_CUSTOMER_ID, "customer_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, NEW_ORDER_ID, "order_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, NEW_ORIGIN, "origin_customer_id", INT8OID, -1, 0);
		TupleDescInitEntry(d, NEW_ORDERED_AT, "ordered_at", TIMESTAMPTZOID, -1, 0);
		TupleDescInitEntry(d, NEW_NET_CENTS, "net_cents", INT8OID, -1, 0);
		TupleDescInitEntry(d, NEW_AMOUNT_CENTS, "amount_cents", INT8OID, -1, 0);
		MemoryContextSwitchTo(old);
		small_desc = d;
	}
	return small_desc;
}

/* The paid orders of a small insert, as plan_new_orders would return them (SmallReader). */
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
	TupleDesc	desc = new_order_desc();
	int			n = 0,
				i;

	/* A read pointer of our own: the other triggers read the same store. */
	tuplestore_select_read_pointer(ts, tuplestore_alloc_read_pointer(ts, EXEC_FLAG_REWIND));
	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull;
		Datum		v[NEW_NCOLS];
		bool		nulls[NEW_NCOLS] = {false};
		Datum		amount;
		char	   *status = TextDatumGetCString(slot_getattr(slot, a_status, &isnull));

		if (strcmp(status, "paid") != 0)
			continue;
		amount = slot_getattr(slot, a_amount, &isnull);
		v[NEW_CUSTOMER_ID - 1] = slot_getattr(slot, a_cust, &isnull);
		v[NEW_ORDER_ID - 1] = slot_getattr(slot, a_order, &isnull);
		v[NEW_ORIGIN - 1] = slot_getattr(slot, a_origin, &isnull);
		v[NEW_ORDERED_AT - 1] = slot_getattr(slot, a_at, &isnull);
		v[NEW_NET_CENTS - 1] = Int64GetDatum(numeric_cents(DirectFunctionCall2(numeric_sub, amount,
																			   slot_getattr(slot, a_refunded, &isnull))));
		v[NEW_AMOUNT_CENTS - 1] = Int64GetDatum(numeric_cents(amount));
		found[n].cust = DatumGetInt64(v[NEW_CUSTOMER_ID - 1]);
		found[n].order_id = DatumGetInt64(v[NEW_ORDER_ID - 1]);
		found[n].at = DatumGetTimestampTz(v[NEW_ORDERED_AT - 1]);
		found[n].tup = heap_form_tuple(desc, v, nulls);
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
 * The body the order triggers share: load the configuration, expose the
 * transition tables, plan the statement once per backend, then feed each
 * customer's rows to row_fn.
 */
static void
run_order_trigger(FunctionCallInfo fcinfo, const char *name, LoyaltyEvent ev,
				  SPIPlanPtr *plan, const char *sql, SmallReader read_small,
				  bool ensure, int since_col, RowFn row_fn)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	LoyaltyBatch ctx;

	check_statement_trigger(fcinfo, name, ev);
	loyalty_connect_and_load();
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
CRM_SHARD_TRIGGER(crm_loyalty_orders_insert);

static Datum
crm_loyalty_orders_insert_body(PG_FUNCTION_ARGS)
{
	/* columns: NewOrderCol */
	run_order_trigger(fcinfo, "crm.loyalty_orders_insert()", LOY_INSERT, &plan_new_orders,
					  "SELECT n.customer_id, n.order_id, n.origin_customer_id, n.ordered_at, "
					  "((n.amount OPERATOR(pg_catalog.-) n.refunded_amount) OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (n.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8 "
					  "FROM loyalty_new n WHERE n.status OPERATOR(pg_catalog.=) 'paid' "
					  "ORDER BY n.customer_id, n.ordered_at, n.order_id",
					  read_new_orders, true, NEW_ORDERED_AT, order_row);
	return PointerGetDatum(NULL);
}

/* ------------------------------------------------------------------------
 * Refunds (orders whose net amount fell), their reversals (net amount rose
 * again) and deleted orders (all of the net amount gone): the order keeps
 * points in proportion to its net amount, the rest clawed back or given back.
 * ------------------------------------------------------------------------
 */
static SPIPlanPtr plan_refunds;
static SPIPlanPtr plan_deleted;

/* The columns of plan_refunds' and plan_deleted's queries. */
typedef enum RefundCol
{
	REF_CUSTOMER_ID = ROW_CUSTOMER_ID, REF_ORDER_ID, REF_ORIGIN, REF_ORDERED_AT, REF_AMOUNT_CENTS,
	REF_NET_CENTS, REF_OLD_NET_CENTS, REF_EARNED, REF_CLAWED, REF_EXPIRES, REF_REASON
} RefundCol;

/* What the journal holds for the order of alias.order_id so far. */
#define ORDER_POINTS_SO_FAR(alias) \
	"LEFT JOIN LATERAL (SELECT " \
	"  pg_catalog.sum(p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'earn')::pg_catalog.int8 AS earned, " \
	"  pg_catalog.sum(p.debt OPERATOR(pg_catalog.-) p.points) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY ('{clawback,reinstate}'))::pg_catalog.int8 AS clawed, " \
	"  pg_catalog.min(crm.ledger_next_expiry(p.lots)) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'earn') AS expires " \
	"  FROM crm.points_journal p WHERE p.order_id OPERATOR(pg_catalog.=) " alias ".order_id) j ON true "

/* An order whose net amount changed: spend follows, points are clawed or given back. */
static void
refund_row(LoyaltyBatch *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, REF_ORDER_ID, &isnull);
	int64		origin = getint64(tup, desc, REF_ORIGIN, &isnull);
	TimestampTz at = DatumGetTimestampTz(SPI_getbinval(tup, desc, REF_ORDERED_AT, &isnull));
	int64		amount = getint64(tup, desc, REF_AMOUNT_CENTS, &isnull);
	int64		net = getint64(tup, desc, REF_NET_CENTS, &isnull);
	int64		old_net = getint64(tup, desc, REF_OLD_NET_CENTS, &isnull);
	int64		earned = getint64(tup, desc, REF_EARNED, &isnull);
	int64		clawed = getint64(tup, desc, REF_CLAWED, &isnull);
	Datum		e = SPI_getbinval(tup, desc, REF_EXPIRES, &isnull);
	TimestampTz expires = isnull ? DT_NOBEGIN : DatumGetTimestampTz(e);

	loyalty_spend_add(ac, loyalty_month_index(at), net - old_net);
	loyalty_clawback(ctx, ac, origin, order_id, earned, clawed, at, expires, net, amount, ctx->now,
					 SPI_getvalue(tup, desc, REF_REASON));
	if (net > old_net)
		loyalty_upgrade_on_spend(ctx, ac, order_id, ctx->now);
}

PG_FUNCTION_INFO_V1(crm_loyalty_orders_update);

/* crm.loyalty_orders_update(): AFTER UPDATE statement trigger on crm.orders. */
CRM_SHARD_TRIGGER(crm_loyalty_orders_update);

static Datum
crm_loyalty_orders_update_body(PG_FUNCTION_ARGS)
{
	/*
	 * columns: RefundCol, then a sort key.  An order crm.reassign_order
	 * moved (origin_customer_id changed, which nothing else may do) is two
	 * rows: on the old customer, as if its net amount fell to 0 (the points
	 * it still holds clawed back, debt where they were spent, its spend
	 * gone); then on the new customer, as if a full refund were reversed
	 * (those points reinstated as a lot earned at ordered_at with the
	 * order's own expiry, debt repaid first, spend added, an upgrade).  Both
	 * read the journal as it was before the statement, so the second counts
	 * the first's clawback as done (clawed = earned).  The points move as
	 * the order earned them: conserved, not re-earned at the new customer's
	 * tier.  New customers get an account (ensure).
	 */
	run_order_trigger(fcinfo, "crm.loyalty_orders_update()", LOY_UPDATE, &plan_refunds,
					  "SELECT n.customer_id, n.order_id, n.origin_customer_id, n.ordered_at, "
					  "(n.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (n.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, (o.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  "coalesce(j.earned, 0), coalesce(j.clawed, 0), j.expires, "
					  "CASE WHEN n.net_amount OPERATOR(pg_catalog.<) o.net_amount THEN 'refund' ELSE 'refund reversed' END, 0 "
					  "FROM loyalty_new n JOIN loyalty_old o ON o.order_id OPERATOR(pg_catalog.=) n.order_id "
					  ORDER_POINTS_SO_FAR("n")
					  "WHERE n.net_amount OPERATOR(pg_catalog.<>) o.net_amount "
					  "AND n.origin_customer_id OPERATOR(pg_catalog.=) o.origin_customer_id "
					  "UNION ALL "
					  "SELECT r.* FROM loyalty_new n JOIN loyalty_old o ON o.order_id OPERATOR(pg_catalog.=) n.order_id "
					  ORDER_POINTS_SO_FAR("n")
					  "CROSS JOIN LATERAL (VALUES "
					  "(o.customer_id, o.order_id, o.origin_customer_id, o.ordered_at, (o.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  " 0::pg_catalog.int8, (o.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  " coalesce(j.earned, 0), coalesce(j.clawed, 0), j.expires, 'order reassigned', 0), "
					  "(n.customer_id, n.order_id, n.origin_customer_id, n.ordered_at, (n.amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, "
					  " (n.net_amount OPERATOR(pg_catalog.*) 100)::pg_catalog.int8, 0::pg_catalog.int8, "
					  " coalesce(j.earned, 0), coalesce(j.earned, 0), j.expires, 'order reassigned', 1)) r "
					  "WHERE n.origin_customer_id OPERATOR(pg_catalog.<>) o.origin_customer_id "
					  "ORDER BY 1, 2, 12",
					  NULL, true, 0, refund_row);
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(crm_loyalty_orders_delete);

/*
 * crm.loyalty_orders_delete(): AFTER DELETE statement trigger on crm.orders.
 * A deleted paid order takes its points and qualifying spend with it, as a
 * full refund would.
 */
CRM_SHARD_TRIGGER(crm_loyalty_orders_delete);

static Datum
crm_loyalty_orders_delete_body(PG_FUNCTION_ARGS)
{
	/* columns: RefundCol */
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
 * ------------------------------------------------------------------------
 */
static SPIPlanPtr plan_lines;

/* The columns of plan_lines' query: one row per order and bonus category. */
typedef enum LineCol
{
	LINE_CUSTOMER_ID = ROW_CUSTOMER_ID, LINE_ORDER_ID, LINE_ORIGIN, LINE_ORDERED_AT,
	LINE_AMOUNT_CENTS, LINE_NET_CENTS, LINE_CATEGORY, LINE_CENTS, LINE_EARNED, LINE_CLAWED
} LineCol;

/* The order whose lines line_row is adding up. */
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

/* Earns the bonus of the order in lines_cur (less its refunded share). */
static void
lines_finish_order(LoyaltyBatch *ctx, Acct *ac)
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
		expires = loyalty_expiry_of(lines_cur.at);
		loyalty_earn(ctx, ac, "earn", lines_cur.origin, lines_cur.order_id, points, lines_cur.at, expires,
					 lines_cur.at, "category bonus");
		/* A partly refunded order keeps only its share of the bonus. */
		if (lines_cur.net < lines_cur.amount)
			loyalty_clawback(ctx, ac, lines_cur.origin, lines_cur.order_id, lines_cur.earned + points,
							 lines_cur.clawed, lines_cur.at, expires, lines_cur.net, lines_cur.amount,
							 ctx->now, "refund");
	}
	lines_cur.order_id = 0;
}

/* Adds one category's lines to its order's bonus; a new order finishes the previous one. */
static void
line_row(LoyaltyBatch *ctx, Acct *ac, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int64		order_id = getint64(tup, desc, LINE_ORDER_ID, &isnull);
	const RuleConf *rule;
	char	   *cat;

	if (order_id != lines_cur.order_id)
	{
		/* the previous order's customer is in this batch or carried over */
		if (lines_cur.order_id != 0)
			lines_finish_order(ctx, find_acct(ctx, lines_cur.cust));
		lines_cur.order_id = order_id;
		lines_cur.cust = ac->cust;
		lines_cur.origin = getint64(tup, desc, LINE_ORIGIN, &isnull);
		lines_cur.at = DatumGetTimestampTz(SPI_getbinval(tup, desc, LINE_ORDERED_AT, &isnull));
		lines_cur.amount = getint64(tup, desc, LINE_AMOUNT_CENTS, &isnull);
		lines_cur.net = getint64(tup, desc, LINE_NET_CENTS, &isnull);
		lines_cur.earned = getint64(tup, desc, LINE_EARNED, &isnull);
		lines_cur.clawed = getint64(tup, desc, LINE_CLAWED, &isnull);
		lines_cur.bonus = 0;
	}
	rule = loyalty_rule_at(lines_cur.at);
	if (rule == NULL)
		return;
	cat = SPI_getvalue(tup, desc, LINE_CATEGORY);
	lines_cur.bonus += (int128) getint64(tup, desc, LINE_CENTS, &isnull) * loyalty_bonus_of(rule, cat);
	if (lines_cur.bonus >= (int128) PG_INT64_MAX * 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bonus points of order " INT64_FORMAT " out of range", order_id)));
}

/* The statement reading the lines of bonus categories (LineCol), prepared once. */
static void
prepare_lines_plan(void)
{
	Oid			t[1] = {TEXTARRAYOID};

	if (plan_lines != NULL)
		return;
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

/* Whether some earn rule gives a bonus (bonus_e4 > 0) for category cat. */
static bool
bonus_category(const char *cat)
{
	for (int r = 0; r < loyalty_conf.nrules; r++)
		for (int k = 0; k < loyalty_conf.rules[r].nbonus; k++)
			if (loyalty_conf.rules[r].bonus_e4[k] > 0 && strcmp(loyalty_conf.rules[r].bonus_cat[k], cat) == 0)
				return true;
	return false;
}

/*
 * Whether any inserted line (the transition table) has a category some
 * earn rule gives a bonus for.  Most checkouts have none, and then the
 * lines' statement has nothing to find: testing the few lines here costs
 * far less than starting it (issue 14, item 3).
 */
static bool
lines_with_bonus_category(TriggerData *td)
{
	Tuplestorestate *ts = td->tg_newtable;
	int			att = crm_trigger_attnum(td->tg_relation, "category", "crm.loyalty_lines_insert()");
	TupleTableSlot *slot;
	bool		found = false;

	if (ts == NULL)
		return true;			/* the statement reports the missing transition table */
	slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	tuplestore_rescan(ts);
	while (!found && tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull;
		Datum		cat = slot_getattr(slot, att, &isnull);

		found = !isnull && bonus_category(TextDatumGetCString(cat));
	}
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

PG_FUNCTION_INFO_V1(crm_loyalty_lines_insert);

/* crm.loyalty_lines_insert(): AFTER INSERT statement trigger on crm.order_line. */
CRM_SHARD_TRIGGER(crm_loyalty_lines_insert);

static Datum
crm_loyalty_lines_insert_body(PG_FUNCTION_ARGS)
{
	LoyaltyBatch ctx;
	DatumBuf	cats = {0};
	Datum		arg;
	int			r,
				k;

	check_statement_trigger(fcinfo, "crm.loyalty_lines_insert()", LOY_INSERT);
	loyalty_connect_and_load();
	if (!loyalty_conf.any_bonus || !lines_with_bonus_category((TriggerData *) fcinfo->context))
	{
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	SPI_register_trigger_data((TriggerData *) fcinfo->context);
	prepare_common_plans();
	prepare_lines_plan();
	for (r = 0; r < loyalty_conf.nrules; r++)
		for (k = 0; k < loyalty_conf.rules[r].nbonus; k++)
			if (loyalty_conf.rules[r].bonus_e4[k] > 0)
				dbuf_push(&cats, CStringGetTextDatum(loyalty_conf.rules[r].bonus_cat[k]), false);
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

/* ------------------------------------------------------------------------
 * The journal's guard
 * ------------------------------------------------------------------------
 */

/* crm.customer's primary key and merged_into, per trigger (fn_extra). */
typedef struct GuardState
{
	CrmCustomerKeys customer;
	AttrNumber	cust_att;
	AttrNumber	origin_att;
	/* the last move found along merges (a merge moves many rows alike) */
	bool		move_ok_set;
	int64		move_ok_origin;
	int64		move_ok_target;
} GuardState;

static GuardState *
guard_state(FunctionCallInfo fcinfo, Relation rel)
{
	GuardState *g = (GuardState *) fcinfo->flinfo->fn_extra;

	if (g != NULL)
		return g;
	g = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(GuardState));
	g->cust_att = crm_trigger_attnum(rel, "customer_id", "crm.points_journal_guard()");
	g->origin_att = crm_trigger_attnum(rel, "origin_customer_id", "crm.points_journal_guard()");
	crm_customer_keys(&g->customer, "crm.points_journal_guard()");
	fcinfo->flinfo->fn_extra = g;
	return g;
}

/* Whether the update changed no column but customer_id. */
static bool
only_customer_changed(Relation rel, HeapTuple oldtup, HeapTuple newtup, AttrNumber cust_att)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		onull,
					nnull;
		Datum		o,
					n;

		if (att->attisdropped || att->attnum == cust_att)
			continue;
		o = heap_getattr(oldtup, att->attnum, desc, &onull);
		n = heap_getattr(newtup, att->attnum, desc, &nnull);
		if (onull != nnull || (!onull && !datumIsEqual(o, n, att->attbyval, att->attlen)))
			return false;
	}
	return true;
}

/* Whether customer_id moved along the merges of the row's origin (origin.c's rule). */
static bool
moved_along_merges(GuardState *g, Relation rel, HeapTuple newtup)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;
	int64		cust = DatumGetInt64(heap_getattr(newtup, g->cust_att, desc, &isnull));
	int64		origin;

	if (isnull)
		return true;			/* NOT NULL reports it */
	origin = DatumGetInt64(heap_getattr(newtup, g->origin_att, desc, &isnull));
	if (isnull || origin == cust)
		return true;
	if (g->move_ok_set && g->move_ok_origin == origin && g->move_ok_target == cust)
		return true;
	if (crm_merge_walk(&g->customer, origin, cust) != cust)
		return false;
	g->move_ok_set = true;
	g->move_ok_origin = origin;
	g->move_ok_target = cust;
	return true;
}

PG_FUNCTION_INFO_V1(crm_points_journal_guard);

/*
 * crm.points_journal_guard() RETURNS trigger
 *		BEFORE UPDATE OR DELETE row trigger and BEFORE TRUNCATE statement
 *		trigger on crm.points_journal: the journal is append-only.  Merges
 *		and unmerges re-point rows along the merges of the customer records
 *		as they stand: a row may move only to the record its points were
 *		earned or spent on, or to a record that one is merged into, and
 *		nothing else about it changes.  (A rule on the data, not a switch a
 *		session could turn on.)  In C because a merge moves every journal
 *		row of the merged record through it.
 */
CRM_SHARD_TRIGGER(crm_points_journal_guard);

static Datum
crm_points_journal_guard_body(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *op;

	if (CALLED_AS_TRIGGER(fcinfo) && TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
	{
		(void) crm_check_trigger(fcinfo, "crm.points_journal_guard()", CRM_TG_BEFORE, CRM_TG_STATEMENT,
								 CRM_TG_TRUNCATE, 0);
		op = "TRUNCATE";
	}
	else
	{
		(void) crm_check_trigger(fcinfo, "crm.points_journal_guard()", CRM_TG_BEFORE, CRM_TG_ROW,
								 CRM_TG_UPDATE | CRM_TG_DELETE, 0);
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		{
			GuardState *g = guard_state(fcinfo, td->tg_relation);

			if (only_customer_changed(td->tg_relation, td->tg_trigtuple, td->tg_newtuple, g->cust_att) &&
				moved_along_merges(g, td->tg_relation, td->tg_newtuple))
				return PointerGetDatum(td->tg_newtuple);
			op = "UPDATE";
		}
		else
			op = "DELETE";
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("crm.points_journal is append-only: %s is not allowed", op),
			 errhint("Corrections are new entries: use crm.adjust_points.")));
	PG_RETURN_NULL();			/* not reached */
}
