/*
 * replenishment.c
 *		crm.purchase_interval(date): the typical time between a customer's
 *		purchases of something, as the median gap in days between the
 *		distinct days it was bought.  The median shrugs off the odd stock-up
 *		or holiday that a mean would follow.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/date.h"
#include "utils/memutils.h"

#include "crm_ext.h"

typedef struct DayState
{
	int			n;
	int			cap;
	DateADT    *days;
} DayState;

PG_FUNCTION_INFO_V1(crm_purchase_interval_trans);

/* Transition: collects the (finite) purchase days; NULL days are skipped. */
Datum
crm_purchase_interval_trans(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	DayState   *st;
	DateADT		d;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("crm.purchase_interval transition function called outside an aggregate"));
	if (PG_ARGISNULL(0))
	{
		st = MemoryContextAllocZero(aggcxt, sizeof(DayState));
		st->cap = 16;
		st->days = MemoryContextAlloc(aggcxt, sizeof(DateADT) * st->cap);
	}
	else
		st = (DayState *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(st);
	d = PG_GETARG_DATEADT(1);
	if (DATE_NOT_FINITE(d))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("purchase days must be finite"));
	/* consecutive repeats of the same day (the usual sorted input) cost nothing */
	if (st->n > 0 && st->days[st->n - 1] == d)
		PG_RETURN_POINTER(st);
	if (st->n == st->cap)
	{
		if (st->cap >= 50000000)
			ereport(ERROR,
					errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					errmsg("too many purchase days in one group"));
		st->cap *= 2;
		st->days = repalloc(st->days, sizeof(DateADT) * st->cap);
	}
	st->days[st->n++] = d;
	PG_RETURN_POINTER(st);
}

static int
cmp_date(const void *a, const void *b)
{
	DateADT		x = *(const DateADT *) a,
				y = *(const DateADT *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

PG_FUNCTION_INFO_V1(crm_purchase_interval_final);

/* Final: median gap between distinct days, NULL with fewer than two days. */
Datum
crm_purchase_interval_final(PG_FUNCTION_ARGS)
{
	DayState   *st;
	int			i,
				m = 0;
	int32	   *gaps;
	double		median;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	st = (DayState *) PG_GETARG_POINTER(0);
	if (st->n < 2)
		PG_RETURN_NULL();
	/* sort a copy: the final function may run more than once on a state */
	{
		DateADT    *days = palloc(sizeof(DateADT) * st->n);

		memcpy(days, st->days, sizeof(DateADT) * st->n);
		qsort(days, st->n, sizeof(DateADT), cmp_date);
		gaps = palloc(sizeof(int32) * st->n);
		for (i = 1; i < st->n; i++)
			if (days[i] != days[i - 1])
				gaps[m++] = days[i] - days[i - 1];
		pfree(days);
	}
	if (m == 0)
		PG_RETURN_NULL();
	qsort(gaps, m, sizeof(int32), cmp_date);
	median = (m % 2 == 1) ? gaps[m / 2] : 0.5 * ((double) gaps[m / 2 - 1] + (double) gaps[m / 2]);
	pfree(gaps);
	PG_RETURN_FLOAT8(median);
}

PG_FUNCTION_INFO_V1(crm_purchase_days_final);

/*
 * Final function of crm.purchase_days: the number of distinct days.  It
 * shares crm.purchase_interval's transition state when both appear in one
 * query, so the days are collected once.
 */
Datum
crm_purchase_days_final(PG_FUNCTION_ARGS)
{
	DayState   *st;
	DateADT    *days;
	int			i,
				m = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT32(0);
	st = (DayState *) PG_GETARG_POINTER(0);
	if (st->n == 0)
		PG_RETURN_INT32(0);
	days = palloc(sizeof(DateADT) * st->n);
	memcpy(days, st->days, sizeof(DateADT) * st->n);
	qsort(days, st->n, sizeof(DateADT), cmp_date);
	for (i = 0; i < st->n; i++)
		if (i == 0 || days[i] != days[i - 1])
			m++;
	pfree(days);
	PG_RETURN_INT32(m);
}
