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
