-- Tiers across merges (issue 13, defect 3).  A merge re-evaluates the
-- survivor's tier on the combined rolling spend at once, by the tier policy
-- crm.tier_held: the tier the rolling spend reaches, or a tier still within
-- tier_hold_months of its tier_since (an unprotected tier above the spend
-- is dropped, as crm.tick's downgrade would drop it).  An unmerge
-- re-evaluates both sides on their own spend, from the tier each held
-- before the merge.  Each part one transaction, rolled back.
\i sql/include/expect_error.sql
-- Sequences are not rolled back: remember them, so that later files see
-- the ids they expect (identity_stitch prints merge ids).
CREATE TEMP TABLE seq_before AS
	SELECT format('%I.%I', schemaname, sequencename) AS seq, start_value, last_value
	FROM pg_sequences WHERE schemaname = 'crm';

-- 1. The sample: after batch stitching no golden customer sits below the
--    tier its rolling spend reaches (before the fix: 5 of 2,000 records'
--    survivors did).
BEGIN;
SET LOCAL TimeZone = 'UTC';
SELECT count(*) > 0 AS generated FROM crm.generate_sample(2000, 1);
SELECT set_config('crm.loyalty_now', crm.sample_as_of()::text, true) IS NOT NULL AS clock_at_sample_end;
CREATE TEMP VIEW below_tier AS
SELECT a.customer_id FROM crm.loyalty_account a
JOIN crm.customer c ON c.customer_id = a.customer_id AND c.merged_into IS NULL
JOIN crm.tier t ON t.tier = a.tier
JOIN crm.tier q ON q.tier = crm.tier_for_spend(crm.qualifying_spend(a.customer_id, crm.loyalty_now()))
WHERE q.rank > t.rank;
SELECT count(*) AS below_tier_before_stitching FROM below_tier;
SELECT merges FROM crm.stitch_identities();
SELECT count(*) AS below_tier_after_stitching FROM below_tier;
SELECT count(*) AS merge_tier_changes, count(*) FILTER (WHERE h.qualifying_spend IS NULL) AS without_spend
FROM crm.tier_history h WHERE h.reason = 'merge';
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 2. By hand, in 2025 (the programme's clock crm.loyalty_now; UTC months).
BEGIN;
SET LOCAL TimeZone = 'UTC';
SET LOCAL crm.loyalty_now = '2025-06-15 00:00+00';
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'A', '2020-01-01'), (2, 'B', '2020-01-02'),		-- combined reach silver
	(3, 'C', '2020-01-04'), (4, 'D', '2020-01-03'),		-- C's gold is protected
	(5, 'E', '2020-01-05'), (6, 'F', '2020-01-06');		-- E's gold is not
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES
	(1, 'web', '2025-03-10', 600.00, 'a1'),
	(2, 'web', '2025-04-10', 700.00, 'b1'),
	(3, 'web', '2024-06-20', 5000.00, 'c1'),		-- gold since 2024-06-20, out of the window by now
	(4, 'web', '2025-05-10', 300.00, 'd1'),
	(5, 'web', '2023-01-10', 6000.00, 'e1'),		-- gold since 2023-01-10
	(6, 'web', '2025-05-10', 1200.00, 'f1');
SELECT customer_id, tier, tier_since, crm.qualifying_spend(customer_id, crm.loyalty_now()) AS rolling_spend
FROM crm.loyalty_account ORDER BY 1;
CREATE TEMP TABLE m AS
SELECT 'AB' AS pair, crm.merge_customers(1, 2) AS merge_id
UNION ALL SELECT 'DC', crm.merge_customers(3, 4)
UNION ALL SELECT 'EF', crm.merge_customers(5, 6);
-- A+B: 1,300 reaches silver, from now; D+C: C's protected gold, kept with
-- its tier_since; E+F: 1,200 reaches silver, E's gold (held over a year,
-- no spend in the window) is dropped.
CREATE FUNCTION pg_temp.since(t timestamptz) RETURNS text LANGUAGE sql
	AS $$ SELECT CASE WHEN t = now() THEN 'now' ELSE t::text END $$;
SELECT customer_id, tier, pg_temp.since(tier_since) AS tier_since FROM crm.loyalty_account
WHERE customer_id IN (1, 4, 5) ORDER BY 1;
SELECT customer_id, from_tier, to_tier, reason, qualifying_spend FROM crm.tier_history
WHERE reason <> 'upgrade' ORDER BY tier_history_id;
-- the same policy the tick goes by: nothing to lower for the survivors
SELECT customer_id, tier = crm.tier_held(tier, tier_since, spend_month, spend_cents, crm.loyalty_now()) AS as_policy
FROM crm.loyalty_account WHERE customer_id IN (1, 4, 5) ORDER BY 1;
-- unmerge: each side back on its own spend, from the tier it held before
SELECT pair, crm.unmerge(merge_id) AS undone FROM m ORDER BY pair;
SELECT customer_id, tier, pg_temp.since(tier_since) AS tier_since FROM crm.loyalty_account ORDER BY 1;
SELECT customer_id, from_tier, to_tier, reason, qualifying_spend FROM crm.tier_history
WHERE reason = 'unmerge' ORDER BY tier_history_id;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;

-- 3. crm.tier_held: bad input
SELECT pg_temp.expect_error($$SELECT crm.tier_held('platinum', now(), 0, '{}', now())$$);
SELECT pg_temp.expect_error($$SELECT crm.tier_held('gold', now(), 0, '{}', 'infinity')$$);
SELECT crm.tier_held('gold', '2025-01-01+00', 0, '{}', '2025-06-01+00') AS protected_gold,
       crm.tier_held('gold', '2024-01-01+00', 0, '{}', '2025-06-01+00') AS unprotected_gold;

SELECT bool_and(CASE WHEN b.last_value IS NULL THEN setval(b.seq, b.start_value, false)
                     ELSE setval(b.seq, b.last_value) END IS NOT NULL) AS sequences_restored
FROM seq_before b;
