/*
 * identity.h
 *		Online identity stitching: the crm.identity insert trigger and the
 *		crm.stitch_on_insert setting (identity.c), and the link policy
 *		(identity_policy.c).  Include after postgres.h.
 */
#ifndef CRM_IDENTITY_H
#define CRM_IDENTITY_H

extern bool crm_stitch_on_insert;

/*
 * May (kind, value) link the customer records holding it?  Blocklist, known
 * kind, strong kinds always, weak kinds while at most max_customers records
 * hold it.  holders: the number of crm.identity rows holding the value, or
 * -1 to count them.  The caller is connected to SPI.
 */
extern bool crm_identity_may_link(Datum kind, Datum value, int64 holders, bool read_only);

#endif							/* CRM_IDENTITY_H */
