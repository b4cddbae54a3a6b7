/*
 * crm_ext.h
 *		Declarations shared by the concepts of crm_ext.
 */
#ifndef CRM_EXT_H
#define CRM_EXT_H

#include "postgres.h"

#include "access/attnum.h"
#include "access/htup.h"
#include "executor/spi.h"
#include "utils/relcache.h"

/*
 * The extension's own SQLSTATEs, class "CR" (documented in README.md,
 * "Errors").  Generic conditions use PostgreSQL's standard codes instead.
 */
#define ERRCODE_CRM_INSUFFICIENT_POINTS		MAKE_SQLSTATE('C','R','0','0','1')
#define ERRCODE_CRM_IDEMPOTENCY_CONFLICT	MAKE_SQLSTATE('C','R','0','0','2')
#define ERRCODE_CRM_COUPON_UNAVAILABLE		MAKE_SQLSTATE('C','R','0','0','3')
#define ERRCODE_CRM_MERGE_REFUSED			MAKE_SQLSTATE('C','R','0','0','4')
#define ERRCODE_CRM_SAMPLE_NOT_EMPTY		MAKE_SQLSTATE('C','R','0','0','5')
#define ERRCODE_CRM_MODEL_NOT_CONVERGED		MAKE_SQLSTATE('C','R','0','0','6')
#define ERRCODE_CRM_INSUFFICIENT_DATA		MAKE_SQLSTATE('C','R','0','0','7')

/* triggers.c */
extern void crm_triggers_init(void);
extern void crm_kept_plans_check(void);
extern SPIPlanPtr crm_prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes,
								   int cursor_options);
extern int	crm_trigger_attnum(Relation rel, const char *name, const char *fn);
extern HeapTuple crm_row_by_index(Relation rel, Oid idx, const Datum *key);
extern bool crm_first_row_by_index(Oid relid, Oid idx, const Datum *key, AttrNumber att,
								   Datum *value, bool *isnull);

/* loyalty.c */
extern void crm_loyalty_init(void);
/* identity.c */
extern void crm_identity_init(void);
/* seg_config.c */
extern void crm_seg_config_init(void);

#endif							/* CRM_EXT_H */
