/*
 * seg_config.h
 *		Shared plumbing of the segmentation concepts: the per-backend
 *		configuration cache generation, money in cents, local days.
 */
#ifndef SEG_CONFIG_H
#define SEG_CONFIG_H

#include "postgres.h"

#include "datatype/timestamp.h"

/*
 * Bumped whenever a segmentation configuration table (crm.tag,
 * crm.rfm_segment_map, crm.rfm_threshold, crm.lifecycle_setting,
 * crm.segment_setting) changes in any backend; caches compare it with the
 * generation they were built at.
 */
extern uint64 crm_seg_config_generation;

extern void crm_seg_config_init(void);
extern Oid	crm_relid(const char *relname);

/* numeric <-> int64 cents (values with more than 2 decimals are rounded) */
extern int64 crm_numeric_to_cents(Datum num);
extern void crm_sort_int64(int64 *a, size_t n);
extern Datum crm_cents_to_numeric(int64 cents);

/* Local day number (days since 2000-01-01 in the configured time zone) and weekday 0=sun. */
extern int32 crm_local_day(TimestampTz ts, int *weekday);

/* The "now" of segmentation work: crm.as_of if set, else the transaction start. */
extern TimestampTz crm_seg_now(void);

#endif							/* SEG_CONFIG_H */
