/*
 * sample.c
 *		Deterministic random numbers for crm.generate_sample.
 *
 * The generator is set-based SQL (src/core/sample.sql).  To make it byte-for-byte
 * reproducible and free of ordering effects, every random draw is a pure
 * function of (seed, stream, key): a counter-based generator built on the
 * splitmix64 finaliser.  Row order, parallelism and plan shape therefore
 * cannot change the data.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "crm_ext.h"

/* One 64-bit draw for (seed, stream, key); distinct inputs give unrelated outputs. */
static uint64
draw64(int32 seed, int32 stream, int64 key)
{
	uint64		h;

	h = crm_mix64((uint64) (uint32) seed * UINT64CONST(0x9e3779b97f4a7c15) + (uint64) (uint32) stream);
	return crm_mix64(h ^ crm_mix64((uint64) key + UINT64CONST(0x632be59bd9b4e019)));
}

/* A double uniform on [0, 1) from the top 53 bits of a draw. */
static inline double
unit_double(uint64 bits)
{
	return (double) (bits >> 11) * (1.0 / 9007199254740992.0);
}

PG_FUNCTION_INFO_V1(crm_sample_uniform);

/*
 * crm.sample_uniform(seed int, stream int, key bigint) RETURNS float8
 *		Uniform on [0, 1), a pure function of its arguments.
 */
Datum
crm_sample_uniform(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(unit_double(draw64(PG_GETARG_INT32(0), PG_GETARG_INT32(1),
										PG_GETARG_INT64(2))));
}

PG_FUNCTION_INFO_V1(crm_sample_int);

/*
 * crm.sample_int(seed int, stream int, key bigint, n int) RETURNS int
 *		Uniform on [0, n), a pure function of its arguments.
 */
Datum
crm_sample_int(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(3);

	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crm.sample_int needs n >= 1, not %d", n)));
	PG_RETURN_INT32((int32) (unit_double(draw64(PG_GETARG_INT32(0), PG_GETARG_INT32(1),
												PG_GETARG_INT64(2))) * n));
}

PG_FUNCTION_INFO_V1(crm_sample_normal);

/*
 * crm.sample_normal(seed int, stream int, key bigint) RETURNS float8
 *		Standard normal by Box-Muller over two independent draws.
 */
Datum
crm_sample_normal(PG_FUNCTION_ARGS)
{
	int32		seed = PG_GETARG_INT32(0);
	int32		stream = PG_GETARG_INT32(1);
	int64		key = PG_GETARG_INT64(2);
	/* 1 - u lies in (0, 1], so the logarithm is finite. */
	double		u1 = 1.0 - unit_double(draw64(seed, stream, key));
	double		u2 = unit_double(draw64(seed, stream ^ 0x5bd1e995, key));

	PG_RETURN_FLOAT8(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* The sample's product range: the one place it is written down. */
typedef struct SampleCategory
{
	const char *name;
	const char *prefix;
	double		weight;
} SampleCategory;

static const SampleCategory sample_categories[] = {
	{"fresh", "FRE", 14}, {"dairy", "DAI", 10}, {"bakery", "BAK", 8}, {"meat", "MEA", 7},
	{"seafood", "SEA", 4}, {"frozen", "FRO", 6}, {"beverages", "BEV", 9}, {"snacks", "SNA", 8},
	{"baby", "BAB", 3}, {"pet", "PET", 3}, {"organic", "ORG", 4}, {"household", "HOU", 6},
	{"personal_care", "PER", 4}, {"beauty", "BEA", 3}, {"health", "HEA", 2}, {"pantry", "PAN", 5},
	{"alcohol", "ALC", 2}, {"electronics", "ELE", 1}, {"apparel", "APP", 1}, {"home", "HOM", 0.8},
};

#define N_SAMPLE_CATEGORIES lengthof(sample_categories)

PG_FUNCTION_INFO_V1(crm_sample_categories);

/*
 * crm.sample_categories() RETURNS TABLE(category_no, category, prefix, weight)
 */
Datum
crm_sample_categories(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < (int) N_SAMPLE_CATEGORIES; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = Int32GetDatum(i + 1);
		values[1] = CStringGetTextDatum(sample_categories[i].name);
		values[2] = CStringGetTextDatum(sample_categories[i].prefix);
		values[3] = Float8GetDatum(sample_categories[i].weight);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(crm_sample_category);

/*
 * crm.sample_category(u float8) RETURNS int
 *		The category (1-based) a uniform draw picks, by weight.
 */
Datum
crm_sample_category(PG_FUNCTION_ARGS)
{
	double		u = PG_GETARG_FLOAT8(0);
	double		total = 0;
	double		target;
	int			i;

	if (!(u >= 0.0 && u < 1.0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crm.sample_category needs a draw in [0, 1), not %g", u)));
	for (i = 0; i < (int) N_SAMPLE_CATEGORIES; i++)
		total += sample_categories[i].weight;
	target = u * total;
	for (i = 0; i < (int) N_SAMPLE_CATEGORIES - 1; i++)
	{
		target -= sample_categories[i].weight;
		if (target < 0)
			break;
	}
	PG_RETURN_INT32(i + 1);
}

PG_FUNCTION_INFO_V1(crm_sample_snap_weekday);

/*
 * crm.sample_snap_weekday(day, weekday, first_day, last_day) RETURNS int
 *		Day numbers count from a Monday, so day % 7 is the weekday (0 =
 *		Monday).  Moves day to the wanted weekday of its week, a week later or
 *		earlier when that falls outside [first_day, last_day).
 */
Datum
crm_sample_snap_weekday(PG_FUNCTION_ARGS)
{
	int32		day = PG_GETARG_INT32(0);
	int32		weekday = PG_GETARG_INT32(1);
	int32		first_day = PG_GETARG_INT32(2);
	int32		last_day = PG_GETARG_INT32(3);
	int32		snapped;

	if (day < 0 || weekday < 0 || weekday > 6 || first_day < 0 || last_day <= first_day)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crm.sample_snap_weekday needs day >= 0, weekday 0..6 and first_day < last_day")));
	snapped = day - day % 7 + weekday;
	if (snapped < first_day)
		snapped += 7;
	if (snapped >= last_day)
		snapped -= 7;
	/* A window shorter than a week may have no such weekday: keep the day. */
	if (snapped < first_day || snapped >= last_day)
		snapped = day;
	PG_RETURN_INT32(snapped);
}
