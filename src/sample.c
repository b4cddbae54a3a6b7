/*
 * sample.c
 *		Deterministic random numbers for crm.generate_sample.
 *
 * The generator is set-based SQL (src/sample.sql).  To make it byte-for-byte
 * reproducible and free of ordering effects, every random draw is a pure
 * function of (seed, stream, key): a counter-based generator built on the
 * splitmix64 finaliser.  Row order, parallelism and plan shape therefore
 * cannot change the data.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"

#include "crm_ext.h"

/* splitmix64 finaliser: a bijective 64-bit mix with good avalanche. */
static inline uint64
mix64(uint64 z)
{
	z = (z ^ (z >> 30)) * UINT64CONST(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64CONST(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* One 64-bit draw for (seed, stream, key); distinct inputs give unrelated outputs. */
static uint64
draw64(int32 seed, int32 stream, int64 key)
{
	uint64		h;

	h = mix64((uint64) (uint32) seed * UINT64CONST(0x9e3779b97f4a7c15) + (uint64) (uint32) stream);
	return mix64(h ^ mix64((uint64) key + UINT64CONST(0x632be59bd9b4e019)));
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
