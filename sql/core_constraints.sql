-- Every CHECK and foreign key of the core model rejects what it should, with
-- the right SQLSTATE.  Everything runs in one transaction that rolls back.
\i sql/include/expect_error.sql
BEGIN;
INSERT INTO crm.store (store_id, name, city) VALUES (1, 'Downtown', 'Shanghai'), (2, 'Airport', 'Shanghai');
INSERT INTO crm.customer (customer_id, name, phone, email, birthday, gender, home_store_id, channel, created_at)
VALUES (1, 'Ann', '+8613900000001', 'ann@example.com', '1990-02-28', 'f', 1, 'pos', '2025-01-01 10:00+00'),
       (2, 'Bob', '13900000002', NULL, '1988-02-29', 'm', 2, 'app', '2025-01-02 10:00+00');

-- store
SELECT pg_temp.expect_error($$INSERT INTO crm.store VALUES (0, 'Zero')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.store VALUES (3, '   ')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.store VALUES (1, 'Again')$$);

-- customer
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (customer_id) VALUES (0)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (customer_id) VALUES (-5)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (phone) VALUES ('12ab')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (phone) VALUES ('123')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (email) VALUES ('no-at-sign')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (email) VALUES ('two@@example.com')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (birthday) VALUES ('1899-12-31')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (gender) VALUES ('q')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (home_store_id) VALUES (99)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (channel) VALUES ('fax')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (created_at) VALUES ('infinity')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (created_at) VALUES (NULL)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.customer (name) VALUES (repeat('x', 201))$$);
SELECT pg_temp.expect_error($$UPDATE crm.customer SET merged_into = 1 WHERE customer_id = 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.customer SET merged_into = 42 WHERE customer_id = 1$$);
SELECT pg_temp.expect_error($$DELETE FROM crm.store WHERE store_id = 1$$);

-- identity kinds and identities
SELECT pg_temp.expect_error($$INSERT INTO crm.identity_kind (kind, strength) VALUES ('Bad Kind', 'strong')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity_kind (kind, strength) VALUES ('wechat', 'medium')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity_kind (kind, strength, max_customers) VALUES ('wechat', 'weak', 0)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity_kind (kind, strength) VALUES ('phone', 'strong')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('fax', '123', 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '  ', 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('device', repeat('9', 257), 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000001', 77)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000001', NULL)$$);
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000001', 1);
SELECT pg_temp.expect_error($$INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000001', 1)$$);
-- the same value on another record is allowed here: linking is stitching's job
INSERT INTO crm.identity (kind, value, customer_id) VALUES ('phone', '13900000001', 2);
SELECT kind, value, customer_id, origin_customer_id FROM crm.identity ORDER BY customer_id;

-- orders
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (99, 'web', '2025-03-01', 10)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'fax', '2025-03-01', 10)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'pos', '2025-03-01', 10)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-03-01', -0.01)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-03-01', 'NaN')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-03-01', 1e12)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '2025-03-01', 'Infinity')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, refunded_amount) VALUES (1, 'web', '2025-03-01', 10, 'NaN')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount) VALUES (1, 'web', '-infinity', 10)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, status) VALUES (1, 'web', '2025-03-01', 10, 'lost')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, refunded_amount) VALUES (1, 'web', '2025-03-01', 10, 10.01)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, refunded_amount) VALUES (1, 'web', '2025-03-01', 10, -1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, store_id) VALUES (1, 'pos', '2025-03-01', 10, 99)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, external_ref) VALUES (1, 'web', '2025-03-01', 10, '')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, ordered_at, amount, net_amount) VALUES (1, 'web', '2025-03-01', 10, 5)$$);
INSERT INTO crm.orders (order_id, customer_id, channel, store_id, ordered_at, amount, external_ref)
VALUES (1, 1, 'pos', 1, '2025-03-01 09:30+00', 25.50, 'R-0001'),
       (2, 2, 'web', NULL, '2025-03-02 20:00+00', 12.00, 'R-0001');
SELECT pg_temp.expect_error($$INSERT INTO crm.orders (customer_id, channel, store_id, ordered_at, amount, external_ref) VALUES (1, 'pos', 1, '2025-03-03', 5, 'R-0001')$$);
UPDATE crm.orders SET refunded_amount = 5.50 WHERE order_id = 1;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 2;
SELECT order_id, customer_id, origin_customer_id, status, amount, refunded_amount, net_amount FROM crm.orders ORDER BY order_id;
-- origin_customer_id is immutable; customer_id is what merges move, and
-- only merges (issue 13, item 5: a direct change used to succeed)
SELECT pg_temp.expect_error($$UPDATE crm.orders SET origin_customer_id = 2 WHERE order_id = 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.orders SET origin_customer_id = NULL WHERE order_id = 1$$);
SELECT pg_temp.expect_error($$UPDATE crm.orders SET customer_id = 2 WHERE order_id = 1$$);
SELECT order_id, customer_id, origin_customer_id FROM crm.orders WHERE order_id = 1;
-- an explicit origin is kept as given
INSERT INTO crm.orders (order_id, customer_id, origin_customer_id, channel, ordered_at, amount) VALUES (3, 2, 1, 'app', '2025-03-04', 1);
SELECT order_id, customer_id, origin_customer_id FROM crm.orders WHERE order_id = 3;

-- order lines
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (99, 1, 'SKU', 'fresh', 1, 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 0, 'SKU', 'fresh', 1, 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, '', 'fresh', 1, 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, 'SKU', ' ', 1, 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, 'SKU', 'fresh', 0, 1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, 'SKU', 'fresh', 1, -1)$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, 'SKU', 'fresh', 1, 'NaN')$$);
INSERT INTO crm.order_line VALUES (1, 1, 'FRE-0001', 'fresh', 2, 25.50);
SELECT pg_temp.expect_error($$INSERT INTO crm.order_line VALUES (1, 1, 'FRE-0002', 'fresh', 1, 1)$$);
DELETE FROM crm.orders WHERE order_id = 1;
SELECT count(*) AS lines_left_after_order_delete FROM crm.order_line;

-- events
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'teleport', '2025-03-01')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (99, 'browse', '2025-03-01')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at, props) VALUES (1, 'browse', '2025-03-01', '[1,2]')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at, channel) VALUES (1, 'browse', '2025-03-01', 'tv')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event (customer_id, kind, at) VALUES (1, 'browse', 'infinity')$$);
SELECT pg_temp.expect_error($$INSERT INTO crm.event_kind (kind) VALUES ('Has Space')$$);
INSERT INTO crm.event (customer_id, kind, at, props) VALUES (1, 'cart', '2025-03-01', '{"sku": "FRE-0001"}');
SELECT customer_id, origin_customer_id, kind, props FROM crm.event;
SELECT * FROM crm.verify();
ROLLBACK;
