
-- ===========================================================================
-- segment.sql: audiences (tag expressions) and the segmentation views
-- (src/segmentation/segment.c)
-- ===========================================================================
CREATE TABLE crm.segment (
	name		text PRIMARY KEY CONSTRAINT segment_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
	expression	text NOT NULL,
	description	text,
	builtin		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.segment IS 'Audiences: named tag expressions with and, or, not and parentheses, e.g. ''high_value and not dormant''';
SELECT pg_catalog.pg_extension_config_dump('crm.segment', 'WHERE NOT builtin');

CREATE FUNCTION crm.segment_check() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_segment_check_trigger';
COMMENT ON FUNCTION crm.segment_check() IS 'BEFORE INSERT OR UPDATE row trigger on crm.segment: the expression must parse and name existing tags';
CREATE TRIGGER segment_check BEFORE INSERT OR UPDATE ON crm.segment
	FOR EACH ROW EXECUTE FUNCTION crm.segment_check();

INSERT INTO crm.segment (name, expression, description, builtin) VALUES
	('win_back',       'at_risk and high_value', 'Valuable customers drifting away', true),
	('fresh_regulars', 'fresh_lover and frequent and not dormant', 'Frequent fresh-produce shoppers', true),
	('welcome',        'new and not high_value', 'Newcomers to onboard', true);

CREATE FUNCTION crm.audience_count(expression text) RETURNS bigint
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_audience_count';
COMMENT ON FUNCTION crm.audience_count(text) IS 'How many golden customers match a tag expression (and, or, not, parentheses)';
CREATE FUNCTION crm.audience_members(expression text) RETURNS TABLE (customer_id bigint)
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_audience_members';
COMMENT ON FUNCTION crm.audience_members(text) IS 'The golden customers matching a tag expression, in id order';
CREATE FUNCTION crm.segment_count(name text) RETURNS bigint
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_segment_count';
COMMENT ON FUNCTION crm.segment_count(text) IS 'How many golden customers are in a crm.segment';
CREATE FUNCTION crm.segment_members(name text) RETURNS TABLE (customer_id bigint)
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_segment_members';
COMMENT ON FUNCTION crm.segment_members(text) IS 'The golden customers of a crm.segment, in id order';

-- ---------------------------------------------------------------------------
-- Views for BI
-- ---------------------------------------------------------------------------
CREATE VIEW crm.v_customer_360 AS
SELECT c.customer_id, c.name, c.channel, c.home_store_id, c.created_at,
	coalesce(s.orders, 0) AS orders, coalesce(s.spend, 0) AS spend,
	s.first_order_at, s.last_order_at, s.mean_interval_days,
	r.score AS rfm_score, r.segment AS rfm_segment, r.as_of AS rfm_as_of,
	coalesce(s.stage, 'prospect') AS stage, s.stage_since,
	coalesce((SELECT pg_catalog.array_agg(t.name ORDER BY t.name) FROM crm.customer_tag ct
	          JOIN crm.tag t ON t.tag_id = ct.tag_id WHERE ct.customer_id = c.customer_id), '{}') AS tags,
	a.tier, a.tier_since, coalesce(crm.ledger_balance(a.ledger, pg_catalog.now()), 0) AS points,
	coalesce(a.debt, 0) AS points_debt
FROM crm.customer c
LEFT JOIN crm.customer_stats s ON s.customer_id = c.customer_id
LEFT JOIN crm.customer_rfm r ON r.customer_id = c.customer_id
LEFT JOIN crm.loyalty_account a ON a.customer_id = c.customer_id
WHERE c.merged_into IS NULL;
COMMENT ON VIEW crm.v_customer_360 IS 'One row per golden customer: profile, orders and spend, RFM (as of the last refresh), lifecycle stage, tags, loyalty tier and points (unexpired now)';

CREATE VIEW crm.v_segment_sizes AS
SELECT 'segment'::text AS kind, s.name, crm.segment_count(s.name) AS customers FROM crm.segment s
UNION ALL
-- (tags counted by a join, not a correlated subquery: Citus refuses that next to a reference table)
SELECT 'tag', t.name, coalesce(n.customers, 0) FROM crm.tag t
LEFT JOIN (SELECT ct.tag_id, pg_catalog.count(*) AS customers FROM crm.customer_tag ct GROUP BY ct.tag_id) n ON n.tag_id = t.tag_id
UNION ALL
SELECT 'rfm', r.segment, pg_catalog.count(*) FROM crm.customer_rfm r GROUP BY r.segment
UNION ALL
SELECT 'stage', st.stage, st.n FROM (
	SELECT coalesce(s.stage, 'prospect') AS stage, pg_catalog.count(*) AS n
	FROM crm.customer c LEFT JOIN crm.customer_stats s ON s.customer_id = c.customer_id
	WHERE c.merged_into IS NULL GROUP BY 1) st;
COMMENT ON VIEW crm.v_segment_sizes IS 'Customers per audience segment, tag, RFM segment (last refresh) and lifecycle stage';

CREATE VIEW crm.v_rfm_grid AS
SELECT crm.r(r.score) AS r, crm.f(r.score) AS f, pg_catalog.count(*) AS customers,
	pg_catalog.round(pg_catalog.avg(r.monetary), 2) AS avg_monetary,
	pg_catalog.mode() WITHIN GROUP (ORDER BY r.segment) AS segment
FROM crm.customer_rfm r
GROUP BY 1, 2;
COMMENT ON VIEW crm.v_rfm_grid IS 'The recency x frequency grid of the last RFM refresh: customers, average monetary value and segment per cell';
