/*
 * identity.h
 *		Online identity stitching: the crm.identity insert trigger and the
 *		crm.stitch_on_insert setting (identity.c), and the link policy
 *		(identity_policy.c).  Include after postgres.h.
 */
#ifndef CRM_IDENTITY_H
#define CRM_IDENTITY_H

extern bool crm_stitch_on_insert;

/* The link policy's verdict on a shared (kind, value). */
typedef enum LinkVerdict
{
	LINK_NONE,					/* links nobody (blocklisted, unknown kind, weak kind over its limit) */
	LINK_YES,					/* links the records holding it */
	LINK_HUB					/* strong kind held by more records than max_holders: review */
} LinkVerdict;

/*
 * The verdict on (kind, value): blocklist, known kind, strong kinds while at
 * most max_holders records hold it (more is a hub: review), weak kinds while
 * at most max_customers do.  holders: the number of crm.identity rows holding
 * the value, or -1 to count them.  The caller is connected to SPI.
 */
extern LinkVerdict crm_identity_link_verdict(Datum kind, Datum value, int64 holders, bool read_only);
extern bool crm_identity_may_link(Datum kind, Datum value, int64 holders, bool read_only);

#endif							/* CRM_IDENTITY_H */
