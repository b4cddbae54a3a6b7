
-- ===========================================================================
-- associations.sql: frequently bought together (src/prediction/associations.c)
-- ===========================================================================
CREATE TABLE crm.association_rule (
	antecedent	text NOT NULL,
	consequent	text NOT NULL,
	baskets		bigint NOT NULL CONSTRAINT association_rule_baskets_positive CHECK (baskets > 0),
	support		double precision NOT NULL CONSTRAINT association_rule_support_range CHECK (support > 0 AND support <= 1),
	confidence	double precision NOT NULL CONSTRAINT association_rule_confidence_range CHECK (confidence > 0 AND confidence <= 1),
	lift		double precision NOT NULL CONSTRAINT association_rule_lift_positive CHECK (lift > 0 AND lift < 'Infinity'),
	computed_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (antecedent, consequent),
	CONSTRAINT association_rule_distinct CHECK (antecedent <> consequent)
);
COMMENT ON TABLE crm.association_rule IS
	'Pair rules "who buys antecedent also buys consequent" over paid orders, rebuilt by crm.refresh_associations';
COMMENT ON COLUMN crm.association_rule.baskets IS 'Paid orders containing both skus';
COMMENT ON COLUMN crm.association_rule.support IS 'Share of all paid orders (with lines) containing both skus';
COMMENT ON COLUMN crm.association_rule.confidence IS 'Share of the orders with the antecedent that also contain the consequent';
COMMENT ON COLUMN crm.association_rule.lift IS 'Confidence divided by the consequent''s own support: above 1 means bought together more often than by chance';
SELECT pg_catalog.pg_extension_config_dump('crm.association_rule', '');

CREATE FUNCTION crm.refresh_associations(min_support double precision DEFAULT 0.001,
	min_confidence double precision DEFAULT 0.05)
	RETURNS bigint
	LANGUAGE c VOLATILE STRICT
	AS 'MODULE_PATHNAME', 'crm_refresh_associations';
COMMENT ON FUNCTION crm.refresh_associations(double precision, double precision) IS
	'Recomputes crm.association_rule from all paid order lines: pairs in at least min_support of the orders, rules with confidence at least min_confidence; memory bounded by work_mem; returns the number of rules';

CREATE FUNCTION crm.frequently_bought_together(sku text, n integer DEFAULT 5)
RETURNS TABLE (consequent text, baskets bigint, support double precision, confidence double precision, lift double precision)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT r.consequent, r.baskets, r.support, r.confidence, r.lift
	FROM crm.association_rule r
	WHERE r.antecedent OPERATOR(pg_catalog.=) frequently_bought_together.sku
	  AND r.lift OPERATOR(pg_catalog.>) 1
	ORDER BY r.confidence DESC, r.lift DESC, r.consequent
	LIMIT GREATEST(frequently_bought_together.n, 0);
END;
COMMENT ON FUNCTION crm.frequently_bought_together(text, integer) IS
	'The n skus most often bought with sku (rules with lift above 1, by confidence), from crm.association_rule';

CREATE FUNCTION crm.recommend(customer_id bigint, n integer DEFAULT 5, as_of timestamptz DEFAULT pg_catalog.now(),
	recent interval DEFAULT '30 days', history interval DEFAULT '180 days')
RETURNS TABLE (sku text, confidence double precision, lift double precision, because_of text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	-- first: an unknown customer is an error, not no rows
	golden bigint := crm.resolve_customer(recommend.customer_id);
BEGIN
	-- (On Citus a line is joined to its order on customer_id too, so that
	-- the customer's shard joins its own: crm.line_join.)
	RETURN QUERY EXECUTE $q$
	WITH bought AS (
		SELECT l.sku, pg_catalog.max(o.ordered_at) AS last_at
		FROM crm.orders o
		JOIN crm.order_line l ON $q$ || crm.line_join('l', 'o') || $q$
		WHERE o.customer_id OPERATOR(pg_catalog.=) $1
		  AND o.status OPERATOR(pg_catalog.=) 'paid'
		  AND o.ordered_at OPERATOR(pg_catalog.<=) $2
		  AND o.ordered_at OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) $5)
		GROUP BY l.sku
	), candidates AS (
		SELECT DISTINCT ON (r.consequent) r.consequent, r.confidence, r.lift, r.antecedent
		FROM bought b
		JOIN crm.association_rule r ON r.antecedent OPERATOR(pg_catalog.=) b.sku
		WHERE r.lift OPERATOR(pg_catalog.>) 1
		  AND NOT EXISTS (SELECT 1 FROM bought x
		                  WHERE x.sku OPERATOR(pg_catalog.=) r.consequent
		                    AND x.last_at OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) $4))
		ORDER BY r.consequent, r.confidence DESC, r.lift DESC, r.antecedent
	)
	SELECT c.consequent, c.confidence, c.lift, c.antecedent
	FROM candidates c
	ORDER BY c.confidence DESC, c.lift DESC, c.consequent
	LIMIT GREATEST($3, 0)$q$ USING golden, recommend.as_of, recommend.n, recommend.recent, recommend.history;
END $$;
COMMENT ON FUNCTION crm.recommend(bigint, integer, timestamptz, interval, interval) IS
	'Up to n skus to suggest to a customer (a merged record''s id means its golden customer; 23503 for an unknown id): consequents of rules whose antecedent the customer bought within history before as_of, leaving out skus bought within recent; with the rule (because_of) that suggested each';
