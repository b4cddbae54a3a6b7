/*
 * loyalty_ledger_parse.h
 *		Pure parsers of the crm.loyalty_ledger text and binary forms.
 *
 * Nothing here allocates or raises: the caller sizes the lot array (from
 * ledger_text_count_lots or ledger_recv_header) and turns a LedgerParseError
 * into an ereport.  The functions use only c.h types, libc and PostgreSQL's
 * port library (pg_qsort), so test/fuzz builds them without a server.
 * Include after postgres.h.
 */
#ifndef LOYALTY_LEDGER_PARSE_H
#define LOYALTY_LEDGER_PARSE_H

#include "loyalty_ledger.h"

typedef enum LedgerParseError
{
	LPE_OK = 0,
	/* text form */
	LPE_SYNTAX,
	LPE_POINTS_RANGE,
	LPE_POINTS_NOT_POSITIVE,
	LPE_TIMESTAMP,
	LPE_EARNED_AFTER_EXPIRY,
	LPE_SOURCE,
	LPE_TOO_MANY_LOTS,
	LPE_TOTAL_RANGE,			/* the lots add up past int64 */
	/* binary form */
	LPE_BIN_SHORT,
	LPE_BIN_VERSION,
	LPE_BIN_COUNT,
	LPE_BIN_LENGTH,
	LPE_BIN_POINTS,
	LPE_BIN_TIMESTAMP,
	LPE_BIN_EARNED_AFTER_EXPIRY,
	LPE_BIN_SOURCE,
	LPE_BIN_ORDER,
	LPE_BIN_TOTAL
} LedgerParseError;

/*
 * Lot timestamps lie in the years the text form writes, 0001-01-01 to
 * 9999-12-31 UTC, so every ledger has a text form that reads back.
 */
#define LEDGER_MIN_TS		INT64CONST(-63082281600000000)	/* 0001-01-01 */
#define LEDGER_END_TS		INT64CONST(252455616000000000)	/* 10000-01-01 */
#define LEDGER_TS_IN_RANGE(t)	((t) >= LEDGER_MIN_TS && (t) < LEDGER_END_TS)

/* Binary form: int2 version, int4 lot count, then 4 x int8 per lot. */
#define LEDGER_BIN_HDRSZ	6
#define LEDGER_BIN_LOTSZ	32

/* Number of '(' in str, counting stops past LEDGER_MAX_LOTS. */
extern int	ledger_text_count_lots(const char *str);

/* Text form into lots[0..cap-1], as written (not sorted). */
extern LedgerParseError ledger_parse_text(const char *str, LedgerLot *lots, int cap, int *nlots);

/* Sorts by expiry and coalesces lots of equal expiry; the total must fit. */
extern LedgerParseError ledger_canonicalize(LedgerLot *lots, int *nlots);

/* Binary form: the header's lot count, after checking it against len. */
extern LedgerParseError ledger_recv_header(const char *data, int len, int32 *nlots);

/* Binary form: the lots (nlots from ledger_recv_header), every field checked. */
extern LedgerParseError ledger_recv_lots(const char *data, int len, int32 nlots, LedgerLot *lots);

/* The detail sentence of a binary-form error. */
extern const char *ledger_recv_error_detail(LedgerParseError err);

#endif							/* LOYALTY_LEDGER_PARSE_H */
