-- Demo report, section 3: the loyalty programme, as of crm.sample_as_of(),
-- per shopper: after stitching (section 2) a merged record's points, spend
-- and journal rows belong to its golden customer, so only golden customers'
-- accounts are counted.
\pset border 1
\echo '== Loyalty (per shopper: golden customers after stitching) =='
\echo 'Members by tier (tier reached by rolling 12-month qualifying spend):'
SELECT a.tier, t.threshold, t.multiplier, count(*) AS members,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS pct,
       to_char(avg(crm.qualifying_spend(a.customer_id, crm.sample_as_of())), 'FM999,990.00') AS avg_rolling_spend
FROM crm.loyalty_account a JOIN crm.tier t USING (tier)
JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL
GROUP BY a.tier, t.rank, t.threshold, t.multiplier ORDER BY t.rank;

\echo 'Points: earned, spent (at the till and on rewards), expired, clawed back on refunds, outstanding; what expires next:'
SELECT to_char(sum(points) FILTER (WHERE kind = 'earn'), 'FM999,999,999,990') AS earned,
       to_char(coalesce(- sum(points) FILTER (WHERE kind = 'spend'), 0), 'FM999,999,999,990') AS spent,
       to_char(coalesce(- sum(points) FILTER (WHERE kind = 'expire'), 0), 'FM999,999,999,990') AS expired,
       to_char(coalesce(sum(debt - points) FILTER (WHERE kind = 'clawback' AND reason IS DISTINCT FROM 'debt repayment'), 0),
               'FM999,999,999,990') AS clawed_back_on_refunds,
       (SELECT to_char(sum(crm.ledger_balance(a.ledger, crm.sample_as_of())), 'FM999,999,999,990') FROM crm.loyalty_account a) AS outstanding,
       (SELECT to_char(sum(crm.ledger_total(a.ledger) - crm.ledger_balance(a.ledger, crm.sample_as_of())), 'FM999,999,999,990')
        FROM crm.loyalty_account a) AS expired_awaiting_tick,
       (SELECT to_char(sum(crm.ledger_expiring(a.ledger, crm.sample_as_of(), '1 month')), 'FM999,999,999,990')
        FROM crm.loyalty_account a) AS expiring_within_a_month
FROM crm.points_journal;

\echo 'Debt: points clawed back by refunds after they were spent, repaid from the next points earned:'
SELECT count(*) FILTER (WHERE j.kind = 'clawback' AND j.reason IS DISTINCT FROM 'debt repayment') AS refunds_clawed_back,
       count(*) FILTER (WHERE j.kind = 'clawback' AND j.debt > 0) AS that_left_debt,
       coalesce(sum(j.debt) FILTER (WHERE j.kind = 'clawback' AND j.debt > 0), 0) AS debt_incurred,
       coalesce(- sum(j.debt) FILTER (WHERE j.kind = 'clawback' AND j.reason = 'debt repayment'), 0) AS debt_repaid,
       (SELECT count(*) FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL
        WHERE a.debt > 0) AS members_in_debt,
       (SELECT coalesce(sum(a.debt), 0) FROM crm.loyalty_account a) AS debt_now
FROM crm.points_journal j;

\echo 'Outstanding points by month of expiry (next six months):'
SELECT to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS expires, count(DISTINCT a.customer_id) AS members,
       to_char(sum(l.points), 'FM999,999,990') AS points
FROM crm.loyalty_account a, crm.ledger_lots(a.ledger) l
WHERE l.expires_at > crm.sample_as_of() AND l.expires_at <= crm.sample_as_of() + interval '6 months'
GROUP BY 1 ORDER BY 1;

\echo 'Top earners, last 12 months:'
SELECT e.customer_id, a.tier, to_char(e.points, 'FM999,999,990') AS points_earned, e.orders,
       to_char(crm.ledger_balance(a.ledger, crm.sample_as_of()), 'FM999,999,990') AS balance
FROM (SELECT j.customer_id, sum(j.points) AS points, count(DISTINCT j.order_id) AS orders
      FROM crm.points_journal j
      WHERE j.kind = 'earn' AND j.at >= crm.sample_as_of() - interval '12 months' AND j.at < crm.sample_as_of()
      GROUP BY j.customer_id ORDER BY sum(j.points) DESC, j.customer_id LIMIT 10) e
JOIN crm.loyalty_account a USING (customer_id)
ORDER BY e.points DESC, e.customer_id;

\echo 'Ledgers that disagree with the journal (crm.verify_ledgers(), must be 0):'
SELECT count(*) AS mismatches FROM crm.verify_ledgers();
