-- Demo report, section 1: customer records, channels and duplicates, as
-- loaded: before identity stitching (section 2), so counts are per record.
\pset border 1
\echo '== Customer records and duplicates (as loaded, before stitching: one row per record) =='
SELECT count(*) AS customer_records,
       count(*) FILTER (WHERE merged_into IS NULL) AS golden_customers,
       count(*) FILTER (WHERE merged_into IS NOT NULL) AS merged_records,
       (SELECT count(DISTINCT person_id) FROM crm.sample_person) AS true_persons_in_sample
FROM crm.customer;

\echo 'Identifier values shared by more than one customer record (candidate duplicates):'
SELECT i.kind, k.strength, count(*) AS shared_values, sum(n) AS records_involved, max(n) AS most_records_on_one_value
FROM (SELECT kind, value, count(*) AS n FROM crm.identity GROUP BY 1, 2 HAVING count(*) > 1) i
JOIN crm.identity_kind k USING (kind)
GROUP BY 1, 2 ORDER BY 1;

\echo 'Sales by channel, last 12 months of the sample (buyers are records):'
SELECT o.channel,
       count(DISTINCT o.customer_id) AS buyers,
       count(*) AS orders,
       to_char(sum(o.net_amount), 'FM999,999,999,990.00') AS net_sales,
       to_char(avg(o.amount), 'FM999,990.00') AS avg_basket,
       round(100.0 * count(*) FILTER (WHERE o.status = 'refunded') / count(*), 1) AS refunded_pct
FROM crm.orders o
WHERE o.ordered_at >= crm.sample_as_of() - interval '12 months' AND o.ordered_at < crm.sample_as_of()
GROUP BY ROLLUP (o.channel) ORDER BY o.channel NULLS LAST;

\echo 'Top categories by net sales, last 12 months:'
SELECT l.category, count(DISTINCT o.customer_id) AS buyers,
       to_char(sum(l.amount) FILTER (WHERE o.status = 'paid'), 'FM999,999,990.00') AS sales
FROM crm.order_line l JOIN crm.orders o USING (order_id)
WHERE o.ordered_at >= crm.sample_as_of() - interval '12 months'
GROUP BY 1 ORDER BY sum(l.amount) FILTER (WHERE o.status = 'paid') DESC LIMIT 8;
