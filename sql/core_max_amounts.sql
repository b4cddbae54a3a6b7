-- Totals of maximal orders (issue 11, item 6): customer stats, loyalty
-- qualifying spend, points and RFM hold sums of orders of the largest
-- amount (numeric(14,2)) exactly.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
-- Two orders of the largest amount
--    for one customer sum exactly in the stats, the loyalty
--    account and RFM.  Points: 999999999999 base + 999999999999 baby bonus
--    for the first (bronze), then black tier (x2): 1999999999998 +
--    999999999999.
BEGIN;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'big');
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (1, 1, 'web', '2026-06-01 10:00+00', 999999999999.99);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (1, 1, 'x', 'baby', 1, 999999999999.99);
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES (2, 1, 'web', '2026-06-02 10:00+00', 999999999999.99);
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (2, 1, 'x', 'baby', 1, 999999999999.99);
SELECT orders, spend, line_spend FROM crm.customer_stats WHERE customer_id = 1;
SELECT * FROM crm.customer_window(1, '2026-06-03 00:00+00', 30);
SELECT category, orders, spend FROM crm.stats_categories((SELECT categories FROM crm.customer_stats WHERE customer_id = 1));
SELECT tier, qualifying_spend, spend_cents[1] FROM crm.loyalty_account WHERE customer_id = 1;
SELECT crm.points_balance(1, '2026-06-03 00:00+00') AS points, crm.qualifying_spend(1, '2026-06-03 00:00+00') AS qualifying;
SELECT crm.refresh_rfm('2026-06-03 00:00+00') AS scored;
SELECT frequency, monetary FROM crm.rfm_snapshot WHERE customer_id = 1;
-- a partial refund of one of them
UPDATE crm.orders SET refunded_amount = 0.99 WHERE order_id = 2;
SELECT spend FROM crm.customer_stats WHERE customer_id = 1;
SELECT crm.points_balance(1, '2026-06-03 00:00+00') AS points, crm.qualifying_spend(1, '2026-06-03 00:00+00') AS qualifying;
SELECT * FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
