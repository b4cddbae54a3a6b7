/*
 * kept_plans.c
 *		SPI plans kept across statements, and freed when crm_ext is
 *		reinstalled.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/inval.h"
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
	kept_for_extension = extension;
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
	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);
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
