-- The tag rule language: every construct, and every error with its position.
\i sql/include/expect_error.sql

-- constructs: comparisons, arithmetic and precedence, and/or/not, parentheses,
-- literals, features, functions
SELECT rule, crm.tag_rule_explain(rule) FROM (VALUES
	('orders >= 4'),
	('orders > 4'), ('orders < 4'), ('orders <= 4'), ('orders = 4'), ('orders == 4'), ('orders != 4'), ('orders <> 4'),
	('orders_90d >= 4 and share(''fresh'') >= 0.3'),
	('spend + 1 * 2 > 3 - 4 / 5'),
	('(spend + 1) * 2 > -3'),
	('- - spend < .5'),
	('not orders > 1 and events = 0 or refunded_orders = 1'),
	('not (orders > 1 and (events = 0 or refunded_orders = 1))'),
	('NOT Orders > 1 AND TRUE OR FALSE'),
	('top_weekday(''organic'') = ''wed'''),
	('top_weekday() != ''sun'''),
	('weekday_share(''wed'') > 0.5'),
	('category_orders(''fresh'') >= 3 and category_spend(''fresh'') > 10.5'),
	('stage = ''active'''),
	('avg_order_value > 50 and mean_interval_days < 14'),
	('orders_30d + orders_365d > 0 and spend_30d + spend_90d + spend_365d > 0'),
	('days_since_first_order < 30 and days_since_last_order < 7 and days_since_last_event < 1'),
	('stage = ''it''''s'''),
	('true')
) v(rule) ORDER BY 1;

-- errors: syntax (42601), unknown names (42703, 42883), types (42804), limits (54000), values (22023)
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('   ')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders >= ')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders >= 4 and')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders >= 4 4')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('(orders >= 4')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders >= 4)')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders # 4')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders ! 4')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('stage = ''open')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('1 < orders < 5')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('ordrs >= 4')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders >= 4 and shares(''fresh'') > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('share() > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('share(fresh) > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('share(''fresh'', ''dairy'') > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('weekday_share(''wednesday'') > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders + 1')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('top_weekday() > ''mon''')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('top_weekday() = 3')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('stage + 1 > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders and events > 0')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('events > 0 or spend')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('not spend')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('-(orders > 1)')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('(orders > 1) = true')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('true * 2 > 1')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain(repeat('(', 100) || 'true' || repeat(')', 100))$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain(repeat('not ', 100) || 'true')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain('orders > 1' || repeat(' or orders > 1', 400))$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain(repeat(' ', 5000) || 'true')$$);
SELECT pg_temp.expect_error($$SELECT crm.tag_rule_explain(E'orders \u00e9 1')$$);
SELECT crm.tag_rule_explain(NULL);

-- a bad rule in crm.tag is refused with its position; a good one is compiled
BEGIN;
SELECT pg_temp.expect_error($$INSERT INTO crm.tag (name, rule) VALUES ('bad', 'orders >= 4 and share(''fresh'') >')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tag (name, kind, rule) VALUES ('bad', 'manual', 'orders > 1')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tag (name) VALUES ('bad')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.tag (name, rule) VALUES ('Bad Name', 'true')$$);
INSERT INTO crm.tag (name, rule) VALUES ('big_basket', 'avg_order_value >= 100');
INSERT INTO crm.tag (name, kind) VALUES ('vip_manual', 'manual');
SELECT name, kind, time_dependent, compiled IS NOT NULL AS compiled FROM crm.tag ORDER BY tag_id;
SELECT pg_temp.expect_error($$UPDATE crm.tag SET rule = 'avg_order_value >=' WHERE name = 'big_basket'$$);
UPDATE crm.tag SET rule = 'orders_30d >= 1' WHERE name = 'big_basket';
SELECT name, time_dependent FROM crm.tag WHERE name = 'big_basket';
SELECT * FROM crm.verify();
ROLLBACK;

-- evaluation: one customer, explicit time, every feature and function
BEGIN;
SET LOCAL TimeZone = 'UTC';
SET LOCAL crm.as_of = '2026-03-01 00:00+00';
DELETE FROM crm.tag;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'one'), (2, 'two');
INSERT INTO crm.tag (name, rule) VALUES
	('t_orders',     'orders = 3 and refunded_orders = 1'),
	('t_spend',      'spend = 60 and avg_order_value = 20'),
	('t_windows',    'orders_30d = 2 and orders_90d = 3 and orders_365d = 3 and spend_30d = 50 and spend_90d = 60 and spend_365d = 60'),
	('t_days',       'days_since_first_order = 54 and days_since_last_order = 0 and mean_interval_days = 27'),
	('t_events',     'events = 2 and days_since_last_event = 9'),
	('t_share',      'share(''fresh'') = 0.75 and category_orders(''fresh'') = 2 and category_spend(''fresh'') = 45'),
	('t_weekday',    'top_weekday(''fresh'') = ''mon'' and top_weekday() = ''mon'' and weekday_share(''mon'') > 0.6'),
	('t_missing',    'category_orders(''pet'') = 0 and not share(''pet'') > 0 and not top_weekday(''pet'') = ''mon'' and not top_weekday(''pet'') != ''mon'''),
	('t_stage',      'stage = ''new'''),
	('t_nan',        'spend / 0 > 0 or spend / 0 <= 0 or spend / 0 != 1'),
	('t_never',      'false'),
	('t_prospect',   'not orders > 0');
-- 2026-01-05 and 2026-02-02 are Mondays, 2026-02-28 a Saturday
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 1, 'web', '2026-01-02 10:00+00', 10),   -- Friday
	(2, 1, 'web', '2026-02-02 10:00+00', 20),
	(3, 1, 'web', '2026-02-28 10:00+00', 30);
UPDATE crm.orders SET ordered_at = '2026-01-05 10:00+00' WHERE order_id = 1;
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount, status) VALUES
	(4, 1, 'web', '2026-02-10 10:00+00', 99, 'refunded');
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES
	(1, 1, 'FRE-1', 'fresh', 1, 10), (2, 1, 'FRE-1', 'fresh', 1, 15), (2, 2, 'FRE-2', 'fresh', 1, 20),
	(2, 3, 'DAI-1', 'dairy', 1, 15), (4, 1, 'PET-1', 'pet', 1, 99);
INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'browse', '2026-02-10 00:00+00'), (1, 'cart', '2026-02-19 12:00+00');
SELECT orders, refunded_orders, spend, first_order_at, last_order_at, mean_interval_days, weekday_orders, events, last_event_at, line_spend, stage
FROM crm.customer_stats WHERE customer_id = 1;
SELECT * FROM crm.stats_categories((SELECT categories FROM crm.customer_stats WHERE customer_id = 1)) ORDER BY 1;
SELECT t.name FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = 1 ORDER BY 1;
-- windows exact as of a later date, from the stored buckets
SELECT (crm.stats_window(days, '2026-03-31 12:00+00', 60)).* FROM crm.customer_stats WHERE customer_id = 1;
SELECT (crm.customer_window(1, '2026-03-31 12:00+00', 90)).*;
-- a partial refund lowers spend, a full refund removes the order (rebuilt from the orders)
UPDATE crm.orders SET refunded_amount = 5 WHERE order_id = 3;
SELECT orders, refunded_orders, spend FROM crm.customer_stats WHERE customer_id = 1;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 2;
SELECT orders, refunded_orders, spend, line_spend, mean_interval_days FROM crm.customer_stats WHERE customer_id = 1;
SELECT * FROM crm.stats_categories((SELECT categories FROM crm.customer_stats WHERE customer_id = 1)) ORDER BY 1;
SELECT t.name FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = 1 ORDER BY 1;
SELECT t.name, h.change, h.at FROM crm.customer_tag_history h JOIN crm.tag t USING (tag_id) WHERE h.customer_id = 1 ORDER BY h.at, h.change, t.name;
-- a customer with only events is a prospect: missing values make comparisons false
INSERT INTO crm.event (customer_id, kind, at) VALUES (2, 'sign_in', '2026-02-01 00:00+00');
SELECT stage, orders FROM crm.customer_stats WHERE customer_id = 2;
SELECT t.name FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = 2 ORDER BY 1;
SELECT * FROM crm.verify();
ROLLBACK;

-- many rule tags: every one is evaluated
BEGIN;
SET LOCAL crm.as_of = '2026-03-01 00:00+00';
INSERT INTO crm.tag (name, rule) SELECT 'many_' || i, 'orders >= ' || (i % 2) FROM generate_series(1, 100) i;
INSERT INTO crm.customer (customer_id, name) VALUES (1, 'one');
INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2026-02-27 10:00+00', 10);
SELECT count(*) FILTER (WHERE t.name LIKE 'many_%') AS many_tags, array_agg(t.name ORDER BY t.name) FILTER (WHERE t.name NOT LIKE 'many_%') AS others
FROM crm.customer_tag ct JOIN crm.tag t USING (tag_id) WHERE ct.customer_id = 1;
SELECT * FROM crm.verify();
ROLLBACK;
