-- Demo report, section 4: segmentation as of crm.sample_as_of(), per
-- shopper: RFM scores golden customers, and stats and tags were rebuilt for
-- them by the merges of section 2.
\pset border 1
\echo '== Segmentation (per shopper: golden customers after stitching; as of the sample''s end, 2026-07-01) =='
-- Stats and tags were kept by the triggers while the sample loaded; bring
-- the time-dependent ones (windows, days since, stages) to the sample's
-- "now", and score RFM as of then.
SELECT pg_catalog.format('%s stage moves and tag changes; %s customers scored',
       crm.segmentation_tick(crm.sample_as_of()), crm.refresh_rfm(crm.sample_as_of())) AS refreshed;

\echo 'RFM segments (quintiles, default segment map):'
SELECT segment, count(*) AS customers,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS pct,
       round(avg(recency_days)) AS avg_recency_days,
       round(avg(frequency), 1) AS avg_orders,
       to_char(avg(monetary), 'FM999,990.00') AS avg_spend
FROM crm.customer_rfm GROUP BY segment ORDER BY count(*) DESC, segment;

\echo 'RFM grid: customers per recency (rows) x frequency (columns) score:'
SELECT r AS "R \ F",
       sum(customers) FILTER (WHERE f = 1) AS "F1", sum(customers) FILTER (WHERE f = 2) AS "F2",
       sum(customers) FILTER (WHERE f = 3) AS "F3", sum(customers) FILTER (WHERE f = 4) AS "F4",
       sum(customers) FILTER (WHERE f = 5) AS "F5"
FROM crm.v_rfm_grid GROUP BY r ORDER BY r DESC;

\echo 'Tags (rule tags kept by the triggers and crm.tick), golden customers:'
SELECT t.name AS tag, count(c.customer_id) AS customers, t.rule
FROM crm.tag t LEFT JOIN crm.customer_tag ct ON ct.tag_id = t.tag_id
LEFT JOIN crm.customer c ON c.customer_id = ct.customer_id AND c.merged_into IS NULL
GROUP BY t.tag_id ORDER BY count(c.customer_id) DESC, t.name;

\echo 'Lifecycle stages of golden customers:'
SELECT name AS stage, customers, round(100.0 * customers / sum(customers) OVER (), 1) AS pct
FROM crm.v_segment_sizes WHERE kind = 'stage'
ORDER BY array_position(ARRAY['prospect', 'new', 'active', 'growing', 'mature', 'declining', 'churned'], name);

\echo 'Audiences (crm.segment tag expressions):'
SELECT s.name AS segment, s.expression, crm.segment_count(s.name) AS customers
FROM crm.segment s ORDER BY s.name;
