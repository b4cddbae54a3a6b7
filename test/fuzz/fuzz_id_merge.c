/*
 * fuzz_id_merge.c
 *		libFuzzer target: the crm.id_merge text and binary parsers
 *		(src/id_merge_parse.c).  First byte even: text, odd: binary.  The
 *		counting pass and the filling pass must agree, and an accepted value
 *		must pass crm_id_merge_check (what a stored value promises).
 */
#include "postgres.h"

#include <stdlib.h>

#include "id_merge.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
			if (crm_id_merge_sort(pairs, n) == IDMERGE_PARSE_OK &&
				crm_id_merge_check(pairs, n) != NULL)
				abort();
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

			(void) crm_id_merge_recv_pairs(msg, count, pairs);
			free(pairs);
		}
		free(msg);
	}
	return 0;
}
