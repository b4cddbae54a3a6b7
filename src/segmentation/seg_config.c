/*
 * seg_config.c
 *		The time segmentation works at: crm.as_of (simulated time) or the
 *		transaction start, and local days and weekdays in the time zone of
 *		crm.segment_setting.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "commands/trigger.h"
#include "fmgr.h"

#include "crm_ext.h"
#include "seg_config.h"

/* The one column of seg_local_tz's query of crm.segment_setting. */
enum
{
	SETTING_VALUE = 1
};

static pg_tz *local_tz = NULL;
static uint64 local_tz_generation = 0;

/* crm.as_of: simulated time of segmentation (empty: the transaction start) */
static char *seg_as_of = NULL;

void
crm_seg_config_init(void)
{
	/*
	 * Superusers only (or roles granted SET ON PARAMETER): stages and tags
	 * written as of a simulated time are stored results that every reader
	 * sees, not a session's own view.
	 */
	DefineCustomStringVariable("crm.as_of",
							   "Simulated time at which segmentation works (tests and backfills).",
							   "Empty means the transaction start.  Stages and time-dependent tags are written as of this time.",
							   &seg_as_of,
							   "",
							   PGC_SUSET,
							   0,
							   crm_check_time_setting, NULL, NULL);
}


/*
 * The time zone of local days and weekdays: crm.segment_setting 'timezone'
 * (default UTC), looked up once per configuration generation.
 */
static pg_tz *
seg_local_tz(void)
{
	if (local_tz == NULL || local_tz_generation != crm_config_generation())
	{
		char	   *name = NULL;
		bool		isnull;
		pg_tz	   *tz;

		(void) crm_relid("segment_setting");
		SPI_connect();
		if (SPI_execute(crm_config_sql("SELECT s.value FROM crm.segment_setting s WHERE s.key OPERATOR(pg_catalog.=) 'timezone'"),
						true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, SETTING_VALUE, &isnull);

			if (!isnull)
				name = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(d));
		}
		SPI_finish();
		tz = pg_tzset(name ? name : "UTC");
		if (tz == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("time zone \"%s\" in crm.segment_setting is not recognised", name)));
		if (name)
			pfree(name);
		local_tz = tz;
		local_tz_generation = crm_config_generation();
	}
	return local_tz;
}

int32
crm_local_day(TimestampTz ts, int *weekday)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tzoff;
	int32		day;

	if (timestamp2tm(ts, &tzoff, &tm, &fsec, NULL, seg_local_tz()) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	day = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) - POSTGRES_EPOCH_JDATE;
	if (weekday)
		*weekday = j2day(day + POSTGRES_EPOCH_JDATE);
	return day;
}

TimestampTz
crm_seg_now(void)
{
	return crm_time_setting(seg_as_of);
}
