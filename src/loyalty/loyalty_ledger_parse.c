/*
 * loyalty_ledger_parse.c
 *		Pure parsers of the crm.loyalty_ledger text and binary forms (see
 *		loyalty_ledger_parse.h): no palloc, no ereport.
 */
#include "postgres.h"

#include "common/int.h"
#include "datatype/timestamp.h"

#include "loyalty_ledger_parse.h"

static const char *
skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* Digits into an unsigned value; fails past max. */
static bool
parse_digits(const char **pp, int min_digits, int max_digits, uint64 max, uint64 *out, bool *range)
{
	const char *p = *pp;
	uint64		v = 0;
	int			nd = 0;

	*range = false;
	while (*p >= '0' && *p <= '9')
	{
		if (nd >= max_digits && max_digits > 0)
			return false;
		if (v > (max - (uint64) (*p - '0')) / 10)
		{
			*range = true;
			return false;
		}
		v = v * 10 + (uint64) (*p - '0');
		p++;
		nd++;
	}
	if (nd < min_digits)
		return false;
	*pp = p;
	*out = v;
	return true;
}

/* Julian day number of a Gregorian date (PostgreSQL's date2j). */
static int
julian_day(int y, int m, int d)
{
	int			julian;
	int			century;

	if (m > 2)
	{
		m += 1;
		y += 4800;
	}
	else
	{
		m += 13;
		y += 4799;
	}
	century = y / 100;
	julian = y * 365 - 32167;
	julian += y / 4 - century + century / 4;
	julian += 7834 * m / 256 + d;
	return julian;
}

static const int month_days[2][12] = {
	{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31},
	{31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
};

/* Strict UTC timestamp: YYYY-MM-DDTHH:MM:SS[.ffffff]Z, year 1 to 9999. */
static bool
parse_utc_timestamp(const char **pp, TimestampTz *out)
{
	const char *p = *pp;
	uint64		y,
				mo,
				d,
				h,
				mi,
				s,
				frac = 0;
	bool		range;
	int			leap;
	int64		days;

	if (!parse_digits(&p, 4, 4, 9999, &y, &range) || *p++ != '-' ||
		!parse_digits(&p, 2, 2, 99, &mo, &range) || *p++ != '-' ||
		!parse_digits(&p, 2, 2, 99, &d, &range) || *p++ != 'T' ||
		!parse_digits(&p, 2, 2, 99, &h, &range) || *p++ != ':' ||
		!parse_digits(&p, 2, 2, 99, &mi, &range) || *p++ != ':' ||
		!parse_digits(&p, 2, 2, 99, &s, &range))
		return false;
	if (*p == '.')
	{
		int			nd = 0;

		p++;
		while (*p >= '0' && *p <= '9' && nd < 6)
		{
			frac = frac * 10 + (uint64) (*p - '0');
			p++;
			nd++;
		}
		if (nd == 0 || (*p >= '0' && *p <= '9'))
			return false;
		while (nd++ < 6)
			frac *= 10;
	}
	if (*p++ != 'Z')
		return false;
	leap = ((y % 4) == 0 && ((y % 100) != 0 || (y % 400) == 0)) ? 1 : 0;
	if (y < 1 || mo < 1 || mo > 12 || d < 1 ||
		d > (uint64) month_days[leap][mo - 1] || h > 23 || mi > 59 || s > 59)
		return false;
	/* years 1..9999 are well inside the timestamp range */
	days = julian_day((int) y, (int) mo, (int) d) - POSTGRES_EPOCH_JDATE;
	*out = days * USECS_PER_DAY +
		(((int64) h * MINS_PER_HOUR + (int64) mi) * SECS_PER_MINUTE + (int64) s) * USECS_PER_SEC +
		(int64) frac;
	*pp = p;
	return true;
}

int
ledger_text_count_lots(const char *str)
{
	const char *p;
	int			count = 0;

	for (p = str; *p; p++)
		if (*p == '(' && ++count > LEDGER_MAX_LOTS)
			break;
	return count;
}

LedgerParseError
ledger_parse_text(const char *str, LedgerLot *lots, int cap, int *nlots)
{
	const char *p = skip_space(str);
	int			n = 0;

	*nlots = 0;
	if (*p++ != '{')
		return LPE_SYNTAX;
	p = skip_space(p);
	if (*p == '}')
	{
		p = skip_space(p + 1);
		return *p == '\0' ? LPE_OK : LPE_SYNTAX;
	}
	for (;;)
	{
		uint64		points,
					source = 0;
		bool		range;
		TimestampTz expires,
					earned;
		bool		neg = false;

		if (*p++ != '(')
			return LPE_SYNTAX;
		p = skip_space(p);
		if (*p == '-')
		{
			neg = true;
			p++;
		}
		if (!parse_digits(&p, 1, 0, (uint64) PG_INT64_MAX, &points, &range))
			return range ? LPE_POINTS_RANGE : LPE_SYNTAX;
		if (neg || points == 0)
			return LPE_POINTS_NOT_POSITIVE;
		p = skip_space(p);
		if (*p++ != ',')
			return LPE_SYNTAX;
		p = skip_space(p);
		if (!parse_utc_timestamp(&p, &expires))
			return LPE_TIMESTAMP;
		p = skip_space(p);
		if (*p++ != ',')
			return LPE_SYNTAX;
		p = skip_space(p);
		if (!parse_utc_timestamp(&p, &earned))
			return LPE_TIMESTAMP;
		if (earned >= expires)
			return LPE_EARNED_AFTER_EXPIRY;
		p = skip_space(p);
		if (*p++ != ',')
			return LPE_SYNTAX;
		p = skip_space(p);
		if (*p != ')')
		{
			if (!parse_digits(&p, 1, 0, (uint64) PG_INT64_MAX, &source, &range))
				return range ? LPE_SOURCE : LPE_SYNTAX;
			if (source == 0)
				return LPE_SOURCE;
			p = skip_space(p);
		}
		if (*p++ != ')')
			return LPE_SYNTAX;
		if (n >= cap)
			return LPE_TOO_MANY_LOTS;
		lots[n].points = (int64) points;
		lots[n].expires_at = expires;
		lots[n].earned_at = earned;
		lots[n].source = (int64) source;
		*nlots = ++n;
		p = skip_space(p);
		if (*p == '}')
		{
			p = skip_space(p + 1);
			return *p == '\0' ? LPE_OK : LPE_SYNTAX;
		}
		if (*p++ != ',')
			return LPE_SYNTAX;
		p = skip_space(p);
	}
}

static int
lot_cmp_expiry(const void *a, const void *b)
{
	TimestampTz x = ((const LedgerLot *) a)->expires_at;
	TimestampTz y = ((const LedgerLot *) b)->expires_at;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * Coalescing does not depend on the order of the lots: points add, earned_at
 * is the earliest, source is kept when all are equal and is 0 otherwise.
 */
LedgerParseError
ledger_canonicalize(LedgerLot *lots, int *nlots)
{
	int			n = *nlots;
	int			i,
				k = 0;
	int64		total = 0;

	if (n > 1)
		qsort(lots, n, sizeof(LedgerLot), lot_cmp_expiry);
	for (i = 0; i < n; i++)
	{
		if (pg_add_s64_overflow(total, lots[i].points, &total))
			return LPE_TOTAL_RANGE;
		if (i > 0 && lots[i].expires_at == lots[k].expires_at)
		{
			LedgerLot  *lot = &lots[k];

			lot->points += lots[i].points;	/* <= total: cannot overflow */
			if (lots[i].earned_at < lot->earned_at)
				lot->earned_at = lots[i].earned_at;
			if (lot->source != lots[i].source)
				lot->source = 0;
		}
		else if (i > 0)
			lots[++k] = lots[i];
	}
	*nlots = n > 0 ? k + 1 : 0;
	return LPE_OK;
}

/* Big-endian integers, as pq_getmsgint / pq_getmsgint64 read them. */
static int64
get_be64(const char *d)
{
	const unsigned char *u = (const unsigned char *) d;
	uint64		v = 0;
	int			i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | u[i];
	return (int64) v;
}

LedgerParseError
ledger_recv_header(const char *data, int len, int32 *nlots)
{
	const unsigned char *u = (const unsigned char *) data;
	int			version;
	int32		n;

	*nlots = 0;
	if (len < LEDGER_BIN_HDRSZ)
		return LPE_BIN_SHORT;
	version = (u[0] << 8) | u[1];
	if (version != LEDGER_VERSION)
		return LPE_BIN_VERSION;
	n = (int32) (((uint32) u[2] << 24) | ((uint32) u[3] << 16) | ((uint32) u[4] << 8) | u[5]);
	if (n < 0 || n > LEDGER_MAX_LOTS)
		return LPE_BIN_COUNT;
	if ((int64) (len - LEDGER_BIN_HDRSZ) != (int64) n * LEDGER_BIN_LOTSZ)
		return LPE_BIN_LENGTH;
	*nlots = n;
	return LPE_OK;
}

LedgerParseError
ledger_recv_lots(const char *data, int len, int32 nlots, LedgerLot *lots)
{
	const char *d = data + LEDGER_BIN_HDRSZ;
	int64		total = 0;
	int			i;

	if ((int64) (len - LEDGER_BIN_HDRSZ) != (int64) nlots * LEDGER_BIN_LOTSZ)
		return LPE_BIN_LENGTH;
	for (i = 0; i < nlots; i++, d += LEDGER_BIN_LOTSZ)
	{
		LedgerLot	lot;

		lot.points = get_be64(d);
		lot.expires_at = (TimestampTz) get_be64(d + 8);
		lot.earned_at = (TimestampTz) get_be64(d + 16);
		lot.source = get_be64(d + 24);
		if (lot.points <= 0)
			return LPE_BIN_POINTS;
		if (!LEDGER_TS_IN_RANGE(lot.expires_at) || !LEDGER_TS_IN_RANGE(lot.earned_at))
			return LPE_BIN_TIMESTAMP;
		if (lot.earned_at >= lot.expires_at)
			return LPE_BIN_EARNED_AFTER_EXPIRY;
		if (lot.source < 0)
			return LPE_BIN_SOURCE;
		if (i > 0 && lot.expires_at <= lots[i - 1].expires_at)
			return LPE_BIN_ORDER;
		if (pg_add_s64_overflow(total, lot.points, &total))
			return LPE_BIN_TOTAL;
		lots[i] = lot;
	}
	return LPE_OK;
}

const char *
ledger_recv_error_detail(LedgerParseError err)
{
	switch (err)
	{
		case LPE_BIN_SHORT:
			return "The message is shorter than the header.";
		case LPE_BIN_VERSION:
			return "Unknown format version.";
		case LPE_BIN_COUNT:
			return "The lot count is out of range.";
		case LPE_BIN_LENGTH:
			return "The message length does not match the lot count.";
		case LPE_BIN_POINTS:
			return "Every lot holds at least one point.";
		case LPE_BIN_TIMESTAMP:
			return "A lot timestamp is out of range or infinite.";
		case LPE_BIN_EARNED_AFTER_EXPIRY:
			return "A lot must be earned before it expires.";
		case LPE_BIN_SOURCE:
			return "A source order id cannot be negative.";
		case LPE_BIN_ORDER:
			return "Lots must be in strictly increasing order of expiry.";
		case LPE_BIN_TOTAL:
			return "The ledger's total points exceed 9223372036854775807.";
		default:
			return "The message is not a loyalty_ledger.";
	}
}
