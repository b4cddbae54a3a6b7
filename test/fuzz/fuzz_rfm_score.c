/*
 * fuzz_rfm_score.c
 *		libFuzzer target: the crm.rfm_score text and binary parsers
 *		(src/segmentation/rfm_score_parse.c).  First byte even: text, odd: binary.  An
 *		accepted score must be valid (each of R, F, M within 1..9).
 */
#include "postgres.h"

#include <stdlib.h>

#include "rfm_score.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	RfmScore	s = 0;

	if (size < 1 || size > 4096)
		return 0;
	if ((data[0] & 1) == 0)
	{
		char	   *str = malloc(size);

		memcpy(str, data + 1, size - 1);
		str[size - 1] = '\0';
		if (rfm_score_parse(str, &s) == RFM_PARSE_OK && !rfm_score_valid(s))
			abort();
		free(str);
	}
	else
	{
		int			len = (int) size - 1;
		unsigned char *msg = malloc(len > 0 ? len : 1);

		memcpy(msg, data + 1, len);
		if (rfm_score_recv_parse(msg, len, &s) == RFM_PARSE_OK && !rfm_score_valid(s))
			abort();
		free(msg);
	}
	return 0;
}
