/*
 * seg_config.c
 *		Plumbing shared by rfm.c, customer_stats.c and segment.c.
 *
 * Configuration cache: every C cache of segmentation configuration (tag
 * rules, lifecycle thresholds, the RFM segment map) remembers the value of
 * crm_seg_config_generation it was built at.  A relcache callback bumps the
 * generation when one of the configuration tables changes (PostgreSQL sends
 * a relcache invalidation to every backend when a table is written, and a
 * whole-cache reset as InvalidOid), so a backend rebuilds its cache on the
 * next use after a commit that changed them, and its own uncommitted
 * changes are seen at once.
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

uint64		crm_seg_config_generation = 1;

static const char *const config_tables[] = {
	"tag", "rfm_segment_map", "rfm_threshold", "segment_setting"
};
#define N_CONFIG_TABLES lengthof(config_tables)
static Oid	config_relids[N_CONFIG_TABLES];
static bool config_relids_valid = false;

static pg_tz *local_tz = NULL;
static uint64 local_tz_generation = 0;

static void
seg_config_relcache_cb(Datum arg, Oid relid)
{
	int			i;

	if (relid == InvalidOid || !config_relids_valid)
	{
		crm_seg_config_generation++;
		config_relids_valid = false;
		return;
	}
	for (i = 0; i < N_CONFIG_TABLES; i++)
		if (config_relids[i] == relid)
		{
			crm_seg_config_generation++;
			return;
		}
}

/* crm.as_of: simulated time of segmentation (empty: the transaction start) */
static char *seg_as_of = NULL;

void
crm_seg_config_init(void)
{
	CacheRegisterRelcacheCallback(seg_config_relcache_cb, (Datum) 0);

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
							   NULL, NULL, NULL);
}

/* OID of table crm.<relname>, or an ERROR if crm_ext is not installed right. */
Oid
crm_relid(const char *relname)
{
	Oid			nsp = get_namespace_oid("crm", false);
	Oid			relid = get_relname_relid(relname, nsp);
	int			i;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table crm.%s does not exist", relname)));
	if (!config_relids_valid)
	{
		for (i = 0; i < N_CONFIG_TABLES; i++)
			config_relids[i] = get_relname_relid(config_tables[i], nsp);
		config_relids_valid = true;
	}
	return relid;
}

/*
 * crm_numeric_to_cents
 *		A numeric with at most two decimals as an int64 count of cents.  The
 *		common case (numeric(14,2) columns) decodes the on-disk digits
 *		directly; anything unusual goes through numeric arithmetic, which
 *		raises the proper errors.
 */
#define NUMERIC_SIGN_MASK	0xC000
#define NUMERIC_SHORT		0x8000
#define NUMERIC_SHORT_SIGN_MASK 0x2000
#define NUMERIC_SHORT_WEIGHT_SIGN_MASK 0x0040
#define NUMERIC_SHORT_WEIGHT_MASK 0x003F

int64
crm_numeric_to_cents(Datum num)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(num);

	if (!VARATT_IS_EXTENDED(v) || VARATT_IS_SHORT(v))
	{
		const char *data = VARDATA_ANY(v);
		int			len = VARSIZE_ANY_EXHDR(v);
		uint16		header;

		if (len >= 2)
		{
			memcpy(&header, data, sizeof(uint16));
			if ((header & NUMERIC_SIGN_MASK) == NUMERIC_SHORT)
			{
				int			weight = (header & NUMERIC_SHORT_WEIGHT_SIGN_MASK) ?
				(int) (~NUMERIC_SHORT_WEIGHT_MASK | (header & NUMERIC_SHORT_WEIGHT_MASK)) :
				(int) (header & NUMERIC_SHORT_WEIGHT_MASK);
				int			ndigits = (len - 2) / 2;
				int64		cents = 0;
				bool		ok = (weight <= 3);
				int			i;

				for (i = 0; ok && i < ndigits; i++)
				{
					int16		d;
					int			pos = weight - i;

					memcpy(&d, data + 2 + 2 * i, sizeof(int16));
					if (pos >= 0)
					{
						int64		mult = 100;
						int			k;

						for (k = 0; k < pos; k++)
							mult *= 10000;
						cents += (int64) d * mult;
					}
					else if (pos == -1 && d % 100 == 0)
						cents += d / 100;
					else
						ok = false;
				}
				if (ok)
					return (header & NUMERIC_SHORT_SIGN_MASK) ? -cents : cents;
			}
		}
	}
	{
		Numeric		hundred = int64_to_numeric(100);
		Datum		prod = DirectFunctionCall2(numeric_mul, num, NumericGetDatum(hundred));
		Datum		rounded = DirectFunctionCall2(numeric_round, prod, Int32GetDatum(0));

		return DatumGetInt64(DirectFunctionCall1(numeric_int8, rounded));
	}
}

Datum
crm_cents_to_numeric(int64 cents)
{
	return NumericGetDatum(int64_div_fast_to_numeric(cents, 2));
}

/*
 * The time zone of local days and weekdays: crm.segment_setting 'timezone'
 * (default UTC), looked up once per configuration generation.
 */
static pg_tz *
seg_local_tz(void)
{
	if (local_tz == NULL || local_tz_generation != crm_seg_config_generation)
	{
		char	   *name = NULL;
		bool		isnull;
		pg_tz	   *tz;

		(void) crm_relid("segment_setting");
		SPI_connect();
		if (SPI_execute("SELECT s.value FROM crm.segment_setting s WHERE s.key OPERATOR(pg_catalog.=) 'timezone'",
						true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

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
		local_tz_generation = crm_seg_config_generation;
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
	const char *s = seg_as_of;

	if (s != NULL && s[0] != '\0')
		return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(s),
													   ObjectIdGetDatum(InvalidOid),
													   Int32GetDatum(-1)));
	return GetCurrentTransactionStartTimestamp();
}

PG_FUNCTION_INFO_V1(crm_seg_config_changed);

/*
 * crm.seg_config_changed() RETURNS trigger
 *		AFTER ... FOR EACH STATEMENT on the configuration tables: queue a
 *		relcache invalidation of the table, which every backend's
 *		seg_config_relcache_cb sees (this one at the next command, the others
 *		when this transaction commits).
 */
Datum
crm_seg_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.seg_config_changed() was not called by the trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("crm.seg_config_changed() must be an AFTER statement trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	PG_RETURN_POINTER(NULL);
}

/* A specialised sort of int64 arrays (no comparator calls). */
#define ST_SORT crm_sort_int64
#define ST_ELEMENT_TYPE int64
#define ST_COMPARE(a, b) (*(a) < *(b) ? -1 : (*(a) > *(b) ? 1 : 0))
#define ST_SCOPE
#define ST_DEFINE
#include "lib/sort_template.h"
