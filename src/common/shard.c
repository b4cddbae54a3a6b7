/*
 * shard.c
 *		crm_ext on Citus: a trigger that fires on a shard works on the
 *		co-located shards of the other tables.
 *
 * On a Citus cluster (README, "Scaling out with Citus") the per-customer
 * tables are distributed by customer_id and co-located, and the
 * configuration tables are reference tables.  A row written through
 * crm.orders on the coordinator is written into a shard, crm.orders_102008
 * say, on the worker that holds the customer, and crm's triggers fire there,
 * on the shard.  There, crm.customer and crm.customer_stats are the
 * distributed tables' empty shells: reading them directly finds nothing, and
 * querying them through Citus from inside a shard's trigger is what Citus
 * calls nested distributed execution (refused, and unsafe when allowed).
 * So while a C trigger runs on a shard, the tables crm's C code names are
 * the shards that hold the same customers: crm_relid() and the kept plans'
 * SQL (crm_shard_sql) name crm.customer_stats_102041 instead of
 * crm.customer_stats, and a reference table's shard on this node instead of
 * the reference table.
 *
 * The context is set by crm_on_shard(), which every C trigger's entry point
 * calls, from the trigger's relation, and restored when the trigger
 * returns or fails, so it never outlives the trigger.  Outside a shard (a
 * single node, the coordinator, a table Citus does not know) there is no
 * context and every name means itself.  The catalogs are read once per
 * relation and kept until a relcache invalidation (a shard moved, a table
 * distributed or dropped).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "crm_ext.h"

/* The shard group a trigger runs in: Citus's colocation id and the shards' hash range start. */
typedef struct ShardContext
{
	bool		active;
	int32		colocation;
	int32		shard_min;
} ShardContext;

static ShardContext current = {false, 0, 0};

/* What a relation is to Citus, by relid. */
typedef struct RelShard
{
	Oid			relid;			/* hash key */
	int64		shardid;		/* a shard of a distributed or reference table; else 0 */
	bool		hash_shard;		/* a shard of a hash-distributed table */
	int32		colocation;
	int32		shard_min;
} RelShard;

/* Which relation a crm table (or one of its indexes) means in a shard group. */
typedef struct MappedKey
{
	Oid			logical;
	int32		colocation;
	int32		shard_min;
} MappedKey;
typedef struct Mapped
{
	MappedKey	key;
	Oid			relid;
} Mapped;

static HTAB *rel_shards = NULL;
static HTAB *mapped = NULL;

/* Whether crm.customer is distributed here: -1 not known yet. */
static int	customers_distributed = -1;

static void
flush_shard_caches(Datum arg, Oid relid)
{
	/* A shard moved, a table was distributed: cheap to read again. */
	customers_distributed = -1;
	if (rel_shards != NULL)
	{
		hash_destroy(rel_shards);
		rel_shards = NULL;
	}
	if (mapped != NULL)
	{
		hash_destroy(mapped);
		mapped = NULL;
	}
}

void
crm_shard_init(void)
{
	CacheRegisterRelcacheCallback(flush_shard_caches, (Datum) 0);
}

static HTAB *
shard_hash(const char *name, Size keysize, Size entrysize)
{
	HASHCTL		ctl;

	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = TopMemoryContext;
	return hash_create(name, 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Citus's catalogs exist in this database (Citus is created in it). */
static bool
citus_present(void)
{
	return OidIsValid(get_relname_relid("pg_dist_shard", PG_CATALOG_NAMESPACE));
}

/*
 * The shard id in a relation name Citus gives a shard, <table>_<shardid>,
 * or 0 when the name is not of that form.
 */
static int64
shard_id_in_name(const char *name)
{
	const char *p = strrchr(name, '_');
	int64		id = 0;

	if (p == NULL || p == name || p[1] == '\0')
		return 0;
	for (p++; *p; p++)
	{
		if (*p < '0' || *p > '9' || id > PG_INT64_MAX / 10 - 9)
			return 0;
		id = id * 10 + (*p - '0');
	}
	return id;
}

/*
 * Runs a read of Citus's catalogs in an SPI connection of its own (the
 * caller reads SPI_tuptable, then calls SPI_finish); at most one row.
 */
static void
read_citus_catalog(const char *sql, int nargs, Oid *types, Datum *args)
{
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(sql, nargs, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "reading Citus's catalogs failed: %s", SPI_result_code_string(ret));
}

/* Looks relid up in Citus's catalogs (it is a crm relation named like a shard). */
static void
read_rel_shard(RelShard *rs, int64 shardid)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(shardid)};

	read_citus_catalog("SELECT p.partmethod OPERATOR(pg_catalog.=) 'h', p.colocationid, "
								"CASE WHEN p.partmethod OPERATOR(pg_catalog.=) 'h' THEN s.shardminvalue::pg_catalog.int4 END "
								"FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_partition p "
								"ON p.logicalrelid OPERATOR(pg_catalog.=) s.logicalrelid "
								"WHERE s.shardid OPERATOR(pg_catalog.=) $1",
								1, types, args);
	if (SPI_processed == 1)
	{
		bool		isnull;
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		rs->shardid = shardid;
		rs->hash_shard = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		rs->colocation = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		if (rs->hash_shard)
			rs->shard_min = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	}
	SPI_finish();
}

/* What rel is to Citus (cached). */
static RelShard
rel_shard(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	RelShard   *rs = rel_shards ? hash_search(rel_shards, &relid, HASH_FIND, NULL) : NULL;
	RelShard	read = {relid, 0, false, 0, 0};
	int64		shardid;

	if (rs != NULL)
		return *rs;
	shardid = shard_id_in_name(RelationGetRelationName(rel));
	if (shardid != 0 && citus_present())
		read_rel_shard(&read, shardid);
	/* (reading may have flushed the caches) */
	if (rel_shards == NULL)
		rel_shards = shard_hash("crm_ext shard relations", sizeof(Oid), sizeof(RelShard));
	rs = hash_search(rel_shards, &relid, HASH_ENTER, NULL);
	*rs = read;
	return read;
}

/*
 * The relation whose shard group a call of a crm C function runs in: a
 * trigger's relation, or the first argument of a function whose first
 * argument is a regclass (work the coordinator pushes down to a shard as
 * SELECT f(c.tableoid::regclass, ...) FROM crm.customer c: Citus sends the
 * call to the worker, and tableoid there is the shard's).  NULL: none.
 */
static Relation
shard_of_call(FunctionCallInfo fcinfo)
{
	if (CALLED_AS_TRIGGER(fcinfo))
		return ((TriggerData *) fcinfo->context)->tg_relation;
	if (PG_NARGS() > 0 && !PG_ARGISNULL(0) &&
		get_fn_expr_argtype(fcinfo->flinfo, 0) == REGCLASSOID)
		return RelationIdGetRelation(PG_GETARG_OID(0));
	return NULL;
}

/*
 * Runs the C function body with fcinfo in the shard group of its relation
 * (shard_of_call; none outside a hash-distributed table's shard, and a
 * reference table's shard keeps the caller's), restoring the caller's
 * group after.
 */
Datum
crm_on_shard(FunctionCallInfo fcinfo, PGFunction body)
{
	ShardContext saved = current;
	uint64		saved_id = crm_shard_context_id();
	uint64		entered_id;
	volatile Datum result = (Datum) 0;
	Relation	rel = shard_of_call(fcinfo);

	if (rel != NULL)
	{
		RelShard	rs = rel_shard(rel);

		if (!CALLED_AS_TRIGGER(fcinfo))
			RelationClose(rel);
		if (rs.hash_shard)
		{
			current.active = true;
			current.colocation = rs.colocation;
			current.shard_min = rs.shard_min;
		}
	}
	entered_id = crm_shard_context_id();
	if (entered_id == saved_id)
		return body(fcinfo);	/* the common case: no shard, or the same group */
	crm_kept_plans_switch(saved_id, entered_id);
	PG_TRY();
	{
		result = body(fcinfo);
	}
	PG_FINALLY();
	{
		crm_kept_plans_switch(entered_id, saved_id);
		current = saved;
	}
	PG_END_TRY();
	return result;
}

/* A trigger runs on a shard now. */
bool
crm_shard_active(void)
{
	return current.active;
}

/* An id of the current shard group, for caches (0: none). */
uint64
crm_shard_context_id(void)
{
	if (!current.active)
		return 0;
	return ((uint64) (uint32) current.colocation << 32) | (uint64) (uint32) current.shard_min;
}

/*
 * The shard of logical in the current group, by Citus's catalogs; outside a
 * group (in_group false) only a reference table's copy on this node, when
 * it has one.
 */
static Oid
read_mapped(Oid logical, bool in_group)
{
	Oid			types[3] = {OIDOID, INT4OID, INT4OID};
	Datum		args[3] = {ObjectIdGetDatum(logical), Int32GetDatum(current.colocation),
	Int32GetDatum(current.shard_min)};
	Oid			relid = logical;
	bool		distributed;
	bool		isnull;

	read_citus_catalog("SELECT (SELECT s.shardid FROM pg_catalog.pg_dist_shard s "
								"WHERE s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid "
								"AND (p.partmethod OPERATOR(pg_catalog.=) 'n' "
								"OR (p.colocationid OPERATOR(pg_catalog.=) $2 "
								"AND s.shardminvalue::pg_catalog.int4 OPERATOR(pg_catalog.=) $3))) "
								"FROM pg_catalog.pg_dist_partition p "
								"WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
								3, types, args);
	distributed = SPI_processed == 1;
	if (distributed)
	{
		Datum		shardid = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		char	   *name;

		if (isnull && !in_group)
		{
			SPI_finish();
			return logical;		/* a distributed table, outside a group: itself */
		}
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s is not co-located with the table a crm_ext trigger fired on",
							get_rel_name(logical)),
					 errhint("Distribute crm_ext's tables with crm.distribute(), which co-locates them.")));
		name = psprintf("%s_" INT64_FORMAT, get_rel_name(logical), DatumGetInt64(shardid));
		relid = get_relname_relid(name, get_rel_namespace(logical));
		if (!OidIsValid(relid) && !in_group)
			relid = logical;	/* no copy of the reference table here */
		else if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("shard %s of table %s is not on this node", name, get_rel_name(logical)),
					 errhint("Keep crm_ext's tables co-located: move their shards together.")));
	}
	SPI_finish();
	return relid;
}

/*
 * The relation a crm C function reads or writes for logical: itself, or
 * within a trigger on a shard, the co-located shard of logical.
 */
static bool references_only = false;	/* crm_config_sql at work */

/*
 * What logical (a table or an index) maps to in the current group, from
 * the cache, made by compute(logical, in_group) on first use.
 */
static Oid
mapped_in_group(Oid logical, Oid (*compute) (Oid logical, bool in_group))
{
	MappedKey	key;
	Mapped	   *m;
	bool		found;

	if (mapped == NULL)
		mapped = shard_hash("crm_ext shards by table", sizeof(MappedKey), sizeof(Mapped));
	memset(&key, 0, sizeof(key));
	key.logical = logical;
	key.colocation = current.active ? current.colocation : -1;
	key.shard_min = current.active ? current.shard_min : 0;
	m = hash_search(mapped, &key, HASH_FIND, NULL);
	if (m == NULL)
	{
		Oid			relid = compute(logical, current.active);

		if (mapped == NULL)		/* flushed while computing */
			mapped = shard_hash("crm_ext shards by table", sizeof(MappedKey), sizeof(Mapped));
		m = hash_search(mapped, &key, HASH_ENTER, &found);
		m->relid = relid;
	}
	return m->relid;
}

Oid
crm_shard_relid(Oid logical)
{
	if (!current.active && !(references_only && citus_present()))
		return logical;
	return mapped_in_group(logical, read_mapped);
}

/*
 * sql with every table crm.<name> written as the relation it means in the
 * current shard group (a copy of sql outside a shard).  Names that are not
 * tables (functions, settings in string literals) are left as they are.
 */
char *
crm_shard_sql(const char *sql)
{
	StringInfoData out;
	const char *p = sql;
	Oid			nsp;

	if (!current.active && !references_only)
		return pstrdup(sql);
	nsp = get_namespace_oid("crm", false);
	initStringInfo(&out);
	while (*p)
	{
		const char *hit = strstr(p, "crm.");
		const char *quote = strchr(p, '\'');
		const char *end;
		char	   *name;
		Oid			relid;

		/* text in a string literal ('crm.customer'::regclass) is left alone */
		if (quote != NULL && (hit == NULL || quote < hit))
		{
			end = quote + 1;
			while (*end && !(end[0] == '\'' && end[1] != '\''))
				end += (end[0] == '\'' && end[1] == '\'') ? 2 : 1;
			if (*end)
				end++;
			appendBinaryStringInfo(&out, p, end - p);
			p = end;
			continue;
		}
		if (hit == NULL)
			break;
		/* a whole word "crm": not "xcrm." */
		if (hit > sql && (isalnum((unsigned char) hit[-1]) || hit[-1] == '_' || hit[-1] == '.'))
		{
			appendBinaryStringInfo(&out, p, hit + 4 - p);
			p = hit + 4;
			continue;
		}
		end = hit + 4;
		while (*end && (isalnum((unsigned char) *end) || *end == '_'))
			end++;
		name = pnstrdup(hit + 4, end - (hit + 4));
		relid = get_relname_relid(name, nsp);
		appendBinaryStringInfo(&out, p, hit - p);
		if (OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_RELATION)
		{
			Oid			target = crm_shard_relid(relid);

			appendStringInfo(&out, "crm.%s", quote_identifier(get_rel_name(target)));
		}
		else
			appendBinaryStringInfo(&out, hit, end - hit);
		pfree(name);
		p = end;
	}
	appendStringInfoString(&out, p);
	return out.data;
}

/*
 * The name of the crm table rel is, or is a Citus shard of (error messages,
 * constraint names and code that acts by table name use this).
 */
const char *
crm_table_name(Relation rel)
{
	const char *name = RelationGetRelationName(rel);
	RelShard	rs = rel_shard(rel);

	if (rs.shardid == 0)
		return name;
	return pnstrdup(name, strrchr(name, '_') - name);
}

/*
 * The index named name in the definition of rel's table: on a Citus shard,
 * the shard's copy of it (Citus names it <name>_<shardid>).  InvalidOid when
 * there is none.
 */
Oid
crm_table_index(Relation rel, const char *name)
{
	RelShard	rs = rel_shard(rel);

	if (rs.shardid != 0)
		name = psprintf("%s_" INT64_FORMAT, name, rs.shardid);
	return get_relname_relid(name, RelationGetNamespace(rel));
}

/* rel is a shard of a Citus reference table (the copy of it on this node). */
bool
crm_is_reference_shard(Relation rel)
{
	RelShard	rs = rel_shard(rel);

	return rs.shardid != 0 && !rs.hash_shard;
}

/*
 * crm.customer is a distributed table here and no trigger runs on a shard:
 * the coordinator, or a function Citus delegated to a worker.  There the
 * tables' rows are in shards, reached through Citus with SQL, not by reading
 * the tables directly.
 */
bool
crm_distributed_outside_shard(void)
{
	if (current.active)
		return false;
	if (customers_distributed < 0)
	{
		bool		distributed = false;

		if (citus_present())
		{
			Oid			nsp = get_namespace_oid("crm", true);
			Oid			customer = OidIsValid(nsp) ? get_relname_relid("customer", nsp) : InvalidOid;
			Oid			types[1] = {OIDOID};
			Datum		args[1] = {ObjectIdGetDatum(customer)};

			read_citus_catalog("SELECT 1 FROM pg_catalog.pg_dist_partition p "
							   "WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
							   1, types, args);
			distributed = SPI_processed == 1;
			SPI_finish();
		}
		customers_distributed = distributed ? 1 : 0;
	}
	return customers_distributed == 1;
}

/* crm_shard_index's lookup by name, made once per group and index (mapped_in_group). */
static Oid
shard_index_of(Oid logical_index, bool in_group)
{
	Oid			table = IndexGetRelation(logical_index, false);
	Oid			shard = crm_shard_relid(table);
	const char *tname;
	const char *sname;

	if (shard == table)
		return logical_index;
	tname = get_rel_name(table);
	sname = get_rel_name(shard);
	return get_relname_relid(psprintf("%s%s", get_rel_name(logical_index), sname + strlen(tname)),
							 get_rel_namespace(shard));
}

/*
 * The index a crm C function uses for logical_index (an index of a crm
 * table): itself, or within a trigger on a shard, the same index of the
 * co-located shard (Citus names it <index>_<shardid>).
 */
Oid
crm_shard_index(Oid logical_index)
{
	if (!current.active)
		return logical_index;
	return mapped_in_group(logical_index, shard_index_of);
}

/*
 * crm_shard_sql for the statements that read the configuration into the
 * per-backend caches: on Citus the reference tables' copies on this node
 * are read directly, also outside a trigger (a C function in a query that
 * Citus runs on a shard may not start a distributed query).  Reads only:
 * a write must reach every copy, through Citus.
 */
char *
crm_config_sql(const char *sql)
{
	char	   *volatile out = NULL;

	references_only = true;
	PG_TRY();
	{
		out = crm_shard_sql(sql);
	}
	PG_FINALLY();
	{
		references_only = false;
	}
	PG_END_TRY();
	return out;
}

/*
 * Refuses work that spans customers on a distributed crm_ext (0A000): merges,
 * stitching, re-assigning an order, the refreshes and checks over all
 * customers have not been made to run on Citus yet (README, "Scaling out
 * with Citus"), and would otherwise fail inside Citus or, worse, see only
 * the coordinator's empty tables.  what names the function.
 */
void
crm_refuse_on_citus(const char *what)
{
	if (crm_distributed_outside_shard())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s does not run on a distributed crm_ext yet", what),
				 errdetail("crm_ext is distributed with Citus (crm.distribute()), and %s works across customers.", what),
				 errhint("See README, \"Scaling out with Citus\", for what runs on a cluster.")));
}

/*
 * Runs crm.fn(shard regclass, at timestamptz) once on every shard group that
 * holds customers, from the coordinator, in this distributed transaction,
 * and returns the sum of what the calls return.  Citus runs a query on the
 * shards, not a function: the first query finds one customer per shard of
 * crm.customer (its smallest id), the second calls fn in the row of each of
 * those customers, which Citus sends to the worker that holds it, where
 * tableoid is the shard's (crm_on_shard enters its group).
 */
int64
crm_sum_on_shards(const char *fn, TimestampTz at)
{
	Oid			types[2] = {INT8ARRAYOID, TIMESTAMPTZOID};
	Datum		args[2];
	bool		isnull;
	int64		n = 0;

	SPI_connect();
	/* (by name: a table's oid is only unique on its own node) */
	if (SPI_execute("SELECT pg_catalog.array_agg(r.m) FROM "
					"(SELECT pg_catalog.min(c.customer_id) AS m FROM crm.customer c "
					"GROUP BY c.tableoid::pg_catalog.regclass::pg_catalog.text) r",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crm.customer's shards");
	args[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	args[1] = TimestampTzGetDatum(at);
	if (!isnull)
	{
		if (SPI_execute_with_args(psprintf("SELECT pg_catalog.sum(crm.%s(c.tableoid::pg_catalog.regclass, $2))::pg_catalog.int8 "
										   "FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) ANY ($1)", fn),
								  2, types, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not run %s on the shards", fn);
		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	return isnull ? 0 : n;
}

/*
 * The error of a function meant for a shard (fn(shard regclass, ...)) called
 * with a relation that is not a shard of a distributed crm table.
 */
void
crm_require_shard(Oid shard, const char *caller)
{
	if (!crm_shard_active())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is not a shard of a distributed crm table",
						DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(shard)))),
				 errhint("%s calls this on the workers of a distributed crm_ext; call that instead.", caller)));
}

PG_FUNCTION_INFO_V1(crm_on_citus);

/*
 * crm.on_citus(): crm_ext is distributed with Citus and this is not work on
 * a shard, so per-customer tables are reached through Citus (PL/pgSQL takes
 * the cluster's way of moving rows, crm.move_customer_rows, when true).
 */
Datum
crm_on_citus(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(crm_distributed_outside_shard());
}

PG_FUNCTION_INFO_V1(crm_refuse_on_citus_sql);

/* crm.refuse_on_citus(what text): crm_refuse_on_citus for PL/pgSQL. */
Datum
crm_refuse_on_citus_sql(PG_FUNCTION_ARGS)
{
	crm_refuse_on_citus(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
