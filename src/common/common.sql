
-- ===========================================================================
-- common.sql: plumbing every feature shares (src/common/)
-- ===========================================================================

-- Every per-backend cache of a configuration table (loyalty programme, tiers,
-- earn rules, tag rules, RFM segment map and thresholds, segmentation
-- settings) is rebuilt after this trigger fired on the table
-- (src/common/config_cache.c).  Each configuration table gets it as an AFTER
-- statement trigger, ENABLE ALWAYS: a restore with session_replication_role =
-- replica changes configuration rows too.
CREATE FUNCTION crm.config_changed() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_config_changed';
COMMENT ON FUNCTION crm.config_changed() IS
	'AFTER statement trigger on every configuration table: every backend rebuilds its cached configuration';

-- A customer id at an entry point means its golden customer: one owner,
-- src/common/customer.c.  Readers resolve; writers lock the golden FOR SHARE
-- (DEVELOPER.md, "Lock order").  An unknown id is SQLSTATE 23503.
CREATE FUNCTION crm.resolve_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_resolve_customer_sql';
COMMENT ON FUNCTION crm.resolve_customer(bigint) IS
	'The golden customer a customer id means now (itself when not merged; merged_into followed to its end); SQLSTATE 23503 for an unknown id';
CREATE FUNCTION crm.lock_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_lock_customer_sql';
COMMENT ON FUNCTION crm.lock_customer(bigint) IS
	'crm.resolve_customer for writers: the golden customer, locked FOR SHARE until the transaction ends, so no merge or unmerge moves it meanwhile (a merge that committed while waiting is followed); SQLSTATE 23503 for an unknown id';

-- crm_ext is distributed with Citus and this is not work on a shard
-- (src/common/shard.c): PL/pgSQL moves rows the cluster's way then.
CREATE FUNCTION crm.on_citus() RETURNS boolean
	LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'crm_on_citus';
COMMENT ON FUNCTION crm.on_citus() IS
	'Internal: true when crm_ext is distributed with Citus (crm.distribute()) and this runs on the coordinator, not on a shard';

-- SET LOCAL setting = value here and on the Citus workers this transaction
-- uses (Citus passes a SET LOCAL on from a statement run inside a function
-- call, which PERFORM of this makes it, and not from one run at a PL/pgSQL
-- function's own top level).
CREATE FUNCTION crm.set_local_on_cluster(setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SET LOCAL citus.propagate_set_commands = 'local';
	EXECUTE pg_catalog.format('SET LOCAL %I = %L', setting, value);
END
$$;
COMMENT ON FUNCTION crm.set_local_on_cluster(text, text) IS
	'Internal (Citus): SET LOCAL setting = value on the coordinator and on the workers of this transaction';

-- Moves the rows of table tbl that match cond (SQL over alias t; $1 is
-- to_customer, $2 and $3 are a and b) to customer to_customer: the one way
-- merges, unmerges and the loyalty hooks change a row's customer_id.  On one
-- node it is an UPDATE, and crm's triggers see the move as before (an
-- order's lines follow it).  On Citus a row's customer_id places it on a
-- shard and cannot be updated: the rows are deleted and inserted again with
-- the new customer, on its shard, in one statement of the same distributed
-- transaction, with crm's triggers held back on every node (what they
-- would do for an UPDATE of customer_id: lines follow, done here; stats and
-- points, which the merge and unmerge hooks rebuild).  Holding triggers back
-- takes the right to set session_replication_role (a superuser, or GRANT SET
-- ON PARAMETER session_replication_role).  Returns the rows moved.
CREATE FUNCTION crm.move_customer_rows(tbl regclass, to_customer bigint, cond text,
                                       a bigint[] DEFAULT NULL, b bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	cols text;
	vals text;
	held text := pg_catalog.current_setting('session_replication_role');
	moved_orders bigint[];
	moved_from bigint[];
BEGIN
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('UPDATE %s t SET customer_id = $1 WHERE %s', tbl, cond) USING to_customer, a, b;
		GET DIAGNOSTICS n = ROW_COUNT;
		RETURN n;
	END IF;
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x.attname), ', ' ORDER BY x.attnum),
	       pg_catalog.string_agg(CASE WHEN x.attname = 'customer_id' THEN 'g.crm_to' ELSE 'g.' || pg_catalog.quote_ident(x.attname) END,
	                             ', ' ORDER BY x.attnum)
	INTO cols, vals
	FROM pg_catalog.pg_attribute x
	WHERE x.attrelid = tbl AND x.attnum > 0 AND NOT x.attisdropped AND x.attgenerated = '';
	IF tbl = 'crm.orders'::regclass THEN
		-- an order's lines go with it (on one node orders_lines_follow moves them)
		EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.order_id), pg_catalog.array_agg(DISTINCT t.customer_id) FROM crm.orders t WHERE %s', cond)
		INTO moved_orders, moved_from USING to_customer, a, b;
	END IF;
	PERFORM crm.set_local_on_cluster('session_replication_role', 'replica');
	EXECUTE pg_catalog.format('WITH gone AS (DELETE FROM %1$s t WHERE %2$s RETURNING t.*, $1 AS crm_to), '
	                          'put AS (INSERT INTO %1$s (%3$s) SELECT %4$s FROM gone g RETURNING 1) '
	                          'SELECT pg_catalog.count(*) FROM put', tbl, cond, cols, vals)
	INTO n USING to_customer, a, b;
	PERFORM crm.set_local_on_cluster('session_replication_role', held);
	IF moved_orders IS NOT NULL THEN
		PERFORM crm.move_customer_rows('crm.order_line', to_customer,
		                               't.order_id = ANY ($2) AND t.customer_id = ANY ($3)', moved_orders, moved_from);
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.move_customer_rows(regclass, bigint, text, bigint[], bigint[]) IS
	'Internal: moves the rows of tbl matching cond (alias t; $1 to_customer, $2 a, $3 b) to customer to_customer: an UPDATE on one node; on Citus a delete and insert on the new customer''s shard with crm''s triggers held back (an order''s lines follow it); returns the rows moved';

-- Work that spans customers refuses to run on a distributed crm_ext until it
-- has been made to (src/common/shard.c; README, "Scaling out with Citus").
CREATE FUNCTION crm.refuse_on_citus(what text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'crm_refuse_on_citus_sql';
COMMENT ON FUNCTION crm.refuse_on_citus(text) IS
	'Internal: SQLSTATE 0A000 naming "what" when crm_ext is distributed with Citus (crm.distribute()) and this is not a trigger on a shard; nothing otherwise';
