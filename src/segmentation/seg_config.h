/*
 * seg_config.h
 *		The time segmentation works at, and local days.
 * Include after postgres.h.
 */
#ifndef SEG_CONFIG_H
#define SEG_CONFIG_H

#include "datatype/timestamp.h"

extern void crm_seg_config_init(void);

/* Local day number (days since 2000-01-01 in the configured time zone) and weekday 0=sun. */
extern int32 crm_local_day(TimestampTz ts, int *weekday);

/* The "now" of segmentation work: crm.as_of if set, else the transaction start. */
extern TimestampTz crm_seg_now(void);

#endif							/* SEG_CONFIG_H */
