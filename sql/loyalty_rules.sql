-- The business rules of tiers and qualifying spend, called directly: the
-- tier a spend reaches (crm.tier_for_spend), the rolling total of an
-- account's monthly buckets (crm.spend_buckets_total) and the buckets
-- built from orders (crm.spend_buckets).  The triggers use the same C code;
-- the last part checks that they agree with these functions and with the
-- SQL the functions replaced.  One transaction, rolled back.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;

-- ---------------------------------------------------------------------------
-- crm.tier_for_spend: the highest rank whose threshold is at most the spend
-- ---------------------------------------------------------------------------
SELECT tier, rank, threshold FROM crm.tier ORDER BY rank;
SELECT s AS spend, crm.tier_for_spend(s) AS tier
FROM unnest('{0, 0.01, 999.99, 999.999, 1000.00, 1000.001, 4999.99, 5000, 19999.99, 20000, 1e30, Infinity}'::numeric[]) s
ORDER BY s;
-- below every threshold (only a negative spend can be), and NULL
SELECT crm.tier_for_spend(-0.01) IS NULL AS negative, crm.tier_for_spend('-Infinity') IS NULL AS minus_infinity,
	crm.tier_for_spend(NULL) IS NULL AS null_spend;
SELECT pg_temp.expect_error($$SELECT crm.tier_for_spend('NaN')$$);
-- the same answer as the SQL every caller used to have
SELECT bool_and(crm.tier_for_spend(s) IS NOT DISTINCT FROM
	(SELECT t.tier FROM crm.tier t WHERE t.threshold <= s ORDER BY t.rank DESC LIMIT 1)) AS same_as_sql
FROM (SELECT (g * 7.37)::numeric(14,2) AS s FROM generate_series(-10, 4000) g) x;
-- configuration changes are seen at once; the rank decides, not the order
-- of thresholds
UPDATE crm.tier SET threshold = 1500 WHERE tier = 'silver';
SELECT crm.tier_for_spend(1000) AS at_1000, crm.tier_for_spend(1500) AS at_1500;
UPDATE crm.tier SET threshold = 800 WHERE tier = 'gold';
SELECT crm.tier_for_spend(799.99) AS at_799_99, crm.tier_for_spend(1000) AS at_1000, crm.tier_for_spend(1500) AS at_1500;
UPDATE crm.tier SET threshold = 1000 WHERE tier = 'silver';
UPDATE crm.tier SET threshold = 5000 WHERE tier = 'gold';

-- ---------------------------------------------------------------------------
-- crm.spend_buckets_total(spend_month, spend_cents, at): spend_cents[k] is
-- month spend_month - k + 1; the months of "at" and the 11 before count
-- ---------------------------------------------------------------------------
SELECT crm.loyalty_month('2026-06-15') AS june_2026, crm.loyalty_month('2025-07-01') AS july_2025;
SELECT at, crm.spend_buckets_total(24317, '{100,200,300,400,500,600,700,800,900,1000,1100,1200}', at) AS total
FROM unnest('{2026-06-15, 2026-06-30 23:59:59.999999, 2026-07-01, 2026-05-31 23:59:59, 2027-05-01, 2027-05-31 23:59:59, 2027-06-01, 2025-07-01, 2025-06-30}'::timestamptz[]) at
ORDER BY at;
-- empty, NULL elements (count 0), more than 12 elements, other bounds
SELECT crm.spend_buckets_total(24317, '{}', '2026-06-15') AS empty,
	crm.spend_buckets_total(24317, '{100,NULL,300}', '2026-06-15') AS null_elements,
	crm.spend_buckets_total(24317, '{0,0,0,0,0,0,0,0,0,0,0,0,1300}', '2026-06-15') AS thirteenth_too_old,
	crm.spend_buckets_total(24317, '{0,0,0,0,0,0,0,0,0,0,0,0,1300}', '2026-05-15') AS thirteenth_in_window,
	crm.spend_buckets_total(24317, '[0:2]={100,200,300}', '2026-06-15') AS lower_bound_0,
	crm.spend_buckets_total(24317, '{9223372036854775807,9223372036854775807}', '2026-06-15') AS beyond_bigint;
SELECT crm.spend_buckets_total(NULL, '{1}', '2026-06-15') IS NULL AS null_month,
	crm.spend_buckets_total(24317, NULL, '2026-06-15') IS NULL AS null_cents,
	crm.spend_buckets_total(24317, '{1}', NULL) IS NULL AS null_at;
SELECT pg_temp.expect_error($$SELECT crm.spend_buckets_total(24317, '{1}', 'infinity')$$);
-- months are the programme's: 02:00 UTC on July 1 is still June in New York
UPDATE crm.loyalty_program SET time_zone = 'America/New_York';
SELECT crm.spend_buckets_total(24317, '{100,0,0,0,0,0,0,0,0,0,0,1200}', '2026-07-01 02:00+00') AS new_york_june,
	crm.spend_buckets_total(24317, '{100,0,0,0,0,0,0,0,0,0,0,1200}', '2026-07-01 05:00+00') AS new_york_july;
UPDATE crm.loyalty_program SET time_zone = 'UTC';

-- ---------------------------------------------------------------------------
-- crm.spend_buckets(ordered_at[], net_amount[]): buckets from orders
-- ---------------------------------------------------------------------------
SELECT * FROM crm.spend_buckets('{}', '{}');
-- two orders in June 2026, one in May, one in July 2025 (the oldest month
-- still in the window), one in June 2025 (12 months back: kept in the 13th
-- bucket, not counted); net amounts of 0 or less and pairs with a NULL do
-- not count
SELECT * FROM crm.spend_buckets(
	'{2026-06-01 00:00, 2026-06-30 23:59:59, 2026-05-31 23:59:59, 2025-07-01 00:00, 2025-06-30 23:59:59, 2026-06-02, 2026-06-03, NULL, 2026-06-04}',
	'{10.00, 20.05, 5.50, 1.01, 999.00, 0.00, -3.00, 7.00, NULL}');
-- the newest month sets the window whatever the order of the pairs
SELECT * FROM crm.spend_buckets('{2025-01-15, 2026-01-15, 2025-02-15}', '{1, 2, 4}');
-- only orders that do not count: spend_month 0
SELECT * FROM crm.spend_buckets('{2026-06-01}', '{0}');
-- programme months: 2026-06-30 20:00 UTC is July 1 in Tokyo
UPDATE crm.loyalty_program SET time_zone = 'Asia/Tokyo';
SELECT spend_month, spend_month = crm.loyalty_month('2026-07-01 00:00+09') AS july_in_tokyo, spend_cents
FROM crm.spend_buckets('{2026-06-30 20:00+00, 2026-06-30 14:00+00}', '{1, 2}');
UPDATE crm.loyalty_program SET time_zone = 'UTC';
SELECT crm.spend_buckets(NULL, '{1}') IS NULL AS null_times, crm.spend_buckets('{2026-06-01}', NULL) IS NULL AS null_amounts;
SELECT pg_temp.expect_error($$SELECT crm.spend_buckets('{2026-06-01, 2026-06-02}', '{1}')$$);
SELECT pg_temp.expect_error($$SELECT crm.spend_buckets('{infinity}', '{1}')$$);
SELECT pg_temp.expect_error($$SELECT crm.spend_buckets('{2026-06-01}', '{NaN}')$$);

-- ---------------------------------------------------------------------------
-- One rule everywhere: the buckets the order triggers keep, those rebuilt
-- from the orders, the rolling totals and the tiers agree
-- ---------------------------------------------------------------------------
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 1, 'web', '2025-03-10 12:00+00', 400.00),
	(2, 1, 'web', '2025-09-30 23:30+00', 350.25),
	(3, 1, 'app', '2025-10-01 00:30+00', 249.75),
	(4, 1, 'web', '2026-02-14 09:00+00', 4000.00),
	(5, 2, 'web', '2024-12-31 23:59+00', 999.99);
UPDATE crm.orders SET refunded_amount = 100.00 WHERE order_id = 4;
SELECT a.customer_id, a.tier, a.qualifying_spend, a.spend_month, a.spend_cents,
	(b.spend_month, b.spend_cents, b.qualifying_spend) = (a.spend_month, a.spend_cents, a.qualifying_spend) AS rebuilt_same
FROM crm.loyalty_account a,
	LATERAL (SELECT s.* FROM (SELECT array_agg(o.ordered_at) AS t, array_agg(o.net_amount) AS n FROM crm.orders o
	                          WHERE o.customer_id = a.customer_id) o, crm.spend_buckets(o.t, o.n) s) b
ORDER BY a.customer_id;
-- crm.qualifying_spend against the SQL it used to run, month by month
SELECT bool_and(crm.qualifying_spend(a.customer_id, m.at) IS NOT DISTINCT FROM coalesce((
	SELECT (sum(s.cents)::numeric / 100)::numeric(20,2) FROM unnest(a.spend_cents) WITH ORDINALITY s(cents, k)
	WHERE a.spend_month - (s.k::integer - 1) > crm.loyalty_month(m.at) - 12
	  AND a.spend_month - (s.k::integer - 1) <= crm.loyalty_month(m.at)), 0)) AS same_as_sql,
	count(*) AS checked
FROM crm.loyalty_account a,
	LATERAL (SELECT g AS at FROM generate_series('2024-11-15'::timestamptz, '2027-04-15', '1 month') g) m;
SELECT crm.qualifying_spend(1, '2026-02-28') AS at_feb_2026, crm.qualifying_spend(1, '2026-09-30') AS at_sep_2026,
	crm.qualifying_spend(1, '2026-10-01') AS at_oct_2026, crm.qualifying_spend(2, '2025-12-01') AS bob_dec_2025,
	crm.qualifying_spend(2, '2026-01-01') AS bob_jan_2026;
-- Ann reached gold at 5000.00; the refund that brought her to 4900.00 does
-- not lower it (crm.tick does once it was held tier_hold_months, to the tier
-- of the spend then)
SELECT a.customer_id, a.tier, crm.tier_for_spend(a.qualifying_spend) AS tier_for_spend FROM crm.loyalty_account a ORDER BY 1;
SELECT * FROM crm.verify();
ROLLBACK;
