/*
 * rfm_score.h
 *		crm.rfm_score: recency, frequency and monetary scores 1..9 packed into
 *		one pass-by-value int32 datum.
 *
 * Layout: bits 8..11 hold R, 4..7 hold F, 0..3 hold M.  Comparing the packed
 * integers therefore orders scores by R, then F, then M.
 */
#ifndef RFM_SCORE_H
#define RFM_SCORE_H

typedef int32 RfmScore;

#define RFM_SCORE_MAX 9

#define RFM_PACK(r, f, m)	((RfmScore) (((r) << 8) | ((f) << 4) | (m)))
#define RFM_R(s)			(((s) >> 8) & 0xF)
#define RFM_F(s)			(((s) >> 4) & 0xF)
#define RFM_M(s)			((s) & 0xF)

#define DatumGetRfmScore(d)		DatumGetInt32(d)
#define RfmScoreGetDatum(s)		Int32GetDatum(s)

/* Parse "R5F4M3" (case-insensitive, surrounding blanks allowed); 0 = ok. */
typedef enum RfmParseResult
{
	RFM_PARSE_OK = 0,
	RFM_PARSE_SYNTAX,
	RFM_PARSE_RANGE,
	RFM_PARSE_LENGTH			/* binary form: not three bytes */
} RfmParseResult;

/*
 * The parsers are pure (src/segmentation/rfm_score_parse.c: no palloc, no ereport), so
 * test/fuzz builds them without a server.
 */
extern RfmParseResult rfm_score_parse(const char *str, RfmScore *result);
/* Binary form: three bytes R, F, M, each 1..9. */
extern RfmParseResult rfm_score_recv_parse(const unsigned char *data, int len, RfmScore *result);
extern bool rfm_score_valid(RfmScore s);

#endif							/* RFM_SCORE_H */
