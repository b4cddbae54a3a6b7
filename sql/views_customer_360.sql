-- crm.v_customer_360 brings profile, stats, RFM, stage, tags, tier and
-- points together, one row per golden customer.
BEGIN;
INSERT INTO crm.customer (customer_id, name, channel, created_at) VALUES
	(1, 'Ann', 'web', now() - interval '30 days'),
	(2, 'Ann (app)', 'app', now() - interval '20 days'),
	(3, 'Prospect', 'web', now() - interval '2 days');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES
	(1, 'web', now() - interval '10 days', 120.00),
	(1, 'web', now() - interval '5 days', 80.00);
SELECT customer_id, orders, spend, stage, tier, points, points_debt,
       points = crm.points_balance(customer_id) AS points_match_balance
FROM crm.v_customer_360 ORDER BY customer_id;
-- a merged record leaves the view; its points follow the survivor
SELECT crm.merge_customers(1, 2, 'same person') IS NOT NULL AS merged;
SELECT customer_id FROM crm.v_customer_360 ORDER BY customer_id;
SELECT count(*) AS ledgers_out_of_step FROM crm.verify_ledgers();
SELECT * FROM crm.verify();
ROLLBACK;
