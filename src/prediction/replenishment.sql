
-- ===========================================================================
-- replenishment.sql: purchase cycles per customer and category / sku
-- (src/prediction/replenishment.c)
-- ===========================================================================
CREATE FUNCTION crm.purchase_interval_trans(internal, date) RETURNS internal
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_purchase_interval_trans';
COMMENT ON FUNCTION crm.purchase_interval_trans(internal, date) IS
	'Transition function of crm.purchase_interval (not STRICT: the first call creates the state; NULL days are skipped)';

CREATE FUNCTION crm.purchase_interval_final(internal) RETURNS double precision
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_purchase_interval_final';
COMMENT ON FUNCTION crm.purchase_interval_final(internal) IS
	'Final function of crm.purchase_interval (not STRICT: an empty group gives NULL)';

CREATE AGGREGATE crm.purchase_interval(day date) (
	SFUNC = crm.purchase_interval_trans,
	STYPE = internal,
	FINALFUNC = crm.purchase_interval_final,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.purchase_interval(date) IS
	'Median number of days between the distinct days of the group (NULL with fewer than two): the typical purchase cycle';

CREATE FUNCTION crm.purchase_days_final(internal) RETURNS integer
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_purchase_days_final';
COMMENT ON FUNCTION crm.purchase_days_final(internal) IS
	'Final function of crm.purchase_days (not STRICT: an empty group gives 0)';

CREATE AGGREGATE crm.purchase_days(day date) (
	SFUNC = crm.purchase_interval_trans,
	STYPE = internal,
	FINALFUNC = crm.purchase_days_final,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.purchase_days(date) IS
	'Number of distinct days in the group; shares its state with crm.purchase_interval in the same query';

CREATE FUNCTION crm.replenishment(as_of timestamptz DEFAULT pg_catalog.now(), min_purchases integer DEFAULT 3,
	sku_min_purchases integer DEFAULT 4)
RETURNS TABLE (customer_id bigint, category text, sku text, purchases integer, interval_days double precision,
	last_purchase date, next_expected date)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT pg_catalog.isfinite(as_of) THEN
		RAISE EXCEPTION 'as_of must be a finite time' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF min_purchases < 2 OR sku_min_purchases < 2 THEN
		RAISE EXCEPTION 'a purchase cycle needs at least 2 purchases'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- (On Citus a line is joined to its order on customer_id too, so that
	-- each shard joins its own: crm.line_join; as_of and the minimums are
	-- $1 to $3.)
	RETURN QUERY EXECUTE $q$
	WITH bought AS (
		SELECT o.customer_id AS cid, l.category AS cat, l.sku AS item, o.ordered_at::date AS day
		FROM crm.orders o
		JOIN crm.order_line l ON $q$ || crm.line_join('l', 'o') || $q$
		JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) o.customer_id
		WHERE c.merged_into IS NULL
		  AND o.status OPERATOR(pg_catalog.=) 'paid'
		  AND o.ordered_at OPERATOR(pg_catalog.<=) $1
	), cycles AS (
		SELECT b.cid, b.cat, NULL::text AS item, crm.purchase_days(b.day) AS n,
		       crm.purchase_interval(b.day) AS gap, pg_catalog.max(b.day) AS last_day
		FROM bought b GROUP BY b.cid, b.cat
		HAVING crm.purchase_days(b.day) OPERATOR(pg_catalog.>=) $2
		UNION ALL
		SELECT b.cid, b.cat, b.item, crm.purchase_days(b.day),
		       crm.purchase_interval(b.day), pg_catalog.max(b.day)
		FROM bought b GROUP BY b.cid, b.cat, b.item
		HAVING crm.purchase_days(b.day) OPERATOR(pg_catalog.>=) $3
	)
	SELECT y.cid, y.cat, y.item, y.n, y.gap, y.last_day,
	       y.last_day OPERATOR(pg_catalog.+) pg_catalog.round(y.gap)::integer
	FROM cycles y$q$ USING as_of, min_purchases, sku_min_purchases;
END
$$;
COMMENT ON FUNCTION crm.replenishment(timestamptz, integer, integer) IS
	'Purchase cycles up to as_of: per golden customer and category bought on at least min_purchases days (sku NULL), and per sku bought on at least sku_min_purchases days, the median days between purchases, the last purchase day and the next expected one';

CREATE FUNCTION crm.replenishment_due(as_of timestamptz DEFAULT pg_catalog.now(), within interval DEFAULT '7 days')
RETURNS TABLE (customer_id bigint, category text, sku text, purchases integer, interval_days double precision,
	last_purchase date, next_expected date, due_in_days integer)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF within OPERATOR(pg_catalog.<) '0'::interval THEN
		RAISE EXCEPTION 'within must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	SELECT r.customer_id, r.category, r.sku, r.purchases, r.interval_days, r.last_purchase, r.next_expected,
	       r.next_expected OPERATOR(pg_catalog.-) as_of::date
	FROM crm.replenishment(as_of) r
	WHERE r.next_expected OPERATOR(pg_catalog.>=) as_of::date
	  AND r.next_expected OPERATOR(pg_catalog.<=) (as_of OPERATOR(pg_catalog.+) within)::date;
END
$$;
COMMENT ON FUNCTION crm.replenishment_due(timestamptz, interval) IS
	'Customers whose next expected purchase of a category or sku falls between as_of and as_of + within: for reminders such as "your usual detergent runs out in 3 days"';
