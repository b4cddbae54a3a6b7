/*
 * stats_trigger.c
 *		The entry points of crm.customer_stats: the statement trigger
 *		crm.customer_stats_trigger() on crm.orders, crm.order_line and
 *		crm.event, crm.rebuild_customer_stats, the tick task
 *		crm.segmentation_tick, and crm.stats_window / crm.stats_categories,
 *		which read the compact columns.  Each trigger turns its transition
 *		table into facts (stats_private.h) and hands them to stats_batch.c.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "utils/tuplestore.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "customer_stats.h"
#include "seg_config.h"
#include "stats_private.h"

static int
cmp_fact(const void *a, const void *b)
{
	const Fact *x = (const Fact *) a;
	const Fact *y = (const Fact *) b;

	if (x->cust != y->cust)
		return x->cust < y->cust ? -1 : 1;
	if (x->order_id != y->order_id)
		return x->order_id < y->order_id ? -1 : 1;
	return 0;
}

/*
 * Small inserts into crm.orders or crm.event (most statements insert one
 * row): read the transition table directly instead of through a query.
 */
#define DIRECT_MAX_ROWS 1000

/* The facts of a small insert into crm.orders or crm.event, read from the transition table and folded in. */
static void
direct_facts(TriggerData *td, bool orders, TimestampTz as_of)
{
	Tuplestorestate *ts = td->tg_newtable;
	Relation	rel = td->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			n = (int) tuplestore_tuple_count(ts);
	Fact	   *facts = palloc(sizeof(Fact) * Max(n, 1));
	int			k = 0;
	int			a_cust = SPI_fnumber(desc, "customer_id");
	int			a_at = SPI_fnumber(desc, orders ? "ordered_at" : "at");
	int			a_status = orders ? SPI_fnumber(desc, "status") : 0;
	int			a_net = orders ? SPI_fnumber(desc, "net_amount") : 0;
	int			a_id = SPI_fnumber(desc, orders ? "order_id" : "event_id");

	if (a_cust <= 0 || a_at <= 0 || a_id <= 0 || (orders && (a_status <= 0 || a_net <= 0)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() is missing columns of \"%s\"",
						RelationGetRelationName(rel))));
	tuplestore_rescan(ts);
	while (k < n && tuplestore_gettupleslot(ts, true, false, slot))
	{
		Fact	   *f = &facts[k];
		bool		isnull;
		Datum		d;

		memset(f, 0, sizeof(Fact));
		f->cust = DatumGetInt64(slot_getattr(slot, a_cust, &isnull));
		f->at = DatumGetTimestampTz(slot_getattr(slot, a_at, &isnull));
		f->order_id = DatumGetInt64(slot_getattr(slot, a_id, &isnull));
		if (orders)
		{
			text	   *status;

			f->kind = FACT_ORDER;
			d = slot_getattr(slot, a_status, &isnull);
			status = DatumGetTextPP(d);
			f->paid = !isnull && VARSIZE_ANY_EXHDR(status) == 4 &&
				memcmp(VARDATA_ANY(status), "paid", 4) == 0;
			d = slot_getattr(slot, a_net, &isnull);
			f->cents = isnull ? 0 : crm_numeric_to_cents(d);
			f->count = 1;
		}
		else
		{
			f->kind = FACT_EVENTS;
			f->paid = true;
			f->count = 1;
		}
		k++;
	}
	ExecDropSingleTupleTableSlot(slot);
	if (k > 1)
		qsort(facts, k, sizeof(Fact), cmp_fact);

	stats_fold_facts(facts, k, as_of);
	pfree(facts);
}

/* Fact queries name the trigger's transition tables: kept by their text. */
static SPIPlanPtr
fact_plan(const char *sql, int nargs, Oid *types)
{
	return crm_prepare_kept_text(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

/* The fact query (FactColumn) rebuilding customers = ANY($1) from their data. */
static const char *rebuild_sql =
"SELECT o.customer_id, 0, o.ordered_at, o.status OPERATOR(pg_catalog.=) 'paid', o.net_amount, o.order_id, NULL::pg_catalog.text, 1::pg_catalog.int8 "
"FROM crm.orders o WHERE o.customer_id OPERATOR(pg_catalog.=) ANY ($1) "
"UNION ALL "
"SELECT o.customer_id, 1, o.ordered_at, true, l.amount, l.order_id, l.category, 1 "
"FROM crm.order_line l JOIN crm.orders o ON o.order_id OPERATOR(pg_catalog.=) l.order_id "
"WHERE o.customer_id OPERATOR(pg_catalog.=) ANY ($1) AND o.status OPERATOR(pg_catalog.=) 'paid' "
"UNION ALL "
"SELECT e.customer_id, 2, pg_catalog.max(e.at), true, NULL, NULL, NULL, pg_catalog.count(*) "
"FROM crm.event e WHERE e.customer_id OPERATOR(pg_catalog.=) ANY ($1) GROUP BY e.customer_id "
"UNION ALL "
"SELECT u.c, 3, NULL, NULL, NULL, NULL, NULL, NULL FROM pg_catalog.unnest($1) AS u(c) "
"ORDER BY 1, 2, 6";

/* Rebuild the stats of customers = ANY (ids) from their data. */
static int64
rebuild_customers(Datum ids, TimestampTz as_of)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1] = {ids};

	return stats_process_facts(fact_plan(rebuild_sql, 1, types), args, true, false, as_of);
}

/* ---------------------------------------------------------------------
 * The triggers
 * --------------------------------------------------------------------- */
typedef enum Source
{
	SRC_ORDERS,
	SRC_LINES,
	SRC_EVENTS
} Source;

/* The fact query (FactColumn) over the rows a statement inserted. */
static char *
inserted_facts_sql(Trigger *tg, Source src)
{
	StringInfoData sql;
	const char *nt = quote_identifier(tg->tgnewtable);

	initStringInfo(&sql);
	if (src == SRC_ORDERS)
		appendStringInfo(&sql,
						 "SELECT n.customer_id, 0, n.ordered_at, n.status OPERATOR(pg_catalog.=) 'paid', n.net_amount, "
						 "n.order_id, NULL::pg_catalog.text, 1::pg_catalog.int8 FROM %s n ORDER BY 1", nt);
	else if (src == SRC_LINES)

		/*
		 * count 0: an earlier statement gave the order a line of the
		 * category, which counted it; that is, the order has more lines of
		 * the category than this statement inserted (the statement's own
		 * lines are visible here; n counts them, a window over the
		 * transition table).  No join or subquery reads the transition
		 * table per line: the former test looked through it for each of
		 * the order's lines, which a load of 29M lines in one statement
		 * (generate_sample at 1M customers) could not finish.  Each line
		 * finds its order by key (LATERAL ... OFFSET 0, which the planner
		 * cannot turn into a join of its choice): with statistics that
		 * say crm.orders is small (analyzed before a load; a new Citus
		 * shard) a join put the orders outside and read the transition
		 * table again for each of them, 75 s for 69,000 lines.
		 */
		appendStringInfo(&sql,
						 "SELECT o.customer_id, 1, o.ordered_at, true, l.amount, l.order_id, l.category, "
						 "CASE WHEN (SELECT pg_catalog.count(*) FROM crm.order_line p WHERE p.order_id OPERATOR(pg_catalog.=) l.order_id "
						 "AND p.category OPERATOR(pg_catalog.=) l.category) OPERATOR(pg_catalog.>) l.n "
						 "THEN 0 ELSE 1 END::pg_catalog.int8 "
						 "FROM (SELECT x.order_id, x.category, x.amount, "
						 "pg_catalog.count(*) OVER (PARTITION BY x.order_id, x.category) AS n FROM %s x) l "
						 "CROSS JOIN LATERAL (SELECT o.customer_id, o.ordered_at FROM crm.orders o "
						 "WHERE o.order_id OPERATOR(pg_catalog.=) l.order_id AND o.status OPERATOR(pg_catalog.=) 'paid' OFFSET 0) o "
						 "ORDER BY 1, 6", nt);
	else
		appendStringInfo(&sql,
						 "SELECT n.customer_id, 2, pg_catalog.max(n.at), true, NULL::pg_catalog.numeric, NULL::pg_catalog.int8, "
						 "NULL::pg_catalog.text, pg_catalog.count(*) FROM %s n GROUP BY 1 ORDER BY 1", nt);
	return sql.data;
}

/*
 * What a row of crm.orders or crm.event contributes to the stats besides its
 * customer: an UPDATE that changes none of these columns is not rebuilt.
 * That is an edit the stats do not count (an order's external_ref, a no-op
 * refund), or a row that a merge, unmerge or stitching moved to another
 * customer (customer_id changes only along merges, origin.c): their hooks
 * rebuild both customers after the points moved, so the stats rows are
 * locked after the accounts, as DEVELOPER.md's lock order has it (a rebuild
 * here, in the middle of the merge, would lock them before).  An order
 * crm.reassign_order moved changes origin_customer_id, which merges never
 * do: both customers are rebuilt here, after the loyalty trigger (which
 * fires first, by name) locked their accounts.
 */
static const char *const fact_columns[][5] = {
	[SRC_ORDERS] = {"ordered_at", "status", "net_amount", "origin_customer_id", NULL},
	[SRC_EVENTS] = {"at", NULL},
};

/* Whether two versions of a row agree on the columns atts[0..natts). */
static bool
same_facts(TupleTableSlot *a, TupleTableSlot *b, TupleDesc desc, const int *atts, int natts)
{
	for (int i = 0; i < natts; i++)
	{
		bool		anull;
		bool		bnull;
		Datum		av = slot_getattr(a, atts[i], &anull);
		Datum		bv = slot_getattr(b, atts[i], &bnull);
		Form_pg_attribute att = TupleDescAttr(desc, atts[i] - 1);

		if (anull != bnull || (!anull && !datumIsEqual(av, bv, att->attbyval, att->attlen)))
			return false;
	}
	return true;
}

/*
 * Append the customer_id of every row of transition table ts to ids[*n]; with
 * other (an UPDATE's new rows, in the same order as its old rows ts), only
 * of the rows whose fact columns changed, from both versions.
 */
static void
collect_customers(Tuplestorestate *ts, Tuplestorestate *other, TupleDesc desc, int att,
				  const int *fact_atts, int nfact, int64 *ids, int *n)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	TupleTableSlot *slot2 = other ? MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple) : NULL;
	bool		isnull;
	Datum		d;

	tuplestore_rescan(ts);
	if (other)
		tuplestore_rescan(other);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		if (other)
		{
			if (!tuplestore_gettupleslot(other, true, false, slot2))
				elog(ERROR, "transition tables of an update differ in length");
			if (same_facts(slot, slot2, desc, fact_atts, nfact))
				continue;
			d = slot_getattr(slot2, att, &isnull);
			if (!isnull)
				ids[(*n)++] = DatumGetInt64(d);
		}
		d = slot_getattr(slot, att, &isnull);
		if (!isnull)
			ids[(*n)++] = DatumGetInt64(d);
	}
	ExecDropSingleTupleTableSlot(slot);
	if (slot2)
		ExecDropSingleTupleTableSlot(slot2);
}

/*
 * The customers the old and new rows of an update or delete of crm.orders
 * or crm.event belong to, read from the transition tables directly (a merge
 * moves a customer's orders in one such statement), leaving out rows an
 * update did not change in what the stats count (fact_columns): a sorted,
 * distinct int8[], or NULL when there are none.
 */
static Datum
changed_customers_direct(TriggerData *td, Source src)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	int			att = SPI_fnumber(desc, "customer_id");
	int			fact_atts[lengthof(fact_columns[0])];
	int			nfact = 0;
	int64		nrows = 0;
	int64	   *ids;
	Datum	   *elems;
	int			n = 0,
				k = 0;

	for (; fact_columns[src][nfact] != NULL; nfact++)
		if ((fact_atts[nfact] = SPI_fnumber(desc, fact_columns[src][nfact])) <= 0)
			att = -1;
	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() is missing columns of \"%s\"",
						RelationGetRelationName(td->tg_relation))));
	if (td->tg_oldtable)
		nrows += tuplestore_tuple_count(td->tg_oldtable);
	if (td->tg_newtable)
		nrows += tuplestore_tuple_count(td->tg_newtable);
	if (nrows == 0)
		return (Datum) 0;
	ids = palloc(sizeof(int64) * nrows);
	if (td->tg_oldtable)
		collect_customers(td->tg_oldtable, td->tg_newtable, desc, att, fact_atts, nfact, ids, &n);
	else if (td->tg_newtable)
		collect_customers(td->tg_newtable, NULL, desc, att, fact_atts, nfact, ids, &n);
	if (n == 0)
		return (Datum) 0;
	crm_sort_int64(ids, n);
	elems = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		if (i == 0 || ids[i] != ids[i - 1])
			elems[k++] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, k, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* The customers the order lines an update or delete changed belong to (NULL: none). */
static Datum
changed_customers_of_lines(Trigger *tg)
{
	enum
	{
		CHANGED_COL_CUSTOMER_IDS = 1
	};
	StringInfoData sql;
	Datum		ids;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT pg_catalog.array_agg(DISTINCT o.customer_id) FROM crm.orders o "
					 "WHERE o.order_id OPERATOR(pg_catalog.=) ANY (SELECT x.order_id FROM %s x",
					 quote_identifier(tg->tgoldtable));
	if (tg->tgnewtable)
		appendStringInfo(&sql, " UNION ALL SELECT y.order_id FROM %s y", quote_identifier(tg->tgnewtable));
	appendStringInfoString(&sql, ")");
	if (SPI_execute(crm_shard_sql(sql.data), false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not collect customers");
	ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, CHANGED_COL_CUSTOMER_IDS, &isnull);
	return isnull ? (Datum) 0 : PointerGetDatum(DatumGetArrayTypePCopy(ids));
}

/* Updates and deletes: rebuild every customer the old or new rows belong to. */
static void
rebuild_changed(TriggerData *td, Source src, TimestampTz as_of)
{
	Datum		ids = src == SRC_LINES ? changed_customers_of_lines(td->tg_trigger) : changed_customers_direct(td, src);

	if (ids != (Datum) 0)
		(void) rebuild_customers(ids, as_of);
}

PG_FUNCTION_INFO_V1(crm_customer_stats_trigger);

/*
 * crm.customer_stats_trigger() RETURNS trigger
 *		AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT on crm.orders,
 *		crm.order_line, crm.event, with transition tables.
 */
CRM_SHARD_TRIGGER(crm_customer_stats_trigger);

static Datum
crm_customer_stats_trigger_body(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *relname;
	Source		src;
	Trigger    *tg;
	TimestampTz as_of;

	(void) crm_check_trigger(fcinfo, "crm.customer_stats_trigger()", CRM_TG_AFTER, CRM_TG_STATEMENT,
							 CRM_TG_INSERT | CRM_TG_UPDATE | CRM_TG_DELETE, -1);
	tg = td->tg_trigger;
	relname = crm_table_name(td->tg_relation);
	if (get_rel_namespace(RelationGetRelid(td->tg_relation)) != get_namespace_oid("crm", false))
		relname = "";
	if (strcmp(relname, "orders") == 0)
		src = SRC_ORDERS;
	else if (strcmp(relname, "order_line") == 0)
		src = SRC_LINES;
	else if (strcmp(relname, "event") == 0)
		src = SRC_EVENTS;
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() works on crm.orders, crm.order_line and crm.event only")));
	if ((TRIGGER_FIRED_BY_INSERT(td->tg_event) && tg->tgnewtable == NULL) ||
		(TRIGGER_FIRED_BY_UPDATE(td->tg_event) && (tg->tgnewtable == NULL || tg->tgoldtable == NULL)) ||
		(TRIGGER_FIRED_BY_DELETE(td->tg_event) && tg->tgoldtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.customer_stats_trigger() needs the transition tables of its event")));

	as_of = crm_seg_now();
	SPI_connect();
	crm_kept_plans_check();
	if (SPI_register_trigger_data(td) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register transition tables");
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event) && src != SRC_LINES &&
		tuplestore_tuple_count(td->tg_newtable) <= DIRECT_MAX_ROWS)
		direct_facts(td, src == SRC_ORDERS, as_of);
	else if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		(void) stats_process_facts(fact_plan(inserted_facts_sql(tg, src), 0, NULL), NULL, false, false, as_of);
	else
		rebuild_changed(td, src, as_of);
	SPI_finish();
	PG_RETURN_POINTER(NULL);
}

/* The ids of every customer record, as an int8[] (NULL when there are none). */
static Datum
all_customer_ids(bool *isnull)
{
	enum
	{
		ALL_COL_CUSTOMER_IDS = 1
	};
	Datum		ids;

	if (SPI_execute(crm_shard_sql("SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id) FROM crm.customer c"),
					false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer");
	ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, ALL_COL_CUSTOMER_IDS, isnull);
	return *isnull ? (Datum) 0 : PointerGetDatum(DatumGetArrayTypePCopy(ids));
}

/* "at" of crm.rebuild_customer_stats and crm.customer_stats_expected: NULL is crm.segmentation_now(). */
static TimestampTz
stats_at_arg(FunctionCallInfo fcinfo, int argno)
{
	TimestampTz at = PG_ARGISNULL(argno) ? crm_seg_now() : PG_GETARG_TIMESTAMPTZ(argno);

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite time")));
	return at;
}

PG_FUNCTION_INFO_V1(crm_customer_stats_expected);

/*
 * crm.customer_stats_expected(customers bigint[] DEFAULT NULL, at timestamptz DEFAULT NULL)
 *		What crm.rebuild_customer_stats(customers, at) would write, computed
 *		by the same code but written nowhere and locking nothing: one row per
 *		golden customer with orders or events (stats columns, stage, rule
 *		tags).  crm.verify compares it with crm.customer_stats.
 */
Datum
crm_customer_stats_expected(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz at = stats_at_arg(fcinfo, 1);
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1];
	bool		isnull = false;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	crm_kept_plans_check();
	args[0] = PG_ARGISNULL(0) ? all_customer_ids(&isnull) : PG_GETARG_DATUM(0);
	if (!isnull)
	{
		/*
		 * A plan of its own, made now for these customers (not the kept
		 * generic plan the triggers share): the whole tables are read, and
		 * crm.verify's settings (no nested loops) apply.
		 */
		SPIPlanPtr	plan = SPI_prepare_cursor(crm_shard_sql(rebuild_sql), 1, types, 0);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for the stats rebuild query: %s", SPI_result_code_string(SPI_result));
		stats_expected_facts(plan, args, at, rsinfo->setResult, rsinfo->setDesc);
		SPI_freeplan(plan);
	}
	SPI_finish();
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_rebuild_customer_stats);

/*
 * The rebuild on a Citus coordinator: each customer's rebuild runs on the
 * worker that holds it (crm.rebuild_customer_stats_on_shard, called once
 * per customer row in a query Citus sends to the shards), where the
 * customer's orders, stats and tags are.  A customer is rebuilt alone, so a
 * call for every customer costs one query per customer on the shards.
 */
static int64
rebuild_on_shards(Datum ids, bool all, TimestampTz at)
{
	Oid			types[2] = {INT8ARRAYOID, TIMESTAMPTZOID};
	Datum		args[2] = {ids, TimestampTzGetDatum(at)};
	char		nulls[2] = {all ? 'n' : ' ', ' '};
	bool		isnull;
	int64		n;

	SPI_connect();
	if (SPI_execute_with_args("SELECT pg_catalog.sum(crm.rebuild_customer_stats_on_shard(c.tableoid::pg_catalog.regclass, "
							  "ARRAY[c.customer_id], $2))::pg_catalog.int8 FROM crm.customer c "
							  "WHERE $1 IS NULL OR c.customer_id OPERATOR(pg_catalog.=) ANY ($1)",
							  2, types, args, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not rebuild customer stats on the shards");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return isnull ? 0 : n;
}

/*
 * crm.rebuild_customer_stats(customers bigint[] DEFAULT NULL, at timestamptz DEFAULT NULL)
 *		Rebuild stats, stage and tags of the given customers (all customer
 *		records when NULL) from their orders, lines and events, as of "at"
 *		(NULL: crm.segmentation_now()).
 */
Datum
crm_rebuild_customer_stats(PG_FUNCTION_ARGS)
{
	TimestampTz at = stats_at_arg(fcinfo, 1);
	int64		n = 0;
	bool		isnull = false;
	Datum		ids;

	if (crm_distributed_outside_shard())
		PG_RETURN_INT64(rebuild_on_shards(PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0), PG_ARGISNULL(0), at));
	SPI_connect();
	crm_kept_plans_check();
	ids = PG_ARGISNULL(0) ? all_customer_ids(&isnull) : PG_GETARG_DATUM(0);
	if (!isnull)
		n = rebuild_customers(ids, at);
	SPI_finish();
	PG_RETURN_INT64(n);
}

PG_FUNCTION_INFO_V1(crm_rebuild_customer_stats_on_shard);

/*
 * crm.rebuild_customer_stats_on_shard(shard regclass, customers bigint[], at timestamptz)
 *		crm.rebuild_customer_stats of customers that all live on the shard
 *		group of shard (a shard of crm.customer), run on the worker that holds it.
 */
CRM_SHARD_TRIGGER(crm_rebuild_customer_stats_on_shard);

static Datum
crm_rebuild_customer_stats_on_shard_body(PG_FUNCTION_ARGS)
{
	int64		n;

	crm_require_shard(PG_GETARG_OID(0), "crm.rebuild_customer_stats()");
	SPI_connect();
	crm_kept_plans_check();
	n = rebuild_customers(PG_GETARG_DATUM(1), PG_GETARG_TIMESTAMPTZ(2));
	SPI_finish();
	PG_RETURN_INT64(n);
}

/* The tick's work: re-evaluate stage and rule tags of every customer with stats. */
int64
customer_stats_tick(TimestampTz at)
{
	int64		n;

	SPI_connect();
	crm_kept_plans_check();
	n = stats_process_facts(fact_plan("SELECT s.customer_id, 3, NULL::pg_catalog.timestamptz, NULL::pg_catalog.bool, "
								"NULL::pg_catalog.numeric, NULL::pg_catalog.int8, NULL::pg_catalog.text, NULL::pg_catalog.int8 "
								"FROM crm.customer_stats s ORDER BY 1", 0, NULL),
					  NULL, false, true, at);
	SPI_finish();
	return n;
}

PG_FUNCTION_INFO_V1(crm_segmentation_tick);

/* crm.segmentation_tick(at): tick task moving stages and time-dependent tags */
Datum
crm_segmentation_tick(PG_FUNCTION_ARGS)
{
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(0);

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite time")));
	if (crm_distributed_outside_shard())
		PG_RETURN_INT64(crm_sum_on_shards("segmentation_tick_on_shard", at));
	PG_RETURN_INT64(customer_stats_tick(at));
}

PG_FUNCTION_INFO_V1(crm_segmentation_tick_on_shard);

/*
 * crm.segmentation_tick_on_shard(shard regclass, at timestamptz): the
 * segmentation tick of the customers of one shard group, on its worker
 * (crm.segmentation_tick on Citus runs it on every shard group).
 */
CRM_SHARD_TRIGGER(crm_segmentation_tick_on_shard);

static Datum
crm_segmentation_tick_on_shard_body(PG_FUNCTION_ARGS)
{
	crm_require_shard(PG_GETARG_OID(0), "crm.segmentation_tick()");
	PG_RETURN_INT64(customer_stats_tick(PG_GETARG_TIMESTAMPTZ(1)));
}

/* ---------------------------------------------------------------------
 * Reading the compact columns from SQL
 * --------------------------------------------------------------------- */
PG_FUNCTION_INFO_V1(crm_stats_categories);

/* crm.stats_categories(categories bytea) RETURNS TABLE(category, orders, spend, weekday_orders) */
Datum
crm_stats_categories(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CustState	st;
	int			i,
				k;

	InitMaterializedSRF(fcinfo, 0);
	memset(&st, 0, sizeof(st));
	stats_cats_from_bytea(&st, PG_GETARG_BYTEA_PP(0), false);
	for (i = 0; i < st.ncats; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		Datum		wd[7];

		for (k = 0; k < 7; k++)
			wd[k] = Int32GetDatum(st.cats[i].weekday[k]);
		values[0] = CStringGetTextDatum(st.cats[i].name);
		values[1] = Int32GetDatum(st.cats[i].orders);
		values[2] = crm_cents_to_numeric(st.cats[i].cents);
		values[3] = PointerGetDatum(construct_array(wd, 7, INT4OID, 4, true, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_stats_window);

/*
 * crm.stats_window(days bytea, as_of timestamptz, width integer, OUT orders, OUT spend)
 *		Orders and spend of the width local days up to as_of's day, from the
 *		day buckets; NULLs when the buckets no longer reach back that far.
 */
Datum
crm_stats_window(PG_FUNCTION_ARGS)
{
	CustState	st;
	TimestampTz as_of = PG_GETARG_TIMESTAMPTZ(1);
	int32		width = PG_GETARG_INT32(2);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int64		o,
				c;

	if (width < 1 || width > DAY_HORIZON)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("window width must be between 1 and %d days", DAY_HORIZON)));
	if (TIMESTAMP_NOT_FINITE(as_of))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of must be a finite time")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&st, 0, sizeof(st));
	stats_days_from_bytea(&st, PG_GETARG_BYTEA_PP(0), false);
	if (stats_window_sum(&st, crm_local_day(as_of, NULL), width, &o, &c))
	{
		values[0] = Int64GetDatum(o);
		values[1] = crm_cents_to_numeric(c);
	}
	else
		nulls[0] = nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

PG_FUNCTION_INFO_V1(crm_segmentation_now);

/* crm.segmentation_now(): setting crm.as_of if set, else the transaction start */
Datum
crm_segmentation_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(crm_seg_now());
}
