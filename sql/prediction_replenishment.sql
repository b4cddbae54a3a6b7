-- Replenishment: purchase cycles per customer and category / sku, and who is due.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id) VALUES (1), (2), (3), (4);
-- Customer 1: detergent every 10 days (one day with two orders), milk on 3 days.
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, status) VALUES
	(1, 1, 'web', '2026-06-01 09:00', 10, 'paid'),
	(2, 1, 'web', '2026-06-11 09:00', 10, 'paid'),
	(3, 1, 'web', '2026-06-11 18:00', 10, 'paid'),
	(4, 1, 'web', '2026-06-21 09:00', 10, 'paid'),
	(5, 1, 'web', '2026-07-01 09:00', 10, 'paid'),
	(6, 1, 'web', '2026-07-04 09:00', 10, 'refunded'),
	(7, 2, 'web', '2026-06-01 09:00', 10, 'paid'),
	(8, 2, 'web', '2026-06-20 09:00', 10, 'paid'),
	(9, 3, 'web', '2026-06-01 09:00', 10, 'paid'),
	(10, 3, 'web', '2026-06-05 09:00', 10, 'paid'),
	(11, 3, 'web', '2026-06-06 09:00', 10, 'paid'),
	(12, 3, 'web', '2026-06-20 09:00', 10, 'paid');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(1, 1, 'HOU-0001', 'household', 1, 5), (1, 2, 'DAI-0001', 'dairy', 1, 5),
	(2, 1, 'HOU-0001', 'household', 1, 5),
	(3, 1, 'HOU-0001', 'household', 1, 5), (3, 2, 'DAI-0001', 'dairy', 1, 5),
	(4, 1, 'HOU-0001', 'household', 1, 5), (4, 2, 'HOU-0002', 'household', 1, 5),
	(5, 1, 'HOU-0001', 'household', 1, 5), (5, 2, 'DAI-0001', 'dairy', 1, 5),
	(6, 1, 'HOU-0001', 'household', 1, 5),
	(7, 1, 'HOU-0001', 'household', 1, 5), (8, 1, 'HOU-0001', 'household', 1, 5),
	(9, 1, 'PET-0001', 'pet', 1, 5), (10, 1, 'PET-0002', 'pet', 1, 5),
	(11, 1, 'PET-0001', 'pet', 1, 5), (12, 1, 'PET-0001', 'pet', 1, 5);

SELECT * FROM crm.replenishment('2026-07-05') ORDER BY customer_id, category, sku NULLS FIRST;
-- Due within a week of 2026-07-08: customer 1's detergent (every 10 days, last 07-01).
SELECT * FROM crm.replenishment_due('2026-07-08', '7 days') ORDER BY customer_id, category, sku NULLS FIRST;
SELECT count(*) FROM crm.replenishment_due('2026-07-12', '0 days');
SELECT count(*) FROM crm.replenishment_due('2026-07-13', '30 days');
-- Orders after as_of are not seen.
SELECT customer_id, category, sku, purchases FROM crm.replenishment('2026-06-25') ORDER BY 1, 2, 3 NULLS FIRST;
-- A merged record's orders count for its golden customer only.
SELECT crm.merge_customers(1, 3) IS NOT NULL AS merged;
SELECT customer_id, category, sku, purchases, interval_days FROM crm.replenishment('2026-07-05')
WHERE category = 'pet' ORDER BY 1, 2, 3 NULLS FIRST;

-- The aggregate alone: median gap of distinct days.
SELECT crm.purchase_interval(d) FROM unnest('{2026-01-01,2026-01-03,2026-01-03,2026-01-10,2026-01-11}'::date[]) d;
SELECT crm.purchase_interval(d) FROM unnest('{2026-01-10,2026-01-01,2026-01-04}'::date[]) d;
SELECT crm.purchase_interval(d) IS NULL AS one_day FROM unnest('{2026-01-01,2026-01-01}'::date[]) d;
SELECT crm.purchase_interval(d) IS NULL AS no_days FROM unnest('{}'::date[]) d;
SELECT crm.purchase_interval(d) FROM unnest('{2026-01-01,NULL,2026-01-08}'::date[]) d;

-- Bad input
SELECT pg_temp.expect_error($$SELECT crm.purchase_interval(d) FROM unnest('{2026-01-01,infinity}'::date[]) d$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.replenishment('2026-07-05', 1)$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.replenishment('infinity')$$);
SELECT pg_temp.expect_error($$SELECT * FROM crm.replenishment_due('2026-07-05', '-1 day')$$);
SELECT count(*) FROM crm.replenishment_due(NULL, '1 day');
SELECT * FROM crm.verify();
ROLLBACK;
