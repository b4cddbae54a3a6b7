-- crm.verify(): every cross-feature invariant in one check.  The happy
-- case, then each invariant broken on purpose (as the superuser, past the
-- guard triggers with session_replication_role = replica), one at a time
-- (rolled back to a savepoint), and verify reports exactly that row.  One
-- transaction, rolled back.
SET TimeZone = 'UTC';
BEGIN;
SET LOCAL crm.loyalty_now = '2026-03-01 00:00+00';
SET LOCAL crm.as_of = '2026-03-01 00:00+00';
INSERT INTO crm.tag (name, rule) VALUES ('two_orders', 'orders >= 2');
INSERT INTO crm.tag (name, kind) VALUES ('vip', 'manual');
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'Ann', '2025-01-01'), (2, 'Bob', '2025-01-02'), (3, 'Cy', '2025-01-03'), (4, 'Di', '2025-01-04'), (5, 'Ed', '2025-01-05');
-- Ann: two orders (silver: 1,200.00), Bob one, Cy one merged into Ann,
-- Di an order of 0.00 (an account, no points), Ed nothing
INSERT INTO crm.orders (order_id, customer_id, channel, ordered_at, amount) VALUES
	(1, 1, 'web', '2026-02-01 10:00+00', 700.00), (2, 1, 'web', '2026-02-02 10:00+00', 500.00),
	(3, 2, 'web', '2026-02-03 10:00+00', 50.00), (4, 3, 'web', '2026-02-04 10:00+00', 30.00),
	(5, 4, 'web', '2026-02-05 10:00+00', 0.00);
INSERT INTO crm.order_line (order_id, sku, category, qty, amount) VALUES (1, 'FRE-0001', 'fresh', 1, 700.00);
INSERT INTO crm.event (event_id, customer_id, kind, at) VALUES (1, 2, 'sign_in', '2026-02-03 09:00+00');
INSERT INTO crm.identity (identity_id, kind, value, customer_id) VALUES
	(1, 'phone', '13900000001', 1), (2, 'email', 'cy@example.com', 3), (3, 'phone', '13900000001', 3);
SELECT crm.tag_customer(2, 'vip', '2026-02-10');
SELECT customer_id, merged_into FROM crm.customer ORDER BY 1;
SELECT customer_id, tier, crm.points_balance(customer_id) AS points FROM crm.loyalty_account ORDER BY 1;

-- The happy case: nothing to report (identity 3 is parked on Cy: Ann holds
-- the same phone), also as of a time (stages, time-dependent tags, tiers).
SELECT * FROM crm.verify();
SELECT * FROM crm.verify('2026-03-01 00:00+00');
SAVEPOINT ok;

-- 1. Ledgers vs journal (crm.verify_ledgers)
UPDATE crm.loyalty_account SET debt = debt + 1 WHERE customer_id = 2;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 2. customer_stats vs a rebuild: a wrong count, a missing row, a row
--    that should not be there
SET LOCAL session_replication_role = replica;
UPDATE crm.customer_stats SET orders = orders + 1, spend = spend + 1 WHERE customer_id = 1;
DELETE FROM crm.customer_stats WHERE customer_id = 2;
INSERT INTO crm.customer_stats SELECT 5, orders, refunded_orders, spend, first_order_at, last_order_at, mean_interval_days,
	weekday_orders, events, last_event_at, days, categories, line_spend, stage, stage_since, updated_at
FROM crm.customer_stats WHERE customer_id = 4;
RESET session_replication_role;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 3. Rule tags vs their rules: a tag the rule gives is missing, one it
--    does not give is held
SET LOCAL session_replication_role = replica;
DELETE FROM crm.customer_tag WHERE customer_id = 1 AND tag_id = (SELECT tag_id FROM crm.tag WHERE name = 'two_orders');
INSERT INTO crm.customer_tag (tag_id, customer_id, since) SELECT tag_id, 2, '2026-02-10' FROM crm.tag WHERE name = 'two_orders';
RESET session_replication_role;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 4. Rows on their origin's golden customer: an order, an event, an
--    identity (not parked: Ann lacks the e-mail) and a journal row moved
--    to another customer
SET LOCAL session_replication_role = replica;
UPDATE crm.orders SET customer_id = 2 WHERE order_id = 2;
UPDATE crm.event SET customer_id = 1 WHERE event_id = 1;
UPDATE crm.identity SET customer_id = 3 WHERE identity_id = 2;
UPDATE crm.points_journal SET customer_id = 4 WHERE order_id = 3;
RESET session_replication_role;
-- (journal ids come from a sequence other tests move: shown as #)
SELECT invariant, customer_id, regexp_replace(detail, '^journal row [0-9]+', 'journal row #') AS detail FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 5. No merge chains: Bob merged into Cy, which is merged into Ann
SET LOCAL session_replication_role = replica;
UPDATE crm.customer SET merged_into = 3 WHERE customer_id = 2;
RESET session_replication_role;
SELECT * FROM crm.verify() WHERE invariant = 'merged into a golden customer';
ROLLBACK TO SAVEPOINT ok;

-- 6. Merged records hold nothing: a manual tag on Cy
SET LOCAL session_replication_role = replica;
INSERT INTO crm.customer_tag (tag_id, customer_id, since) SELECT tag_id, 3, '2026-02-10' FROM crm.tag WHERE name = 'vip';
RESET session_replication_role;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 7. Paid orders have an account: Di's account gone
SET LOCAL session_replication_role = replica;
DELETE FROM crm.loyalty_account WHERE customer_id = 4;
RESET session_replication_role;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 8. Rolling spend vs orders: a bucket off by 1.00
UPDATE crm.loyalty_account SET spend_cents[1] = spend_cents[1] + 100 WHERE customer_id = 2;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 9. Tier vs rolling spend: Ann (1,230.00 now) back at bronze
UPDATE crm.loyalty_account SET tier = 'bronze' WHERE customer_id = 1;
SELECT * FROM crm.verify();
ROLLBACK TO SAVEPOINT ok;

-- 10. What crm.tick(at) guarantees: Bob at gold since long before the hold,
--     his rolling spend reaching bronze only; reported only with "at"
UPDATE crm.loyalty_account SET tier = 'gold', tier_since = '2024-01-01' WHERE customer_id = 2;
SELECT * FROM crm.verify();
SELECT * FROM crm.verify('2026-03-01 00:00+00');
ROLLBACK TO SAVEPOINT ok;

-- 11. The order path's references (checked by triggers, not foreign keys):
--     rows loaded with the triggers off name a missing order and store
SET LOCAL session_replication_role = replica;
INSERT INTO crm.order_line (order_id, line_no, sku, category, qty, amount) VALUES (99, 1, 'X', 'fresh', 1, 1.00);
INSERT INTO crm.event (event_id, customer_id, origin_customer_id, kind, at, store_id) VALUES (2, 2, 2, 'sign_in', '2026-02-03 09:00+00', 77);
RESET session_replication_role;
SELECT * FROM crm.verify() WHERE invariant = 'references exist';
ROLLBACK TO SAVEPOINT ok;

-- 12. As of a time, stages and time-dependent rule tags too: a year later
--     every stage has moved (not yet ticked)
SELECT invariant, customer_id, detail FROM crm.verify('2027-03-01 00:00+00') WHERE invariant = 'customer_stats match a rebuild';
SELECT * FROM crm.verify();
ROLLBACK;
