/*
 * rfm_score.c
 *		The crm.rfm_score type: text and binary I/O, constructor, accessors,
 *		comparison and hashing for its btree and hash operator classes.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"

#include "crm_ext.h"
#include "rfm_score.h"

PG_FUNCTION_INFO_V1(crm_rfm_score_in);

/* crm.rfm_score_in(cstring): text form R5F4M3 */
Datum
crm_rfm_score_in(PG_FUNCTION_ARGS)
{
	const char *str = PG_GETARG_CSTRING(0);
	RfmScore	s = 0;

	switch (rfm_score_parse(str, &s))
	{
		case RFM_PARSE_OK:
			break;
		case RFM_PARSE_RANGE:
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("rfm_score scores must be between 1 and 9"),
					 errdetail("A score of 0 is not allowed.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type rfm_score"),
					 errhint("Write R, F and M each followed by one digit 1-9, e.g. R5F4M3.")));
	}
	PG_RETURN_DATUM(RfmScoreGetDatum(s));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_out);

/* crm.rfm_score_out(rfm_score): R5F4M3 */
Datum
crm_rfm_score_out(PG_FUNCTION_ARGS)
{
	RfmScore	s = DatumGetRfmScore(PG_GETARG_DATUM(0));

	PG_RETURN_CSTRING(psprintf("R%dF%dM%d", RFM_R(s), RFM_F(s), RFM_M(s)));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_recv);

/* crm.rfm_score_recv(internal): three bytes R, F, M */
Datum
crm_rfm_score_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	RfmScore	s = 0;

	switch (rfm_score_recv_parse((const unsigned char *) buf->data + buf->cursor,
								 buf->len - buf->cursor, &s))
	{
		case RFM_PARSE_OK:
			break;
		case RFM_PARSE_LENGTH:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary rfm_score"),
					 errdetail("The binary form is exactly three bytes.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary rfm_score"),
					 errdetail("Each score must be between 1 and 9.")));
			break;
	}
	buf->cursor = buf->len;
	PG_RETURN_DATUM(RfmScoreGetDatum(s));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_send);

/* crm.rfm_score_send(rfm_score): three bytes R, F, M */
Datum
crm_rfm_score_send(PG_FUNCTION_ARGS)
{
	RfmScore	s = DatumGetRfmScore(PG_GETARG_DATUM(0));
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, RFM_R(s));
	pq_sendbyte(&buf, RFM_F(s));
	pq_sendbyte(&buf, RFM_M(s));
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_make);

/* crm.rfm_score(r, f, m): constructor */
Datum
crm_rfm_score_make(PG_FUNCTION_ARGS)
{
	int32		r = PG_GETARG_INT32(0);
	int32		f = PG_GETARG_INT32(1);
	int32		m = PG_GETARG_INT32(2);

	if (r < 1 || r > RFM_SCORE_MAX || f < 1 || f > RFM_SCORE_MAX || m < 1 || m > RFM_SCORE_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("rfm_score scores must be between 1 and 9"),
				 errdetail("Got r = %d, f = %d, m = %d.", r, f, m)));
	PG_RETURN_DATUM(RfmScoreGetDatum(RFM_PACK(r, f, m)));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_r);
/* crm.r(rfm_score) */
Datum
crm_rfm_score_r(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(RFM_R(DatumGetRfmScore(PG_GETARG_DATUM(0))));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_f);
/* crm.f(rfm_score) */
Datum
crm_rfm_score_f(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(RFM_F(DatumGetRfmScore(PG_GETARG_DATUM(0))));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_m);
/* crm.m(rfm_score) */
Datum
crm_rfm_score_m(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(RFM_M(DatumGetRfmScore(PG_GETARG_DATUM(0))));
}

#define RFM_A DatumGetRfmScore(PG_GETARG_DATUM(0))
#define RFM_B DatumGetRfmScore(PG_GETARG_DATUM(1))

PG_FUNCTION_INFO_V1(crm_rfm_score_cmp);
/* btree support 1: three-way comparison by R, then F, then M */
Datum
crm_rfm_score_cmp(PG_FUNCTION_ARGS)
{
	RfmScore	a = RFM_A;
	RfmScore	b = RFM_B;

	PG_RETURN_INT32(a < b ? -1 : (a > b ? 1 : 0));
}

PG_FUNCTION_INFO_V1(crm_rfm_score_eq);
/* = */
Datum
crm_rfm_score_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A == RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_ne);
/* <> */
Datum
crm_rfm_score_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A != RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_lt);
/* < */
Datum
crm_rfm_score_lt(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A < RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_le);
/* <= */
Datum
crm_rfm_score_le(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A <= RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_gt);
/* > */
Datum
crm_rfm_score_gt(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A > RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_ge);
/* >= */
Datum
crm_rfm_score_ge(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RFM_A >= RFM_B);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_hash);
/* hash support 1 */
Datum
crm_rfm_score_hash(PG_FUNCTION_ARGS)
{
	return hash_uint32((uint32) RFM_A);
}

PG_FUNCTION_INFO_V1(crm_rfm_score_hash_extended);
/* hash support 2 */
Datum
crm_rfm_score_hash_extended(PG_FUNCTION_ARGS)
{
	return hash_uint32_extended((uint32) RFM_A, PG_GETARG_INT64(1));
}
