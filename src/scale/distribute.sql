
-- ===========================================================================
-- scale/distribute.sql: crm_ext on a Citus cluster (issue 15).
--
-- crm.distribute() turns an installed crm_ext on a Citus coordinator into a
-- distributed one, by one rule: a crm table with a customer_id column is
-- distributed by it, all in one co-location group (a customer's orders,
-- lines, journal, stats, tags ... sit on one shard, where crm's triggers
-- work on them: src/common/shard.c); every other crm table is a reference
-- table (a copy on every node: configuration, logs).  New tables follow the
-- rule by having, or not having, customer_id.
-- ===========================================================================

CREATE FUNCTION crm.distribute(shard_count integer DEFAULT 32)
RETURNS TABLE (table_name regclass, placement text, note text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;
BEGIN
	IF shard_count IS NULL OR shard_count NOT BETWEEN 1 AND 64000 THEN
		RAISE EXCEPTION 'shard_count must be between 1 and 64000, not %', shard_count
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'citus') THEN
		RAISE EXCEPTION 'crm.distribute() needs Citus in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'On every node: shared_preload_libraries = ''citus'' and CREATE EXTENSION citus; on the coordinator: SELECT citus_add_node(...) for each worker, then CREATE EXTENSION crm_ext and SELECT crm.distribute().';
	END IF;
	EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO done;
	IF NOT done THEN
		RAISE EXCEPTION 'crm.distribute() runs on the Citus coordinator'
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) ''crm.customer''::pg_catalog.regclass)'
		INTO done;
	IF NOT done THEN
		EXECUTE 'SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 0 FROM pg_catalog.citus_get_active_worker_nodes()' INTO done;
		IF done THEN
			RAISE EXCEPTION 'crm.distribute() needs at least one active worker'
				USING ERRCODE = 'object_not_in_prerequisite_state',
				HINT = 'SELECT citus_add_node(host, port) for each worker first.';
		END IF;
		PERFORM crm.distribute_tables(shard_count);
		PERFORM crm.distribute_functions();
	ELSE
		RAISE NOTICE 'crm_ext is distributed already: only the workers'' id ranges are checked';
	END IF;
	PERFORM crm.distribute_id_ranges();
	RETURN QUERY EXECUTE
		'SELECT p.table_name, '
		'CASE d.partmethod WHEN ''h'' THEN ''distributed by customer_id'' WHEN ''n'' THEN ''reference'' ELSE ''coordinator'' END, '
		'CASE WHEN d.partmethod OPERATOR(pg_catalog.=) ''h'' THEN pg_catalog.format(''%s shards, co-located with crm.customer'', '
		'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid OPERATOR(pg_catalog.=) p.table_name)) END '
		'FROM crm.distribution_plan() p '
		'LEFT JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid OPERATOR(pg_catalog.=) p.table_name '
		'ORDER BY 2, 1::pg_catalog.text';
END $$;
COMMENT ON FUNCTION crm.distribute(integer) IS
	'On a Citus coordinator: distributes every crm table with a customer_id column by it (shard_count shards, co-located with crm.customer), keeps the tables that name functions on the coordinator and makes every other crm table a reference table (crm.distribution_plan()); lists each table''s placement. Run again after adding a worker (it then only gives the new worker its id ranges). 55000 without Citus, off the coordinator or without workers; 22023 for a bad shard_count';

-- Where crm.distribute() puts each table of crm_ext: a table with a
-- customer_id column is distributed by it; one that names functions
-- (regprocedure columns: tick tasks, customer hooks) stays on the
-- coordinator, where crm.tick and merges run, since such a value is an
-- object id that means another function, or none, on another node; every
-- other table is a reference table.
CREATE FUNCTION crm.distribution_plan()
RETURNS TABLE (table_name regclass, placement text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT c.oid::regclass,
	       CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                         WHERE a.attrelid = c.oid AND a.attname = 'customer_id' AND NOT a.attisdropped)
	            THEN 'distributed'
	            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	                           AND a.atttypid IN ('pg_catalog.regprocedure'::regtype, 'pg_catalog.regproc'::regtype,
	                                              'pg_catalog.regclass'::regtype, 'pg_catalog.regtype'::regtype,
	                                              'pg_catalog.oid'::regtype))
	            THEN 'coordinator'
	            ELSE 'reference' END
	FROM pg_catalog.pg_class c
	JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
	JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'crm_ext'
	WHERE c.relkind = 'r'
	ORDER BY 2 DESC, c.oid::regclass::text;
END;
COMMENT ON FUNCTION crm.distribution_plan() IS
	'Where crm.distribute() puts each table of crm_ext: distributed (it has customer_id), coordinator (it names functions by object id) or reference';

-- The work of crm.distribute(): keys, foreign keys, tables.
CREATE FUNCTION crm.distribute_tables(shard_count integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	fk record;
	keep boolean;
BEGIN
	-- Triggers on distributed tables run on the shards (src/common/shard.c
	-- makes crm's triggers safe there); Citus asks for this to create them.
	PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
	-- (not a notice per table that its rows were copied)
	PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
	PERFORM pg_catalog.set_config('citus.shard_count', shard_count::text, true);
	PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

	-- What crm.distribute() writes in crm's tables (order lines' customer,
	-- the rows copied into the shards) is held back from crm's triggers, on
	-- the workers too (Citus passes SET LOCAL on): it is the triggers' work
	-- done already, and would be done twice.
	SET LOCAL citus.propagate_set_commands = 'local';
	SET LOCAL session_replication_role = replica;

	-- Lines of a single node's orders get their order's customer (it places them).
	UPDATE crm.order_line l SET customer_id = o.customer_id
	FROM crm.orders o WHERE o.order_id = l.order_id AND l.customer_id IS NULL;

	-- Foreign keys go first, so that tables can change placement in any
	-- order; the ones Citus can keep come back at the end.  Citus copies
	-- an extension's tables to no worker (CREATE EXTENSION made them
	-- there), so what changes in them before they are distributed changes
	-- on every node.
	CREATE TEMP TABLE crm_distribute_fk ON COMMIT DROP AS
	SELECT c.conrelid::regclass AS child, c.confrelid::regclass AS parent, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def,
	       c.conkey, c.confkey
	FROM pg_catalog.pg_constraint c
	WHERE c.contype = 'f' AND c.connamespace = 'crm'::regnamespace;
	PERFORM crm.distribute_ddl(pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', f.child, f.conname))
	FROM crm_distribute_fk f;
	PERFORM crm.distribute_ddl('ALTER TABLE crm.order_line ALTER COLUMN customer_id SET NOT NULL');
	-- An order never changes customer on Citus (its distribution column
	-- cannot change), so its lines have nothing to follow.
	PERFORM crm.distribute_ddl('DROP TRIGGER orders_lines_follow ON crm.orders');

	-- Citus keeps a key or unique constraint only with the distribution
	-- column in it: per-customer uniqueness.
	PERFORM crm.distribute_ddl(k.ddl)
	FROM crm.distribution_plan() p, crm.distribute_keys(p.table_name) k
	WHERE p.placement = 'distributed';

	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p WHERE p.placement = 'reference' LOOP
		PERFORM pg_catalog.create_reference_table(t.table_name);
	END LOOP;
	PERFORM pg_catalog.create_distributed_table('crm.customer', 'customer_id', colocate_with => 'none');
	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p
	         WHERE p.placement = 'distributed' AND p.table_name <> 'crm.customer'::regclass LOOP
		PERFORM pg_catalog.create_distributed_table(t.table_name, 'customer_id', colocate_with => 'crm.customer');
	END LOOP;
	-- The rows copied into the shards stay on disk in the coordinator's
	-- tables unless removed; crm's TRUNCATE guards (the journal is
	-- append-only, references) are about the data, which the shards hold.
	FOR t IN SELECT p.table_name FROM crm.distribution_plan() p WHERE p.placement <> 'coordinator' LOOP
		PERFORM pg_catalog.truncate_local_data_after_distributing_table(t.table_name);
	END LOOP;
	SET LOCAL session_replication_role = origin;

	-- Foreign keys Citus keeps: to a reference table, or between
	-- distributed tables on customer_id.  The others (a reference table's
	-- to a customer, a merge chain's, a row's origin record) are checked
	-- by crm.verify() instead.
	FOR fk IN SELECT f.*, pc.placement AS child_at, pp.placement AS parent_at
	          FROM crm_distribute_fk f
	          JOIN crm.distribution_plan() pc ON pc.table_name = f.child
	          JOIN crm.distribution_plan() pp ON pp.table_name = f.parent LOOP
		keep := (fk.parent_at = 'reference' AND fk.child_at <> 'coordinator')
		     OR (fk.parent_at = 'coordinator' AND fk.child_at = 'coordinator')
		     OR (fk.child_at = 'distributed' AND fk.parent_at = 'distributed' AND fk.conkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a WHERE a.attrelid = fk.child AND a.attname = 'customer_id')]
		         AND fk.confkey = ARRAY[(SELECT a.attnum FROM pg_catalog.pg_attribute a WHERE a.attrelid = fk.parent AND a.attname = 'customer_id')]);
		IF keep THEN
			EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.child, fk.conname, fk.def);
		END IF;
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_tables(integer) IS
	'The work of crm.distribute(): per-customer keys, reference and distributed tables, the foreign keys Citus keeps';

-- The entry points that take a customer id run on the worker that holds
-- the customer when called on their own (SELECT crm.redeem_points(7, ...)):
-- Citus sends the call there, co-located with crm.customer by their
-- customer_id argument, so its statements run on local shards, one round
-- trip instead of one per statement.  Inside a transaction block Citus runs
-- them on the coordinator as before.  A merged record's id goes to the
-- record's worker, which reaches the golden customer's shard through Citus.
CREATE FUNCTION crm.distribute_functions()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f regprocedure;
BEGIN
	FOREACH f IN ARRAY ARRAY['crm.redeem_points(bigint,bigint,text,timestamptz)', 'crm.adjust_points(bigint,bigint,text,text,timestamptz)',
	                         'crm.points_balance(bigint,timestamptz)', 'crm.points_expiring(bigint,interval,timestamptz)',
	                         'crm.qualifying_spend(bigint,timestamptz)']::regprocedure[] LOOP
		PERFORM pg_catalog.create_distributed_function(f, 'customer_id', colocate_with => 'crm.customer');
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_functions() IS
	'crm.distribute(): the entry points that take a customer id run on the worker that holds the customer when called on their own (Citus function call delegation)';

-- The statements that give a per-customer table's primary key and unique
-- constraints and indexes without customer_id that column as their last.
CREATE FUNCTION crm.distribute_keys(tbl regclass)
RETURNS TABLE (ddl text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE con.contype
	         WHEN 'p' THEN pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY (%s, customer_id)',
	                                         tbl, con.conname, con.conname, k.cols)
	         WHEN 'u' THEN pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I UNIQUE (%s, customer_id)',
	                                         tbl, con.conname, con.conname, k.cols)
	         ELSE pg_catalog.format('DROP INDEX %s; CREATE UNIQUE INDEX %I ON %s (%s, customer_id)%s', x.indexrelid::regclass, c.relname, tbl, k.cols,
	                                COALESCE(' WHERE ' || pg_catalog.pg_get_expr(x.indpred, x.indrelid), ''))
	       END
	FROM pg_catalog.pg_index x
	JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
	LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid
	CROSS JOIN LATERAL (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY u.n) AS cols
	                    FROM pg_catalog.unnest(x.indkey::smallint[]) WITH ORDINALITY u(att, n)
	                    JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.att) k
	WHERE x.indrelid = tbl AND x.indisunique
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
	                  WHERE a.attrelid = tbl AND a.attname = 'customer_id' AND a.attnum = ANY (x.indkey::smallint[]))
	ORDER BY c.relname;
END;
COMMENT ON FUNCTION crm.distribute_keys(regclass) IS
	'crm.distribute(): the statements that give the primary key and unique constraints and indexes of per-customer table tbl customer_id as their last column';

-- A DDL statement on the coordinator and on every worker (crm.distribute()).
CREATE FUNCTION crm.distribute_ddl(ddl text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	EXECUTE ddl;
	FOR r IN SELECT * FROM pg_catalog.run_command_on_workers(ddl) w WHERE NOT w.success LOOP
		RAISE EXCEPTION 'worker %:% could not run: %', r.nodename, r.nodeport, ddl
			USING ERRCODE = 'connection_failure', DETAIL = r.result,
			HINT = 'crm_ext''s tables must be as CREATE EXTENSION made them on every worker; fix the worker, then run SELECT crm.distribute() again.';
	END LOOP;
END $$;
COMMENT ON FUNCTION crm.distribute_ddl(text) IS
	'crm.distribute(): runs a DDL statement on the coordinator and then on every worker (extension tables are not propagated)';

-- Rows crm's triggers write on a worker take their ids from that worker's
-- copy of the sequence; each node gets its own range (node group g: from
-- g * 2^48, as Citus does for its own sequences) so ids stay unique.
CREATE FUNCTION crm.distribute_id_ranges()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_catalog.run_command_on_workers(
		'SELECT pg_catalog.count(pg_catalog.setval(pg_catalog.format(''%I.%I'', s.schemaname, s.sequencename)::pg_catalog.regclass, '
		'GREATEST(COALESCE(s.last_value, 1), (SELECT l.groupid::pg_catalog.int8 FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.<<) 48))) '
		'FROM pg_catalog.pg_sequences s WHERE s.schemaname OPERATOR(pg_catalog.=) ''crm'' '
		'AND s.data_type OPERATOR(pg_catalog.=) ''bigint''::pg_catalog.regtype') r WHERE NOT r.success) THEN
		RAISE EXCEPTION 'a worker''s id ranges could not be set'
			USING ERRCODE = 'connection_failure',
			HINT = 'Check that every worker is up, then run SELECT crm.distribute() again.';
	END IF;
END $$;
COMMENT ON FUNCTION crm.distribute_id_ranges() IS
	'crm.distribute(): each worker''s copies of crm''s bigint sequences start at its node group * 2^48, so ids its triggers give stay unique';
