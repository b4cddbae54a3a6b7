-- Demo report, section 5: prediction -- CLV models, customers at risk,
-- frequently bought together and replenishment, as of crm.sample_as_of(),
-- per shopper (golden customers after stitching, section 2).
\pset border 1
\echo '== Prediction: customer lifetime value (per shopper: golden customers after stitching) =='
\echo 'Models fitted inside the database on every golden customer''s summary (weeks):'
SELECT f.name, f.model, f.param_names,
       ARRAY(SELECT round(p::numeric, 4) FROM unnest(f.params) p) AS params,
       round(f.log_likelihood::numeric, 1) AS log_likelihood, f.customers, f.summary_rows,
       round(f.seconds::numeric, 2) AS seconds
FROM (SELECT (crm.clv_fit('bgnbd', crm.sample_as_of(), name => 'demo_bgnbd')).*
      UNION ALL SELECT (crm.clv_fit('mbgnbd', crm.sample_as_of(), name => 'demo_mbgnbd')).*
      UNION ALL SELECT (crm.clv_fit('gammagamma', crm.sample_as_of(), name => 'demo_spend')).*) f
ORDER BY f.name;

\echo 'Top 10 customers by expected spend over the next 52 weeks (BG/NBD x Gamma-Gamma, 1% weekly discount):'
SELECT s.customer_id, s.frequency AS repeat_days, round(s.recency::numeric, 1) AS recency_wk,
       round(s.t::numeric, 1) AS age_wk, round(s.monetary, 2) AS avg_repeat_spend,
       round(s.p_alive::numeric, 3) AS p_alive, round(s.expected_purchases::numeric, 1) AS purchases_52wk,
       to_char(s.clv, 'FM999,990.00') AS clv_52wk
FROM crm.clv_scores('demo_bgnbd', 'demo_spend', 52, 0.01) s
ORDER BY s.clv DESC, s.customer_id LIMIT 10;

\echo 'Customers at risk (P(alive) below crm.clv_at_risk_threshold()), by model.'
SELECT 'bgnbd' AS model, crm.clv_at_risk_threshold() AS threshold, count(*) AS customers,
       count(*) FILTER (WHERE at_risk) AS at_risk,
       round(100.0 * count(*) FILTER (WHERE at_risk) / count(*), 1) AS at_risk_pct,
       round(avg(p_alive)::numeric, 3) AS avg_p_alive
FROM crm.clv_scores('demo_bgnbd', NULL, 52, 0)
UNION ALL
SELECT 'mbgnbd', crm.clv_at_risk_threshold(), count(*), count(*) FILTER (WHERE at_risk),
       round(100.0 * count(*) FILTER (WHERE at_risk) / count(*), 1), round(avg(p_alive)::numeric, 3)
FROM crm.clv_scores('demo_mbgnbd', NULL, 52, 0);

\echo 'Longest-silent customers with many past purchases (lowest P(alive) under MBG/NBD):'
SELECT s.customer_id, s.frequency AS repeat_days, round(s.recency::numeric, 1) AS recency_wk,
       round(s.t::numeric, 1) AS age_wk, round(s.p_alive::numeric, 3) AS p_alive
FROM crm.clv_scores('demo_mbgnbd', NULL, 52, 0) s
WHERE s.frequency >= 5
ORDER BY s.p_alive, s.customer_id LIMIT 5;

\echo '== Frequently bought together =='
SELECT crm.refresh_associations(0.001, 0.05) AS rules_found;
SELECT antecedent AS bought, consequent AS also_bought, baskets, round(confidence::numeric, 3) AS confidence,
       round(lift::numeric, 2) AS lift
FROM crm.association_rule WHERE lift > 1
ORDER BY lift DESC, confidence DESC, antecedent, consequent LIMIT 8;

\echo '== Replenishment: reminders due in the week after the sample ends =='
SELECT count(*) AS reminders, count(DISTINCT customer_id) AS customers,
       count(*) FILTER (WHERE sku IS NOT NULL) AS sku_level
FROM crm.replenishment_due(crm.sample_as_of(), '7 days');
SELECT customer_id, category, coalesce(sku, '(any)') AS sku, purchases, interval_days, last_purchase, next_expected, due_in_days
FROM crm.replenishment_due(crm.sample_as_of(), '7 days')
ORDER BY purchases DESC, customer_id, category, sku NULLS FIRST LIMIT 5;
