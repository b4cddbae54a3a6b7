/*
 * customer_stats.h
 *		Trigger-maintained customer features, lifecycle stages and rule tags
 *		(src/segmentation/stats_*.c; what those files share is in
 *		stats_private.h).  Include after postgres.h.
 */
#ifndef CUSTOMER_STATS_H
#define CUSTOMER_STATS_H

#include "datatype/timestamp.h"

/* Re-evaluate stage and rule tags of every customer with stats, as of "at". */
extern int64 customer_stats_tick(TimestampTz at);

#endif							/* CUSTOMER_STATS_H */
