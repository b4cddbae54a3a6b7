
-- ===========================================================================
-- verify.sql: crm.verify(), every cross-feature invariant in one check.
-- Each feature owns its rules; this file only compares what the tables hold
-- with what those rules compute (crm.verify_ledgers, crm.customer_stats_expected,
-- crm.spend_buckets, crm.tier_for_spend), so it never states a rule twice.
-- Set-based: one pass over each table, no per-customer loops.  The tests run
-- it at the end of every regression file and isolation spec.
-- ===========================================================================

CREATE FUNCTION crm.verify(at timestamptz DEFAULT NULL)
RETURNS TABLE (invariant text, customer_id bigint, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- Whole tables are compared: hash joins, whatever the statistics say.  A
-- table vacuumed while it held only dead rows (reltuples 0, relpages > 0)
-- looks empty to the planner however many rows it holds now, and a nested
-- loop over two such tables took minutes in the test suite.  No JIT: the
-- cost of a disabled nested loop (the lateral function scans keep theirs)
-- would compile every call.
SET enable_nestloop = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
PERFORM crm.refuse_on_citus('crm.verify()');
RETURN QUERY
-- Not STRICT: at NULL (the default) checks what holds at any time; a time
-- also checks what crm.tick(at) leaves behind (stages, time-dependent rule
-- tags, tiers held past the hold lowered).
WITH
-- What crm.rebuild_customer_stats would write (the stats triggers' code),
-- for every customer that has or should have stats or rule tags.
expected AS MATERIALIZED (
	SELECT * FROM crm.customer_stats_expected(
		ARRAY(SELECT s.customer_id FROM crm.customer_stats s UNION SELECT o.customer_id FROM crm.orders o
		      UNION SELECT e.customer_id FROM crm.event e UNION SELECT ct.customer_id FROM crm.customer_tag ct),
		COALESCE(verify.at, crm.segmentation_now()))),
-- The rule tags checked: enabled ones; time-dependent ones only as of "at".
rule_tag AS MATERIALIZED (
	SELECT t.tag_id, t.name FROM crm.tag t
	WHERE t.kind = 'rule' AND t.enabled AND (verify.at IS NOT NULL OR NOT t.time_dependent)),
-- Each account's buckets against buckets rebuilt from its orders (crm.spend_buckets, the rule's owner).
spend AS (
	SELECT a.customer_id, a.spend_month, a.spend_cents, b.spend_month AS o_month, b.spend_cents AS o_cents
	FROM crm.loyalty_account a
	LEFT JOIN (SELECT o.customer_id, pg_catalog.array_agg(o.ordered_at) AS ordered_at,
	                  pg_catalog.array_agg(o.net_amount) AS net_amount
	           FROM crm.orders o GROUP BY o.customer_id) o ON o.customer_id = a.customer_id,
	LATERAL crm.spend_buckets(COALESCE(o.ordered_at, '{}'), COALESCE(o.net_amount, '{}')) b),
-- Compared as of now and as of the newer of the two newest months (a
-- timestamp in the middle of that month in the programme time zone).
spend_at AS (
	SELECT s.*, x.as_of,
	       crm.spend_buckets_total(s.spend_month, s.spend_cents, x.as_of) AS account_total,
	       crm.spend_buckets_total(s.o_month, s.o_cents, x.as_of) AS orders_total
	FROM spend s,
	LATERAL (SELECT now() AS as_of
	         UNION ALL
	         SELECT make_timestamptz(GREATEST(s.spend_month, s.o_month) / 12, GREATEST(s.spend_month, s.o_month) % 12 + 1,
	                                 15, 12, 0, 0, (SELECT p.time_zone FROM crm.loyalty_program p))
	         WHERE GREATEST(s.spend_month, s.o_month) > 0) x)

-- Ledgers and debt against the journal: crm.verify_ledgers() (loyalty's own check).
SELECT 'ledger matches journal', l.customer_id,
       format('%s: ledger %s, journal %s', l.what, COALESCE(l.ledger_value::text, 'none'), COALESCE(l.journal_value::text, 'none'))
FROM crm.verify_ledgers() l

-- crm.customer_stats against a rebuild from orders, lines and events.
UNION ALL
SELECT 'customer_stats match a rebuild', COALESCE(e.customer_id, s.customer_id),
       CASE WHEN s.customer_id IS NULL THEN 'no stats row; a rebuild writes one'
            WHEN e.customer_id IS NULL THEN 'a stats row, but the record is merged or has no orders or events'
            ELSE concat_ws('; ',
                 CASE WHEN s.orders <> e.orders THEN format('orders %s, rebuilt %s', s.orders, e.orders) END,
                 CASE WHEN s.refunded_orders <> e.refunded_orders THEN format('refunded_orders %s, rebuilt %s', s.refunded_orders, e.refunded_orders) END,
                 CASE WHEN s.spend <> e.spend THEN format('spend %s, rebuilt %s', s.spend, e.spend) END,
                 CASE WHEN s.first_order_at IS DISTINCT FROM e.first_order_at THEN 'first_order_at differs' END,
                 CASE WHEN s.last_order_at IS DISTINCT FROM e.last_order_at THEN 'last_order_at differs' END,
                 CASE WHEN s.mean_interval_days IS DISTINCT FROM e.mean_interval_days THEN 'mean_interval_days differs' END,
                 CASE WHEN s.weekday_orders <> e.weekday_orders THEN format('weekday_orders %s, rebuilt %s', s.weekday_orders, e.weekday_orders) END,
                 CASE WHEN s.events <> e.events THEN format('events %s, rebuilt %s', s.events, e.events) END,
                 CASE WHEN s.last_event_at IS DISTINCT FROM e.last_event_at THEN 'last_event_at differs' END,
                 CASE WHEN s.days <> e.days THEN 'day buckets differ' END,
                 CASE WHEN s.categories <> e.categories THEN 'categories differ' END,
                 CASE WHEN s.line_spend <> e.line_spend THEN format('line_spend %s, rebuilt %s', s.line_spend, e.line_spend) END,
                 CASE WHEN verify.at IS NOT NULL AND s.stage <> e.stage THEN format('stage %s, rebuilt %s as of %s', s.stage, e.stage, verify.at) END)
       END
FROM expected e FULL JOIN crm.customer_stats s ON s.customer_id = e.customer_id
WHERE s.customer_id IS NULL OR e.customer_id IS NULL
   OR (s.orders, s.refunded_orders, s.spend, s.weekday_orders, s.events, s.days, s.categories, s.line_spend)
      IS DISTINCT FROM (e.orders, e.refunded_orders, e.spend, e.weekday_orders, e.events, e.days, e.categories, e.line_spend)
   OR (s.first_order_at, s.last_order_at, s.mean_interval_days, s.last_event_at)
      IS DISTINCT FROM (e.first_order_at, e.last_order_at, e.mean_interval_days, e.last_event_at)
   OR (verify.at IS NOT NULL AND s.stage <> e.stage)

-- Rule tags against their rules, evaluated by the same code on the rebuilt stats.
UNION ALL
SELECT 'rule tags match their rules', COALESCE(h.customer_id, w.customer_id),
       CASE WHEN w.customer_id IS NULL THEN format('holds tag %s; its rule says no', h.name)
            ELSE format('lacks tag %s; its rule says yes', w.name) END
FROM (SELECT ct.customer_id, r.tag_id, r.name FROM crm.customer_tag ct JOIN rule_tag r ON r.tag_id = ct.tag_id) h
FULL JOIN (SELECT e.customer_id, r.tag_id, r.name FROM expected e, unnest(e.rule_tags) u(tag_id)
           JOIN rule_tag r ON r.tag_id = u.tag_id) w
  ON w.customer_id = h.customer_id AND w.tag_id = h.tag_id
WHERE h.customer_id IS NULL OR w.customer_id IS NULL

-- Orders, events, identities and journal rows sit on the golden customer of
-- the record they arrived on (c: that record; p: the one it is merged into,
-- which is golden unless there is a chain, reported below); an identity the golden
-- holds already stays parked on a merged record of that golden (identity.sql).
UNION ALL
SELECT 'rows sit on their origin''s golden customer', r.customer_id,
       format('%s %s of record %s belongs to %s', r.what, r.id, r.origin_customer_id, COALESCE(p.merged_into, c.merged_into, c.customer_id))
FROM (SELECT 'order' AS what, o.order_id AS id, o.customer_id, o.origin_customer_id FROM crm.orders o
      UNION ALL
      SELECT 'event', e.event_id, e.customer_id, e.origin_customer_id FROM crm.event e
      UNION ALL
      SELECT 'identity', i.identity_id, i.customer_id, i.origin_customer_id FROM crm.identity i
      UNION ALL
      SELECT 'journal row', j.journal_id, j.customer_id, j.origin_customer_id FROM crm.points_journal j
      UNION ALL
      SELECT 'line of order', l.order_id, l.customer_id, o.origin_customer_id
      FROM crm.order_line l JOIN crm.orders o ON o.order_id = l.order_id
      WHERE l.customer_id IS NOT NULL) r
JOIN crm.customer c ON c.customer_id = r.origin_customer_id
LEFT JOIN crm.customer p ON p.customer_id = c.merged_into
WHERE r.customer_id <> COALESCE(p.merged_into, c.merged_into, c.customer_id)
  AND NOT (r.what = 'identity'
           AND EXISTS (SELECT 1 FROM crm.identity i
                       JOIN crm.customer h ON h.customer_id = i.customer_id
                       JOIN crm.identity d ON d.kind = i.kind AND d.value = i.value AND d.customer_id = h.merged_into
                       WHERE i.identity_id = r.id
                         AND h.merged_into = COALESCE(p.merged_into, c.merged_into, c.customer_id)))

-- The order path's references hold (crm's triggers check them instead of
-- FOREIGN KEY constraints, src/common/references.c): rows loaded with the
-- triggers off (a restore into a database that differs, a trigger disabled
-- by hand) are the way to break them.
UNION ALL
SELECT 'references exist', r.customer_id, format('%s %s: %s %s does not exist', r.what, r.id, r.parent, r.key)
FROM (SELECT 'order' AS what, o.order_id::text AS id, o.customer_id, 'customer' AS parent, o.customer_id::bigint AS key
      FROM crm.orders o WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = o.customer_id)
      UNION ALL
      SELECT 'order', o.order_id::text, o.customer_id, 'origin customer', o.origin_customer_id
      FROM crm.orders o WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = o.origin_customer_id)
      UNION ALL
      SELECT 'order', o.order_id::text, o.customer_id, 'store', o.store_id
      FROM crm.orders o WHERE o.store_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.store s WHERE s.store_id = o.store_id)
      UNION ALL
      SELECT 'order line', l.order_id || '/' || l.line_no, NULL, 'order', l.order_id
      FROM crm.order_line l WHERE NOT EXISTS (SELECT 1 FROM crm.orders o WHERE o.order_id = l.order_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'customer', e.customer_id
      FROM crm.event e WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = e.customer_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'origin customer', e.origin_customer_id
      FROM crm.event e WHERE NOT EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id = e.origin_customer_id)
      UNION ALL
      SELECT 'event', e.event_id::text, e.customer_id, 'store', e.store_id
      FROM crm.event e WHERE e.store_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM crm.store s WHERE s.store_id = e.store_id)) r

-- No merge chains: a record is merged into a golden customer.
UNION ALL
SELECT 'merged into a golden customer', c.customer_id,
       format('merged into %s, which is merged into %s', c.merged_into, p.merged_into)
FROM crm.customer c JOIN crm.customer p ON p.customer_id = c.merged_into
WHERE p.merged_into IS NOT NULL

-- Merged records keep nothing of their own: no points, no debt, no manual
-- tags (their rule tags and stats are checked above).
UNION ALL
SELECT 'merged records hold nothing', a.customer_id,
       format('account holds %s points and %s debt', crm.ledger_total(a.ledger), a.debt)
FROM crm.loyalty_account a JOIN crm.customer c ON c.customer_id = a.customer_id
WHERE c.merged_into IS NOT NULL AND (crm.ledger_total(a.ledger) <> 0 OR a.debt <> 0)
UNION ALL
SELECT 'merged records hold nothing', ct.customer_id, format('holds manual tag %s', t.name)
FROM crm.customer_tag ct JOIN crm.tag t ON t.tag_id = ct.tag_id AND t.kind = 'manual'
JOIN crm.customer c ON c.customer_id = ct.customer_id
WHERE c.merged_into IS NOT NULL

-- Accounts exist where points can be: every golden customer with a paid
-- order has one (journal rows without an account: crm.verify_ledgers).
UNION ALL
SELECT 'paid orders have an account', o.customer_id,
       format('no loyalty account; paid orders: %s', count(*))
FROM crm.orders o JOIN crm.customer c ON c.customer_id = o.customer_id AND c.merged_into IS NULL
WHERE o.status = 'paid'
  AND NOT EXISTS (SELECT 1 FROM crm.loyalty_account a WHERE a.customer_id = o.customer_id)
GROUP BY o.customer_id

-- Rolling spend: an account's monthly buckets add up to what its orders do.
UNION ALL
SELECT 'rolling spend matches orders', y.customer_id, y.detail
FROM (SELECT DISTINCT ON (x.customer_id) x.customer_id,
             format('qualifying spend as of %s: account %s, orders %s', x.as_of, x.account_total, x.orders_total) AS detail
      FROM spend_at x
      WHERE x.account_total <> x.orders_total
      ORDER BY x.customer_id, x.as_of) y

-- Tiers, by the tier policy (crm.tier_held): an order raises the tier at
-- once to what the rolling spend reaches, and crm.tick(t) lowers it (then
-- tier_since = t) only to what the rolling spend at t reaches, which it can
-- only fall below later.  So no tier is below what the policy holds now
-- (crm.loyalty_now()), or at tier_since when a tick ran ahead of now.
UNION ALL
SELECT 'tier reaches rolling spend', a.customer_id,
       format('tier %s, rolling spend %s at %s reaches %s', a.tier,
              crm.spend_buckets_total(a.spend_month, a.spend_cents, x.as_of), x.as_of, r.tier)
FROM crm.loyalty_account a
JOIN crm.tier t ON t.tier = a.tier
CROSS JOIN LATERAL (SELECT y.as_of, crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, y.as_of) AS held
                    FROM (SELECT GREATEST(crm.loyalty_now(), a.tier_since) AS as_of) y) x
JOIN crm.tier r ON r.tier = x.held
WHERE r.rank > t.rank

-- What crm.tick(at) guarantees: no tier above what the policy holds at
-- "at" (a tier held past tier_hold_months drops to what the spend reaches).
UNION ALL
SELECT 'tier lowered after the hold', a.customer_id,
       format('tier %s since %s, rolling spend %s at %s: %s', a.tier, a.tier_since,
              crm.spend_buckets_total(a.spend_month, a.spend_cents, verify.at), verify.at, r.tier)
FROM crm.loyalty_account a
JOIN crm.tier t ON t.tier = a.tier
JOIN crm.tier r ON r.tier = crm.tier_held(a.tier, a.tier_since, a.spend_month, a.spend_cents, verify.at)
WHERE verify.at IS NOT NULL AND r.rank < t.rank

-- Coupons: each golden customer's uses of a template (crm.coupon_usage,
-- what the per-customer limit counts) are its records' coupons reserved or
-- redeemed; each coupon stands where its last journal row put it.
UNION ALL
SELECT 'coupon uses match coupons', COALESCE(u.customer_id, k.golden),
       format('template %s: %s counted, %s coupons reserved or redeemed', COALESCE(u.template_id, k.template_id),
              COALESCE(u.used, 0), COALESCE(k.n, 0))
FROM (SELECT x.customer_id, x.template_id, x.used FROM crm.coupon_usage x WHERE x.used > 0) u
FULL JOIN (SELECT COALESCE(r.merged_into, r.customer_id) AS golden, c.template_id, count(*) AS n
           FROM crm.coupon c JOIN crm.customer r ON r.customer_id = c.customer_id
           WHERE c.status IN ('reserved', 'redeemed') GROUP BY 1, 2) k
  ON k.golden = u.customer_id AND k.template_id = u.template_id
WHERE COALESCE(u.used, 0) <> COALESCE(k.n, 0)
UNION ALL
SELECT 'coupon budget matches redemptions', NULL::bigint,
       format('template %s, period from %s: %s redemptions and %s counted, %s and %s redeemed', COALESCE(b.template_id, k.template_id),
              COALESCE(b.period_start, k.period_start), COALESCE(b.redeemed, 0), COALESCE(b.discount, 0), COALESCE(k.n, 0), COALESCE(k.d, 0))
FROM (SELECT x.* FROM crm.coupon_budget x WHERE x.redeemed <> 0 OR x.discount <> 0) b
FULL JOIN (SELECT c.template_id, crm.coupon_budget_period(t, c.redeemed_at) AS period_start, count(*) AS n, sum(c.discount) AS d
           FROM crm.coupon c JOIN crm.coupon_template t ON t.template_id = c.template_id
           WHERE c.status = 'redeemed' AND (t.budget_count IS NOT NULL OR t.budget_value IS NOT NULL)
           GROUP BY 1, 2) k
  ON k.template_id = b.template_id AND k.period_start = b.period_start
WHERE COALESCE(b.redeemed, 0) <> COALESCE(k.n, 0) OR COALESCE(b.discount, 0) <> COALESCE(k.d, 0)
UNION ALL
SELECT 'coupon matches its journal', c.customer_id,
       format('coupon %s is %s, its last journal row says %s', c.coupon_id, c.status, COALESCE(j.change, 'nothing'))
FROM crm.coupon c
LEFT JOIN LATERAL (SELECT x.change, x.discount FROM crm.coupon_journal x WHERE x.coupon_id = c.coupon_id
                   ORDER BY x.entry_id DESC LIMIT 1) j ON true
WHERE j.change IS NULL
   OR c.status <> CASE j.change WHEN 'reserve' THEN 'reserved' WHEN 'redeem' THEN 'redeemed' WHEN 'expire' THEN 'expired' ELSE 'issued' END
   OR (c.status = 'redeemed' AND c.discount IS DISTINCT FROM j.discount)

-- Stored value: every wallet equals its journal, every transaction balances.
UNION ALL
SELECT w.invariant, w.customer_id, w.detail FROM crm.verify_wallets() w

ORDER BY 1, 2, 3;
END
$$;
COMMENT ON FUNCTION crm.verify(timestamptz) IS
	'Every violated cross-feature invariant, one row each (invariant, customer, detail): ledgers vs journal, customer_stats vs a rebuild, rule tags vs their rules, rows on their origin''s golden customer, the order path''s references, no merge chains, nothing on merged records, accounts for paid orders, rolling spend vs orders, tier vs rolling spend, coupon uses vs coupons, coupon budgets vs redemptions, coupons vs their journal and the stored-value ledger (crm.verify_wallets); with "at", also what crm.tick(at) leaves (stages, time-dependent tags, tiers lowered after the hold).  Empty when all is well';
