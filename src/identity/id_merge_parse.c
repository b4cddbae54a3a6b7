/*
 * id_merge_parse.c
 *		Pure parsers of the crm.id_merge text and binary forms, and the check
 *		of a stored value (see id_merge.h): no palloc, no ereport.
 */
#include "postgres.h"

#include <limits.h>

#include "utils/memutils.h"

#include "id_merge.h"

static int
pair_cmp_member(const void *a, const void *b)
{
	int64		x = ((const IdMergePair *) a)->member;
	int64		y = ((const IdMergePair *) b)->member;

	return (x > y) - (x < y);
}

int64
crm_id_merge_search(const IdMergePair *pairs, int64 n, int64 member)
{
	int64		lo = 0;
	int64		hi = n - 1;

	while (lo <= hi)
	{
		int64		mid = lo + (hi - lo) / 2;
		int64		m = pairs[mid].member;

		if (m == member)
			return mid;
		if (m < member)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * What a stored value promises: members strictly increasing, each golden a
 * member of the value, its own golden, and not larger than the members it
 * stands for.
 */
const char *
crm_id_merge_check(const IdMergePair *pairs, int64 n)
{
	for (int64 i = 0; i < n; i++)
	{
		const IdMergePair *p = &pairs[i];
		int64		g;

		if (i > 0 && p->member <= pairs[i - 1].member)
			return "members are not strictly increasing";
		if (p->golden > p->member)
			return "a golden id is larger than its member";
		g = crm_id_merge_search(pairs, n, p->golden);
		if (g < 0 || pairs[g].golden != p->golden)
			return "a golden id is not the golden of its own component";
	}
	return NULL;
}

static inline const char *
skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* Parse the text form "{member:golden,...}" into pairs (at most cap), with the position of an error. */
IdMergeParseResult
crm_id_merge_parse(const char *str, IdMergePair *pairs, int64 cap, int64 *npairs_out, int *errpos)
{
	const char *p = skip_space(str);
	int64		n = 0;

	*npairs_out = 0;
	*errpos = 0;

#define FAIL(code) do { *errpos = (int) Min(p - str, INT_MAX); return (code); } while (0)

	if (*p != '{')
		FAIL(IDMERGE_PARSE_SYNTAX);
	p = skip_space(p + 1);
	if (*p != '}')
	{
		for (;;)
		{
			int64		group_start = n;
			int64		golden = PG_INT64_MAX;

			if (*p != '{')
				FAIL(IDMERGE_PARSE_SYNTAX);
			p = skip_space(p + 1);
			for (;;)
			{
				bool		neg = false;
				uint64		v = 0;
				int64		id;
				const char *digits;

				if (*p == '-' || *p == '+')
				{
					neg = (*p == '-');
					p++;
				}
				digits = p;
				while (*p >= '0' && *p <= '9')
				{
					if (v > (PG_UINT64_MAX - 9) / 10)
						FAIL(IDMERGE_PARSE_RANGE);
					v = v * 10 + (uint64) (*p - '0');
					p++;
				}
				if (p == digits)
					FAIL(IDMERGE_PARSE_SYNTAX);
				if ((!neg && v > (uint64) PG_INT64_MAX) ||
					(neg && v > (uint64) PG_INT64_MAX + 1))
					FAIL(IDMERGE_PARSE_RANGE);
				if (n >= IDMERGE_MAX_PAIRS)
					FAIL(IDMERGE_PARSE_TOO_MANY);
				id = neg ? (int64) (0 - v) : (int64) v;
				if (pairs != NULL)
				{
					if (n >= cap)
						FAIL(IDMERGE_PARSE_TOO_MANY);
					pairs[n].member = id;
				}
				if (id < golden)
					golden = id;
				n++;
				p = skip_space(p);
				if (*p == ',')
				{
					p = skip_space(p + 1);
					continue;
				}
				if (*p == '}')
					break;
				FAIL(IDMERGE_PARSE_SYNTAX);
			}
			if (pairs != NULL)
				for (int64 i = group_start; i < n; i++)
					pairs[i].golden = golden;
			p = skip_space(p + 1);
			if (*p == ',')
			{
				p = skip_space(p + 1);
				continue;
			}
			if (*p == '}')
				break;
			FAIL(IDMERGE_PARSE_SYNTAX);
		}
	}
	p = skip_space(p + 1);
	if (*p != '\0')
		FAIL(IDMERGE_PARSE_SYNTAX);
#undef FAIL
	*npairs_out = n;
	return IDMERGE_PARSE_OK;
}

IdMergeParseResult
crm_id_merge_sort(IdMergePair *pairs, int64 n)
{
	if (n > 1)
		qsort(pairs, n, sizeof(IdMergePair), pair_cmp_member);
	for (int64 i = 1; i < n; i++)
		if (pairs[i].member == pairs[i - 1].member)
			return IDMERGE_PARSE_DUPLICATE;
	return IDMERGE_PARSE_OK;
}

/* Big-endian int64, as pq_getmsgint64 reads it. */
static int64
get_be64(const char *d)
{
	const unsigned char *u = (const unsigned char *) d;
	uint64		v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | u[i];
	return (int64) v;
}

IdMergeParseResult
crm_id_merge_recv_header(const char *data, int len, int64 *count)
{
	*count = 0;
	if (len < (int) sizeof(int64))
		return IDMERGE_PARSE_SYNTAX;
	*count = get_be64(data);
	if (*count < 0 || *count > IDMERGE_MAX_PAIRS ||
		(int64) (len - (int) sizeof(int64)) != *count * (int64) sizeof(IdMergePair))
		return IDMERGE_PARSE_RANGE;
	return IDMERGE_PARSE_OK;
}

const char *
crm_id_merge_recv_pairs(const char *data, int64 count, IdMergePair *pairs)
{
	const char *d = data + sizeof(int64);

	for (int64 i = 0; i < count; i++, d += 16)
	{
		pairs[i].member = get_be64(d);
		pairs[i].golden = get_be64(d + 8);
	}
	return crm_id_merge_check(pairs, count);
}
