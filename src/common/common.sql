
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

-- The join of order lines (alias l) to their orders (alias o) for dynamic
-- SQL: by order_id; on Citus also by customer_id, so that each shard joins
-- its own lines and orders (a line's customer_id is its order's there; on
-- one node it may be NULL).
CREATE FUNCTION crm.line_join(l text, o text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN pg_catalog.format('%1$I.order_id OPERATOR(pg_catalog.=) %2$I.order_id', l, o)
	    || CASE WHEN crm.on_citus() THEN pg_catalog.format(' AND %1$I.customer_id OPERATOR(pg_catalog.=) %2$I.customer_id', l, o) ELSE '' END;
END
$$;
COMMENT ON FUNCTION crm.line_join(text, text) IS
	'Internal: the join condition of order lines (alias l) to their orders (alias o): by order_id, and on Citus by customer_id too';

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

-- For the rest of the transaction, Citus reaches each worker through one
-- connection, the one that already holds this transaction's row locks and
-- writes there: a placement written over two connections cannot be read by
-- a later query over several shards ("modified over multiple
-- connections"), and a second connection waiting for a row lock the first
-- holds waits for itself.  Merges, unmerges, stitching and the tick call
-- this first: they write row by row and then read and write over all shards.
CREATE FUNCTION crm.citus_one_connection_per_worker() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	PERFORM pg_catalog.set_config('citus.max_adaptive_executor_pool_size', '1', true);
END
$$;
COMMENT ON FUNCTION crm.citus_one_connection_per_worker() IS
	'Internal (Citus): multi-shard statements of this transaction run over one connection per worker, the one holding its row locks';

-- Locks the rows of customers ids in per-customer table tbl FOR strength
-- (UPDATE, NO KEY UPDATE, SHARE), in customer_id order (DEVELOPER.md, "Lock
-- order"): one statement on one node, one per customer on Citus, which
-- locks rows of one shard per statement.
CREATE FUNCTION crm.lock_rows(tbl regclass, ids bigint[], strength text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id bigint;
BEGIN
	IF strength NOT IN ('UPDATE', 'NO KEY UPDATE', 'SHARE') THEN
		RAISE EXCEPTION 'lock strength must be UPDATE, NO KEY UPDATE or SHARE, not %', strength
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %s t WHERE t.customer_id OPERATOR(pg_catalog.=) ANY ($1) '
		                          'ORDER BY t.customer_id FOR %s) x', tbl, strength) USING ids;
		RETURN;
	END IF;
	PERFORM crm.citus_one_connection_per_worker();
	FOR id IN SELECT DISTINCT u.id FROM pg_catalog.unnest(ids) u(id) ORDER BY 1 LOOP
		EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %s t WHERE t.customer_id OPERATOR(pg_catalog.=) $1 FOR %s) x',
		                          tbl, strength) USING id;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.lock_rows(regclass, bigint[], text) IS
	'Internal: locks the rows of customers ids in tbl FOR strength (UPDATE, NO KEY UPDATE, SHARE) in customer_id order';

-- Moves the rows of table tbl that match cond (SQL over alias t; $1 is
-- to_customer, $2 and $3 are a and b) to customer to_customer: the one way
-- merges, unmerges and the loyalty hooks change a row's customer_id.  On one
-- node it is an UPDATE, and crm's triggers see the move as before (an
-- order's lines follow it).  On Citus a row's customer_id places it on a
-- shard and cannot be updated: crm.move_rows_on_citus deletes the rows and
-- inserts them again with the new customer, on its shard.  Returns the rows
-- moved.
CREATE FUNCTION crm.move_customer_rows(tbl regclass, to_customer bigint, cond text,
                                       a bigint[] DEFAULT NULL, b bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	moved_orders bigint[];
	moved_from bigint[];
BEGIN
	IF NOT crm.on_citus() THEN
		EXECUTE pg_catalog.format('UPDATE %s t SET customer_id = $1 WHERE %s', tbl, cond) USING to_customer, a, b;
		GET DIAGNOSTICS n = ROW_COUNT;
		RETURN n;
	END IF;
	IF tbl = 'crm.orders'::regclass THEN
		-- an order's lines go with it (on one node orders_lines_follow moves them)
		EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.order_id), pg_catalog.array_agg(DISTINCT t.customer_id) FROM crm.orders t WHERE %s', cond)
		INTO moved_orders, moved_from USING to_customer, a, b;
	END IF;
	SELECT pg_catalog.sum(x.moved) INTO n FROM crm.move_rows_on_citus(tbl, 'WHERE ' || cond, '$1', a, b, to_customer) x;
	IF moved_orders IS NOT NULL THEN
		PERFORM crm.move_customer_rows('crm.order_line', to_customer,
		                               't.order_id = ANY ($2) AND t.customer_id = ANY ($3)', moved_orders, moved_from);
	END IF;
	RETURN coalesce(n, 0);
END
$$;
COMMENT ON FUNCTION crm.move_customer_rows(regclass, bigint, text, bigint[], bigint[]) IS
	'Internal: moves the rows of tbl matching cond (alias t; $1 to_customer, $2 a, $3 b) to customer to_customer: an UPDATE on one node; on Citus a delete and insert on the new customer''s shard with crm''s triggers held back (an order''s lines follow it); returns the rows moved';

-- Every row of tbl of customer froms[i] goes to customer tos[i], for many
-- customers in one statement (batch stitching and its merge hooks on
-- Citus); as crm.move_customer_rows does for one.  Returns the rows moved
-- per customer they left.
CREATE FUNCTION crm.move_customers(tbl regclass, froms bigint[], tos bigint[])
RETURNS TABLE (from_customer bigint, moved bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT crm.on_citus() THEN
		RETURN QUERY EXECUTE pg_catalog.format(
			'WITH u AS (UPDATE %s t SET customer_id = m.t2 FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) m(f, t2) '
			'WHERE t.customer_id OPERATOR(pg_catalog.=) m.f RETURNING m.f) '
			'SELECT u.f, pg_catalog.count(*) FROM u GROUP BY u.f', tbl) USING froms, tos;
		RETURN;
	END IF;
	RETURN QUERY SELECT * FROM crm.move_rows_on_citus(tbl,
		'USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) m(f, t2) WHERE t.customer_id OPERATOR(pg_catalog.=) m.f',
		'm.t2', froms, tos, NULL);
	IF tbl = 'crm.orders'::regclass THEN
		-- (all of these customers' orders moved: all their lines follow)
		PERFORM crm.move_customers('crm.order_line', froms, tos);
	END IF;
END
$$;
COMMENT ON FUNCTION crm.move_customers(regclass, bigint[], bigint[]) IS
	'Internal: moves every row of tbl of customer froms[i] to customer tos[i] (an order''s lines with it), as crm.move_customer_rows does for one; returns the rows moved per customer they left';

-- The move on Citus: the rows of tbl that from_clause picks (alias t:
-- "WHERE ..." or "USING ... WHERE ...") are deleted and inserted again with
-- customer to_expr, on its shard, in one statement of the distributed
-- transaction, with crm's triggers held back on every node (what they would
-- do for an UPDATE of customer_id the callers do: lines follow their order,
-- the merge and unmerge hooks move points and rebuild stats).  $1 is c, $2
-- and $3 are a and b.  Holding triggers back takes the right to set
-- session_replication_role (a superuser, or GRANT SET ON PARAMETER
-- session_replication_role).  Returns the rows moved per customer they left.
CREATE FUNCTION crm.move_rows_on_citus(tbl regclass, from_clause text, to_expr text, a bigint[], b bigint[], c bigint)
RETURNS TABLE (from_customer bigint, moved bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cols text;
	vals text;
	held text := pg_catalog.current_setting('session_replication_role');
BEGIN
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x.attname), ', ' ORDER BY x.attnum),
	       pg_catalog.string_agg(CASE WHEN x.attname = 'customer_id' THEN 'g.crm_to' ELSE 'g.' || pg_catalog.quote_ident(x.attname) END,
	                             ', ' ORDER BY x.attnum)
	INTO cols, vals
	FROM pg_catalog.pg_attribute x
	WHERE x.attrelid = tbl AND x.attnum > 0 AND NOT x.attisdropped AND x.attgenerated = '';
	PERFORM crm.citus_one_connection_per_worker();
	PERFORM crm.set_local_on_cluster('session_replication_role', 'replica');
	RETURN QUERY EXECUTE pg_catalog.format(
		'WITH gone AS (DELETE FROM %1$s t %2$s RETURNING t.*, %3$s AS crm_to), '
		'put AS (INSERT INTO %1$s (%4$s) SELECT %5$s FROM gone g RETURNING 1) '
		'SELECT g.customer_id, pg_catalog.count(*) FROM gone g GROUP BY g.customer_id', tbl, from_clause, to_expr, cols, vals)
	USING c, a, b;
	PERFORM crm.set_local_on_cluster('session_replication_role', held);
END
$$;
COMMENT ON FUNCTION crm.move_rows_on_citus(regclass, text, text, bigint[], bigint[], bigint) IS
	'Internal (Citus): deletes the rows of tbl from_clause picks and inserts them again with customer to_expr, on its shard, crm''s triggers held back on every node; returns the rows moved per customer they left';

-- Work that spans customers refuses to run on a distributed crm_ext until it
-- has been made to (src/common/shard.c; README, "Scaling out with Citus").
-- Trigger for append-only tables (ledgers, histories): an edit is refused
-- with 55000; a correction is a new row.
CREATE FUNCTION crm.refuse_edit_of_history() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
		USING ERRCODE = 'object_not_in_prerequisite_state',
		      HINT = 'Record a new row instead (a refund, a new answer); the history keeps every change.';
END
$$;
COMMENT ON FUNCTION crm.refuse_edit_of_history() IS
	'Trigger: refuses UPDATE, DELETE and TRUNCATE on an append-only table (crm.wallet_txn, crm.wallet_journal, crm.consent_event) with 55000';

CREATE FUNCTION crm.refuse_on_citus(what text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'crm_refuse_on_citus_sql';
COMMENT ON FUNCTION crm.refuse_on_citus(text) IS
	'Internal: SQLSTATE 0A000 naming "what" when crm_ext is distributed with Citus (crm.distribute()) and this is not a trigger on a shard; nothing otherwise';
