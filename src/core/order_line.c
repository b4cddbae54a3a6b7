/*
 * order_line.c
 *		Line numbers for order lines inserted without one.
 *
 * crm.order_line's key is (order_id, line_no).  A BEFORE INSERT row trigger
 * that fires only WHEN (NEW.line_no IS NULL) numbers such a line after the
 * highest line the order had before the statement and the lines this
 * statement numbered, so an application may insert an order's lines without
 * counting them.  Lines inserted by this statement are not visible to its
 * snapshot, so the next number per order is remembered for the rest of the
 * statement (explicit numbers in the same statement are not seen: mix them
 * and a collision is a key violation).  Two transactions adding unnumbered lines
 * to one order at the same time collide on the key (23505): an order's
 * lines arrive in one statement.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "utils/rel.h"

#include "crm_ext.h"

typedef struct NextLine
{
	int64		order_id;		/* hash key */
	char		status;			/* simplehash */
	int32		next;			/* the number the order's next line gets */
} NextLine;

#define SH_PREFIX nextline
#define SH_ELEMENT_TYPE NextLine
#define SH_KEY order_id
#include "int64_hash.h"

/* What the trigger keeps for one statement (fn_extra). */
typedef struct LineNumbering
{
	int			order_att;
	int			line_att;
	Oid			pkey;
	nextline_hash *next;
} LineNumbering;

static LineNumbering *
line_numbering(FunctionCallInfo fcinfo, Relation rel)
{
	LineNumbering *ln = (LineNumbering *) fcinfo->flinfo->fn_extra;

	if (ln == NULL)
	{
		const char *fn = "crm.number_order_line()";

		ln = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(LineNumbering));
		ln->order_att = crm_trigger_attnum(rel, "order_id", fn);
		ln->line_att = crm_trigger_attnum(rel, "line_no", fn);
		ln->pkey = RelationGetPrimaryKeyIndex(rel);
		if (!OidIsValid(ln->pkey))
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("%s needs a primary key (order_id, line_no) on table \"%s\"",
							fn, RelationGetRelationName(rel))));
		ln->next = nextline_create(fcinfo->flinfo->fn_mcxt, 64, NULL);
		fcinfo->flinfo->fn_extra = ln;
	}
	return ln;
}

/* The highest line number order_id has in the table (0 when none). */
static int32
last_line(Relation rel, LineNumbering *ln, int64 order_id)
{
	Datum		key = Int64GetDatum(order_id);
	HeapTuple	tup = crm_row_by_index_in(rel, ln->pkey, &key, BackwardScanDirection);
	int32		last = 0;
	bool		isnull;

	if (tup != NULL)
	{
		Datum		d = heap_getattr(tup, ln->line_att, RelationGetDescr(rel), &isnull);

		if (!isnull)
			last = DatumGetInt32(d);
		heap_freetuple(tup);
	}
	return last;
}

PG_FUNCTION_INFO_V1(crm_number_order_line);

/*
 * crm.number_order_line() RETURNS trigger
 *		BEFORE INSERT row trigger on crm.order_line: a NULL line_no becomes
 *		the order's next line number.
 */
Datum
crm_number_order_line(PG_FUNCTION_ARGS)
{
	TriggerData *td = crm_check_trigger(fcinfo, "crm.number_order_line()", CRM_TG_BEFORE, CRM_TG_ROW,
										CRM_TG_INSERT, 0);
	Relation	rel = td->tg_relation;
	LineNumbering *ln = line_numbering(fcinfo, rel);
	HeapTuple	tup = td->tg_trigtuple;
	bool		isnull;
	Datum		order_id;
	NextLine   *entry;
	bool		found;
	int			col;
	Datum		value;
	bool		null = false;

	(void) heap_getattr(tup, ln->line_att, RelationGetDescr(rel), &isnull);
	if (!isnull)
		return PointerGetDatum(tup);
	order_id = heap_getattr(tup, ln->order_att, RelationGetDescr(rel), &isnull);
	if (isnull)
		return PointerGetDatum(tup);	/* fails its NOT NULL check */
	entry = nextline_insert(ln->next, DatumGetInt64(order_id), &found);
	if (!found)
		entry->next = last_line(rel, ln, DatumGetInt64(order_id)) + 1;
	if (entry->next <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("order %lld has no line number left", (long long) DatumGetInt64(order_id))));
	col = ln->line_att;
	value = Int32GetDatum(entry->next);
	entry->next++;
	return PointerGetDatum(heap_modify_tuple_by_cols(tup, RelationGetDescr(rel), 1, &col, &value, &null));
}
