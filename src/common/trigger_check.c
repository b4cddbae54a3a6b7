/*
 * trigger_check.c
 *		How a C trigger function checks the way it was called, first thing
 *		(STYLE.md: tcn, moddatetime): by the trigger manager, at the right
 *		time, level and event, on a table that has the columns it needs.
 *		Misuse is ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED (39P01).
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/rel.h"

#include "crm_ext.h"

/* "INSERT OR UPDATE", in the order PostgreSQL writes them */
static void
append_events(StringInfo buf, int events)
{
	static const struct
	{
		int			flag;
		const char *name;
	}			names[] = {
		{CRM_TG_INSERT, "INSERT"}, {CRM_TG_UPDATE, "UPDATE"},
		{CRM_TG_DELETE, "DELETE"}, {CRM_TG_TRUNCATE, "TRUNCATE"}
	};
	bool		first = true;

	for (int i = 0; i < lengthof(names); i++)
		if (events & names[i].flag)
		{
			appendStringInfo(buf, "%s%s", first ? "" : " OR ", names[i].name);
			first = false;
		}
}

static bool
fired_by(TriggerEvent event, int events)
{
	return ((events & CRM_TG_INSERT) && TRIGGER_FIRED_BY_INSERT(event)) ||
		((events & CRM_TG_UPDATE) && TRIGGER_FIRED_BY_UPDATE(event)) ||
		((events & CRM_TG_DELETE) && TRIGGER_FIRED_BY_DELETE(event)) ||
		((events & CRM_TG_TRUNCATE) && TRIGGER_FIRED_BY_TRUNCATE(event));
}

/*
 * The TriggerData of trigger function fn (its SQL name, for messages), or an
 * ERROR unless the trigger manager called it as a BEFORE or AFTER (timing)
 * ROW or STATEMENT (level) trigger on one of events, with at most max_nargs
 * arguments (-1: the caller checks them).
 */
TriggerData *
crm_check_trigger(FunctionCallInfo fcinfo, const char *fn, int timing, int level, int events,
				  int max_nargs)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerEvent ev;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s was not called by the trigger manager", fn)));
	ev = td->tg_event;
	if ((timing == CRM_TG_BEFORE ? !TRIGGER_FIRED_BEFORE(ev) : !TRIGGER_FIRED_AFTER(ev)) ||
		(level == CRM_TG_ROW ? !TRIGGER_FIRED_FOR_ROW(ev) : !TRIGGER_FIRED_FOR_STATEMENT(ev)) ||
		!fired_by(ev, events))
	{
		StringInfoData want;

		initStringInfo(&want);
		appendStringInfoString(&want, timing == CRM_TG_BEFORE ? "a BEFORE " : "an AFTER ");
		if (events != CRM_TG_ANY_EVENT)
		{
			append_events(&want, events);
			appendStringInfoChar(&want, ' ');
		}
		appendStringInfoString(&want, level == CRM_TG_ROW ? "row" : "statement");
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s must be %s trigger", fn, want.data)));
	}
	if (max_nargs >= 0 && td->tg_trigger->tgnargs > max_nargs)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 max_nargs == 0 ? errmsg("%s takes no arguments", fn) :
				 errmsg("%s takes at most %d arguments", fn, max_nargs)));
	return td;
}

/*
 * Attribute number of a column that trigger function fn needs on rel, or an
 * ERROR naming both (the function was attached to a table it is not for).
 */
int
crm_trigger_attnum(Relation rel, const char *name, const char *fn)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s needs column \"%s\" on table \"%s\"",
						fn, name, RelationGetRelationName(rel))));
	return attnum;
}
