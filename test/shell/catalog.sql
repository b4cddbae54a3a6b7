-- test/shell/catalog.sql: everything crm_ext put into a database, as sorted
-- text lines without OIDs, so that two installations can be diffed (the
-- upgrade test: an updated one against a fresh one).  Columns are compared by
-- name, not position: an upgrade can only append columns.
SELECT line FROM (
	-- every member of the extension
	SELECT 'member ' || pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS line
	FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
	WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
	  AND e.extname = 'crm_ext'
	UNION ALL
	-- what pg_dump keeps of each table
	SELECT 'config_dump ' || c::pg_catalog.regclass::pg_catalog.text || ' ' || coalesce(w, '')
	FROM pg_catalog.pg_extension e, ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) AS u(c, w)
	WHERE e.extname = 'crm_ext'
	UNION ALL
	SELECT 'schema ' || n.nspname || ' owner_is_installer=' || (n.nspowner = e.extowner)::pg_catalog.text
	       || ' acl=' || coalesce(pg_catalog.regexp_replace(n.nspacl::pg_catalog.text, '[a-z_0-9]+=', '', 'g'), '')
	       || ' comment=' || coalesce(pg_catalog.obj_description(n.oid, 'pg_namespace'), '')
	FROM pg_catalog.pg_namespace n, pg_catalog.pg_extension e
	WHERE n.nspname = 'crm' AND e.extname = 'crm_ext'
	UNION ALL
	-- functions: signature, result, body, settings, labels, privileges, comment
	SELECT 'function ' || p.oid::pg_catalog.regprocedure::pg_catalog.text
	       || ' args=' || pg_catalog.pg_get_function_arguments(p.oid)
	       || ' result=' || coalesce(pg_catalog.pg_get_function_result(p.oid), '')
	       || ' kind=' || p.prokind::pg_catalog.text || ' lang=' || l.lanname || ' vol=' || p.provolatile::pg_catalog.text
	       || ' strict=' || p.proisstrict::pg_catalog.text || ' parallel=' || p.proparallel::pg_catalog.text
	       || ' secdef=' || p.prosecdef::pg_catalog.text || ' leakproof=' || p.proleakproof::pg_catalog.text
	       || ' cost=' || p.procost::pg_catalog.text || ' rows=' || p.prorows::pg_catalog.text
	       || ' config=' || coalesce(p.proconfig::pg_catalog.text, '')
	       || ' acl=' || coalesce(p.proacl::pg_catalog.text, '')
	       || ' comment=' || coalesce(pg_catalog.obj_description(p.oid, 'pg_proc'), '')
	       || ' body=' || pg_catalog.md5(coalesce(p.prosrc, '') || coalesce(p.probin, '')
	                                    || coalesce(pg_catalog.pg_get_function_sqlbody(p.oid), ''))
	FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
	WHERE p.pronamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	SELECT 'aggregate ' || a.aggfnoid::pg_catalog.regprocedure::pg_catalog.text
	       || ' ' || a.aggtransfn::pg_catalog.text || ' ' || a.aggfinalfn::pg_catalog.text
	       || ' ' || a.aggcombinefn::pg_catalog.text || ' ' || a.aggserialfn::pg_catalog.text
	       || ' ' || a.aggdeserialfn::pg_catalog.text || ' ' || a.aggtranstype::pg_catalog.regtype::pg_catalog.text
	       || ' ' || coalesce(a.agginitval, '') || ' ' || a.aggfinalmodify::pg_catalog.text
	FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc p ON p.oid = a.aggfnoid
	WHERE p.pronamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	-- relations: kind, options, privileges, comment, view definition
	SELECT 'relation ' || c.oid::pg_catalog.regclass::pg_catalog.text || ' kind=' || c.relkind::pg_catalog.text
	       || ' persistence=' || c.relpersistence::pg_catalog.text || ' rls=' || c.relrowsecurity::pg_catalog.text
	       || '/' || c.relforcerowsecurity::pg_catalog.text
	       || ' options=' || coalesce(c.reloptions::pg_catalog.text, '')
	       || ' acl=' || coalesce(c.relacl::pg_catalog.text, '')
	       || ' comment=' || coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '')
	       || CASE WHEN c.relkind IN ('v', 'm') THEN ' view=' || pg_catalog.pg_get_viewdef(c.oid) ELSE '' END
	       || CASE WHEN c.relkind = 'i' THEN ' index=' || pg_catalog.pg_get_indexdef(c.oid) ELSE '' END
	FROM pg_catalog.pg_class c
	WHERE c.relnamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	SELECT 'column ' || c.oid::pg_catalog.regclass::pg_catalog.text || '.' || a.attname
	       || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
	       || ' notnull=' || a.attnotnull::pg_catalog.text || ' generated=' || a.attgenerated::pg_catalog.text
	       || ' identity=' || a.attidentity::pg_catalog.text
	       || ' default=' || coalesce(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
	       || ' collation=' || coalesce(a.attcollation::pg_catalog.regcollation::pg_catalog.text, '')
	       || ' acl=' || coalesce(a.attacl::pg_catalog.text, '')
	       || ' comment=' || coalesce(pg_catalog.col_description(c.oid, a.attnum), '')
	FROM pg_catalog.pg_class c
	JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	WHERE c.relnamespace = 'crm'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'c')
	UNION ALL
	SELECT 'constraint ' || coalesce(c.conrelid::pg_catalog.regclass::pg_catalog.text, c.contypid::pg_catalog.regtype::pg_catalog.text)
	       || ' ' || c.conname || ' ' || pg_catalog.pg_get_constraintdef(c.oid)
	       || ' deferrable=' || c.condeferrable::pg_catalog.text
	       || ' comment=' || coalesce(pg_catalog.obj_description(c.oid, 'pg_constraint'), '')
	FROM pg_catalog.pg_constraint c
	WHERE c.connamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	SELECT 'trigger ' || t.tgrelid::pg_catalog.regclass::pg_catalog.text || ' ' || t.tgname
	       || ' enabled=' || t.tgenabled::pg_catalog.text || ' ' || pg_catalog.pg_get_triggerdef(t.oid)
	FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
	WHERE c.relnamespace = 'crm'::pg_catalog.regnamespace AND NOT t.tgisinternal
	UNION ALL
	SELECT 'policy ' || p.schemaname || '.' || p.tablename || ' ' || p.policyname || ' ' || p.permissive
	       || ' ' || p.roles::pg_catalog.text || ' ' || p.cmd || ' ' || coalesce(p.qual, '') || ' ' || coalesce(p.with_check, '')
	FROM pg_catalog.pg_policies p WHERE p.schemaname = 'crm'
	UNION ALL
	SELECT 'type ' || t.oid::pg_catalog.regtype::pg_catalog.text || ' kind=' || t.typtype::pg_catalog.text
	       || ' len=' || t.typlen::pg_catalog.text || ' align=' || t.typalign::pg_catalog.text || ' storage=' || t.typstorage::pg_catalog.text
	       || ' in=' || t.typinput::pg_catalog.text || ' out=' || t.typoutput::pg_catalog.text
	       || ' recv=' || t.typreceive::pg_catalog.text || ' send=' || t.typsend::pg_catalog.text
	       || ' base=' || t.typbasetype::pg_catalog.regtype::pg_catalog.text
	       || ' acl=' || coalesce(t.typacl::pg_catalog.text, '')
	       || ' comment=' || coalesce(pg_catalog.obj_description(t.oid, 'pg_type'), '')
	FROM pg_catalog.pg_type t
	WHERE t.typnamespace = 'crm'::pg_catalog.regnamespace AND t.typrelid = 0 AND t.typelem = 0
	UNION ALL
	SELECT 'operator ' || o.oid::pg_catalog.regoperator::pg_catalog.text || ' ' || o.oprcode::pg_catalog.text
	       || ' com=' || o.oprcom::pg_catalog.regoperator::pg_catalog.text || ' neg=' || o.oprnegate::pg_catalog.regoperator::pg_catalog.text
	       || ' rest=' || o.oprrest::pg_catalog.text || ' join=' || o.oprjoin::pg_catalog.text
	       || ' hashes=' || o.oprcanhash::pg_catalog.text || ' merges=' || o.oprcanmerge::pg_catalog.text
	       || ' comment=' || coalesce(pg_catalog.obj_description(o.oid, 'pg_operator'), '')
	FROM pg_catalog.pg_operator o WHERE o.oprnamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	SELECT 'opclass ' || am.amname || ' ' || oc.opcname || ' ' || oc.opcintype::pg_catalog.regtype::pg_catalog.text
	       || ' default=' || oc.opcdefault::pg_catalog.text || ' ' || coalesce((
	           SELECT pg_catalog.string_agg(ao.amopstrategy::pg_catalog.text || ':' || ao.amopopr::pg_catalog.regoperator::pg_catalog.text, ',' ORDER BY ao.amopstrategy)
	           FROM pg_catalog.pg_amop ao WHERE ao.amopfamily = oc.opcfamily), '')
	       || ' ' || coalesce((
	           SELECT pg_catalog.string_agg(ap.amprocnum::pg_catalog.text || ':' || ap.amproc::pg_catalog.regprocedure::pg_catalog.text, ',' ORDER BY ap.amprocnum)
	           FROM pg_catalog.pg_amproc ap WHERE ap.amprocfamily = oc.opcfamily), '')
	FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
	WHERE oc.opcnamespace = 'crm'::pg_catalog.regnamespace
	UNION ALL
	SELECT 'cast ' || c.castsource::pg_catalog.regtype::pg_catalog.text || ' -> ' || c.casttarget::pg_catalog.regtype::pg_catalog.text
	       || ' ' || c.castfunc::pg_catalog.regprocedure::pg_catalog.text || ' ' || c.castcontext::pg_catalog.text || ' ' || c.castmethod::pg_catalog.text
	FROM pg_catalog.pg_cast c
	WHERE c.castsource IN (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typnamespace = 'crm'::pg_catalog.regnamespace)
	   OR c.casttarget IN (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typnamespace = 'crm'::pg_catalog.regnamespace)
	UNION ALL
	-- sequences' settings (their positions are data)
	SELECT 'sequence ' || s.seqrelid::pg_catalog.regclass::pg_catalog.text || ' ' || s.seqtypid::pg_catalog.regtype::pg_catalog.text
	       || ' ' || s.seqstart::pg_catalog.text || ' ' || s.seqincrement::pg_catalog.text || ' ' || s.seqmax::pg_catalog.text
	       || ' ' || s.seqmin::pg_catalog.text || ' ' || s.seqcache::pg_catalog.text || ' ' || s.seqcycle::pg_catalog.text
	FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
	WHERE c.relnamespace = 'crm'::pg_catalog.regnamespace
) x
ORDER BY 1;
