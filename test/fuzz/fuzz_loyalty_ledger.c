/*
 * fuzz_loyalty_ledger.c
 *		libFuzzer target: the crm.loyalty_ledger text and binary parsers
 *		(src/loyalty/loyalty_ledger_parse.c).  The first input byte picks the form
 *		(even: text, odd: binary); the rest is the input.  Whatever is
 *		accepted must be a valid ledger: lots strictly increasing by expiry,
 *		each with points > 0 earned before it expires, timestamps within the
 *		text form's years, a total that fits in int64.  And it must
 *		round-trip: written in the text form (as loyalty_ledger_out writes
 *		it) and read back, it gives the same lots.
 */
#include "postgres.h"

#include <stdlib.h>

#include "common/int.h"

#include "loyalty_ledger_parse.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* PostgreSQL's j2date: Julian day number to a Gregorian date. */
static void
j2date(int jd, int *year, int *month, int *day)
{
	unsigned int julian;
	unsigned int quad;
	unsigned int extra;
	int			y;

	julian = jd;
	julian += 32044;
	quad = julian / 146097;
	extra = (julian - quad * 146097) * 4 + 3;
	julian += 60 + quad * 3 + extra / 146097;
	quad = julian / 1461;
	julian -= quad * 1461;
	y = julian * 4 / 1461;
	julian = ((y != 0) ? ((julian + 305) % 365) : ((julian + 306) % 366)) + 123;
	y += quad * 4;
	*year = y - 4800;
	quad = julian * 2141 / 65536;
	*day = julian - 7834 * quad / 256;
	*month = (quad + 10) % MONTHS_PER_YEAR + 1;
}

/* A timestamp as loyalty_ledger_out writes it. */
static int
format_utc(char *buf, size_t cap, TimestampTz t)
{
	int64		date = t / USECS_PER_DAY;
	int64		time = t - date * USECS_PER_DAY;
	int			y,
				m,
				d,
				n;

	if (time < 0)
	{
		time += USECS_PER_DAY;
		date -= 1;
	}
	j2date((int) (date + POSTGRES_EPOCH_JDATE), &y, &m, &d);
	n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d", y, m, d,
				 (int) (time / USECS_PER_HOUR), (int) (time / USECS_PER_MINUTE % 60),
				 (int) (time / USECS_PER_SEC % 60));
	if (time % USECS_PER_SEC != 0)
		n += snprintf(buf + n, cap - n, ".%06d", (int) (time % USECS_PER_SEC));
	n += snprintf(buf + n, cap - n, "Z");
	return n;
}

static void
check_round_trip(const LedgerLot *lots, int n)
{
	size_t		cap = 16 + (size_t) n * 120;
	char	   *text = malloc(cap);
	LedgerLot  *back = malloc(sizeof(LedgerLot) * (n > 4 ? n : 4));
	size_t		len = 0;
	int			nback = 0;

	len += snprintf(text + len, cap - len, "{");
	for (int i = 0; i < n; i++)
	{
		len += snprintf(text + len, cap - len, "%s(" INT64_FORMAT ",", i > 0 ? "," : "", lots[i].points);
		len += format_utc(text + len, cap - len, lots[i].expires_at);
		len += snprintf(text + len, cap - len, ",");
		len += format_utc(text + len, cap - len, lots[i].earned_at);
		len += snprintf(text + len, cap - len, ",");
		if (lots[i].source != 0)
			len += snprintf(text + len, cap - len, INT64_FORMAT, lots[i].source);
		len += snprintf(text + len, cap - len, ")");
	}
	snprintf(text + len, cap - len, "}");
	if (ledger_parse_text(text, back, n > 4 ? n : 4, &nback) != LPE_OK ||
		ledger_canonicalize(back, &nback) != LPE_OK || nback != n ||
		(n > 0 && memcmp(back, lots, sizeof(LedgerLot) * n) != 0))
		abort();
	free(back);
	free(text);
}

static void
check_ledger(const LedgerLot *lots, int n)
{
	int64		total = 0;

	for (int i = 0; i < n; i++)
	{
		if (lots[i].points <= 0 || lots[i].earned_at >= lots[i].expires_at ||
			lots[i].source < 0 ||
			!LEDGER_TS_IN_RANGE(lots[i].earned_at) || !LEDGER_TS_IN_RANGE(lots[i].expires_at) ||
			(i > 0 && lots[i].expires_at <= lots[i - 1].expires_at) ||
			pg_add_s64_overflow(total, lots[i].points, &total))
			abort();
	}
	check_round_trip(lots, n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 1024 * 1024)
		return 0;
	if ((data[0] & 1) == 0)
	{
		char	   *str = malloc(size);
		int			count,
					n = 0;
		LedgerLot  *lots;

		memcpy(str, data + 1, size - 1);
		str[size - 1] = '\0';
		count = ledger_text_count_lots(str);
		if (count <= LEDGER_MAX_LOTS)
		{
			int			cap = count > 4 ? count : 4;

			lots = malloc(sizeof(LedgerLot) * cap);
			if (ledger_parse_text(str, lots, cap, &n) == LPE_OK &&
				ledger_canonicalize(lots, &n) == LPE_OK)
				check_ledger(lots, n);
			free(lots);
		}
		free(str);
	}
	else
	{
		/* an exact-size copy, so ASan sees any read past the message */
		int			len = (int) size - 1;
		char	   *msg = malloc(len > 0 ? len : 1);
		int32		n;

		memcpy(msg, data + 1, len);
		if (ledger_recv_header(msg, len, &n) == LPE_OK)
		{
			LedgerLot  *lots = malloc(sizeof(LedgerLot) * (n > 0 ? n : 1));

			if (ledger_recv_lots(msg, len, n, lots) == LPE_OK)
				check_ledger(lots, n);
			free(lots);
		}
		free(msg);
	}
	return 0;
}
