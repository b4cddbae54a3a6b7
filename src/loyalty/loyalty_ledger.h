/*
 * loyalty_ledger.h
 *		The crm.loyalty_ledger type: a customer's points as lots.
 *
 * A ledger is a varlena holding a small header and an array of lots sorted by
 * expiry, strictly increasing: lots with the same expiry are coalesced, so a
 * ledger never holds more lots than there are distinct expiry instants among
 * its unexpired points (with the default policy, one per month: at most 13).
 * Every lot holds at least one point, and the sum of all lots fits in int64,
 * so balance arithmetic on a valid ledger cannot overflow.
 * Include after postgres.h.
 */
#ifndef LOYALTY_LEDGER_H
#define LOYALTY_LEDGER_H

#include "fmgr.h"
#include "utils/timestamp.h"

#define LEDGER_VERSION		1
/* Hard cap on lots in one ledger (input and construction are checked). */
#define LEDGER_MAX_LOTS		100000

typedef struct LedgerLot
{
	int64		points;			/* remaining points, > 0 */
	TimestampTz expires_at;		/* points count while at < expires_at */
	TimestampTz earned_at;		/* earliest earn coalesced into the lot */
	int64		source;			/* source order id, 0 = none or several */
} LedgerLot;

typedef struct Ledger
{
	int32		vl_len_;		/* varlena header (do not touch directly) */
	uint16		version;		/* LEDGER_VERSION */
	uint16		flags;			/* 0; reserved */
	int32		nlots;
	int32		pad;			/* keeps lots 8-byte aligned; 0 */
	LedgerLot	lots[FLEXIBLE_ARRAY_MEMBER];
} Ledger;

#define LEDGER_HDRSZ		offsetof(Ledger, lots)

#define DatumGetLedgerP(X)	((Ledger *) PG_DETOAST_DATUM(X))
#define PG_GETARG_LEDGER_P(n)	DatumGetLedgerP(PG_GETARG_DATUM(n))
#define PG_GETARG_LEDGER_P_COPY(n)	((Ledger *) PG_DETOAST_DATUM_COPY(PG_GETARG_DATUM(n)))
#define PG_RETURN_LEDGER_P(x)	PG_RETURN_POINTER(x)

/* A growable working copy of lots, used to build ledgers. */
typedef struct LotBuf
{
	LedgerLot  *lots;
	int			n;
	int			cap;
} LotBuf;

extern void lotbuf_init(LotBuf *buf, int cap);
extern void lotbuf_from_ledger(LotBuf *buf, const Ledger *l);
extern void lotbuf_add(LotBuf *buf, int64 points, TimestampTz expires_at,
					   TimestampTz earned_at, int64 source);
extern int64 lotbuf_take(LotBuf *buf, int64 points, TimestampTz prefer_expiry,
						 TimestampTz at, LotBuf *taken);
extern int64 lotbuf_total(const LotBuf *buf);
extern Ledger *lotbuf_to_ledger(LotBuf *buf);
extern Ledger *ledger_empty(void);
extern int64 ledger_balance_at(const Ledger *l, TimestampTz at);
extern void crm_insufficient_points(int64 available, int64 requested) pg_attribute_noreturn();

#endif							/* LOYALTY_LEDGER_H */
