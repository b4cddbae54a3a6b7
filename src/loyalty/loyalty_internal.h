/*
 * loyalty_internal.h
 *		What the member programme's C files share, and nothing else:
 *
 * loyalty_config.c		the per-backend cache of the configuration (programme,
 *						tiers, earn rules), the expiry policy and programme
 *						months, setting crm.loyalty_now
 * loyalty_account.c	the business rules on one account in memory: earning,
 *						clawback and reinstatement, debt, the monthly spend
 *						buckets, the tier a rolling spend reaches; the CHECK
 *						functions of accounts and journal rows
 * loyalty_triggers.c	the statement triggers on crm.orders and
 *						crm.order_line: batching, locking, the SQL writes
 *
 * Include after postgres.h.
 */
#ifndef LOYALTY_INTERNAL_H
#define LOYALTY_INTERNAL_H

#include "pgtime.h"
#include "storage/itemptr.h"
#include "utils/palloc.h"
#include "utils/timestamp.h"

#include "loyalty_ledger.h"

/* ------------------------------------------------------------------------
 * Configuration (loyalty_config.c)
 * ------------------------------------------------------------------------
 */
typedef struct TierConf
{
	char	   *name;
	int			rank;
	int64		threshold_cents;
	int64		mult_milli;
} TierConf;

typedef struct RuleConf
{
	TimestampTz valid_from;
	TimestampTz valid_to;
	int64		ppu_e4;			/* points per unit x 10^4 */
	int64		bday_milli;
	int			member_day;		/* 0 = none */
	int64		md_milli;
	int			nbonus;
	char	  **bonus_cat;
	int64	   *bonus_e4;
} RuleConf;

/* The columns of crm.loyalty_account that parse_account reads, in this order. */
typedef enum AccountField
{
	ACCT_CUSTOMER_ID,
	ACCT_LEDGER,
	ACCT_DEBT,
	ACCT_TIER,
	ACCT_TIER_SINCE,
	ACCT_SPEND_MONTH,
	ACCT_SPEND_CENTS,
	ACCT_NFIELDS
} AccountField;

typedef struct LoyaltyConf
{
	bool		loaded;
	uint64		generation;		/* crm_config_generation() when loaded */
	MemoryContext cxt;
	pg_tz	   *tz;
	int			expiry_months;
	bool		month_end;
	int			tier_hold_months;	/* a tier is kept this long (crm.tier_held) */
	int			ntiers;
	TierConf   *tiers;			/* by rank ascending; [0] has threshold 0 */
	int			nrules;
	RuleConf   *rules;			/* priority desc, valid_from desc */
	bool		any_bonus;
	Oid			ledger_type;
	Oid			ledger_array_type;
	/* crm.customer, its primary key and birthday column (see birth_month) */
	Oid			customer_relid;
	Oid			customer_pkey;
	AttrNumber	birthday_att;
	/* crm.loyalty_account, its primary key and the columns parse_account reads */
	Oid			account_relid;
	Oid			account_pkey;
	AttrNumber	account_cols[ACCT_NFIELDS];
} LoyaltyConf;

extern LoyaltyConf loyalty_conf;

extern void loyalty_connect_and_load(void);
extern const RuleConf *loyalty_rule_at(TimestampTz t);
extern int	loyalty_tier_index(const char *name);
extern void loyalty_local_tm(TimestampTz t, struct pg_tm *tm, fsec_t *fsec);
extern int32 loyalty_month_index(TimestampTz t);
extern TimestampTz loyalty_now(void);
extern TimestampTz loyalty_expiry_of(TimestampTz t);

/* ------------------------------------------------------------------------
 * Accounts (loyalty_account.c)
 * ------------------------------------------------------------------------
 */
#define SPEND_MONTHS	12		/* the months a rolling spend counts */

/*
 * The months an account keeps: one more than a rolling spend counts, so an
 * order dated into next month (crm.max_future allows a day by default)
 * moves the window on without dropping the oldest month that still counts
 * now.  Never more than one month ahead of now() (spend_window_add).
 */
#define SPEND_SLOTS		13

/*
 * Qualifying spend in cents by programme month (loyalty_month_index): the
 * columns spend_month and spend_cents of crm.loyalty_account.
 */
typedef struct SpendWindow
{
	int32		month;			/* the newest month with spend */
	int64		cents[SPEND_SLOTS]; /* [k]: month - k */
} SpendWindow;

typedef struct Acct
{
	int64		cust;
	LotBuf		lots;
	int64		debt;
	int			tier;			/* index into loyalty_conf.tiers */
	TimestampTz tier_since;
	SpendWindow spend;
	int			birth_month;	/* 0 = unknown */
	bool		changed;
	ItemPointerData tid;		/* the row version read (run_unlocked) */
} Acct;

/*
 * Where the account rules put the journal rows and tier changes they make:
 * the write buffers of the trigger running them (loyalty_triggers.c).
 */
typedef struct LoyaltyBatch LoyaltyBatch;

extern void loyalty_journal_add(LoyaltyBatch *batch, int64 cust, int64 origin, const char *kind,
								int64 points, Ledger *lots, int64 debt, int64 order_id,
								TimestampTz at, const char *reason);
extern void loyalty_tier_change_add(LoyaltyBatch *batch, int64 cust, int from_tier, int to_tier,
									TimestampTz at, int64 order_id, int64 spend_cents);

extern void loyalty_spend_add(Acct *ac, int32 month, int64 cents);
extern int64 loyalty_spend_total(const Acct *ac);
extern int	loyalty_tier_for_spend(int64 spend_cents);
extern void loyalty_upgrade_on_spend(LoyaltyBatch *batch, Acct *ac, int64 order_id, TimestampTz at);
extern int64 loyalty_order_points(const Acct *ac, const RuleConf *rule, const struct pg_tm *local,
								  int64 amount_cents, int64 order_id);
extern int64 loyalty_bonus_of(const RuleConf *rule, const char *category);
extern void loyalty_earn(LoyaltyBatch *batch, Acct *ac, const char *kind, int64 origin,
						 int64 order_id, int64 points, TimestampTz earned_at,
						 TimestampTz expires, TimestampTz at, const char *reason);
extern void loyalty_clawback(LoyaltyBatch *batch, Acct *ac, int64 origin, int64 order_id,
							 int64 earned, int64 clawed, TimestampTz ordered_at,
							 TimestampTz expires, int64 net_cents, int64 amount_cents,
							 TimestampTz at, const char *reason);

#endif							/* LOYALTY_INTERNAL_H */
