/*
 * settings.c
 *		What crm's settings share: a simulated-time setting (crm.as_of,
 *		crm.loyalty_now) is empty or a finite timestamp with time zone,
 *		checked when it is set, not on every statement that reads it.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "crm_ext.h"

/* A finite timestamptz from text without raising an error (GUC check hooks must not). */
bool
crm_parse_timestamptz_quietly(const char *str, TimestampTz *out)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	int			tz;
	struct pg_tm tm;
	fsec_t		fsec;

	if (str == NULL || strlen(str) > MAXDATELEN)
		return false;
	if (ParseDateTime(str, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf) != 0)
		return false;
	if (DecodeDateTime(field, ftype, nf, &dtype, &tm, &fsec, &tz) != 0 || dtype != DTK_DATE)
		return false;
	return tm2timestamp(&tm, fsec, &tz, out) == 0 && !TIMESTAMP_NOT_FINITE(*out);
}

/* GUC check hook of a simulated-time setting: empty, or a finite timestamptz. */
bool
crm_check_time_setting(char **newval, void **extra, GucSource source)
{
	TimestampTz t;

	/*
	 * A parallel worker restores the leader's (checked) settings before the
	 * ones date parsing needs (timezone_abbreviations): parsing there crashed.
	 */
	if (*newval == NULL || (*newval)[0] == '\0' || InitializingParallelWorker || crm_parse_timestamptz_quietly(*newval, &t))
		return true;
	GUC_check_errdetail("The value must be empty (the transaction start) or a finite timestamp with time zone.");
	return false;
}

/* The time a simulated-time setting stands for: its value, or the transaction start. */
TimestampTz
crm_time_setting(const char *value)
{
	if (value != NULL && value[0] != '\0')
		return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(value),
													   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
	return GetCurrentTransactionStartTimestamp();
}

/*
 * crm.loyalty_repoint switched the points journal's guard off in 0.1.0.  It
 * does nothing since 0.2.0 (the guard has no switch), but 0.1.0's SQL still
 * sets it while a database runs 0.1.0's script on this library, between
 * "make install" and ALTER EXTENSION crm_ext UPDATE; with the crm prefix
 * reserved, an undeclared name would be an error there.
 */
static bool obsolete_loyalty_repoint = false;

void
crm_settings_init(void)
{
	DefineCustomBoolVariable("crm.loyalty_repoint",
							 "Obsolete since 0.2.0: ignored.",
							 "0.1.0 used it to let merges re-point journal rows; the journal guard no longer has a switch.",
							 &obsolete_loyalty_repoint,
							 false,
							 PGC_USERSET,
							 GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
}
