/*
 * stats_private.h
 *		What the three parts of crm.customer_stats share (private to
 *		src/segmentation/stats_*.c; include after postgres.h):
 *
 *		stats_fold.c	the per-customer state and how facts fold into it:
 *						day buckets, categories, rolling windows, features,
 *						and the compact columns' bytes
 *		stats_batch.c	a statement's facts collected per customer, the
 *						stats rows loaded and locked, stage and tag changes
 *						computed and written
 *		stats_trigger.c	crm.customer_stats_trigger and the SQL entry points
 *
 * Flow.  Every trigger turns its transition table into one query whose rows
 * are "facts" in customer_id order (FactColumn below):
 *		(customer_id, kind, at, paid, amount, order_id, category, count)
 * kind 0 = order, 1 = order line, 2 = events, 3 = nothing (re-evaluate).
 * Facts are read through a cursor; every ~2000 customers the batch is
 * flushed: the customers' stats rows are read (one query), the facts folded
 * in, stage and tags evaluated in C, and the changes written back (one
 * upsert, one tag insert, one tag delete, history rows).  So each affected
 * customer is touched once per statement, whatever the number of orders.
 * Inserted orders and lines are folded in incrementally; updates and
 * deletes (refunds, merges moving customer_id) rebuild the customers
 * concerned from their orders, lines and events with the same code.
 *
 * Rolling windows.  Column "days" holds a compact array of day buckets
 * (local day number, paid orders, cents), sorted by day, one per day with
 * orders, for the 400 days up to the customer's latest order day, and a
 * "horizon": every paid order on or after the horizon day is in a bucket.
 * An order is folded in by bumping its day's bucket (the last one for
 * orders arriving in time order: constant time), older buckets drop off the
 * front, so the array never exceeds 400 entries.  Orders and spend over the
 * N days up to any date D are the sum of the buckets in (D - N, D]: exact
 * whenever D - N + 1 >= horizon, i.e. for every D from 35 days before the
 * last order on (365-day window) and earlier for the shorter windows;
 * crm.customer_window falls back to crm.orders for older dates.
 *
 * Categories.  Column "categories" holds, per category bought, the number
 * of paid orders with a line in it, the line amounts (cents) and the orders
 * per weekday: the inputs of share(), category_orders(), category_spend()
 * and top_weekday(category).  An order counts once per category: lines
 * inserted by a later statement carry count 0 for a category the order
 * already had (the order was counted then).
 */
#ifndef STATS_PRIVATE_H
#define STATS_PRIVATE_H

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "utils/tuplestore.h"

#include "tag_rule.h"

#define DAY_HORIZON		400
#define NO_HORIZON		PG_INT32_MIN

typedef enum FactKind
{
	FACT_ORDER = 0,
	FACT_LINE = 1,
	FACT_EVENTS = 2,
	FACT_NONE = 3
} FactKind;

/* The columns of every fact query, in this order (1-based, as SPI counts). */
typedef enum FactColumn
{
	FACT_COL_CUSTOMER_ID = 1,	/* bigint */
	FACT_COL_KIND,				/* integer: a FactKind */
	FACT_COL_AT,				/* timestamptz */
	FACT_COL_PAID,				/* boolean */
	FACT_COL_AMOUNT,			/* numeric */
	FACT_COL_ORDER_ID,			/* bigint */
	FACT_COL_CATEGORY,			/* text */
	FACT_COL_COUNT				/* bigint */
} FactColumn;

typedef struct Fact
{
	int64		cust;
	int			kind;
	TimestampTz at;
	bool		paid;
	int64		cents;
	int64		order_id;
	char	   *category;
	int64		count;
} Fact;

typedef struct DayBucket
{
	int32		day;
	int32		orders;
	int64		cents;
} DayBucket;

typedef struct CatStat
{
	char	   *name;
	int32		orders;
	int64		cents;
	int32		weekday[7];
	int64		last_order;		/* last order counted in this statement */
} CatStat;

/* One customer's stats, stage and rule tags while a batch works on them. */
typedef struct CustState
{
	int64		customer_id;
	char		status;			/* simplehash */
	bool		existed;		/* had a stats row */
	bool		placeholder;	/* its row was created empty by this statement, to lock */
	bool		dirty;			/* facts applied: write the row */
	bool		golden;
	int32		orders;
	int32		refunded;
	int64		cents;
	TimestampTz first_at;
	TimestampTz last_at;
	int32		weekday[7];
	int32		events;
	TimestampTz last_event_at;	/* 0 with events == 0 */
	int32		horizon;
	int			ndays;
	int			maxdays;
	DayBucket  *days;
	int			ncats;
	int			maxcats;
	CatStat    *cats;
	char	   *stage;
	TimestampTz stage_since;
	int			ntags;
	int32	   *tags;			/* current rule tags */
} CustState;

/* stats_fold.c */
extern void stats_apply_fact(CustState *st, const Fact *f);
extern bool stats_window_sum(const CustState *st, int32 asof_day, int width,
							 int64 *orders, int64 *cents);
extern void stats_features(const CustState *st, TimestampTz as_of, TagFacts *f,
						   TagCategory *cats);
extern void stats_bad_column(const char *problem, bool from_table);
extern bytea *stats_days_to_bytea(const CustState *st);
extern void stats_days_from_bytea(CustState *st, bytea *b, bool from_table);
extern bytea *stats_cats_to_bytea(CustState *st);
extern void stats_cats_from_bytea(CustState *st, bytea *b, bool from_table);

/* stats_batch.c */
extern int64 stats_process_facts(SPIPlanPtr plan, Datum *args, bool rebuild, bool tick,
								 TimestampTz as_of);
extern void stats_fold_facts(const Fact *facts, int nfacts, TimestampTz as_of);
extern void stats_expected_facts(SPIPlanPtr plan, Datum *args, TimestampTz as_of,
								 Tuplestorestate *sink, TupleDesc sink_desc);

#endif							/* STATS_PRIVATE_H */
