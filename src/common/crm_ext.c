/*
 * crm_ext.c
 *		Module magic and load-time initialisation of crm_ext.
 *
 * Each concept lives in its own file (see src/); this one only marks the
 * library as a PostgreSQL module and runs _PG_init.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "crm_ext.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * _PG_init
 *		Called once per backend when the library is loaded.  Concepts that need
 *		per-backend state (GUCs, caches) register it from here.
 */
void
_PG_init(void)
{
	crm_settings_init();
	crm_kept_plans_init();
	crm_shard_init();
	crm_config_cache_init();
	crm_origin_init();
	crm_loyalty_init();
	crm_identity_init();
	crm_seg_config_init();
	crm_prediction_init();

	/*
	 * Every crm.* setting is declared above: a misspelt one (or one that no
	 * longer exists) is an error when set, not a silent no-op.
	 */
	MarkGUCPrefixReserved("crm");
}
