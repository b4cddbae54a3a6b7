/*
 * id_merge.c
 *		crm.id_merge, a union-find (disjoint-set) state over bigint ids, and
 *		the parallel aggregate crm.id_merge_agg(a bigint, b bigint).
 *
 * The aggregate's internal state (IdMergeState) holds, per distinct id:
 *	 - the id itself (int64, 8 bytes),
 *	 - its parent index (int32, 4 bytes) and rank (uint8, 1 byte),
 *	 - a slot of an open-addressing hash table id -> index (int32, 4 bytes;
 *	   the table has 2 to 4 slots per id, so 8 to 16 bytes).
 * That is 21 to 29 bytes per distinct id, up to twice that while an array
 * has just doubled: 10 million ids take 210 to 580 MB.  Union by rank and
 * path halving make each union and find practically constant time.
 *
 * The stored value (IdMergeData) is the flattened result, 16 bytes per id:
 * (member, golden) pairs sorted by member, golden being the smallest id of
 * the member's component.  A value holds at most IDMERGE_MAX_PAIRS ids
 * (about 67 million, the 1 GB varlena limit).
 *
 * Text form: the components in order of their golden id, each sorted:
 *	 {{1,2,5},{3,4}}		'{}' is the empty state.
 * Binary form: int64 count, then count (member, golden) pairs as stored.
 */
#include "postgres.h"

#include <limits.h>

#include "common/int.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "crm_ext.h"
#include "id_merge.h"

/* ------------------------------------------------------------------------
 * The union-find state of the aggregate
 * ------------------------------------------------------------------------
 */
#define IDMERGE_EMPTY_SLOT	(-1)
/* Indexes are int32; stay well below that so the hash table can double. */
#define IDMERGE_MAX_IDS		((int64) 1 << 30)

typedef struct IdMergeState
{
	MemoryContext mcxt;
	int64		n;				/* distinct ids so far */
	int64		cap;			/* allocated entries of ids/parent/rank */
	int64		nslots;			/* hash slots, a power of 2 */
	int64	   *ids;
	int32	   *parent;
	uint8	   *rank;
	int32	   *slots;			/* index into ids, or IDMERGE_EMPTY_SLOT */
} IdMergeState;

/* Spreads consecutive ids over the table. */
static inline uint64
idm_hash(int64 id)
{
	return crm_mix64((uint64) id + UINT64CONST(0x9e3779b97f4a7c15));
}

static IdMergeState *
idm_state_create(MemoryContext mcxt, int64 expected)
{
	IdMergeState *st = MemoryContextAllocZero(mcxt, sizeof(IdMergeState));
	int64		cap = 1024;

	while (cap < expected)
		cap *= 2;
	st->mcxt = mcxt;
	st->cap = cap;
	st->nslots = cap * 2;
	st->ids = MemoryContextAllocHuge(mcxt, cap * sizeof(int64));
	st->parent = MemoryContextAllocHuge(mcxt, cap * sizeof(int32));
	st->rank = MemoryContextAllocHuge(mcxt, cap * sizeof(uint8));
	st->slots = MemoryContextAllocHuge(mcxt, st->nslots * sizeof(int32));
	memset(st->slots, 0xff, st->nslots * sizeof(int32));	/* all -1 */
	return st;
}

/* Rebuild the hash table with twice the slots. */
static void
idm_rehash(IdMergeState *st)
{
	int64		nslots = st->nslots * 2;
	uint64		mask = (uint64) nslots - 1;
	int32	   *slots;

	pfree(st->slots);
	slots = MemoryContextAllocHuge(st->mcxt, nslots * sizeof(int32));
	memset(slots, 0xff, nslots * sizeof(int32));
	for (int64 i = 0; i < st->n; i++)
	{
		uint64		h = idm_hash(st->ids[i]) & mask;

		while (slots[h] != IDMERGE_EMPTY_SLOT)
			h = (h + 1) & mask;
		slots[h] = (int32) i;
	}
	st->slots = slots;
	st->nslots = nslots;
}

/* Index of id, adding it as a singleton when new. */
static int32
idm_lookup(IdMergeState *st, int64 id)
{
	uint64		mask = (uint64) st->nslots - 1;
	uint64		h = idm_hash(id) & mask;
	int32		idx;

	while ((idx = st->slots[h]) != IDMERGE_EMPTY_SLOT)
	{
		if (st->ids[idx] == id)
			return idx;
		h = (h + 1) & mask;
	}

	/* New id. */
	if (st->n >= IDMERGE_MAX_IDS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("id_merge state cannot hold more than %lld distinct ids",
						(long long) IDMERGE_MAX_IDS)));
	if (st->n == st->cap)
	{
		int64		cap = st->cap * 2;

		st->ids = repalloc_huge(st->ids, cap * sizeof(int64));
		st->parent = repalloc_huge(st->parent, cap * sizeof(int32));
		st->rank = repalloc_huge(st->rank, cap * sizeof(uint8));
		st->cap = cap;
	}
	idx = (int32) st->n++;
	st->ids[idx] = id;
	st->parent[idx] = idx;
	st->rank[idx] = 0;
	st->slots[h] = idx;
	/* Keep the load factor at or below 1/2. */
	if (st->n * 2 > st->nslots)
		idm_rehash(st);
	return idx;
}

/* Root of x, halving the path on the way. */
static inline int32
idm_find(IdMergeState *st, int32 x)
{
	int32	   *parent = st->parent;

	while (parent[x] != x)
	{
		parent[x] = parent[parent[x]];
		x = parent[x];
	}
	return x;
}

static void
idm_union(IdMergeState *st, int32 a, int32 b)
{
	a = idm_find(st, a);
	b = idm_find(st, b);
	if (a == b)
		return;
	if (st->rank[a] < st->rank[b])
		st->parent[a] = b;
	else if (st->rank[a] > st->rank[b])
		st->parent[b] = a;
	else
	{
		st->parent[b] = a;
		st->rank[a]++;
	}
}

/* ------------------------------------------------------------------------
 * Stored values
 * ------------------------------------------------------------------------
 */
static int
pair_cmp_golden(const void *a, const void *b)
{
	const IdMergePair *x = a;
	const IdMergePair *y = b;

	if (x->golden != y->golden)
		return (x->golden > y->golden) - (x->golden < y->golden);
	return (x->member > y->member) - (x->member < y->member);
}

static IdMergeData *
idm_alloc(int64 count)
{
	IdMergeData *res;
	Size		size;

	if (count < 0 || count > IDMERGE_MAX_PAIRS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("id_merge value cannot hold %lld ids", (long long) count),
				 errdetail("A value holds at most %lld ids.", (long long) IDMERGE_MAX_PAIRS)));
	size = IDMERGE_HDRSZ + (Size) count * sizeof(IdMergePair);
	res = palloc(size);
	SET_VARSIZE(res, size);
	res->version = IDMERGE_VERSION;
	res->count = count;
	return res;
}

PG_FUNCTION_INFO_V1(crm_id_merge_in);

/*
 * crm.id_merge_in(cstring) RETURNS crm.id_merge
 *		'{{1,2,5},{3,4}}': components of ids; each id at most once.
 */
Datum
crm_id_merge_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	int64		n;
	int			errpos;
	IdMergeParseResult r;
	IdMergeData *res = NULL;

	/* First pass: syntax, ranges and the number of ids; then fill. */
	r = crm_id_merge_parse(str, NULL, 0, &n, &errpos);
	if (r == IDMERGE_PARSE_OK)
	{
		res = idm_alloc(n);
		r = crm_id_merge_parse(str, res->pairs, n, &n, &errpos);
	}
	if (r == IDMERGE_PARSE_OK)
		r = crm_id_merge_sort(res->pairs, n);
	switch (r)
	{
		case IDMERGE_PARSE_OK:
			break;
		case IDMERGE_PARSE_SYNTAX:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type id_merge at character %d", errpos + 1),
					 errhint("Write components of ids in braces, for example '{{1,2,5},{3,4}}', or '{}' for none.")));
			break;
		case IDMERGE_PARSE_RANGE:
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("id at character %d of id_merge input is out of range for type bigint", errpos + 1)));
			break;
		case IDMERGE_PARSE_DUPLICATE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input for type id_merge: an id appears more than once"),
					 errdetail("Every id belongs to exactly one component.")));
			break;
		case IDMERGE_PARSE_TOO_MANY:
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("id_merge input has more than %lld ids", (long long) IDMERGE_MAX_PAIRS)));
			break;
		default:
			elog(ERROR, "unexpected id_merge parse result %d", (int) r);
	}
	PG_RETURN_POINTER(res);
}

PG_FUNCTION_INFO_V1(crm_id_merge_out);

/*
 * crm.id_merge_out(crm.id_merge) RETURNS cstring
 *		Components in order of their golden id, each sorted ascending.
 */
Datum
crm_id_merge_out(PG_FUNCTION_ARGS)
{
	IdMergeData *v = PG_GETARG_IDMERGE_P(0);
	IdMergePair *sorted;
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	if (v->count > 0)
	{
		sorted = palloc_extended(v->count * sizeof(IdMergePair), MCXT_ALLOC_HUGE);
		memcpy(sorted, v->pairs, v->count * sizeof(IdMergePair));
		qsort(sorted, v->count, sizeof(IdMergePair), pair_cmp_golden);
		for (int64 i = 0; i < v->count; i++)
		{
			bool		first = (i == 0 || sorted[i].golden != sorted[i - 1].golden);
			bool		last = (i == v->count - 1 || sorted[i].golden != sorted[i + 1].golden);

			if (first)
				appendStringInfoString(&buf, i == 0 ? "{" : ",{");
			else
				appendStringInfoChar(&buf, ',');
			appendStringInfo(&buf, INT64_FORMAT, sorted[i].member);
			if (last)
				appendStringInfoChar(&buf, '}');
		}
		pfree(sorted);
	}
	appendStringInfoChar(&buf, '}');
	PG_RETURN_CSTRING(buf.data);
}

PG_FUNCTION_INFO_V1(crm_id_merge_recv);

/*
 * crm.id_merge_recv(internal) RETURNS crm.id_merge
 *		int64 count, then count (member, golden) pairs; every field checked.
 */
Datum
crm_id_merge_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	const char *data = buf->data + buf->cursor;
	int			len = buf->len - buf->cursor;
	int64		count;
	IdMergeData *res;
	const char *problem;

	switch (crm_id_merge_recv_header(data, len, &count))
	{
		case IDMERGE_PARSE_OK:
			break;
		case IDMERGE_PARSE_SYNTAX:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary id_merge: too short")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary id_merge: count %lld does not match the data", (long long) count)));
			break;
	}
	res = idm_alloc(count);
	problem = crm_id_merge_recv_pairs(data, count, res->pairs);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary id_merge: %s", problem)));
	buf->cursor = buf->len;
	PG_RETURN_POINTER(res);
}

PG_FUNCTION_INFO_V1(crm_id_merge_send);

/*
 * crm.id_merge_send(crm.id_merge) RETURNS bytea
 */
Datum
crm_id_merge_send(PG_FUNCTION_ARGS)
{
	IdMergeData *v = PG_GETARG_IDMERGE_P(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint64(&buf, v->count);
	for (int64 i = 0; i < v->count; i++)
	{
		pq_sendint64(&buf, v->pairs[i].member);
		pq_sendint64(&buf, v->pairs[i].golden);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* ------------------------------------------------------------------------
 * Accessors
 * ------------------------------------------------------------------------
 */
PG_FUNCTION_INFO_V1(crm_id_merge_golden);

/*
 * crm.id_merge_golden(crm.id_merge, bigint) RETURNS bigint
 *		The smallest id of id's component; an id the state does not hold is a
 *		component of its own, so it is its own golden.
 */
Datum
crm_id_merge_golden(PG_FUNCTION_ARGS)
{
	IdMergeData *v = PG_GETARG_IDMERGE_P(0);
	int64		id = PG_GETARG_INT64(1);
	int64		pos = crm_id_merge_search(v->pairs, v->count, id);

	PG_RETURN_INT64(pos < 0 ? id : v->pairs[pos].golden);
}

PG_FUNCTION_INFO_V1(crm_id_merge_size);

/*
 * crm.id_merge_size(crm.id_merge) RETURNS bigint: the number of ids held.
 */
Datum
crm_id_merge_size(PG_FUNCTION_ARGS)
{
	IdMergeData *v = PG_GETARG_IDMERGE_P(0);

	PG_RETURN_INT64(v->count);
}

PG_FUNCTION_INFO_V1(crm_id_merge_groups);

/*
 * crm.id_merge_groups(crm.id_merge) RETURNS TABLE(member bigint, golden bigint)
 *		Every id with its golden, in order of member.
 */
Datum
crm_id_merge_groups(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	IdMergeData *v;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcxt;
		TupleDesc	tupdesc;

		funcctx = SRF_FIRSTCALL_INIT();
		oldcxt = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "crm.id_merge_groups must return a composite type");
		funcctx->tuple_desc = BlessTupleDesc(tupdesc);
		funcctx->user_fctx = PG_GETARG_IDMERGE_P(0);
		MemoryContextSwitchTo(oldcxt);
	}
	funcctx = SRF_PERCALL_SETUP();
	v = (IdMergeData *) funcctx->user_fctx;
	if ((int64) funcctx->call_cntr < v->count)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};
		IdMergePair *p = &v->pairs[funcctx->call_cntr];

		values[0] = Int64GetDatum(p->member);
		values[1] = Int64GetDatum(p->golden);
		SRF_RETURN_NEXT(funcctx,
						HeapTupleGetDatum(heap_form_tuple(funcctx->tuple_desc, values, nulls)));
	}
	SRF_RETURN_DONE(funcctx);
}

/* ------------------------------------------------------------------------
 * The aggregate crm.id_merge_agg(a bigint, b bigint)
 * ------------------------------------------------------------------------
 */
static MemoryContext
idm_aggcontext(FunctionCallInfo fcinfo, const char *fname)
{
	MemoryContext aggcontext;

	if (!AggCheckCallContext(fcinfo, &aggcontext))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s can only be called as part of crm.id_merge_agg", fname)));
	return aggcontext;
}

PG_FUNCTION_INFO_V1(crm_id_merge_agg_trans);

/*
 * crm.id_merge_agg_trans(internal, bigint, bigint) RETURNS internal
 *		Links a and b.  Not STRICT: a NULL end adds the other id as a
 *		component of its own; two NULLs change nothing; (a, a) adds a alone.
 */
Datum
crm_id_merge_agg_trans(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = idm_aggcontext(fcinfo, "crm.id_merge_agg_trans");
	IdMergeState *st = PG_ARGISNULL(0) ? NULL : (IdMergeState *) PG_GETARG_POINTER(0);
	bool		anull = PG_ARGISNULL(1);
	bool		bnull = PG_ARGISNULL(2);

	if (st == NULL)
		st = idm_state_create(aggcontext, 0);
	if (!anull && !bnull)
		idm_union(st, idm_lookup(st, PG_GETARG_INT64(1)), idm_lookup(st, PG_GETARG_INT64(2)));
	else if (!anull)
		(void) idm_lookup(st, PG_GETARG_INT64(1));
	else if (!bnull)
		(void) idm_lookup(st, PG_GETARG_INT64(2));
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(crm_id_merge_agg_final);

/*
 * crm.id_merge_agg_final(internal) RETURNS crm.id_merge
 *		Flattens the state: each id with the smallest id of its component.
 *		No input rows give the empty state '{}'.
 */
Datum
crm_id_merge_agg_final(PG_FUNCTION_ARGS)
{
	IdMergeState *st;
	IdMergeData *res;
	int64	   *mins;

	(void) idm_aggcontext(fcinfo, "crm.id_merge_agg_final");
	st = PG_ARGISNULL(0) ? NULL : (IdMergeState *) PG_GETARG_POINTER(0);
	if (st == NULL || st->n == 0)
		PG_RETURN_POINTER(idm_alloc(0));

	res = idm_alloc(st->n);		/* checks the size limit first */
	mins = palloc_extended(st->n * sizeof(int64), MCXT_ALLOC_HUGE);
	for (int64 i = 0; i < st->n; i++)
		mins[i] = PG_INT64_MAX;
	for (int64 i = 0; i < st->n; i++)
	{
		int32		r = idm_find(st, (int32) i);

		if (st->ids[i] < mins[r])
			mins[r] = st->ids[i];
	}
	for (int64 i = 0; i < st->n; i++)
	{
		res->pairs[i].member = st->ids[i];
		res->pairs[i].golden = mins[idm_find(st, (int32) i)];
	}
	pfree(mins);
	(void) crm_id_merge_sort(res->pairs, st->n);
	PG_RETURN_POINTER(res);
}

PG_FUNCTION_INFO_V1(crm_id_merge_agg_combine);

/*
 * crm.id_merge_agg_combine(internal, internal) RETURNS internal
 *		Unions every id of the second state with its root into the first.
 *		Not STRICT: either state may be NULL (a worker that saw no rows).
 */
Datum
crm_id_merge_agg_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = idm_aggcontext(fcinfo, "crm.id_merge_agg_combine");
	IdMergeState *st1 = PG_ARGISNULL(0) ? NULL : (IdMergeState *) PG_GETARG_POINTER(0);
	IdMergeState *st2 = PG_ARGISNULL(1) ? NULL : (IdMergeState *) PG_GETARG_POINTER(1);

	if (st2 == NULL)
	{
		if (st1 == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(st1);
	}
	if (st1 == NULL)
		st1 = idm_state_create(aggcontext, st2->n);
	for (int64 i = 0; i < st2->n; i++)
	{
		int32		r = idm_find(st2, (int32) i);

		idm_union(st1, idm_lookup(st1, st2->ids[i]), idm_lookup(st1, st2->ids[r]));
	}
	PG_RETURN_POINTER(st1);
}

PG_FUNCTION_INFO_V1(crm_id_merge_agg_serialize);

/*
 * crm.id_merge_agg_serialize(internal) RETURNS bytea
 *		int32 version, int64 n, then n (id, root id) pairs.
 */
Datum
crm_id_merge_agg_serialize(PG_FUNCTION_ARGS)
{
	IdMergeState *st;
	StringInfoData buf;

	(void) idm_aggcontext(fcinfo, "crm.id_merge_agg_serialize");
	st = (IdMergeState *) PG_GETARG_POINTER(0);
	if ((uint64) st->n > (MaxAllocSize - 64) / sizeof(IdMergePair))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("id_merge state of %lld ids is too large to pass between parallel workers",
						(long long) st->n),
				 errhint("Run the aggregate without parallelism (SET max_parallel_workers_per_gather = 0).")));
	pq_begintypsend(&buf);
	enlargeStringInfo(&buf, (int) (12 + st->n * sizeof(IdMergePair)));
	pq_sendint32(&buf, IDMERGE_VERSION);
	pq_sendint64(&buf, st->n);
	for (int64 i = 0; i < st->n; i++)
	{
		pq_sendint64(&buf, st->ids[i]);
		pq_sendint64(&buf, st->ids[idm_find(st, (int32) i)]);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(crm_id_merge_agg_deserialize);

/*
 * crm.id_merge_agg_deserialize(bytea, internal) RETURNS internal
 *		Rebuilds a state; the version and the length are checked first.
 */
Datum
crm_id_merge_agg_deserialize(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = idm_aggcontext(fcinfo, "crm.id_merge_agg_deserialize");
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;
	int32		version;
	int64		n;
	IdMergeState *st;

	buf.data = VARDATA_ANY(data);
	buf.len = VARSIZE_ANY_EXHDR(data);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	if (buf.len < 12)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid id_merge aggregate state: too short")));
	version = pq_getmsgint(&buf, 4);
	n = pq_getmsgint64(&buf);
	if (version != IDMERGE_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid id_merge aggregate state: version %d", version)));
	if (n < 0 || n > IDMERGE_MAX_IDS ||
		(int64) (buf.len - buf.cursor) != n * (int64) sizeof(IdMergePair))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid id_merge aggregate state: %lld ids do not match its length", (long long) n)));
	st = idm_state_create(aggcontext, n);
	for (int64 i = 0; i < n; i++)
	{
		int64		id = pq_getmsgint64(&buf);
		int64		root = pq_getmsgint64(&buf);

		idm_union(st, idm_lookup(st, id), idm_lookup(st, root));
	}
	PG_RETURN_POINTER(st);
}
