/*
 * fuzz_id_merge.c
 *		libFuzzer target: the crm.id_merge text and binary parsers
 *		(src/identity/id_merge_parse.c).  First byte even: text, odd: binary.  The
 *		counting pass and the filling pass must agree, and an accepted value
 *		must pass crm_id_merge_check (what a stored value promises) and
 *		round-trip through the text form as id_merge_out writes it.
 */
#include "postgres.h"

#include <stdlib.h>

#include "id_merge.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
cmp_golden(const void *a, const void *b)
{
	const IdMergePair *x = a;
	const IdMergePair *y = b;

	if (x->golden != y->golden)
		return (x->golden > y->golden) - (x->golden < y->golden);
	return (x->member > y->member) - (x->member < y->member);
}

/* Components in order of their golden id, as crm_id_merge_out writes them. */
static void
check_round_trip(const IdMergePair *pairs, int64 n)
{
	IdMergePair *sorted = malloc(sizeof(IdMergePair) * (n > 0 ? n : 1));
	IdMergePair *back = malloc(sizeof(IdMergePair) * (n > 0 ? n : 1));
	size_t		cap = 8 + (size_t) n * 24;
	char	   *text = malloc(cap);
	size_t		len = 0;
	int64		nback;
	int			errpos;

	memcpy(sorted, pairs, sizeof(IdMergePair) * n);
	qsort(sorted, n, sizeof(IdMergePair), cmp_golden);
	len += snprintf(text + len, cap - len, "{");
	for (int64 i = 0; i < n; i++)
	{
		bool		first = (i == 0 || sorted[i].golden != sorted[i - 1].golden);
		bool		last = (i == n - 1 || sorted[i].golden != sorted[i + 1].golden);

		len += snprintf(text + len, cap - len, "%s" INT64_FORMAT "%s",
						first ? (i == 0 ? "{" : ",{") : ",", sorted[i].member, last ? "}" : "");
	}
	snprintf(text + len, cap - len, "}");
	if (crm_id_merge_parse(text, back, n, &nback, &errpos) != IDMERGE_PARSE_OK || nback != n ||
		crm_id_merge_sort(back, n) != IDMERGE_PARSE_OK ||
		(n > 0 && memcmp(back, pairs, sizeof(IdMergePair) * n) != 0))
		abort();
	free(text);
	free(back);
	free(sorted);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 1024 * 1024)
		return 0;
	if ((data[0] & 1) == 0)
	{
		char	   *str = malloc(size);
		int64		n,
					n2;
		int			errpos,
					errpos2;
		IdMergeParseResult r;

		memcpy(str, data + 1, size - 1);
		str[size - 1] = '\0';
		r = crm_id_merge_parse(str, NULL, 0, &n, &errpos);
		if (r == IDMERGE_PARSE_OK)
		{
			IdMergePair *pairs = malloc(sizeof(IdMergePair) * (n > 0 ? n : 1));

			if (crm_id_merge_parse(str, pairs, n, &n2, &errpos2) != IDMERGE_PARSE_OK || n2 != n)
				abort();
			if (crm_id_merge_sort(pairs, n) == IDMERGE_PARSE_OK)
			{
				if (crm_id_merge_check(pairs, n) != NULL)
					abort();
				check_round_trip(pairs, n);
			}
			free(pairs);
		}
		else if (errpos < 0 || (size_t) errpos > size - 1)
			abort();
		free(str);
	}
	else
	{
		int			len = (int) size - 1;
		char	   *msg = malloc(len > 0 ? len : 1);
		int64		count;

		memcpy(msg, data + 1, len);
		if (crm_id_merge_recv_header(msg, len, &count) == IDMERGE_PARSE_OK)
		{
			IdMergePair *pairs = malloc(sizeof(IdMergePair) * (count > 0 ? count : 1));

			if (crm_id_merge_recv_pairs(msg, count, pairs) == NULL)
				check_round_trip(pairs, count);
			free(pairs);
		}
		free(msg);
	}
	return 0;
}
