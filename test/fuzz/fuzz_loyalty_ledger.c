/*
 * fuzz_loyalty_ledger.c
 *		libFuzzer target: the crm.loyalty_ledger text and binary parsers
 *		(src/loyalty_ledger_parse.c).  The first input byte picks the form
 *		(even: text, odd: binary); the rest is the input.  Whatever is
 *		accepted must be a valid ledger: lots strictly increasing by expiry,
 *		each with points > 0 earned before it expires, timestamps within the
 *		text form's years, a total that fits in int64.
 */
#include "postgres.h"

#include <stdlib.h>

#include "common/int.h"

#include "loyalty_ledger_parse.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
