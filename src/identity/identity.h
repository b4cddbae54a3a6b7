/*
 * identity.h
 *		Online identity stitching: the crm.identity insert trigger and the
 *		crm.stitch_on_insert setting.
 */
#ifndef CRM_IDENTITY_H
#define CRM_IDENTITY_H

#include "postgres.h"

extern bool crm_stitch_on_insert;

#endif							/* CRM_IDENTITY_H */
