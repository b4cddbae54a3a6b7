/*
 * segment.c
 *		Tags and audiences: compiling tag rules when a tag is stored,
 *		checking and explaining rules, and counting or listing the members of
 *		a tag expression (crm.segment) with set algebra over sorted id lists.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "crm_ext.h"
#include "customer_stats.h"
#include "seg_config.h"
#include "tag_rule.h"

static void
report_rule_error(const char *what, const TagRuleError *err)
{
	ereport(ERROR,
			(errcode(err->sqlstate),
			 errmsg("%s at position %d: %s", what, err->position, err->message)));
}

/* Tag name -> tag id, through SPI (caller is connected). */
static int
lookup_tag_spi(const char *name, void *arg)
{
	enum
	{
		TAG_COL_TAG_ID = 1
	};
	Oid			types[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(name)};
	bool		isnull;

	if (SPI_execute_with_args(crm_config_sql("SELECT t.tag_id FROM crm.tag t WHERE t.name OPERATOR(pg_catalog.=) $1"),
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.tag");
	if (SPI_processed == 0)
		return -1;
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, TAG_COL_TAG_ID, &isnull));
}

PG_FUNCTION_INFO_V1(crm_tag_compile_trigger);

/*
 * crm.tag_compile() RETURNS trigger
 *		BEFORE INSERT OR UPDATE row trigger on crm.tag: compiles the rule of
 *		a rule tag into "compiled" and sets "time_dependent"; a bad rule is an
 *		ERROR naming its position.
 */
Datum
crm_tag_compile_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	TupleDesc	desc;
	int			a_kind,
				a_rule,
				a_comp,
				a_td;
	bool		isnull;
	char	   *kind;
	Datum		rule;
	int			cols[2];
	Datum		vals[2];
	bool		nulls[2] = {false, false};

	(void) crm_check_trigger(fcinfo, "crm.tag_compile()", CRM_TG_BEFORE, CRM_TG_ROW, CRM_TG_INSERT | CRM_TG_UPDATE, -1);
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = RelationGetDescr(td->tg_relation);
	a_kind = SPI_fnumber(desc, "kind");
	a_rule = SPI_fnumber(desc, "rule");
	a_comp = SPI_fnumber(desc, "compiled");
	a_td = SPI_fnumber(desc, "time_dependent");
	if (a_kind <= 0 || a_rule <= 0 || a_comp <= 0 || a_td <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.tag_compile() works on crm.tag only")));
	kind = SPI_getvalue(tup, desc, a_kind);
	rule = SPI_getbinval(tup, desc, a_rule, &isnull);
	cols[0] = a_comp;
	cols[1] = a_td;
	if (kind != NULL && strcmp(kind, "rule") == 0 && !isnull)
	{
		TagRuleError err;
		bytea	   *compiled = tag_rule_compile(TextDatumGetCString(rule), TAG_RULE_FEATURES,
												NULL, NULL, &err);

		if (compiled == NULL)
			report_rule_error("invalid tag rule", &err);
		vals[0] = PointerGetDatum(compiled);
		vals[1] = BoolGetDatum(tag_rule_time_dependent(compiled));
	}
	else
	{
		/* manual tags (and rule tags without a rule, refused by a CHECK) */
		nulls[0] = true;
		vals[1] = BoolGetDatum(false);
	}
	return PointerGetDatum(heap_modify_tuple_by_cols(tup, desc, 2, cols, vals, nulls));
}

PG_FUNCTION_INFO_V1(crm_tag_rule_explain);

/* crm.tag_rule_explain(rule text): the compiled postfix program, or the error */
Datum
crm_tag_rule_explain(PG_FUNCTION_ARGS)
{
	char	   *rule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TagRuleError err;
	bytea	   *compiled = tag_rule_compile(rule, TAG_RULE_FEATURES, NULL, NULL, &err);

	if (compiled == NULL)
		report_rule_error("invalid tag rule", &err);
	PG_RETURN_TEXT_P(cstring_to_text(tag_rule_explain(compiled)));
}

/* ---------------------------------------------------------------------
 * Audiences: set algebra over sorted customer id lists
 * --------------------------------------------------------------------- */
typedef struct IdSet
{
	int64	   *ids;
	int64		n;
	bool		neg;			/* the complement (within golden customers) */
	int32		tag_id;			/* > 0: the members of this tag, not fetched yet */
} IdSet;

/*
 * A tag's members are fetched whole, unless the other side of an "and" is
 * a set of at most PROBE_MAX customers: then only those are looked up in
 * the tag (an index probe each), which bounds the work by the smaller side
 * when a narrow tag meets a wide one.
 */
#define PROBE_MAX 10000

/*
 * Customer ids of tag_id (only those in candidates, when given), sorted.
 * One array from the executor: far faster than SPI handing out one tuple
 * per member.
 */
static IdSet
fetch_tag_ids(int32 tag_id, const IdSet *candidates)
{
	enum
	{
		MEMBERS_COL_CUSTOMER_IDS = 1
	};
	Oid			types[2] = {INT4OID, INT8ARRAYOID};
	Datum		args[2];
	IdSet		s = {NULL, 0, false, 0};
	bool		isnull;
	Datum		d;

	args[0] = Int32GetDatum(tag_id);
	if (candidates)
	{
		Datum	   *elems = palloc(sizeof(Datum) * Max(candidates->n, 1));
		int64		i;

		for (i = 0; i < candidates->n; i++)
			elems[i] = Int64GetDatum(candidates->ids[i]);
		args[1] = PointerGetDatum(construct_array(elems, (int) candidates->n, INT8OID,
												  sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	}
	if (SPI_execute_with_args(crm_shard_sql(candidates ?
							  "SELECT pg_catalog.array_agg(ct.customer_id) FROM crm.customer_tag ct "
							  "WHERE ct.tag_id OPERATOR(pg_catalog.=) $1 AND ct.customer_id OPERATOR(pg_catalog.=) ANY ($2)" :
							  "SELECT pg_catalog.array_agg(ct.customer_id) FROM crm.customer_tag ct "
							  "WHERE ct.tag_id OPERATOR(pg_catalog.=) $1"),
							  candidates ? 2 : 1, types, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read crm.customer_tag");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, MEMBERS_COL_CUSTOMER_IDS, &isnull);
	if (isnull)
		s.ids = palloc(sizeof(int64));
	else
	{
		ArrayType  *a = DatumGetArrayTypeP(d);

		if (ARR_NDIM(a) != 1 || ARR_HASNULL(a) || ARR_ELEMTYPE(a) != INT8OID)
			elog(ERROR, "unexpected tag member array");
		s.n = ARR_DIMS(a)[0];
		s.ids = palloc(sizeof(int64) * Max(s.n, 1));
		memcpy(s.ids, ARR_DATA_PTR(a), sizeof(int64) * s.n);
		crm_sort_int64(s.ids, s.n);
	}
	SPI_freetuptable(SPI_tuptable);
	return s;
}

/* Fetches a tag's members if they are not yet (keeping the complement flag). */
static void
materialize(IdSet *s)
{
	bool		neg = s->neg;

	if (s->tag_id <= 0)
		return;
	*s = fetch_tag_ids(s->tag_id, NULL);
	s->neg = neg;
}

/* a op b on plain sorted sets: 0 = intersect, 1 = union, 2 = a minus b */
static IdSet
combine(const IdSet *a, const IdSet *b, int op)
{
	IdSet		r = {palloc(sizeof(int64) * Max(a->n + b->n, 1)), 0, false, 0};
	int64		i = 0,
				j = 0;

	while (i < a->n || j < b->n)
	{
		if (j >= b->n || (i < a->n && a->ids[i] < b->ids[j]))
		{
			if (op != 0)
				r.ids[r.n++] = a->ids[i];
			i++;
		}
		else if (i >= a->n || b->ids[j] < a->ids[i])
		{
			if (op == 1)
				r.ids[r.n++] = b->ids[j];
			j++;
		}
		else
		{
			if (op != 2)
				r.ids[r.n++] = a->ids[i];
			i++;
			j++;
		}
	}
	return r;
}

static IdSet set_and_fetched(const IdSet *a, const IdSet *b);

/*
 * a and b, where either may be a tag not fetched yet: a small positive set
 * against an unfetched tag probes the tag for its members only.
 */
static IdSet
set_and(IdSet *a, IdSet *b)
{
	IdSet	   *small,
			   *lazy;

	if (a->tag_id > 0 && b->tag_id > 0)
	{
		/* fetch a positive side first: it may be small enough to probe with */
		if (a->neg && !b->neg)
			materialize(b);
		else
			materialize(a);
	}
	small = a->tag_id > 0 ? b : a;
	lazy = a->tag_id > 0 ? a : (b->tag_id > 0 ? b : NULL);
	if (lazy && !small->neg && small->n <= PROBE_MAX)
	{
		IdSet		hits = fetch_tag_ids(lazy->tag_id, small);

		if (!lazy->neg)
			return hits;
		return combine(small, &hits, 2);
	}
	materialize(a);
	materialize(b);
	return set_and_fetched(a, b);
}

static IdSet
set_and_fetched(const IdSet *a, const IdSet *b)
{
	IdSet		r;

	if (!a->neg && !b->neg)
		return combine(a, b, 0);
	if (!a->neg && b->neg)
		return combine(a, b, 2);
	if (a->neg && !b->neg)
		return combine(b, a, 2);
	r = combine(a, b, 1);
	r.neg = true;
	return r;
}

static IdSet
set_or(IdSet *a, IdSet *b)
{
	IdSet		r;

	materialize(a);
	materialize(b);

	if (!a->neg && !b->neg)
		return combine(a, b, 1);
	if (!a->neg && b->neg)
		r = combine(b, a, 2);
	else if (a->neg && !b->neg)
		r = combine(a, b, 2);
	else
		r = combine(a, b, 0);
	r.neg = true;
	return r;
}

/* Evaluate a segment expression (caller is connected to SPI). */
static IdSet
eval_audience(const char *expr)
{
	TagRuleError err;
	bytea	   *compiled;
	TagProgram *prog;
	TagSetOp   *ops;
	int32	   *args;
	int			n,
				i,
				sp = 0;
	IdSet	   *st;

	compiled = tag_rule_compile(expr, TAG_RULE_TAGS, lookup_tag_spi, NULL, &err);
	if (compiled == NULL)
		report_rule_error("invalid segment expression", &err);
	prog = tag_program_load(compiled);
	n = tag_program_set_ops(prog, &ops, &args);
	st = palloc(sizeof(IdSet) * n);
	for (i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		switch (ops[i])
		{
			case TSO_TAG:
				st[sp].ids = NULL;
				st[sp].n = 0;
				st[sp].neg = false;
				st[sp].tag_id = args[i];
				sp++;
				break;
			case TSO_NOT:
				st[sp - 1].neg = !st[sp - 1].neg;
				break;
			case TSO_AND:
				st[sp - 2] = set_and(&st[sp - 2], &st[sp - 1]);
				sp--;
				break;
			case TSO_OR:
				st[sp - 2] = set_or(&st[sp - 2], &st[sp - 1]);
				sp--;
				break;
		}
	}
	materialize(&st[0]);
	return st[0];
}

static char *
segment_expression(text *name)
{
	enum
	{
		SEGMENT_COL_EXPRESSION = 1
	};
	Oid			types[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(name)};
	bool		isnull;

	if (SPI_execute_with_args(crm_config_sql("SELECT s.expression FROM crm.segment s WHERE s.name OPERATOR(pg_catalog.=) $1"),
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.segment");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("segment \"%s\" does not exist", text_to_cstring(name))));
	return TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, SEGMENT_COL_EXPRESSION, &isnull));
}

static int64
audience_count(const char *expr)
{
	enum
	{
		GOLDEN_COL_COUNT = 1
	};
	IdSet		s = eval_audience(expr);
	bool		isnull;

	if (!s.neg)
		return s.n;
	if (SPI_execute(crm_shard_sql("SELECT pg_catalog.count(*) FROM crm.customer c WHERE c.merged_into IS NULL"),
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count customers");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, GOLDEN_COL_COUNT, &isnull)) - s.n;
}

/* The rows of an audience expression's members, as a set-returning function's result. */
static void
audience_members(FunctionCallInfo fcinfo, const char *expr)
{
	enum
	{
		GOLDEN_COL_CUSTOMER_ID = 1
	};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	IdSet		s;
	int64		i;
	bool		nulls[1] = {false};
	Datum		values[1];

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	s = eval_audience(expr);
	if (!s.neg)
	{
		for (i = 0; i < s.n; i++)
		{
			values[0] = Int64GetDatum(s.ids[i]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		return;
	}
	else
	{
		Portal		p = SPI_cursor_open_with_args(NULL,
												  crm_shard_sql("SELECT c.customer_id FROM crm.customer c WHERE c.merged_into IS NULL ORDER BY 1"),
												  0, NULL, NULL, NULL, true, 0);
		int64		j = 0;

		for (;;)
		{
			uint64		k;
			bool		isnull;

			SPI_cursor_fetch(p, true, 10000);
			if (SPI_processed == 0)
				break;
			for (k = 0; k < SPI_processed; k++)
			{
				int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, GOLDEN_COL_CUSTOMER_ID, &isnull));

				while (j < s.n && s.ids[j] < id)
					j++;
				if (j < s.n && s.ids[j] == id)
					continue;
				values[0] = Int64GetDatum(id);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
			SPI_freetuptable(SPI_tuptable);
		}
		SPI_cursor_close(p);
	}
}

PG_FUNCTION_INFO_V1(crm_audience_count);
/* crm.audience_count(expression text): golden customers matching a tag expression */
Datum
crm_audience_count(PG_FUNCTION_ARGS)
{
	int64		n;

	SPI_connect();
	n = audience_count(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	SPI_finish();
	PG_RETURN_INT64(n);
}

PG_FUNCTION_INFO_V1(crm_audience_members);
/* crm.audience_members(expression text): their ids */
Datum
crm_audience_members(PG_FUNCTION_ARGS)
{
	char	   *expr = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	audience_members(fcinfo, expr);
	SPI_finish();
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_segment_count);
/* crm.segment_count(name text) */
Datum
crm_segment_count(PG_FUNCTION_ARGS)
{
	int64		n;

	SPI_connect();
	n = audience_count(segment_expression(PG_GETARG_TEXT_PP(0)));
	SPI_finish();
	PG_RETURN_INT64(n);
}

PG_FUNCTION_INFO_V1(crm_segment_members);
/* crm.segment_members(name text) */
Datum
crm_segment_members(PG_FUNCTION_ARGS)
{
	SPI_connect();
	audience_members(fcinfo, segment_expression(PG_GETARG_TEXT_PP(0)));
	SPI_finish();
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_segment_check_trigger);

/*
 * crm.segment_check() RETURNS trigger
 *		BEFORE INSERT OR UPDATE row trigger on crm.segment: the expression
 *		must parse and name existing tags.
 */
Datum
crm_segment_check_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	int			a_expr;
	char	   *expr;
	TagRuleError err;
	bytea	   *compiled;

	(void) crm_check_trigger(fcinfo, "crm.segment_check()", CRM_TG_BEFORE, CRM_TG_ROW, CRM_TG_INSERT | CRM_TG_UPDATE, -1);
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	a_expr = SPI_fnumber(RelationGetDescr(td->tg_relation), "expression");
	if (a_expr <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.segment_check() works on crm.segment only")));
	expr = SPI_getvalue(tup, RelationGetDescr(td->tg_relation), a_expr);
	if (expr != NULL)
	{
		SPI_connect();
		compiled = tag_rule_compile(expr, TAG_RULE_TAGS, lookup_tag_spi, NULL, &err);
		SPI_finish();
		if (compiled == NULL)
			report_rule_error("invalid segment expression", &err);
	}
	return PointerGetDatum(tup);
}
