/*
 * int64_hash.h
 *		A simplehash table keyed by int64 (customer ids), declared and defined
 *		static inline in the including file.  Define SH_PREFIX, SH_ELEMENT_TYPE
 *		and SH_KEY (the int64 key member; the element also needs a "char
 *		status" member), then include this file.
 */
#include "crm_ext.h"

#define SH_KEY_TYPE int64
#define SH_HASH_KEY(tb, key) ((uint32) crm_mix64((uint64) (key)))
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"
