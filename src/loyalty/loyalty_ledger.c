/*
 * loyalty_ledger.c
 *		The crm.loyalty_ledger type: points as lots sorted by expiry.
 *
 * Text form:	{}  or  {(points,expires_at,earned_at,source_order),...}
 *		with timestamps in UTC as YYYY-MM-DDTHH:MM:SS[.ffffff]Z and an empty
 *		source for "none", e.g.
 *		{(120,2026-02-01T00:00:00Z,2025-01-15T09:30:00Z,42)}
 *		Text input sorts and coalesces lots; binary input must already be
 *		canonical (strictly increasing expiry), and every field is checked.
 *
 * Lots with the same expiry coalesce: points add (overflow-checked),
 * earned_at is the earliest, source is kept when equal and becomes 0
 * ("several") otherwise.  earned_at and source are informational; the
 * points per expiry are what the journal must reproduce.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "crm_ext.h"
#include "loyalty_ledger.h"
#include "loyalty_ledger_parse.h"

/* ------------------------------------------------------------------------
 * Building ledgers
 * ------------------------------------------------------------------------
 */

void
lotbuf_init(LotBuf *buf, int cap)
{
	buf->cap = Max(cap, 4);
	buf->n = 0;
	buf->lots = palloc(sizeof(LedgerLot) * buf->cap);
}

void
lotbuf_from_ledger(LotBuf *buf, const Ledger *l)
{
	lotbuf_init(buf, l->nlots + 4);
	memcpy(buf->lots, l->lots, sizeof(LedgerLot) * l->nlots);
	buf->n = l->nlots;
}

static void
points_overflow(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("points out of range"),
			 errdetail("A ledger holds at most 9223372036854775807 points.")));
}

/* Index of the first lot whose expiry is >= expires_at. */
static int
lot_search(const LedgerLot *lots, int n, TimestampTz expires_at)
{
	int			lo = 0,
				hi = n;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (lots[mid].expires_at < expires_at)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Add points to the lot of that expiry (creating it); coalesces. */
void
lotbuf_add(LotBuf *buf, int64 points, TimestampTz expires_at,
		   TimestampTz earned_at, int64 source)
{
	int			i;

	Assert(points > 0);
	i = lot_search(buf->lots, buf->n, expires_at);
	if (i < buf->n && buf->lots[i].expires_at == expires_at)
	{
		LedgerLot  *lot = &buf->lots[i];

		if (pg_add_s64_overflow(lot->points, points, &lot->points))
			points_overflow();
		if (earned_at < lot->earned_at)
			lot->earned_at = earned_at;
		if (lot->source != source)
			lot->source = 0;
		return;
	}
	if (buf->n >= LEDGER_MAX_LOTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a ledger holds at most %d lots", LEDGER_MAX_LOTS)));
	if (buf->n == buf->cap)
	{
		buf->cap *= 2;
		buf->lots = repalloc(buf->lots, sizeof(LedgerLot) * buf->cap);
	}
	memmove(&buf->lots[i + 1], &buf->lots[i], sizeof(LedgerLot) * (buf->n - i));
	buf->lots[i].points = points;
	buf->lots[i].expires_at = expires_at;
	buf->lots[i].earned_at = earned_at;
	buf->lots[i].source = source;
	buf->n++;
}

static void
lotbuf_remove(LotBuf *buf, int i)
{
	memmove(&buf->lots[i], &buf->lots[i + 1], sizeof(LedgerLot) * (buf->n - i - 1));
	buf->n--;
}

/* Take up to k points from lot i; returns what was taken. */
static int64
take_from_lot(LotBuf *buf, int i, int64 k, LotBuf *taken)
{
	LedgerLot	lot = buf->lots[i];
	int64		t = Min(k, lot.points);

	if (t <= 0)
		return 0;
	if (taken)
		lotbuf_add(taken, t, lot.expires_at, lot.earned_at, lot.source);
	if (t == lot.points)
		lotbuf_remove(buf, i);
	else
		buf->lots[i].points -= t;
	return t;
}

/*
 * Take up to "points": first from the lot expiring at prefer_expiry (if not
 * DT_NOBEGIN), then FIFO by expiry.  Only lots with expires_at > at count
 * (at = DT_NOBEGIN: every lot).  What was taken goes to "taken" (may be
 * NULL).  Returns the number of points taken.
 */
int64
lotbuf_take(LotBuf *buf, int64 points, TimestampTz prefer_expiry,
			TimestampTz at, LotBuf *taken)
{
	int64		got = 0;
	int			i;

	if (points <= 0)
		return 0;
	if (!TIMESTAMP_IS_NOBEGIN(prefer_expiry) && prefer_expiry > at)
	{
		i = lot_search(buf->lots, buf->n, prefer_expiry);
		if (i < buf->n && buf->lots[i].expires_at == prefer_expiry)
			got += take_from_lot(buf, i, points, taken);
	}
	i = lot_search(buf->lots, buf->n, at);
	/* lots[i..] have expires_at >= at; skip those equal to at (expired) */
	while (i < buf->n && buf->lots[i].expires_at <= at)
		i++;
	while (got < points && i < buf->n)
	{
		int			before = buf->n;

		got += take_from_lot(buf, i, points - got, taken);
		if (buf->n == before)
			i++;
	}
	return got;
}

int64
lotbuf_total(const LotBuf *buf)
{
	int64		total = 0;
	int			i;

	for (i = 0; i < buf->n; i++)
		if (pg_add_s64_overflow(total, buf->lots[i].points, &total))
			points_overflow();
	return total;
}

Ledger *
lotbuf_to_ledger(LotBuf *buf)
{
	Size		sz = LEDGER_HDRSZ + sizeof(LedgerLot) * (Size) buf->n;
	Ledger	   *l;

	(void) lotbuf_total(buf);	/* the total must fit in int64 */
	l = palloc0(sz);
	SET_VARSIZE(l, sz);
	l->version = LEDGER_VERSION;
	l->nlots = buf->n;
	if (buf->n > 0)
		memcpy(l->lots, buf->lots, sizeof(LedgerLot) * buf->n);
	return l;
}

Ledger *
ledger_empty(void)
{
	LotBuf		buf;

	lotbuf_init(&buf, 1);
	return lotbuf_to_ledger(&buf);
}

/* ------------------------------------------------------------------------
 * Text I/O
 * ------------------------------------------------------------------------
 */

PG_FUNCTION_INFO_V1(crm_ledger_in);

/*
 * crm.loyalty_ledger_in(cstring): the text form; lots are sorted and lots of
 * equal expiry coalesced.
 */
Datum
crm_ledger_in(PG_FUNCTION_ARGS)
{
	const char *str = PG_GETARG_CSTRING(0);
	int			count;
	LotBuf		buf;
	LedgerParseError err;

	/* Count lots before allocating anything. */
	count = ledger_text_count_lots(str);
	if (count > LEDGER_MAX_LOTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a ledger holds at most %d lots", LEDGER_MAX_LOTS)));
	lotbuf_init(&buf, count);
	err = ledger_parse_text(str, buf.lots, buf.cap, &buf.n);
	if (err == LPE_OK)
		err = ledger_canonicalize(buf.lots, &buf.n);
	switch (err)
	{
		case LPE_OK:
			break;
		case LPE_POINTS_RANGE:
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("points out of range in loyalty_ledger input"),
					 errdetail("Points of a lot are at most 9223372036854775807.")));
			break;
		case LPE_TOTAL_RANGE:
			points_overflow();
			break;
		case LPE_POINTS_NOT_POSITIVE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type loyalty_ledger"),
					 errdetail("Every lot holds at least one point.")));
			break;
		case LPE_TIMESTAMP:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type loyalty_ledger"),
					 errdetail("Timestamps are written in UTC as YYYY-MM-DDTHH:MM:SS[.ffffff]Z.")));
			break;
		case LPE_EARNED_AFTER_EXPIRY:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type loyalty_ledger"),
					 errdetail("A lot must be earned before it expires.")));
			break;
		case LPE_SOURCE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type loyalty_ledger"),
					 errdetail("A source order id is a positive bigint, or empty for none.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid input syntax for type loyalty_ledger"),
					 errdetail("Expected {} or {(points,expires_at,earned_at,source_order),...}.")));
			break;
	}
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

static void
append_utc(StringInfo s, TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "loyalty_ledger timestamp out of range");
	appendStringInfo(s, "%04d-%02d-%02dT%02d:%02d:%02d",
					 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (fsec != 0)
		appendStringInfo(s, ".%06d", (int) fsec);
	appendStringInfoChar(s, 'Z');
}

PG_FUNCTION_INFO_V1(crm_ledger_out);

/* crm.loyalty_ledger_out(loyalty_ledger): the text form. */
Datum
crm_ledger_out(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	StringInfoData s;
	int			i;

	initStringInfo(&s);
	appendStringInfoChar(&s, '{');
	for (i = 0; i < l->nlots; i++)
	{
		LedgerLot  *lot = &l->lots[i];

		if (i > 0)
			appendStringInfoChar(&s, ',');
		appendStringInfo(&s, "(" INT64_FORMAT ",", lot->points);
		append_utc(&s, lot->expires_at);
		appendStringInfoChar(&s, ',');
		append_utc(&s, lot->earned_at);
		appendStringInfoChar(&s, ',');
		if (lot->source != 0)
			appendStringInfo(&s, INT64_FORMAT, lot->source);
		appendStringInfoChar(&s, ')');
	}
	appendStringInfoChar(&s, '}');
	PG_RETURN_CSTRING(s.data);
}

/* ------------------------------------------------------------------------
 * Binary I/O: int2 version, int4 nlots, then per lot four int8 (points,
 * expires_at, earned_at, source).
 * ------------------------------------------------------------------------
 */

static void
bad_binary(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid binary representation of type loyalty_ledger"),
			 errdetail("%s", detail)));
}

PG_FUNCTION_INFO_V1(crm_ledger_recv);

/* crm.loyalty_ledger_recv(internal): validates every field. */
Datum
crm_ledger_recv(PG_FUNCTION_ARGS)
{
	StringInfo	msg = (StringInfo) PG_GETARG_POINTER(0);
	const char *data = msg->data + msg->cursor;
	int			len = msg->len - msg->cursor;
	int32		nlots;
	LotBuf		buf;
	LedgerParseError err;

	err = ledger_recv_header(data, len, &nlots);
	if (err != LPE_OK)
		bad_binary(ledger_recv_error_detail(err));
	lotbuf_init(&buf, nlots);
	err = ledger_recv_lots(data, len, nlots, buf.lots);
	if (err != LPE_OK)
		bad_binary(ledger_recv_error_detail(err));
	buf.n = nlots;
	msg->cursor = msg->len;
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_send);

/* crm.loyalty_ledger_send(loyalty_ledger) */
Datum
crm_ledger_send(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	StringInfoData buf;
	int			i;

	pq_begintypsend(&buf);
	pq_sendint16(&buf, LEDGER_VERSION);
	pq_sendint32(&buf, l->nlots);
	for (i = 0; i < l->nlots; i++)
	{
		pq_sendint64(&buf, l->lots[i].points);
		pq_sendint64(&buf, l->lots[i].expires_at);
		pq_sendint64(&buf, l->lots[i].earned_at);
		pq_sendint64(&buf, l->lots[i].source);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* ------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------
 */

static void
check_finite(TimestampTz t, const char *what)
{
	if (TIMESTAMP_NOT_FINITE(t))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a finite timestamp", what)));
}

void
crm_insufficient_points(int64 available, int64 requested)
{
	ereport(ERROR,
			(errcode(ERRCODE_CRM_INSUFFICIENT_POINTS),
			 errmsg("insufficient points: " INT64_FORMAT " available, " INT64_FORMAT " requested",
					available, requested)));
}

PG_FUNCTION_INFO_V1(crm_ledger_earn);

/*
 * crm.ledger_earn(ledger, points, earned_at, expires_at, source_order)
 *		Adds a lot.  Not STRICT: a NULL source_order means none; NULL in any
 *		other argument gives NULL.
 */
Datum
crm_ledger_earn(PG_FUNCTION_ARGS)
{
	Ledger	   *l;
	int64		points;
	TimestampTz earned,
				expires;
	int64		source = 0;
	LotBuf		buf;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	l = PG_GETARG_LEDGER_P(0);
	points = PG_GETARG_INT64(1);
	earned = PG_GETARG_TIMESTAMPTZ(2);
	expires = PG_GETARG_TIMESTAMPTZ(3);
	if (!PG_ARGISNULL(4))
	{
		source = PG_GETARG_INT64(4);
		if (source <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("source order id must be positive")));
	}
	if (points <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("points to earn must be positive, not " INT64_FORMAT, points)));
	check_finite(earned, "earned_at");
	check_finite(expires, "expires_at");
	if (!LEDGER_TS_IN_RANGE(earned) || !LEDGER_TS_IN_RANGE(expires))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("lot timestamps must lie in the years 1 to 9999 UTC"),
				 errdetail("The text form of a ledger writes four-digit years.")));
	if (earned >= expires)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a lot must be earned before it expires")));
	lotbuf_from_ledger(&buf, l);
	lotbuf_add(&buf, points, expires, earned, source);
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

/* Points of lots with expires_at > at (DT_NOBEGIN: every point). */
int64
ledger_balance_at(const Ledger *l, TimestampTz at)
{
	int64		total = 0;
	int			i;

	for (i = l->nlots - 1; i >= 0 && l->lots[i].expires_at > at; i--)
		total += l->lots[i].points;	/* cannot overflow: valid ledger */
	return total;
}

PG_FUNCTION_INFO_V1(crm_ledger_spend);

/*
 * crm.ledger_spend(ledger, points, at): spends FIFO by expiry from lots
 * still valid at "at"; CR001 when short.
 */
Datum
crm_ledger_spend(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	int64		points = PG_GETARG_INT64(1);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(2);
	int64		available;
	LotBuf		buf;

	if (points <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("points to spend must be positive, not " INT64_FORMAT, points)));
	check_finite(at, "at");
	available = ledger_balance_at(l, at);
	if (available < points)
		crm_insufficient_points(available, points);
	lotbuf_from_ledger(&buf, l);
	(void) lotbuf_take(&buf, points, DT_NOBEGIN, at, NULL);
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_balance);

/* crm.ledger_balance(ledger, at): points still valid at "at". */
Datum
crm_ledger_balance(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(1);

	PG_RETURN_INT64(ledger_balance_at(l, at));
}

PG_FUNCTION_INFO_V1(crm_ledger_total);

/* crm.ledger_total(ledger): every point in the ledger, expired or not. */
Datum
crm_ledger_total(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);

	PG_RETURN_INT64(ledger_balance_at(l, DT_NOBEGIN));
}

PG_FUNCTION_INFO_V1(crm_ledger_expiring);

/*
 * crm.ledger_expiring(ledger, at, within): points valid at "at" that expire
 * by at + within.
 */
Datum
crm_ledger_expiring(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(1);
	Interval   *within = PG_GETARG_INTERVAL_P(2);
	TimestampTz until;
	int64		total = 0;
	int			i;

	check_finite(at, "at");
	if (within->month < 0 || within->day < 0 || within->time < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the expiry window cannot be negative")));
	until = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													TimestampTzGetDatum(at),
													IntervalPGetDatum(within)));
	for (i = 0; i < l->nlots; i++)
		if (l->lots[i].expires_at > at && l->lots[i].expires_at <= until)
			total += l->lots[i].points;
	PG_RETURN_INT64(total);
}

PG_FUNCTION_INFO_V1(crm_ledger_expire);

/* crm.ledger_expire(ledger, at): drops lots with expires_at <= at. */
Datum
crm_ledger_expire(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(1);
	LotBuf		buf;
	int			i = 0;

	while (i < l->nlots && l->lots[i].expires_at <= at)
		i++;
	lotbuf_init(&buf, l->nlots - i);
	memcpy(buf.lots, &l->lots[i], sizeof(LedgerLot) * (l->nlots - i));
	buf.n = l->nlots - i;
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_merge);

/* crm.ledger_merge(a, b), operator +: every lot of both, coalesced. */
Datum
crm_ledger_merge(PG_FUNCTION_ARGS)
{
	Ledger	   *a = PG_GETARG_LEDGER_P(0);
	Ledger	   *b = PG_GETARG_LEDGER_P(1);
	LotBuf		buf;
	int			i;

	lotbuf_from_ledger(&buf, a);
	for (i = 0; i < b->nlots; i++)
		lotbuf_add(&buf, b->lots[i].points, b->lots[i].expires_at,
				   b->lots[i].earned_at, b->lots[i].source);
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_minus);

/*
 * crm.ledger_minus(a, b), operator -: a with b's points taken out of the
 * lots of the same expiry; an ERROR if a lacks them.
 */
Datum
crm_ledger_minus(PG_FUNCTION_ARGS)
{
	Ledger	   *a = PG_GETARG_LEDGER_P(0);
	Ledger	   *b = PG_GETARG_LEDGER_P(1);
	LotBuf		buf;
	int			i;

	lotbuf_from_ledger(&buf, a);
	for (i = 0; i < b->nlots; i++)
	{
		int			j = lot_search(buf.lots, buf.n, b->lots[i].expires_at);

		if (j >= buf.n || buf.lots[j].expires_at != b->lots[i].expires_at ||
			buf.lots[j].points < b->lots[i].points)
			ereport(ERROR,
					(errcode(ERRCODE_CRM_INSUFFICIENT_POINTS),
					 errmsg("cannot subtract a lot the ledger does not hold"),
					 errdetail("The left ledger has fewer points expiring at that time than the right one.")));
		(void) take_from_lot(&buf, j, b->lots[i].points, NULL);
	}
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_eq);

/* crm.ledger_eq(a, b), operator =: same lots, field by field. */
Datum
crm_ledger_eq(PG_FUNCTION_ARGS)
{
	Ledger	   *a = PG_GETARG_LEDGER_P(0);
	Ledger	   *b = PG_GETARG_LEDGER_P(1);

	PG_RETURN_BOOL(a->nlots == b->nlots &&
				   memcmp(a->lots, b->lots, sizeof(LedgerLot) * a->nlots) == 0);
}

PG_FUNCTION_INFO_V1(crm_ledger_next_expiry);

/* crm.ledger_next_expiry(ledger): the earliest expiry, NULL when empty. */
Datum
crm_ledger_next_expiry(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);

	if (l->nlots == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(l->lots[0].expires_at);
}

PG_FUNCTION_INFO_V1(crm_ledger_lot_count);

/* crm.ledger_lot_count(ledger) */
Datum
crm_ledger_lot_count(PG_FUNCTION_ARGS)
{
	Ledger	   *l = PG_GETARG_LEDGER_P(0);

	PG_RETURN_INT32(l->nlots);
}

PG_FUNCTION_INFO_V1(crm_ledger_lots);

/*
 * crm.ledger_lots(ledger) RETURNS TABLE(points, expires_at, earned_at,
 * source_order): one row per lot in expiry order.
 */
Datum
crm_ledger_lots(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	Ledger	   *l;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		TupleDesc	tupdesc;

		funcctx = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "crm.ledger_lots must return a composite type");
		funcctx->tuple_desc = BlessTupleDesc(tupdesc);
		funcctx->user_fctx = PG_GETARG_LEDGER_P_COPY(0);
		MemoryContextSwitchTo(old);
	}
	funcctx = SRF_PERCALL_SETUP();
	l = (Ledger *) funcctx->user_fctx;
	if (funcctx->call_cntr < (uint64) l->nlots)
	{
		LedgerLot  *lot = &l->lots[funcctx->call_cntr];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = Int64GetDatum(lot->points);
		values[1] = TimestampTzGetDatum(lot->expires_at);
		values[2] = TimestampTzGetDatum(lot->earned_at);
		values[3] = Int64GetDatum(lot->source);
		nulls[3] = (lot->source == 0);
		SRF_RETURN_NEXT(funcctx,
						HeapTupleGetDatum(heap_form_tuple(funcctx->tuple_desc, values, nulls)));
	}
	SRF_RETURN_DONE(funcctx);
}

/* ------------------------------------------------------------------------
 * crm.ledger_agg(lots loyalty_ledger, points bigint): rebuilds a ledger
 * from journal rows.  A row with points > 0 adds its lots, points < 0
 * takes them out, points = 0 changes nothing; |points| must equal the
 * total of the row's lots (as the journal's CHECK demands), else 22023.  Order does not matter
 * (per-expiry sums), so it is parallel-safe with combine.
 * ------------------------------------------------------------------------
 */

typedef struct AggEntry
{
	TimestampTz expires_at;
	int64		sum;			/* signed */
	TimestampTz earned_at;		/* min over adds; DT_NOEND if none */
	int64		source;			/* -1 no add yet, 0 several/none */
} AggEntry;

typedef struct LedgerAggState
{
	int			n;
	int			cap;
	AggEntry   *e;
} LedgerAggState;

static int
agg_entry_cmp(const void *a, const void *b)
{
	TimestampTz x = ((const AggEntry *) a)->expires_at;
	TimestampTz y = ((const AggEntry *) b)->expires_at;

	return x < y ? -1 : (x > y ? 1 : 0);
}

static int64
merge_source(int64 a, int64 b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a == b ? a : 0;
}

/* Sort and coalesce entries of equal expiry. */
static void
agg_compact(LedgerAggState *st)
{
	int			i,
				k = 0;

	if (st->n <= 1)
		return;
	qsort(st->e, st->n, sizeof(AggEntry), agg_entry_cmp);
	for (i = 1; i < st->n; i++)
	{
		AggEntry   *last = &st->e[k];

		if (st->e[i].expires_at == last->expires_at)
		{
			if (pg_add_s64_overflow(last->sum, st->e[i].sum, &last->sum))
				points_overflow();
			if (st->e[i].earned_at < last->earned_at)
				last->earned_at = st->e[i].earned_at;
			last->source = merge_source(last->source, st->e[i].source);
		}
		else
			st->e[++k] = st->e[i];
	}
	st->n = k + 1;
}

static void
agg_push(LedgerAggState *st, const AggEntry *en)
{
	if (st->n == st->cap)
	{
		agg_compact(st);
		if (st->n * 2 > st->cap)
		{
			st->cap *= 2;
			st->e = repalloc(st->e, sizeof(AggEntry) * st->cap);
		}
	}
	st->e[st->n++] = *en;
}

static LedgerAggState *
agg_new(MemoryContext cxt, int cap)
{
	LedgerAggState   *st = MemoryContextAlloc(cxt, sizeof(LedgerAggState));

	st->n = 0;
	st->cap = Max(cap, 16);
	st->e = MemoryContextAlloc(cxt, sizeof(AggEntry) * st->cap);
	return st;
}

PG_FUNCTION_INFO_V1(crm_ledger_agg_trans);

/* Transition function of crm.ledger_agg; not STRICT: NULL rows are skipped. */
Datum
crm_ledger_agg_trans(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt,
				old;
	LedgerAggState   *st;
	Ledger	   *l;
	int64		points,
				total;
	int			i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "crm_ledger_agg_trans called in non-aggregate context");
	st = PG_ARGISNULL(0) ? agg_new(aggcxt, 16) : (LedgerAggState *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_POINTER(st);
	points = PG_GETARG_INT64(2);
	l = PG_GETARG_LEDGER_P(1);
	total = ledger_balance_at(l, DT_NOBEGIN);
	if (points >= 0 ? points != total : (points == PG_INT64_MIN || -points != total))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ledger_agg row has points " INT64_FORMAT " but its lots hold " INT64_FORMAT " points",
						points, total),
				 errdetail("Points are the signed total of the row's lots: positive to add them, negative to take them out, 0 only with no lots.")));
	if (points == 0)
		PG_RETURN_POINTER(st);
	old = MemoryContextSwitchTo(aggcxt);
	for (i = 0; i < l->nlots; i++)
	{
		AggEntry	en;

		en.expires_at = l->lots[i].expires_at;
		if (points > 0)
		{
			en.sum = l->lots[i].points;
			en.earned_at = l->lots[i].earned_at;
			en.source = l->lots[i].source;
		}
		else
		{
			en.sum = -l->lots[i].points;
			en.earned_at = DT_NOEND;
			en.source = -1;
		}
		agg_push(st, &en);
	}
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(crm_ledger_agg_combine);

/* Combine function of crm.ledger_agg. */
Datum
crm_ledger_agg_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt,
				old;
	LedgerAggState   *a,
			   *b;
	int			i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "crm_ledger_agg_combine called in non-aggregate context");
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(PG_ARGISNULL(0) ? NULL : PG_GETARG_POINTER(0));
	b = (LedgerAggState *) PG_GETARG_POINTER(1);
	old = MemoryContextSwitchTo(aggcxt);
	a = PG_ARGISNULL(0) ? agg_new(aggcxt, b->n) : (LedgerAggState *) PG_GETARG_POINTER(0);
	for (i = 0; i < b->n; i++)
		agg_push(a, &b->e[i]);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(a);
}

PG_FUNCTION_INFO_V1(crm_ledger_agg_serialize);

/* Serialize function of crm.ledger_agg: int4 n, then 4 x int8 per entry. */
Datum
crm_ledger_agg_serialize(PG_FUNCTION_ARGS)
{
	LedgerAggState   *st = (LedgerAggState *) PG_GETARG_POINTER(0);
	StringInfoData buf;
	int			i;

	agg_compact(st);
	pq_begintypsend(&buf);
	pq_sendint32(&buf, st->n);
	for (i = 0; i < st->n; i++)
	{
		pq_sendint64(&buf, st->e[i].expires_at);
		pq_sendint64(&buf, st->e[i].sum);
		pq_sendint64(&buf, st->e[i].earned_at);
		pq_sendint64(&buf, st->e[i].source);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(crm_ledger_agg_deserialize);

/* Deserialize function of crm.ledger_agg: checks the length first. */
Datum
crm_ledger_agg_deserialize(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	MemoryContext aggcxt;
	StringInfoData msg;
	LedgerAggState   *st;
	int			n,
				i;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "crm_ledger_agg_deserialize called in non-aggregate context");
	msg.data = VARDATA_ANY(b);
	msg.len = VARSIZE_ANY_EXHDR(b);
	msg.maxlen = msg.len;
	msg.cursor = 0;
	if (msg.len < 4)
		bad_binary("Aggregate state is shorter than its header.");
	n = (int) pq_getmsgint(&msg, 4);
	if (n < 0 || (int64) (msg.len - msg.cursor) != (int64) n * 32)
		bad_binary("Aggregate state length does not match its entry count.");
	st = agg_new(aggcxt, n);
	for (i = 0; i < n; i++)
	{
		AggEntry	en;

		en.expires_at = (TimestampTz) pq_getmsgint64(&msg);
		en.sum = (int64) pq_getmsgint64(&msg);
		en.earned_at = (TimestampTz) pq_getmsgint64(&msg);
		en.source = (int64) pq_getmsgint64(&msg);
		st->e[st->n++] = en;
	}
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(crm_ledger_agg_final);

/*
 * Final function of crm.ledger_agg: lots with a positive sum; an ERROR
 * (22023) if the rows take more from a lot than they put in.
 */
Datum
crm_ledger_agg_final(PG_FUNCTION_ARGS)
{
	LedgerAggState   *st;
	LotBuf		buf;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_LEDGER_P(ledger_empty());
	st = (LedgerAggState *) PG_GETARG_POINTER(0);
	agg_compact(st);
	lotbuf_init(&buf, st->n);
	for (i = 0; i < st->n; i++)
	{
		AggEntry   *en = &st->e[i];

		if (en->sum < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("journal rows take more points from a lot than they put in"),
					 errdetail("The lot expiring at %s is short by " INT64_FORMAT " points.",
							   timestamptz_to_str(en->expires_at), -en->sum)));
		if (en->sum == 0)
			continue;
		buf.lots[buf.n].points = en->sum;
		buf.lots[buf.n].expires_at = en->expires_at;
		buf.lots[buf.n].earned_at = TIMESTAMP_IS_NOEND(en->earned_at) ?
			en->expires_at - USECS_PER_SEC : en->earned_at;
		buf.lots[buf.n].source = en->source < 0 ? 0 : en->source;
		buf.n++;
	}
	PG_RETURN_LEDGER_P(lotbuf_to_ledger(&buf));
}
