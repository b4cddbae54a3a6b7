/*
 * int64_util.c
 *		Sorting int64 arrays (customer ids) without a comparator call per
 *		comparison.
 */
#include "postgres.h"

#include "crm_ext.h"

/* A specialised sort of int64 arrays (no comparator calls). */
#define ST_SORT crm_sort_int64
#define ST_ELEMENT_TYPE int64
#define ST_COMPARE(a, b) (*(a) < *(b) ? -1 : (*(a) > *(b) ? 1 : 0))
#define ST_SCOPE
#define ST_DEFINE
#include "lib/sort_template.h"

/* Comparator of int64s for qsort and bsearch. */
int
crm_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}
