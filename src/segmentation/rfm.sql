
-- ===========================================================================
-- rfm.sql: RFM scores and segments (src/segmentation/rfm.c)
-- ===========================================================================

-- Settings of the segmentation features (time zone of local days, lifecycle
-- thresholds).  C code caches them per backend until the table changes.
CREATE TABLE crm.segment_setting (
	key			text PRIMARY KEY CONSTRAINT segment_setting_key_format CHECK (key ~ '^[a-z][a-z0-9_]{0,62}$'),
	value		text NOT NULL,
	description	text,
	builtin		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.segment_setting IS 'Settings of segmentation: the time zone of local days and weekdays, lifecycle stage thresholds';
SELECT pg_catalog.pg_extension_config_dump('crm.segment_setting', 'WHERE NOT builtin');
-- Cache invalidations fire under session_replication_role = replica too
-- (ALWAYS): a restore changes configuration rows as well.
CREATE TRIGGER segment_setting_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.segment_setting
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.segment_setting ENABLE ALWAYS TRIGGER segment_setting_changed;
INSERT INTO crm.segment_setting (key, value, description, builtin) VALUES
	('timezone', 'UTC', 'Time zone of local days, weekdays and rolling windows of customer stats', true);

CREATE TABLE crm.rfm_segment_map (
	priority	integer PRIMARY KEY,
	segment		text NOT NULL CONSTRAINT rfm_segment_map_segment_not_blank CHECK (pg_catalog.btrim(segment) <> ''),
	r_min		integer NOT NULL DEFAULT 1,
	r_max		integer NOT NULL DEFAULT 9,
	f_min		integer NOT NULL DEFAULT 1,
	f_max		integer NOT NULL DEFAULT 9,
	m_min		integer NOT NULL DEFAULT 1,
	m_max		integer NOT NULL DEFAULT 9,
	builtin		boolean NOT NULL DEFAULT false,
	CONSTRAINT rfm_segment_map_ranges CHECK (r_min BETWEEN 1 AND 9 AND r_max BETWEEN r_min AND 9
		AND f_min BETWEEN 1 AND 9 AND f_max BETWEEN f_min AND 9 AND m_min BETWEEN 1 AND 9 AND m_max BETWEEN m_min AND 9)
);
COMMENT ON TABLE crm.rfm_segment_map IS 'Ordered rules naming RFM segments: the first rule (lowest priority) whose score ranges contain a score names it; no match is ''Others''';
SELECT pg_catalog.pg_extension_config_dump('crm.rfm_segment_map', 'WHERE NOT builtin');
CREATE TRIGGER rfm_segment_map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.rfm_segment_map
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.rfm_segment_map ENABLE ALWAYS TRIGGER rfm_segment_map_changed;
-- The 11 standard segments over recency and frequency quintiles.
INSERT INTO crm.rfm_segment_map (priority, segment, r_min, r_max, f_min, f_max, builtin) VALUES
	(10,  'Champions',          5, 5, 4, 5, true),
	(20,  'Loyal',              3, 4, 4, 5, true),
	(30,  'Potential Loyalist', 4, 5, 2, 3, true),
	(40,  'New Customers',      5, 5, 1, 1, true),
	(50,  'Promising',          4, 4, 1, 1, true),
	(60,  'Need Attention',     3, 3, 3, 3, true),
	(70,  'About To Sleep',     3, 3, 1, 2, true),
	(80,  'Can''t Lose Them',   1, 2, 5, 5, true),
	(90,  'At Risk',            1, 2, 3, 4, true),
	(100, 'Lost',               1, 1, 1, 1, true),
	(110, 'Hibernating',        1, 2, 1, 2, true);

CREATE TABLE crm.rfm_threshold (
	dimension	text NOT NULL CONSTRAINT rfm_threshold_dimension_valid CHECK (dimension IN ('r', 'f', 'm')),
	score		integer NOT NULL CONSTRAINT rfm_threshold_score_range CHECK (score BETWEEN 2 AND 9),
	bound		numeric NOT NULL CONSTRAINT rfm_threshold_bound_valid CHECK (bound >= 0 AND bound <> 'NaN'::numeric),
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (dimension, score)
);
COMMENT ON TABLE crm.rfm_threshold IS 'Fixed RFM cut points for crm.rfm(..., method => ''fixed''): r scores by the most days since the last order, f by the least orders, m by the least spend; score 1 when no bound applies';
SELECT pg_catalog.pg_extension_config_dump('crm.rfm_threshold', 'WHERE NOT builtin');
CREATE TRIGGER rfm_threshold_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON crm.rfm_threshold
	FOR EACH STATEMENT EXECUTE FUNCTION crm.config_changed();
ALTER TABLE crm.rfm_threshold ENABLE ALWAYS TRIGGER rfm_threshold_changed;
INSERT INTO crm.rfm_threshold (dimension, score, bound, builtin) VALUES
	('r', 5, 14, true), ('r', 4, 30, true), ('r', 3, 90, true), ('r', 2, 180, true),
	('f', 2, 2, true),  ('f', 3, 5, true),  ('f', 4, 10, true), ('f', 5, 20, true),
	('m', 2, 100, true), ('m', 3, 300, true), ('m', 4, 800, true), ('m', 5, 2000, true);

CREATE FUNCTION crm.rfm_segment(crm.rfm_score) RETURNS text
	LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_segment';
COMMENT ON FUNCTION crm.rfm_segment(crm.rfm_score) IS 'The segment name of an RFM score per crm.rfm_segment_map (first match wins, else Others)';

CREATE FUNCTION crm.rfm(as_of timestamptz DEFAULT pg_catalog.now(), bins integer DEFAULT 5, method text DEFAULT 'quantile')
RETURNS TABLE (customer_id bigint, recency_days integer, frequency bigint, monetary numeric, score crm.rfm_score, segment text)
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'crm_rfm';
COMMENT ON FUNCTION crm.rfm(timestamptz, integer, text) IS
	'RFM of every golden customer with a paid order before as_of, in one pass over crm.orders: scores by quantile bins (equal values get equal scores) or by crm.rfm_threshold (method fixed)';

-- The last refresh's scores.  The snapshot keeps the last order time, not the
-- recency: a next-day refresh then rewrites only the customers who ordered or
-- whose scores moved.  crm.customer_rfm adds the recency as of the refresh.
CREATE TABLE crm.rfm_snapshot (
	customer_id		bigint PRIMARY KEY,
	last_order_at	timestamptz NOT NULL,
	frequency		bigint NOT NULL,
	monetary		numeric(20,2) NOT NULL,
	score			crm.rfm_score NOT NULL,
	segment			text NOT NULL
);
CREATE INDEX rfm_snapshot_score_idx ON crm.rfm_snapshot (score);
COMMENT ON TABLE crm.rfm_snapshot IS 'RFM per golden customer as of the last crm.refresh_rfm (no foreign key; kept by crm.refresh_rfm only). Read crm.customer_rfm';
SELECT pg_catalog.pg_extension_config_dump('crm.rfm_snapshot', '');

CREATE TABLE crm.rfm_refresh (
	singleton		boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	as_of			timestamptz NOT NULL,
	bins			integer NOT NULL,
	method			text NOT NULL,
	scored			bigint NOT NULL,
	rows_written	bigint NOT NULL,
	rows_deleted	bigint NOT NULL,
	refreshed_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE crm.rfm_refresh IS 'The last crm.refresh_rfm: its arguments, customers scored and snapshot rows written (inserted, updated or deleted)';
SELECT pg_catalog.pg_extension_config_dump('crm.rfm_refresh', '');

CREATE VIEW crm.customer_rfm AS
SELECT s.customer_id, r.as_of,
	pg_catalog.floor(EXTRACT(EPOCH FROM r.as_of OPERATOR(pg_catalog.-) s.last_order_at) OPERATOR(pg_catalog./) 86400)::integer AS recency_days,
	s.frequency, s.monetary, s.score, s.segment, s.last_order_at
FROM crm.rfm_snapshot s CROSS JOIN crm.rfm_refresh r;
COMMENT ON VIEW crm.customer_rfm IS 'RFM per golden customer as of the last crm.refresh_rfm (empty before the first)';

CREATE FUNCTION crm.refresh_rfm(as_of timestamptz DEFAULT pg_catalog.now(), bins integer DEFAULT 5, method text DEFAULT 'quantile')
RETURNS bigint
	LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'crm_refresh_rfm';
COMMENT ON FUNCTION crm.refresh_rfm(timestamptz, integer, text) IS 'Brings crm.customer_rfm to crm.rfm(as_of, bins, method), writing only the rows that changed (one refresh at a time); returns the number of customers scored';
