/*
 * rfm_score_parse.c
 *		Pure parsers of the crm.rfm_score text and binary forms: no palloc,
 *		no ereport (the SQL functions in rfm_score.c raise the errors).
 */
#include "postgres.h"

#include "rfm_score.h"

/* Is each of the three scores within 1..9 and nothing else set? */
bool
rfm_score_valid(RfmScore s)
{
	return (s & ~0xFFF) == 0 &&
		RFM_R(s) >= 1 && RFM_R(s) <= RFM_SCORE_MAX &&
		RFM_F(s) >= 1 && RFM_F(s) <= RFM_SCORE_MAX &&
		RFM_M(s) >= 1 && RFM_M(s) <= RFM_SCORE_MAX;
}

/*
 * rfm_score_parse
 *		The text form: optional blanks, R<d>F<d>M<d> in any letter case,
 *		optional blanks.  Digits 1..9.
 */
RfmParseResult
rfm_score_parse(const char *str, RfmScore *result)
{
	static const char letters[3] = {'r', 'f', 'm'};
	int			digits[3];
	const char *p = str;
	int			i;

	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	for (i = 0; i < 3; i++)
	{
		char		c = *p;

		if (c >= 'A' && c <= 'Z')
			c = c - 'A' + 'a';
		if (c != letters[i])
			return RFM_PARSE_SYNTAX;
		p++;
		if (*p < '0' || *p > '9')
			return RFM_PARSE_SYNTAX;
		digits[i] = *p - '0';
		p++;
	}
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	if (*p != '\0')
		return RFM_PARSE_SYNTAX;
	for (i = 0; i < 3; i++)
		if (digits[i] < 1)
			return RFM_PARSE_RANGE;
	*result = RFM_PACK(digits[0], digits[1], digits[2]);
	return RFM_PARSE_OK;
}

/* rfm_score_recv_parse: three bytes R, F, M, each 1..9. */
RfmParseResult
rfm_score_recv_parse(const unsigned char *data, int len, RfmScore *result)
{
	RfmScore	s;

	if (len != 3)
		return RFM_PARSE_LENGTH;
	if (data[0] > RFM_SCORE_MAX || data[1] > RFM_SCORE_MAX || data[2] > RFM_SCORE_MAX)
		return RFM_PARSE_RANGE;
	s = RFM_PACK(data[0], data[1], data[2]);
	if (!rfm_score_valid(s))
		return RFM_PARSE_RANGE;
	*result = s;
	return RFM_PARSE_OK;
}
