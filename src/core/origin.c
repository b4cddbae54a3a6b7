/*
 * origin.c
 *		The row trigger every row of the core data model passes on its way in.
 *
 * crm.fill_origin_customer keeps origin_customer_id, the customer a row
 * arrived on, beside customer_id, the golden customer it belongs to now.
 * Merges rewrite customer_id; origin_customer_id never changes, which is what
 * lets an unmerge put every row back exactly.  With the argument 'to_golden'
 * (orders, events) a row inserted for a record already merged into another
 * goes to the golden customer at once, so its points, stats and tags land
 * where the shopper is; origin_customer_id still names the record.  The
 * golden is locked FOR SHARE first (step 1 of DEVELOPER.md's lock order), so
 * a merge waits for the insert and an insert for a merge in flight, and
 * the row follows a merge that committed meanwhile.
 *
 * With the argument 'stitch' (identity) and crm.stitch_on_insert on, an
 * identifier inserted for a merged record goes to its golden customer too,
 * unless the golden holds the same (kind, value) already: then it stays
 * parked on its record, as a merge would leave it (the invariants at the top
 * of src/identity/identity.sql).  This is online stitching's move, made here
 * so that the AFTER stitch trigger (src/identity/identity.c) has nothing to do
 * for it.  No customer is locked: an identity insert takes its golden's lock
 * only at the end, in the stitch trigger, which also moves the row when a
 * merge of its golden committed meanwhile (DEVELOPER.md, "Lock order").
 * With stitching off the row stays where it was inserted, for
 * crm.stitch_identities().
 *
 * Two more arguments make it the one place rows of the core model are
 * checked on the way in (each costs nothing unless given):
 *	'time=<column>'	(orders.ordered_at, event.at) the column must lie between
 *		CRM_TIME_FLOOR and now() + crm.max_future; the limit is computed once
 *		per statement.  An UPDATE that leaves the column alone is not checked.
 *	'pattern'	(identity) the value must match crm.identity_kind.pattern of
 *		its kind, unless crm.identity_blocklist blocks it (placeholders such as
 *		'unknown' are stored and never link); patterns are read once per kind
 *		and statement.  An UPDATE that changes neither kind nor value is not
 *		checked, so merges never re-validate old rows.
 *
 * On UPDATE, customer_id may move only along the merges of the row's origin
 * record: to origin_customer_id itself or to a record that origin is merged
 * into, directly or through others (the rule crm.points_journal_guard
 * applies to the points journal).  That is every move merges, unmerges and
 * stitching make, since they re-point crm.customer.merged_into first; any
 * other change of customer_id (re-assigning an order by hand) would leave
 * points, tags and origin_customer_id behind, so it is refused (55000) with
 * the supported way in the hint.  Nothing is read unless customer_id
 * changes; then merged_into is walked through crm.customer's primary key.
 *
 * The one exception: crm.reassign_order (below) moves an order recorded for
 * the wrong shopper, origin_customer_id included, so that a later unmerge
 * moves it with the right record.  Only that C function lets an UPDATE change
 * origin_customer_id, and only of the order it names (no SQL can set the
 * switch); the loyalty and stats triggers see the origin change and move
 * the order's points, spend, stats and tags (issue 13, defect 5).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "access/xact.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/inval.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "../identity/identity.h"

/*
 * Rows of orders and events may not be older than this (1900-01-01 00:00
 * UTC): an order in 4713 BC is a typo or a broken feed, not history.
 */
#define CRM_TIME_FLOOR_TEXT	"1900-01-01 00:00:00+00"
#define CRM_TIME_FLOOR	((TimestampTz) (INT64CONST(-36524) * USECS_PER_DAY))

/* crm.max_future, as text (the GUC) and as parsed by its check hook */
static char *crm_max_future_text = NULL;
static Interval crm_max_future = {0, 1, 0};

/* The order crm.reassign_order is moving (when set): its origin may change. */
static bool reassigning_set = false;
static int64 reassigning_order = 0;

/* Longest crm.max_future accepted: 100 years (of 360 days, as intervals compare), so now() + it cannot overflow. */
#define MAX_FUTURE_LIMIT_DAYS	36000.0

/*
 * Parse an interval without raising an error (a GUC check hook must not):
 * the steps of interval_in.  False for anything interval_in would refuse.
 */
static bool
parse_interval_quietly(const char *str, Interval *result)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm_in;
	int			dterr;

	if (str == NULL || strlen(str) >= sizeof(workbuf))
		return false;
	memset(&itm_in, 0, sizeof(itm_in));
	dterr = ParseDateTime(str, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm_in);
	if (dterr == DTERR_BAD_FORMAT)
	{
		char		copy[256];

		strlcpy(copy, str, sizeof(copy));
		memset(&itm_in, 0, sizeof(itm_in));
		dterr = DecodeISO8601Interval(copy, &dtype, &itm_in);
	}
	if (dterr != 0 || dtype != DTK_DELTA)
		return false;
	return itmin2interval(&itm_in, result) == 0;
}

static bool
check_max_future(char **newval, void **extra, GucSource source)
{
	Interval	span;
	double		days;
	Interval   *keep;

	if (!parse_interval_quietly(*newval, &span))
	{
		GUC_check_errdetail("crm.max_future must be an interval such as '1 day' or '6 hours'.");
		return false;
	}
	days = (double) span.month * DAYS_PER_MONTH + span.day + (double) span.time / USECS_PER_DAY;
	if (days < 0 || days > MAX_FUTURE_LIMIT_DAYS)
	{
		GUC_check_errdetail("crm.max_future must lie between 0 and 100 years.");
		return false;
	}
	keep = (Interval *) malloc(sizeof(Interval));
	if (keep == NULL)
		return false;
	*keep = span;
	*extra = keep;
	return true;
}

static void
assign_max_future(const char *newval, void *extra)
{
	crm_max_future = *(Interval *) extra;
}

void
crm_origin_init(void)
{
	DefineCustomStringVariable("crm.max_future",
							   "How far past now() the time of an order or event may lie.",
							   "Rows of crm.orders (ordered_at) and crm.event (at) later than now() plus this are refused; so are rows before 1900-01-01.",
							   &crm_max_future_text,
							   "1 day",
							   PGC_SUSET,
							   0,
							   check_max_future, assign_max_future, NULL);
}

/* Refuse to run unless called as a BEFORE ROW trigger on INSERT or UPDATE. */
static void
check_origin_trigger_call(FunctionCallInfo fcinfo)
{
	TriggerData *trigdata = crm_check_trigger(fcinfo, "crm.fill_origin_customer()", CRM_TG_BEFORE, CRM_TG_ROW,
											  CRM_TG_INSERT | CRM_TG_UPDATE, -1);

	for (int i = 0; i < trigdata->tg_trigger->tgnargs; i++)
	{
		const char *arg = trigdata->tg_trigger->tgargs[i];

		const char *arrow = strstr(arg, "->");

		if (strcmp(arg, "to_golden") != 0 && strcmp(arg, "pattern") != 0 &&
			strcmp(arg, "stitch") != 0 &&
			(strncmp(arg, "time=", 5) != 0 || arg[5] == '\0') &&
			(arrow == NULL || arrow == arg || arrow[2] == '\0'))
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("crm.fill_origin_customer() takes only the arguments 'to_golden', 'stitch', 'time=<column>', 'pattern' and '<column>-><table>'")));
	}
}

static bool column_changed(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc, int att);

static int
required_attnum(Relation rel, const char *name)
{
	return crm_trigger_attnum(rel, name, "crm.fill_origin_customer()");
}

/* A kind's pattern, read once per statement (NULL pattern: anything goes). */
typedef struct KindPattern
{
	char	   *kind;
	text	   *pattern;
} KindPattern;

/* Column positions, looked up once per trigger and query (fn_extra). */
typedef struct OriginColumns
{
	Oid			relid;
	int			cust_att;
	int			origin_att;
	/* time=<column>: its position, and now() + crm.max_future */
	int			time_att;
	const char *time_col;
	bool		time_max_set;
	TimestampTz time_max;
	/* pattern: kind and value columns (also stitch's), the patterns seen so far */
	bool		check_pattern;
	int			kind_att;
	int			value_att;
	Oid			value_collation;
	Oid			kind_relid;
	Oid			kind_pkey;
	AttrNumber	pattern_att;
	Oid			blocked_fn;
	int			npatterns;
	KindPattern patterns[8];
	/* to_golden: lock the row's golden customer and move the row to it */
	bool		to_golden;
	/* to_golden: customer_id / origin_customer_id -> crm.customer, made on first use */
	CrmReference *cust_ref;
	CrmReference *origin_ref;
	MemoryContext mcxt;			/* where this struct and the references live */
	const char *relname;
	/* '<column>-><parent>' arguments: references checked here (references.c) */
	int			nrefs;
	int			ref_att[2];
	CrmReference *refs[2];
	/* stitch: move an identity to its golden unless parked; its unique index */
	bool		stitch;
	Oid			identity_unique;
	/* crm.customer, its primary key and merged_into (customer_found: set) */
	bool		customer_found;
	/* the last move of customer_id found along merges (one statement) */
	bool		move_ok_set;
	int64		move_ok_origin;
	int64		move_ok_target;
	CrmCustomerKeys customer;
} OriginColumns;

/* crm.customer, its primary key and merged_into: looked up once per statement. */
static const CrmCustomerKeys *
customer_keys(OriginColumns *cols)
{
	if (!cols->customer_found)
	{
		crm_customer_keys(&cols->customer, "crm.fill_origin_customer()");
		cols->customer_found = true;
	}
	return &cols->customer;
}

/* The reference *ref (column -> crm.customer), made on first use: most statements need none. */
static CrmReference *
customer_reference(OriginColumns *cols, CrmReference **ref, const char *column)
{
	if (*ref == NULL)
		*ref = crm_reference_new(cols->mcxt, cols->relname, column, "customer");
	return *ref;
}

/*
 * Whether this transaction inserted customer cust, perhaps in this very
 * statement (WITH c AS (INSERT INTO crm.customer ...) INSERT INTO crm.orders
 * ...), where no snapshot crm_resolve_customer takes sees it yet.  Such a
 * customer is nobody else's to merge or delete: it needs no lock.
 */
static bool
customer_inserted_here(OriginColumns *cols, Datum cust)
{
	const CrmCustomerKeys *keys = customer_keys(cols);
	Relation	crel = table_open(keys->relid, AccessShareLock);
	bool		ours = crm_own_row_exists(crel, keys->pkey, cust);

	table_close(crel, AccessShareLock);
	return ours;
}

/*
 * The golden customer of record cust, locked FOR SHARE (src/common/customer.c:
 * a merge in flight is waited for and followed), so the row, its points and
 * stats land on the customer a concurrent merge cannot move away until this
 * transaction ends.  The lock is also the customer_id reference's: FOR SHARE
 * keeps the row from being deleted as FOR KEY SHARE would (references.c).
 * An unknown cust is a foreign-key violation.
 */
static Datum
golden_of(OriginColumns *cols, Relation rel, Datum cust)
{
	int64		golden;

	if (crm_resolve_customer_keyed(customer_keys(cols), DatumGetInt64(cust), true, &golden))
		return Int64GetDatum(golden);
	if (!customer_inserted_here(cols, cust))
		crm_report_missing_parent(rel, "customer_id", "customer", DatumGetInt64(cust));
	return cust;
}

/* The references of the row's '<column>-><parent>' columns that are set (and changed, for UPDATE). */
static void
check_references(OriginColumns *cols, Relation rel, HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	for (int i = 0; i < cols->nrefs; i++)
	{
		bool		isnull;
		Datum		key = heap_getattr(newtup, cols->ref_att[i], desc, &isnull);

		if (!isnull && (oldtup == NULL || column_changed(oldtup, newtup, desc, cols->ref_att[i])))
			crm_reference_require(cols->refs[i], rel, key);
	}
}

/* crm.identity's UNIQUE (kind, value, customer_id) index, which 'stitch' probes. */
static Oid
identity_unique_index(Relation rel)
{
	Oid			indexoid = crm_table_index(rel, "identity_unique_per_customer");

	if (!OidIsValid(indexoid))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer('stitch') needs index \"identity_unique_per_customer\" on table \"%s\"",
						RelationGetRelationName(rel))));
	return indexoid;
}

/*
 * Whether customer golden holds (kind, value) already, as the active snapshot
 * sees crm.identity: one probe of its UNIQUE (kind, value, customer_id) index.
 */
static bool
golden_holds(OriginColumns *cols, Relation rel, Datum kind, Datum value, int64 golden)
{
	Relation	idx = index_open(cols->identity_unique, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan = index_beginscan(rel, idx, GetActiveSnapshot(), 3, 0);
	ScanKeyData keys[3];
	bool		found;

	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ, kind);
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ, value);
	ScanKeyEntryInitialize(&keys[2], 0, 3, BTEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_INT8EQ, Int64GetDatum(golden));
	index_rescan(scan, keys, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	return found;
}

/*
 * 'stitch': where an identity inserted for record cust goes (see the top of
 * this file): its golden customer, unless that holds (kind, value) already
 * or stitching is off.  Nothing is locked.
 */
static Datum
identity_golden_of(OriginColumns *cols, Relation rel, HeapTuple tup, TupleDesc desc, Datum cust)
{
	int64		golden;
	bool		kind_null;
	bool		value_null;
	Datum		kind;
	Datum		value;

	if (!crm_stitch_on_insert ||
		!crm_resolve_customer(DatumGetInt64(cust), false, &golden) ||
		golden == DatumGetInt64(cust))
		return cust;
	kind = heap_getattr(tup, cols->kind_att, desc, &kind_null);
	value = heap_getattr(tup, cols->value_att, desc, &value_null);
	if (kind_null || value_null || golden_holds(cols, rel, kind, value, golden))
		return cust;
	return Int64GetDatum(golden);
}

/*
 * Whether walking merged_into up from record reaches target (crm_merge_walk).
 */
static bool
walk_merges(const CrmCustomerKeys *keys, Datum record, Datum target)
{
	return crm_merge_walk(keys, DatumGetInt64(record), DatumGetInt64(target)) == DatumGetInt64(target);
}

/*
 * Whether target is the record origin itself or a record origin is merged
 * into, directly or through others, as crm.customer stands in the active
 * snapshot (merges and unmerges re-point merged_into before they move rows).
 * The last pair found is remembered: a merge moves many rows of one origin
 * to one target, and the statement's snapshot does not change.
 */
static bool
merged_along(OriginColumns *cols, Datum origin, Datum target)
{
	bool		found;

	if (DatumGetInt64(origin) == DatumGetInt64(target))
		return true;
	if (cols->move_ok_set && cols->move_ok_origin == DatumGetInt64(origin) &&
		cols->move_ok_target == DatumGetInt64(target))
		return true;
	found = walk_merges(customer_keys(cols), origin, target);
	if (found)
	{
		cols->move_ok_set = true;
		cols->move_ok_origin = DatumGetInt64(origin);
		cols->move_ok_target = DatumGetInt64(target);
	}
	return found;
}

PG_FUNCTION_INFO_V1(crm_loyalty_merged_along);

/*
 * crm.loyalty_merged_along(record, target): the same rule for the points
 * journal's guard (PL/pgSQL), so the rule has one owner.
 */
Datum
crm_loyalty_merged_along(PG_FUNCTION_ARGS)
{
	CrmCustomerKeys keys;

	if (PG_GETARG_INT64(0) == PG_GETARG_INT64(1))
		PG_RETURN_BOOL(true);
	crm_customer_keys(&keys, "crm.loyalty_merged_along()");
	PG_RETURN_BOOL(walk_merges(&keys, PG_GETARG_DATUM(0), PG_GETARG_DATUM(1)));
}

/* The supported way to move a row of table relname, as an errhint. */
static int
customer_move_hint(const char *relname)
{
	if (strcmp(relname, "orders") == 0)
		return errhint("To move an order recorded for the wrong customer, call crm.reassign_order(order_id, customer_id, reason): it moves the order's points, spend, stats and tags and records the move; if the two customers are one person, merge them with crm.merge_customers, which moves all their rows, points, stats and tags.");
	if (strcmp(relname, "event") == 0)
		return errhint("Events move only with merges: if the two customers are one person, merge them with crm.merge_customers; an event recorded for the wrong customer is deleted and inserted again for the right one.");
	if (strcmp(relname, "identity") == 0)
		return errhint("Identifiers move only with merges: if the two customers are one person, merge them with crm.merge_customers (stitching merges customers sharing an identifier); an identifier recorded for the wrong customer is deleted and inserted again for the right one.");
	return errhint("Rows move to another customer only with merges (crm.merge_customers, crm.unmerge).");
}

/*
 * An UPDATE that changed customer_id: allowed along the origin's merges,
 * refused otherwise with the supported way for the table in the hint.
 */
static void
check_customer_move(OriginColumns *cols, Relation rel, HeapTuple newtup, TupleDesc desc)
{
	bool		cust_null;
	bool		origin_null;
	Datum		cust = heap_getattr(newtup, cols->cust_att, desc, &cust_null);
	Datum		origin = heap_getattr(newtup, cols->origin_att, desc, &origin_null);

	if (cust_null || origin_null)
		return;					/* NOT NULL reports it */
	if (merged_along(cols, origin, cust))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("customer_id of \"%s\" can change only along merges", RelationGetRelationName(rel)),
			 errdetail("The row arrived on customer %lld (origin_customer_id), which is neither customer %lld nor merged into it; moving the row by hand would leave its points, stats and origin behind.",
					   (long long) DatumGetInt64(origin), (long long) DatumGetInt64(cust)),
			 customer_move_hint(crm_table_name(rel))));
}

/* The columns and catalog objects the 'pattern' check reads. */
static void
find_kind_patterns(OriginColumns *cols, Relation rel)
{
	Relation	krel;

	cols->kind_att = required_attnum(rel, "kind");
	cols->value_att = required_attnum(rel, "value");
	cols->value_collation = TupleDescAttr(RelationGetDescr(rel), cols->value_att - 1)->attcollation;
	cols->kind_relid = crm_relid("identity_kind");
	krel = table_open(cols->kind_relid, AccessShareLock);
	cols->kind_pkey = RelationGetPrimaryKeyIndex(krel);
	cols->pattern_att = required_attnum(krel, "pattern");
	table_close(krel, AccessShareLock);
}

/*
 * The pattern of identity kind "kind" (NULL: none, or no such kind, which
 * the foreign key reports), read through the primary key of
 * crm.identity_kind once per kind and statement.
 */
static text *
kind_pattern(OriginColumns *cols, MemoryContext cxt, text *kind)
{
	char	   *name = text_to_cstring(kind);
	Relation	krel;
	Relation	irel;
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData skey;
	text	   *pattern = NULL;

	for (int i = 0; i < cols->npatterns; i++)
		if (strcmp(cols->patterns[i].kind, name) == 0)
		{
			pfree(name);
			return cols->patterns[i].pattern;
		}

	krel = table_open(cols->kind_relid, AccessShareLock);
	irel = index_open(cols->kind_pkey, AccessShareLock);
	slot = table_slot_create(krel, NULL);
	scan = index_beginscan(krel, irel, GetActiveSnapshot(), 1, 0);
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(kind));
	/* compare as the index does */
	skey.sk_collation = irel->rd_indcollation[0];
	index_rescan(scan, &skey, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d = slot_getattr(slot, cols->pattern_att, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			pattern = DatumGetTextPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(irel, AccessShareLock);
	table_close(krel, AccessShareLock);

	if (cols->npatterns < lengthof(cols->patterns))
	{
		cols->patterns[cols->npatterns].kind = MemoryContextStrdup(cxt, name);
		cols->patterns[cols->npatterns].pattern = pattern;
		cols->npatterns++;
	}
	pfree(name);
	return pattern;
}

/*
 * 'pattern': the row's value must match its kind's pattern, unless the
 * blocklist blocks it.  The error names the kind, never the value.
 */
static void
check_value_pattern(OriginColumns *cols, MemoryContext cxt, HeapTuple tup, TupleDesc desc)
{
	bool		kind_null;
	bool		value_null;
	Datum		kind = heap_getattr(tup, cols->kind_att, desc, &kind_null);
	Datum		value = heap_getattr(tup, cols->value_att, desc, &value_null);
	text	   *pattern;
	char	   *kind_name;

	if (kind_null || value_null)
		return;					/* NOT NULL reports it */
	pattern = kind_pattern(cols, cxt, DatumGetTextPP(kind));
	if (pattern == NULL)
		return;
	if (DatumGetBool(DirectFunctionCall2Coll(textregexeq, cols->value_collation,
											 value, PointerGetDatum(pattern))))
		return;
	/* A blocklisted placeholder ('unknown', 'n/a') is stored; it never links. */
	if (!OidIsValid(cols->blocked_fn))
		cols->blocked_fn = DatumGetObjectId(DirectFunctionCall1(to_regprocedure,
																CStringGetTextDatum("crm.identity_blocked(pg_catalog.text, pg_catalog.text)")));
	if (OidIsValid(cols->blocked_fn) &&
		DatumGetBool(OidFunctionCall2Coll(cols->blocked_fn, cols->value_collation, kind, value)))
		return;
	kind_name = TextDatumGetCString(kind);
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("value of identity kind \"%s\" does not match the kind's pattern", kind_name),
			 errdetail("Values of kind \"%s\" must match the regular expression %s (crm.identity_kind.pattern). The value is not shown: it may be personal data.",
					   kind_name, text_to_cstring(pattern)),
			 errhint("Correct the value or its kind, or change the pattern: UPDATE crm.identity_kind SET pattern = ... WHERE kind = '%s' (NULL accepts any value).",
					 kind_name)));
}

/*
 * 'time=<column>': the column lies in [CRM_TIME_FLOOR, now() +
 * crm.max_future]; the upper limit is computed at the statement's first row.
 * NULL and infinite values are left to NOT NULL and the isfinite CHECKs.
 */
static void
check_time_range(OriginColumns *cols, Relation rel, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	Datum		d = heap_getattr(tup, cols->time_att, desc, &isnull);
	TimestampTz t;

	if (isnull)
		return;
	t = DatumGetTimestampTz(d);
	if (TIMESTAMP_NOT_FINITE(t))
		return;
	if (t < CRM_TIME_FLOOR)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_FIELD_OVERFLOW),
				 errmsg("%s.%s lies before 1900-01-01",
						RelationGetRelationName(rel), cols->time_col),
				 errdetail("crm_ext accepts times from %s on.", CRM_TIME_FLOOR_TEXT),
				 errhint("Correct the time: a date this old is a typing or feed error.")));
	if (!cols->time_max_set)
	{
		cols->time_max = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
																 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
																 IntervalPGetDatum(&crm_max_future)));
		cols->time_max_set = true;
	}
	if (t > cols->time_max)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_FIELD_OVERFLOW),
				 errmsg("%s.%s lies more than crm.max_future (%s) after now()",
						RelationGetRelationName(rel), cols->time_col, crm_max_future_text),
				 errdetail("The latest time accepted in this transaction is %s.",
						   timestamptz_to_str(cols->time_max)),
				 errhint("Correct the time (and its time zone), or have a superuser raise crm.max_future.")));
}

/* Whether column att differs between two versions of a row. */
static bool
column_changed(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc, int att)
{
	bool		oldnull;
	bool		newnull;
	Datum		oldval = heap_getattr(oldtup, att, desc, &oldnull);
	Datum		newval = heap_getattr(newtup, att, desc, &newnull);
	Form_pg_attribute a = TupleDescAttr(desc, att - 1);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !datumIsEqual(oldval, newval, a->attbyval, a->attlen);
}

/* A '<column>-><parent>' argument: column references crm.<parent>'s primary key. */
static void
add_reference(OriginColumns *cols, MemoryContext cxt, Relation rel, const char *arg)
{
	const char *arrow = strstr(arg, "->");
	char	   *column = pnstrdup(arg, arrow - arg);

	if (cols->nrefs == lengthof(cols->refs))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.fill_origin_customer() checks at most %d references", (int) lengthof(cols->refs))));
	cols->ref_att[cols->nrefs] = required_attnum(rel, column);
	cols->refs[cols->nrefs] = crm_reference_new(cxt, crm_table_name(rel), column, arrow + 2);
	cols->nrefs++;
}

static OriginColumns *
origin_columns(FunctionCallInfo fcinfo, Relation rel)
{
	OriginColumns *cols = (OriginColumns *) fcinfo->flinfo->fn_extra;

	if (cols == NULL || cols->relid != RelationGetRelid(rel))
	{
		Trigger    *tg = ((TriggerData *) fcinfo->context)->tg_trigger;

		cols = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(OriginColumns));
		cols->relid = RelationGetRelid(rel);
		cols->cust_att = required_attnum(rel, "customer_id");
		cols->origin_att = required_attnum(rel, "origin_customer_id");
		for (int i = 0; i < tg->tgnargs; i++)
		{
			if (strcmp(tg->tgargs[i], "to_golden") == 0)
				cols->to_golden = true;
			else if (strcmp(tg->tgargs[i], "pattern") == 0)
				cols->check_pattern = true;
			else if (strcmp(tg->tgargs[i], "stitch") == 0)
				cols->stitch = true;
			else if (strstr(tg->tgargs[i], "->") != NULL)
				add_reference(cols, fcinfo->flinfo->fn_mcxt, rel, tg->tgargs[i]);
			else
			{
				cols->time_col = MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, tg->tgargs[i] + 5);
				cols->time_att = required_attnum(rel, cols->time_col);
				if (TupleDescAttr(RelationGetDescr(rel), cols->time_att - 1)->atttypid != TIMESTAMPTZOID)
					ereport(ERROR,
							(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
							 errmsg("crm.fill_origin_customer() needs column \"%s\" of table \"%s\" to be timestamptz",
									cols->time_col, RelationGetRelationName(rel))));
			}
		}
		if (cols->check_pattern || cols->stitch)
			find_kind_patterns(cols, rel);
		if (cols->stitch)
			cols->identity_unique = identity_unique_index(rel);
		cols->mcxt = fcinfo->flinfo->fn_mcxt;
		cols->relname = MemoryContextStrdup(cols->mcxt, crm_table_name(rel));
		fcinfo->flinfo->fn_extra = cols;
	}
	return cols;
}

/* Whether newtup is the order crm.reassign_order is moving right now. */
static bool
reassigning(Relation rel, HeapTuple newtup)
{
	bool		isnull;
	Datum		id;

	if (!reassigning_set || RelationGetRelid(rel) != crm_relid("orders"))
		return false;
	id = heap_getattr(newtup, required_attnum(rel, "order_id"), RelationGetDescr(rel), &isnull);
	return !isnull && DatumGetInt64(id) == reassigning_order;
}

/*
 * On a Citus shard a new row was placed by the customer_id it came with, and
 * its customer's other records may be on other shards: a row for a merged
 * record (it would move to its golden, on another shard) or with an origin
 * record of its own (which cannot be checked there) is refused.  Merged
 * records exist on a cluster only when a merged single node was distributed.
 */
static void
refuse_other_shard(Relation rel, Datum cust, Datum golden, Datum origin)
{
	if (!crm_shard_active() || (golden == cust && origin == cust))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("a new row of \"%s\" on a distributed crm_ext is inserted for its golden customer, with no origin record of its own",
					crm_table_name(rel)),
			 errdetail("customer_id %lld, origin_customer_id %lld, golden customer %lld.",
					   (long long) DatumGetInt64(cust), (long long) DatumGetInt64(origin), (long long) DatumGetInt64(golden)),
			 errhint("Insert it with customer_id = origin_customer_id = crm.golden_customer(%lld).",
					 (long long) DatumGetInt64(cust))));
}

PG_FUNCTION_INFO_V1(crm_fill_origin_customer);

/*
 * crm.fill_origin_customer() RETURNS trigger
 *		INSERT: a NULL origin_customer_id becomes customer_id.
 *		UPDATE: origin_customer_id may not change; customer_id only along
 *		the origin's merges (55000).
 *		Both: the checks its arguments ask for (time range, value pattern).
 */
CRM_SHARD_TRIGGER(crm_fill_origin_customer);

static Datum
crm_fill_origin_customer_body(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	int			cust_att;
	int			origin_att;
	bool		isnull;
	Datum		origin;

	OriginColumns *oc;

	check_origin_trigger_call(fcinfo);
	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	oc = origin_columns(fcinfo, rel);
	cust_att = oc->cust_att;
	origin_att = oc->origin_att;

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		HeapTuple	oldtup = trigdata->tg_trigtuple;
		HeapTuple	newtup = trigdata->tg_newtuple;
		bool		oldnull;
		Datum		oldval = heap_getattr(oldtup, origin_att, tupdesc, &oldnull);

		if (oc->time_att > 0 && column_changed(oldtup, newtup, tupdesc, oc->time_att))
			check_time_range(oc, rel, newtup, tupdesc);
		if (oc->check_pattern &&
			(column_changed(oldtup, newtup, tupdesc, oc->kind_att) ||
			 column_changed(oldtup, newtup, tupdesc, oc->value_att)))
			check_value_pattern(oc, fcinfo->flinfo->fn_mcxt, newtup, tupdesc);

		origin = heap_getattr(newtup, origin_att, tupdesc, &isnull);
		if ((isnull != oldnull ||
			 (!isnull && DatumGetInt64(origin) != DatumGetInt64(oldval))) &&
			(isnull || !reassigning(rel, newtup)))
			ereport(ERROR,
					(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
					 errmsg("origin_customer_id of \"%s\" cannot change",
							RelationGetRelationName(rel)),
					 errdetail("It records the customer the row arrived on; merges change customer_id only.")));
		if (column_changed(oldtup, newtup, tupdesc, cust_att))
			check_customer_move(oc, rel, newtup, tupdesc);
		/* the customer references (orders, events): merges hold both customers already */
		if (oc->to_golden && !isnull && column_changed(oldtup, newtup, tupdesc, origin_att))
			crm_reference_require(customer_reference(oc, &oc->origin_ref, "origin_customer_id"), rel, origin);
		if (oc->to_golden && column_changed(oldtup, newtup, tupdesc, cust_att))
		{
			Datum		cust = heap_getattr(newtup, cust_att, tupdesc, &isnull);

			if (!isnull)
				crm_reference_require(customer_reference(oc, &oc->cust_ref, "customer_id"), rel, cust);
		}
		check_references(oc, rel, oldtup, newtup, tupdesc);
		return PointerGetDatum(newtup);
	}

	if (oc->time_att > 0)
		check_time_range(oc, rel, trigdata->tg_trigtuple, tupdesc);
	if (oc->check_pattern)
		check_value_pattern(oc, fcinfo->flinfo->fn_mcxt, trigdata->tg_trigtuple, tupdesc);
	check_references(oc, rel, NULL, trigdata->tg_trigtuple, tupdesc);
	{
		bool		origin_null;
		bool		cust_null;
		Datum		cust = heap_getattr(trigdata->tg_trigtuple, cust_att, tupdesc, &cust_null);
		Datum		golden = cust;
		int			cols[2] = {origin_att, cust_att};
		Datum		vals[2];
		bool		nulls[2];

		origin = heap_getattr(trigdata->tg_trigtuple, origin_att, tupdesc, &origin_null);
		if (oc->to_golden && !cust_null)
		{
			golden = golden_of(oc, rel, cust);
			refuse_other_shard(rel, cust, golden, origin_null ? cust : origin);
			/* a record merged into golden, or an origin given apart: lock it too */
			if (!origin_null ? DatumGetInt64(origin) != DatumGetInt64(golden) : golden != cust)
				crm_reference_require(customer_reference(oc, &oc->origin_ref, "origin_customer_id"), rel,
									  origin_null ? cust : origin);
		}
		else if (oc->stitch && !cust_null)
		{
			golden = identity_golden_of(oc, rel, trigdata->tg_trigtuple, tupdesc, cust);
			refuse_other_shard(rel, cust, golden, origin_null ? cust : origin);
		}
		if (!origin_null && golden == cust)
			return PointerGetDatum(trigdata->tg_trigtuple);
		/* A NULL customer_id stays NULL here and fails its NOT NULL check. */
		vals[0] = origin_null ? cust : origin;
		nulls[0] = origin_null ? cust_null : false;
		vals[1] = golden;
		nulls[1] = cust_null;
		return PointerGetDatum(heap_modify_tuple_by_cols(trigdata->tg_trigtuple, tupdesc,
														 2, cols, vals, nulls));
	}
}

PG_FUNCTION_INFO_V1(crm_reassign_order);

/*
 * crm.reassign_order(order_id, customer_id, reason) RETURNS bigint
 *		Runs crm.reassign_order_steps (PL/pgSQL: checks, locks, the UPDATE,
 *		the log row) with the origin of that one order allowed to change.
 *		Not STRICT: the steps report NULL arguments (22004).
 */
Datum
crm_reassign_order(PG_FUNCTION_ARGS)
{
	Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
	Datum		args[3];
	char		nulls[3];
	int64		saved = reassigning_order;
	bool		saved_set = reassigning_set;
	bool		isnull = true;
	Datum		result = (Datum) 0;

	crm_refuse_on_citus("crm.reassign_order()");
	for (int i = 0; i < 3; i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		args[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	SPI_connect();
	reassigning_set = !PG_ARGISNULL(0);
	reassigning_order = reassigning_set ? PG_GETARG_INT64(0) : 0;
	PG_TRY();
	{
		if (SPI_execute_with_args(crm_shard_sql("SELECT crm.reassign_order_steps($1, $2, $3)"), 3, types, args, nulls,
								  false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "crm.reassign_order_steps failed");
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	}
	PG_FINALLY();
	{
		reassigning_order = saved;
		reassigning_set = saved_set;
	}
	PG_END_TRY();
	SPI_finish();
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_INT64(DatumGetInt64(result));
}
