-- Demo report, section 3c: the rewards catalogue, as
-- crm.generate_sample_activity made it: goods, an in-store service and a
-- partner's coupon, members exchanging points for them in the catalogue's
-- month, and a limited edition that sells out.  This section only reads.
\pset border 1
\echo '== Rewards (points exchanged for rewards; made by crm.generate_sample_activity) =='
\echo 'Per reward (crm.v_rewards):'
SELECT name, kind, points_price, stock, exchanged,
       CASE WHEN stock IS NOT NULL AND exchanged >= stock THEN 'sold out' ELSE '' END AS note,
       exchanges, to_char(points_spent, 'FM999,999,990') AS points_spent, members
FROM crm.v_rewards ORDER BY reward_id;

\echo 'Points spent: on rewards and at the till (spend entries of crm.points_journal):'
SELECT CASE WHEN j.idempotency_key LIKE 'reward:%' THEN 'rewards' ELSE 'redeemed at the till' END AS spent_on,
       count(*) AS spends, count(DISTINCT j.customer_id) AS members,
       to_char(- sum(j.points), 'FM999,999,990') AS points,
       round(- avg(j.points)) AS avg_points
FROM crm.points_journal j WHERE j.kind = 'spend'
GROUP BY 1 ORDER BY 1;
