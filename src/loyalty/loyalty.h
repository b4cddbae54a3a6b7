/*
 * loyalty.h
 *		The member programme: C triggers on crm.orders and crm.order_line,
 *		and the per-backend cache of its configuration (crm_loyalty_init is
 *		declared in crm_ext.h, called from _PG_init).
 */
#ifndef LOYALTY_H
#define LOYALTY_H

#include "postgres.h"

#endif							/* LOYALTY_H */
