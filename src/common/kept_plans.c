/*
 * kept_plans.c
 *		SPI plans kept across statements, and freed when crm_ext is
 *		reinstalled.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "optimizer/plancat.h"
#include "optimizer/planner.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "crm_ext.h"

/* ------------------------------------------------------------------------
 * Kept plans
 *
 * A plan kept across statements holds the OIDs of crm's types in its
 * parameter list.  DROP EXTENSION and CREATE EXTENSION (in this backend or
 * another) give the types new OIDs, and re-planning a kept plan would then
 * fail with "cache lookup failed for type".  So every kept plan is made by
 * crm_prepare_kept(), which remembers where it is stored, and
 * crm_kept_plans_check() frees them all (their slots become NULL) once
 * crm_ext is another installation than they were made for.  The extension
 * is looked up again only after types changed somewhere (pg_type has a
 * syscache callback, pg_extension none), which is rare.
 * ------------------------------------------------------------------------
 */
/* ------------------------------------------------------------------------
 * Kept plans are key lookups, whatever the statistics say
 *
 * Every kept statement reads the rows of a batch's customers, orders or
 * accounts through their keys ("customer_id = ANY ($1)", joins on keys).
 * The planner chooses by statistics, and those are wrong exactly when it
 * matters: in a bulk load, the tables the triggers write grow in the same
 * transaction, where no ANALYZE can run, and a plan made while a table was
 * empty, or analyzed as empty (pg_class says 0 rows in N pages, so every
 * size the table grows to still means 0 rows), is a sequential scan that
 * then reads the whole table for every batch (issue 14, item 4: 79 calls of
 * the stats trigger's lock query, 29.7 s).  Re-planning does not help while
 * the statistics say "empty".  So the statements are planned with
 * sequential scans ruled out (enable_seqscan off, as for the planning of
 * this one statement): index and bitmap scans on the keys always, table
 * sizes only choosing among them.  A planner hook does it, because
 * PostgreSQL re-plans a kept statement on its own whenever an ANALYZE,
 * TRUNCATE or DDL invalidates it, in whatever settings are current then;
 * the hook recognises crm's statements by the comment crm_prepare_kept()
 * puts in front of their text.
 *
 * Ruling out sequential scans is not enough: among indexes the planner
 * chooses by sizes too, and a table analyzed as empty has 0 rows however
 * large it grows, so every index scan costs the same.  The stats trigger's
 * lock query then read a customer's tags by a full scan of customer_tag's
 * primary key (tag_id, customer_id), once per customer: 184,000 index pages
 * for 2,000 customers, 2.5 times the time of a load into never-analyzed
 * tables (issue 14).  So while a keyed statement is planned, every table
 * counts as at least KEYED_MIN_TUPLES rows in KEYED_MIN_PAGES pages (the
 * size PostgreSQL itself assumes for a table never analyzed), and so do its
 * indexes: a scan by an index's leading column is then clearly cheaper than
 * reading a whole index.
 * ------------------------------------------------------------------------
 */
#define KEYED_MARK "/* crm_ext: keyed */ "

#define KEYED_MIN_TUPLES 1000.0
#define KEYED_MIN_PAGES 10

static void free_shard_plans(void);
static planner_hook_type prev_planner_hook = NULL;
static get_relation_info_hook_type prev_relation_info_hook = NULL;
static bool planning_keyed = false;

/* While a keyed statement is planned: no table or index smaller than the floor. */
static void
keyed_relation_info(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel)
{
	ListCell   *lc;

	if (prev_relation_info_hook)
		prev_relation_info_hook(root, relid, inhparent, rel);
	if (!planning_keyed || rel->tuples >= KEYED_MIN_TUPLES)
		return;
	rel->tuples = KEYED_MIN_TUPLES;
	rel->pages = Max(rel->pages, KEYED_MIN_PAGES);
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = lfirst_node(IndexOptInfo, lc);

		index->tuples = Max(index->tuples, KEYED_MIN_TUPLES);
		index->pages = Max(index->pages, KEYED_MIN_PAGES);
	}
}

/* Plans a statement with planning_keyed as keyed (restored after, also on an error). */
static PlannedStmt *
plan_as(bool keyed, Query *parse, const char *query_string, int cursor_options, ParamListInfo params)
{
	bool		was = planning_keyed;
	PlannedStmt *result;

	planning_keyed = keyed;
	PG_TRY();
	{
		result = prev_planner_hook ? prev_planner_hook(parse, query_string, cursor_options, params) :
			standard_planner(parse, query_string, cursor_options, params);
	}
	PG_FINALLY();
	{
		planning_keyed = was;
	}
	PG_END_TRY();
	return result;
}

static PlannedStmt *
keyed_planner(Query *parse, const char *query_string, int cursor_options, ParamListInfo params)
{
	int			nest;
	PlannedStmt *result;

	if (query_string == NULL || strncmp(query_string, KEYED_MARK, sizeof(KEYED_MARK) - 1) != 0)
	{
		/* a statement planned while a keyed one is (a function evaluated at plan time) is not keyed */
		if (planning_keyed)
			return plan_as(false, parse, query_string, cursor_options, params);
		/* every other statement of the backend: as if crm_ext were not there */
		return prev_planner_hook ? prev_planner_hook(parse, query_string, cursor_options, params) :
			standard_planner(parse, query_string, cursor_options, params);
	}
	nest = NewGUCNestLevel();
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	result = plan_as(true, parse, query_string, cursor_options, params);
	/* on an error, the (sub)transaction's abort restores the setting */
	AtEOXact_GUC(true, nest);
	return result;
}

#define MAX_KEPT_PLANS 64
static SPIPlanPtr *kept_slots[MAX_KEPT_PLANS];
static int	n_kept_slots = 0;
static Oid	kept_for_extension = InvalidOid;
static uint64 type_generation = 1;
static uint64 checked_generation = 0;

static void
types_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	type_generation++;
}

void
crm_kept_plans_init(void)
{
	CacheRegisterSyscacheCallback(TYPEOID, types_changed, (Datum) 0);
	prev_planner_hook = planner_hook;
	planner_hook = keyed_planner;
	prev_relation_info_hook = get_relation_info_hook;
	get_relation_info_hook = keyed_relation_info;
}

/* Frees every kept plan when crm_ext is not the installation they were made for. */
void
crm_kept_plans_check(void)
{
	Oid			extension;
	int			i;

	if (checked_generation == type_generation)
		return;
	checked_generation = type_generation;
	extension = get_extension_oid("crm_ext", true);
	if (extension == kept_for_extension)
		return;
	for (i = 0; i < n_kept_slots; i++)
		if (*kept_slots[i] != NULL)
		{
			SPI_freeplan(*kept_slots[i]);
			*kept_slots[i] = NULL;
		}
	free_shard_plans();
	kept_for_extension = extension;
}

/*
 * Kept plans of triggers on Citus shards (shard.c).  A kept statement names
 * the tables of the shard group its trigger runs in, so it is kept once per
 * group: entering a trigger on a shard of another group swaps every slot's
 * plan for that group's (NULL where it has none yet, so the caller prepares
 * it again, with crm_shard_sql's names), and leaving swaps back.  Group 0 is
 * outside any shard.  The callers keep using their static slots unchanged.
 */
typedef struct GroupPlans
{
	uint64		group;			/* hash key */
	SPIPlanPtr	plans[MAX_KEPT_PLANS];
} GroupPlans;
static HTAB *group_plans = NULL;

static GroupPlans *
plans_of_group(uint64 group)
{
	bool		found;
	GroupPlans *g;

	if (group_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(GroupPlans);
		ctl.hcxt = TopMemoryContext;
		group_plans = hash_create("crm_ext kept plans by shard group", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	g = hash_search(group_plans, &group, HASH_ENTER, &found);
	if (!found)
		memset(g->plans, 0, sizeof(g->plans));
	return g;
}

/* The slots hold the plans of shard group to instead of from's. */
void
crm_kept_plans_switch(uint64 from, uint64 to)
{
	GroupPlans *f;
	GroupPlans *t;

	if (from == to)
		return;
	f = plans_of_group(from);
	t = plans_of_group(to);
	for (int i = 0; i < n_kept_slots; i++)
	{
		f->plans[i] = *kept_slots[i];
		*kept_slots[i] = t->plans[i];
	}
}

/* Frees the plans of the groups the slots do not hold now (crm_ext was reinstalled). */
static void
free_shard_plans(void)
{
	HASH_SEQ_STATUS seq;
	GroupPlans *g;
	uint64		now = crm_shard_context_id();

	if (group_plans == NULL)
		return;
	hash_seq_init(&seq, group_plans);
	while ((g = hash_seq_search(&seq)) != NULL)
		if (g->group != now)
			for (int i = 0; i < n_kept_slots; i++)
				if (g->plans[i] != NULL)
					SPI_freeplan(g->plans[i]);
	hash_destroy(group_plans);
	group_plans = NULL;
}

/*
 * The plan in *slot, prepared and kept on first use.  cursor_options choose
 * generic or custom planning (CURSOR_OPT_GENERIC_PLAN: re-planning for every
 * call would cost more than the work).  The caller is connected to SPI.
 * Callers that test their slots for NULL themselves call
 * crm_kept_plans_check() at their entry.
 */
SPIPlanPtr
crm_prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	SPIPlanPtr	plan;
	int			i;

	crm_kept_plans_check();
	if (*slot != NULL)
		return *slot;
	plan = SPI_prepare_cursor(psprintf("%s%s", KEYED_MARK, crm_shard_sql(sql)), nargs, argtypes, cursor_options);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	for (i = 0; i < n_kept_slots && kept_slots[i] != slot; i++)
		;
	if (i == n_kept_slots)
	{
		if (n_kept_slots == MAX_KEPT_PLANS)
			elog(ERROR, "more than %d kept plans", MAX_KEPT_PLANS);
		kept_slots[n_kept_slots++] = slot;
	}
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	*slot = plan;
	return plan;
}

/*
 * Statements whose text is made at run time (they name a trigger's
 * transition tables or a table from a trigger argument), kept by their
 * text.  When all slots are taken, the plan is made for this use only.
 */
#define N_TEXT_PLANS 32
static struct
{
	char	   *sql;
	SPIPlanPtr	plan;
}			text_plans[N_TEXT_PLANS];

SPIPlanPtr
crm_prepare_kept_text(const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	int			i;
	SPIPlanPtr	p;

	for (i = 0; i < N_TEXT_PLANS && text_plans[i].sql != NULL; i++)
		if (strcmp(text_plans[i].sql, sql) == 0)
			return crm_prepare_kept(&text_plans[i].plan, sql, nargs, argtypes, cursor_options);
	if (i == N_TEXT_PLANS)
	{
		p = SPI_prepare_cursor(psprintf("%s%s", KEYED_MARK, crm_shard_sql(sql)), nargs, argtypes, cursor_options);
		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		return p;
	}
	text_plans[i].sql = MemoryContextStrdup(TopMemoryContext, sql);
	return crm_prepare_kept(&text_plans[i].plan, sql, nargs, argtypes, cursor_options);
}
