/*
 * identity_policy.c
 *		The identity link policy, in one place: may a shared (kind, value)
 *		link the customer records holding it?
 *
 *		- never when crm.identity_blocklist blocks the value (compared
 *		  lower-case and trimmed) for the kind or for every kind (kind NULL);
 *		- never for a kind crm.identity_kind does not know;
 *		- a strong kind links whoever holds the value, while at most
 *		  max_holders records of crm.identity hold it; a value held by more
 *		  (a shop's phone, a junk number nobody blocklisted) is a hub: it
 *		  links nobody, and stitching puts its holders in the review queue
 *		  instead of merging thousands of shoppers into one;
 *		- a weak kind links only while at most max_customers records of
 *		  crm.identity hold the value;
 *		holders are counted only up to the limit + 1.
 *
 * link_allowed() decides; its inputs come either from one small query about
 * the (kind, value) at hand (policy_facts: online stitching, which calls
 * crm_identity_may_link from crm.identity_stitch_trigger, and
 * crm.identity_may_link(kind, value), which crm.stitch_identity calls), or
 * from the whole blocklist and kind table read once per query
 * (crm.identity_may_link(kind, value, holders), which crm.identity_graph
 * calls once per shared value of batch stitching).  crm.identity_blocked,
 * which the 'pattern' check of crm.fill_origin_customer uses to store
 * blocklisted placeholders, is the blocklist half.
 *
 * Which golden customers may merge once linked (single-valued kinds, pairs
 * kept apart) is crm.merge_goldens' decision (identity.sql).
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "crm_ext.h"
#include "identity.h"

/* What the policy needs to know about a kind and a value. */
typedef struct LinkFacts
{
	bool		known_kind;
	bool		strong;
	int32		max_customers;
	int32		max_holders;
	bool		blocked;
} LinkFacts;

/* A value as the blocklist stores it: lower-case and trimmed. */
static text *
blocklist_form(Datum value)
{
	return DatumGetTextPP(DirectFunctionCall1Coll(lower, DEFAULT_COLLATION_OID,
												  DirectFunctionCall1(btrim1, value)));
}

static bool
text_equal(const text *a, const text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/* Does a blocklist row for the value, with kind row_kind (NULL: every kind), block kind? */
static bool
blocks(const text *row_kind, const text *kind)
{
	return row_kind == NULL || text_equal(row_kind, kind);
}

/* The records of crm.identity holding (kind, value), counted up to limit. */
static int64
count_holders(Datum kind, Datum value, int64 limit, bool read_only)
{
	static SPIPlanPtr plan = NULL;
	enum
	{
		HOLDERS_COL_COUNT = 1
	};
	Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		args[3] = {kind, value, Int64GetDatum(limit)};
	bool		isnull;
	int			ret;

	ret = SPI_execute_plan(crm_prepare_kept(&plan,
											"SELECT pg_catalog.count(*) FROM"
											" (SELECT 1 FROM crm.identity i"
											"   WHERE i.kind OPERATOR(pg_catalog.=) $1"
											"     AND i.value OPERATOR(pg_catalog.=) $2"
											"   LIMIT $3) x",
											3, types, CURSOR_OPT_GENERIC_PLAN),
						   args, NULL, read_only, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "identity holder count failed: %s", SPI_result_code_string(ret));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, HOLDERS_COL_COUNT, &isnull));
}

/*
 * The decision.  holders: the records holding the value, or -1 to count
 * them (up to the kind's limit + 1).
 */
static LinkVerdict
link_verdict(const LinkFacts *f, Datum kind, Datum value, int64 holders, bool read_only)
{
	int32		limit;

	if (f->blocked || !f->known_kind)
		return LINK_NONE;
	limit = f->strong ? f->max_holders : f->max_customers;
	if (holders < 0)
		holders = count_holders(kind, value, (int64) limit + 1, read_only);
	if (holders <= limit)
		return LINK_YES;
	return f->strong ? LINK_HUB : LINK_NONE;
}

/*
 * The facts about one (kind, value), from one query: the kind's row and the
 * kinds of the blocklist rows holding the value.  The caller is connected to
 * SPI.
 */
static void
policy_facts(Datum kind, Datum value, bool read_only, LinkFacts *f)
{
	static SPIPlanPtr plan = NULL;
	enum
	{
		FACTS_COL_STRENGTH = 1,
		FACTS_COL_MAX_CUSTOMERS,
		FACTS_COL_MAX_HOLDERS,
		FACTS_COL_BLOCKED_FOR
	};
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		args[2] = {kind, PointerGetDatum(blocklist_form(value))};
	HeapTuple	tup;
	TupleDesc	td;
	Datum		d;
	bool		isnull;
	int			ret;

	ret = SPI_execute_plan(crm_prepare_kept(&plan,
											"SELECT k.strength, k.max_customers, k.max_holders,"
											" ARRAY(SELECT b.kind FROM crm.identity_blocklist b"
											"        WHERE b.value OPERATOR(pg_catalog.=) $2)"
											" FROM (SELECT) one LEFT JOIN crm.identity_kind k"
											"   ON k.kind OPERATOR(pg_catalog.=) $1",
											2, types, CURSOR_OPT_GENERIC_PLAN),
						   args, NULL, read_only, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "identity policy probe failed: %s", SPI_result_code_string(ret));
	tup = SPI_tuptable->vals[0];
	td = SPI_tuptable->tupdesc;
	memset(f, 0, sizeof(LinkFacts));
	d = SPI_getbinval(tup, td, FACTS_COL_STRENGTH, &isnull);
	if (!isnull)
	{
		f->known_kind = true;
		f->strong = strcmp(TextDatumGetCString(d), "strong") == 0;
		f->max_customers = DatumGetInt32(SPI_getbinval(tup, td, FACTS_COL_MAX_CUSTOMERS, &isnull));
		f->max_holders = DatumGetInt32(SPI_getbinval(tup, td, FACTS_COL_MAX_HOLDERS, &isnull));
	}
	d = SPI_getbinval(tup, td, FACTS_COL_BLOCKED_FOR, &isnull);
	if (!isnull)
	{
		Datum	   *kinds;
		bool	   *nulls;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &kinds, &nulls, &n);
		for (int i = 0; i < n && !f->blocked; i++)
			f->blocked = blocks(nulls[i] ? NULL : DatumGetTextPP(kinds[i]), DatumGetTextPP(kind));
	}
}

/*
 * The verdict on (kind, value) (identity.h).  kind and value are text
 * datums; the caller is connected to SPI; read_only as for
 * SPI_execute_plan (false takes a fresh snapshot).
 */
LinkVerdict
crm_identity_link_verdict(Datum kind, Datum value, int64 holders, bool read_only)
{
	LinkFacts	f;

	policy_facts(kind, value, read_only, &f);
	return link_verdict(&f, kind, value, holders, read_only);
}

/* May the value link the records holding it? */
bool
crm_identity_may_link(Datum kind, Datum value, int64 holders, bool read_only)
{
	return crm_identity_link_verdict(kind, value, holders, read_only) == LINK_YES;
}

/* ---------------------------------------------------------------------
 * The whole policy, read once per query (batch stitching asks per value)
 * --------------------------------------------------------------------- */
typedef struct KindRow
{
	text	   *kind;
	bool		strong;
	int32		max_customers;
	int32		max_holders;
} KindRow;

typedef struct BlockRow
{
	text	   *value;
	text	   *kind;			/* NULL: every kind */
} BlockRow;

typedef struct Policy
{
	int			nkinds;
	KindRow    *kinds;
	int			nblocks;
	BlockRow   *blocks;			/* sorted by value (bytes) */
} Policy;

static int
text_cmp(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

static int
block_row_cmp(const void *a, const void *b)
{
	return text_cmp(((const BlockRow *) a)->value, ((const BlockRow *) b)->value);
}

/* Read crm.identity_kind and crm.identity_blocklist into cxt.  The caller is connected to SPI. */
static Policy *
policy_load(MemoryContext cxt)
{
	enum
	{
		KIND_COL_KIND = 1,
		KIND_COL_STRENGTH,
		KIND_COL_MAX_CUSTOMERS,
		KIND_COL_MAX_HOLDERS
	};
	enum
	{
		BLOCK_COL_VALUE = 1,
		BLOCK_COL_KIND
	};
	Policy	   *p = MemoryContextAllocZero(cxt, sizeof(Policy));
	MemoryContext old;
	bool		isnull;

	if (SPI_execute(crm_config_sql("SELECT k.kind, k.strength, k.max_customers, k.max_holders FROM crm.identity_kind k"), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.identity_kind");
	old = MemoryContextSwitchTo(cxt);
	p->nkinds = SPI_processed;
	p->kinds = palloc0(sizeof(KindRow) * Max(p->nkinds, 1));
	for (int i = 0; i < p->nkinds; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;

		p->kinds[i].kind = DatumGetTextPCopy(SPI_getbinval(tup, td, KIND_COL_KIND, &isnull));
		p->kinds[i].strong = strcmp(TextDatumGetCString(SPI_getbinval(tup, td, KIND_COL_STRENGTH, &isnull)),
									"strong") == 0;
		p->kinds[i].max_customers = DatumGetInt32(SPI_getbinval(tup, td, KIND_COL_MAX_CUSTOMERS, &isnull));
		p->kinds[i].max_holders = DatumGetInt32(SPI_getbinval(tup, td, KIND_COL_MAX_HOLDERS, &isnull));
	}
	MemoryContextSwitchTo(old);

	if (SPI_execute(crm_config_sql("SELECT b.value, b.kind FROM crm.identity_blocklist b"), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.identity_blocklist");
	old = MemoryContextSwitchTo(cxt);
	p->nblocks = SPI_processed;
	p->blocks = palloc0(sizeof(BlockRow) * Max(p->nblocks, 1));
	for (int i = 0; i < p->nblocks; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		Datum		d;

		p->blocks[i].value = DatumGetTextPCopy(SPI_getbinval(tup, td, BLOCK_COL_VALUE, &isnull));
		d = SPI_getbinval(tup, td, BLOCK_COL_KIND, &isnull);
		p->blocks[i].kind = isnull ? NULL : DatumGetTextPCopy(d);
	}
	qsort(p->blocks, p->nblocks, sizeof(BlockRow), block_row_cmp);
	MemoryContextSwitchTo(old);
	return p;
}

/* The facts about (kind, value) from a loaded policy. */
static void
policy_lookup(const Policy *p, text *kind, Datum value, LinkFacts *f)
{
	BlockRow	key;
	int			lo = 0,
				hi = p->nblocks;

	memset(f, 0, sizeof(LinkFacts));
	for (int i = 0; i < p->nkinds; i++)
		if (text_equal(p->kinds[i].kind, kind))
		{
			f->known_kind = true;
			f->strong = p->kinds[i].strong;
			f->max_customers = p->kinds[i].max_customers;
			f->max_holders = p->kinds[i].max_holders;
			break;
		}
	/* the first blocklist row of the value, then every row of it */
	key.value = blocklist_form(value);
	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (block_row_cmp(&p->blocks[mid], &key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < p->nblocks && text_cmp(p->blocks[lo].value, key.value) == 0 && !f->blocked; lo++)
		f->blocked = blocks(p->blocks[lo].kind, kind);
}

/*
 * The verdict for the SQL functions below.  The two-argument forms ask about
 * the value at hand and count its records; the three-argument forms take
 * their number and read the blocklist and the kinds once per query (batch
 * stitching asks per shared value).
 */
static LinkVerdict
sql_verdict(FunctionCallInfo fcinfo)
{
	Datum		kind = PG_GETARG_DATUM(0);
	Datum		value = PG_GETARG_DATUM(1);
	LinkFacts	f;
	LinkVerdict v;

	if (PG_NARGS() > 2)
	{
		int64		holders = PG_GETARG_INT64(2);

		if (holders < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("holders must not be negative")));
		if (fcinfo->flinfo->fn_extra == NULL)
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			fcinfo->flinfo->fn_extra = policy_load(fcinfo->flinfo->fn_mcxt);
			SPI_finish();
		}
		policy_lookup((Policy *) fcinfo->flinfo->fn_extra, DatumGetTextPP(kind), value, &f);
		return link_verdict(&f, kind, value, holders, true);
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_kept_plans_check();
	v = crm_identity_link_verdict(kind, value, -1, true);
	SPI_finish();
	return v;
}

PG_FUNCTION_INFO_V1(crm_identity_may_link_sql);

/*
 * crm.identity_may_link(kind text, value text) RETURNS boolean and
 * crm.identity_may_link(kind text, value text, holders bigint) RETURNS boolean
 *		The link policy: may the value link the records holding it?
 */
Datum
crm_identity_may_link_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(sql_verdict(fcinfo) == LINK_YES);
}

PG_FUNCTION_INFO_V1(crm_identity_is_hub_sql);

/*
 * crm.identity_is_hub(kind text, value text) RETURNS boolean and
 * crm.identity_is_hub(kind text, value text, holders bigint) RETURNS boolean
 *		Is the value a hub: a strong kind's value held by more records than
 *		the kind's max_holders, which stitching sends to review?
 */
Datum
crm_identity_is_hub_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(sql_verdict(fcinfo) == LINK_HUB);
}

PG_FUNCTION_INFO_V1(crm_identity_blocked);

/*
 * crm.identity_blocked(kind text, value text) RETURNS boolean
 *		Does crm.identity_blocklist block the value for the kind?
 */
Datum
crm_identity_blocked(PG_FUNCTION_ARGS)
{
	LinkFacts	f;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	crm_kept_plans_check();
	policy_facts(PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), true, &f);
	SPI_finish();
	PG_RETURN_BOOL(f.blocked);
}
