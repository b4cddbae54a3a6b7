-- Stored value (issue 16): top-ups with a bonus spent last, payments,
-- holds captured or released, refunds to the wallet or the original
-- payment, bonus expiry, merges and unmerges, the double-entry journal and
-- every rejection with its SQLSTATE.  Times are fixed.
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02'), (3, 'cy', '2026-01-03');
INSERT INTO crm.store (store_id, name) VALUES (1, 'main street');
INSERT INTO crm.orders (order_id, customer_id, store_id, channel, ordered_at, amount, external_ref) VALUES
	(10, 1, 1, 'pos', '2026-03-01 10:00+00', 50.00, 'r-10'), (11, 1, 1, 'pos', '2026-03-02 10:00+00', 30.00, 'r-11'),
	(12, 1, 1, 'pos', '2026-03-03 10:00+00', 40.00, 'r-12'), (20, 2, 1, 'pos', '2026-03-01 11:00+00', 90.00, 'r-20');
CREATE FUNCTION pg_temp.wallet(c bigint, at timestamptz) RETURNS text LANGUAGE sql AS $$
	SELECT pg_catalog.format('cash %s, bonus %s, held %s, spendable %s', b.cash, b.bonus, b.held, b.spendable)
	FROM crm.wallet_balance(c, at) b
$$;

-- 1. Top-up: cash and a bonus lot, exactly once per key.
SELECT crm.wallet_top_up(1, 100.00, 'top-1', bonus => 20.00, at => '2026-03-01 09:00+00',
                         bonus_expires_at => '2026-06-01 00:00+00') AS top_1 \gset
SELECT crm.wallet_top_up(1, 100.00, 'top-1', bonus => 20.00, at => '2026-03-01 09:00+00',
                         bonus_expires_at => '2026-06-01 00:00+00') = :top_1 AS retry_same_txn;
SELECT pg_temp.wallet(1, '2026-03-01 09:00+00') AS after_top_up;
SELECT account, bucket, lot_id IS NOT NULL AS has_lot, amount FROM crm.wallet_journal WHERE txn_id = :top_1 ORDER BY entry_id;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 50.00, 'top-1')$$) AS key_reused;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(2, 100.00, 'top-1')$$) AS key_of_another_customer;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 10.00, 'w', paid_with => 'wallet')$$) AS paid_with_wallet;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 0, 'z')$$) AS zero;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, -5, 'z')$$) AS negative;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 1.005, 'z')$$) AS fraction_of_a_cent;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 'NaN', 'z')$$) AS nan;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 10, 'z', bonus => -1)$$) AS negative_bonus;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 10, NULL)$$) AS no_key;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 10, 'z', at => 'infinity')$$) AS infinite_time;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(99, 10, 'z')$$) AS unknown_customer;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 10, 'z', order_id => 20)$$) AS another_customers_order;

-- 2. Paying: cash first, then bonus, soonest expiry first; never below 0.
SELECT crm.wallet_top_up(1, 10.00, 'top-2', bonus => 5.00, at => '2026-03-01 09:30+00',
                         bonus_expires_at => '2026-04-01 00:00+00') AS top_2 \gset
SELECT crm.wallet_pay(1, 112.00, 'pay-1', order_id => 10, at => '2026-03-01 10:00+00') AS pay_1 \gset
SELECT crm.wallet_pay(1, 112.00, 'pay-1', order_id => 10, at => '2026-03-01 10:00+00') = :pay_1 AS retry_same_txn;
SELECT j.account, j.bucket, l.expires_at, j.amount FROM crm.wallet_journal j LEFT JOIN crm.wallet_bonus_lot l USING (lot_id)
WHERE j.txn_id = :pay_1 ORDER BY j.entry_id;
SELECT pg_temp.wallet(1, '2026-03-01 10:00+00') AS after_pay;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 23.01, 'pay-x', at => '2026-03-01 10:00+00')$$) AS over_the_balance;
SELECT pg_temp.wallet(1, '2026-03-01 10:00+00') AS unchanged;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 5.00, 'pay-1')$$) AS key_reused;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(2, 5.00, 'pay-b')$$) AS no_wallet_yet;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 5.00, 'pay-y', order_id => 20)$$) AS another_customers_order;
-- expired bonus (not yet moved by the tick) cannot be spent
SELECT pg_temp.wallet(1, '2026-04-02 00:00+00') AS after_lot_2_expired;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 20.01, 'pay-z', at => '2026-04-02 00:00+00')$$) AS expired_bonus_not_spendable;

-- 3. A wallet cannot pay for its own top-up, whichever comes first.
SELECT crm.wallet_top_up(1, 30.00, 'top-for-11', order_id => 11, at => '2026-03-02 10:00+00') IS NOT NULL AS topped_up_on_order_11;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 30.00, 'pay-11', order_id => 11, at => '2026-03-02 10:00+00')$$) AS pay_for_top_up;
SELECT pg_temp.expect_error($$SELECT crm.wallet_top_up(1, 20.00, 'top-for-10', order_id => 10)$$) AS top_up_paid_by_wallet;
SELECT pg_temp.wallet(1, '2026-03-02 10:00+00') AS before_holds;

-- 4. Holds for open POS orders: what one holds no other can spend; a
--    capture spends part and gives the rest back, once.
SELECT crm.wallet_hold(1, 40.00, 'hold-a', 'pos-a', at => '2026-03-03 09:00+00') AS hold_a \gset
SELECT pg_temp.wallet(1, '2026-03-03 09:00+00') AS with_hold_a;
SELECT pg_temp.expect_error($$SELECT crm.wallet_hold(1, 13.01, 'hold-b', 'pos-b', at => '2026-03-03 09:00+00')$$) AS second_order_over_balance;
SELECT crm.wallet_hold(1, 13.00, 'hold-b', 'pos-b', at => '2026-03-03 09:00+00') AS hold_b \gset
SELECT crm.wallet_capture('hold-a', 35.50, order_id => 12, at => '2026-03-03 09:05+00') AS capture_a \gset
SELECT crm.wallet_capture('hold-a', 35.50, at => '2026-03-03 09:06+00') = :capture_a AS retry_same_txn;
SELECT pg_temp.wallet(1, '2026-03-03 09:05+00') AS after_capture_a;
SELECT pg_temp.expect_error($$SELECT crm.wallet_capture('hold-a', 20.00)$$) AS captured_twice;
SELECT pg_temp.expect_error($$SELECT crm.wallet_release('hold-a')$$) AS release_after_capture;
SELECT pg_temp.expect_error($$SELECT crm.wallet_capture('hold-b', 13.01)$$) AS capture_over_hold;
SELECT crm.wallet_release('hold-b', '2026-03-03 09:10+00') AS release_b \gset
SELECT crm.wallet_release('hold-b', '2026-03-03 09:11+00') = :release_b AS release_again_same_txn;
SELECT pg_temp.expect_error($$SELECT crm.wallet_capture('hold-b', 1.00)$$) AS capture_after_release;
SELECT pg_temp.expect_error($$SELECT crm.wallet_capture('hold-zz', 1.00)$$) AS unknown_hold;
SELECT pg_temp.wallet(1, '2026-03-03 09:10+00') AS after_release_b;
-- a hold past its ttl is released by the tick, once
SELECT crm.wallet_hold(1, 5.00, 'hold-c', 'pos-c', ttl => '1 hour', at => '2026-03-03 12:00+00') IS NOT NULL AS hold_c;
SELECT changed FROM crm.tick('2026-03-03 13:00+00') WHERE task = 'wallet_expire';
SELECT changed FROM crm.tick('2026-03-03 13:00+00') WHERE task = 'wallet_expire';
SELECT kind, amount, at FROM crm.wallet_txn WHERE idempotency_key = 'release:hold-c';
SELECT pg_temp.wallet(1, '2026-03-03 13:00+00') AS after_tick;

-- 5. Refunds: bonus first, back to its lot; cash back to the wallet or to
--    the original payment; never more than was paid.
SELECT crm.wallet_refund('pay-1', 15.00, 'refund-1', at => '2026-03-04 10:00+00') AS refund_1 \gset
SELECT j.account, j.bucket, l.expires_at, j.amount FROM crm.wallet_journal j LEFT JOIN crm.wallet_bonus_lot l USING (lot_id)
WHERE j.txn_id = :refund_1 ORDER BY j.entry_id;
SELECT crm.wallet_refund('pay-1', 15.00, 'refund-1') = :refund_1 AS retry_same_txn;
SELECT crm.wallet_refund('pay-1', 60.00, 'refund-2', 'original', at => '2026-03-04 10:00+00') AS refund_2 \gset
SELECT account, bucket, amount FROM crm.wallet_journal WHERE txn_id = :refund_2 ORDER BY entry_id;
SELECT pg_temp.expect_error($$SELECT crm.wallet_refund('pay-1', 37.01, 'refund-3')$$) AS over_the_payment;
SELECT pg_temp.expect_error($$SELECT crm.wallet_refund('pay-1', 1.00, 'refund-2')$$) AS key_reused;
SELECT pg_temp.expect_error($$SELECT crm.wallet_refund('hold-a', 1.00, 'refund-4')$$) AS a_hold_is_not_a_payment;
SELECT pg_temp.expect_error($$SELECT crm.wallet_refund('pay-1', 1.00, 'refund-5', 'cheque')$$) AS unknown_policy;
SELECT pg_temp.wallet(1, '2026-03-04 10:00+00') AS after_refunds;
-- a fully refunded order gives back what is left of its wallet payment
-- (the capture of hold-a on order 12), by the programme's policy (wallet)
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 12;
SELECT t.kind, t.amount, t.refund_to, p.idempotency_key AS refunds
FROM crm.wallet_txn t JOIN crm.wallet_txn p ON p.txn_id = t.ref_txn_id WHERE t.idempotency_key = 'order-refund:' || :capture_a;
UPDATE crm.orders SET status = 'refunded' WHERE order_id = 12;
SELECT count(*) AS refunded_once FROM crm.wallet_txn WHERE kind = 'refund' AND order_id = 12;
SELECT pg_temp.expect_error($$SELECT crm.wallet_pay(1, 1.00, 'pay-12', order_id => 12)$$) AS pay_for_refunded_order;
SELECT pg_temp.wallet(1, '2026-03-04 10:00+00') AS after_order_refund;

-- 6. Bonus expiry: the tick moves what is left of an expired lot to
--    breakage, once.
SELECT pg_temp.wallet(1, '2026-06-02 00:00+00') AS before_expiry;
SELECT changed FROM crm.tick('2026-06-02 00:00+00') WHERE task = 'wallet_expire';
SELECT changed FROM crm.tick('2026-06-02 00:00+00') WHERE task = 'wallet_expire';
SELECT kind, amount, bonus FROM crm.wallet_txn WHERE kind = 'expire' ORDER BY txn_id;
SELECT pg_temp.wallet(1, '2026-06-02 00:00+00') AS after_expiry;

-- 7. Merges: the golden customer spends from all its records' wallets (its
--    own first) and no money moves; an unmerge gives each side exactly what
--    is left of its own.
SELECT crm.wallet_top_up(2, 20.00, 'top-bob', at => '2026-06-03 00:00+00') IS NOT NULL AS bob_topped_up;
SELECT crm.wallet_top_up(3, 7.00, 'top-cy', bonus => 3.00, at => '2026-06-03 00:00+00') IS NOT NULL AS cy_topped_up;
SELECT crm.merge_customers(2, 3, 'same shopper') AS merge_id \gset
SELECT customer_id, merged_into FROM crm.customer WHERE customer_id IN (2, 3) ORDER BY 1;
SELECT pg_temp.wallet(2, '2026-06-03 00:00+00') AS golden_after_merge, pg_temp.wallet(3, '2026-06-03 00:00+00') AS merged_id_means_golden;
SELECT crm.wallet_pay(3, 24.00, 'pay-merged', at => '2026-06-04 00:00+00') AS pay_merged \gset
SELECT customer_id, bucket, amount FROM crm.wallet_journal WHERE txn_id = :pay_merged ORDER BY entry_id;
SELECT crm.unmerge(:merge_id) IS NOT NULL AS unmerged;
SELECT pg_temp.wallet(2, '2026-06-04 00:00+00') AS bob_after_unmerge, pg_temp.wallet(3, '2026-06-04 00:00+00') AS cy_after_unmerge;
-- a refund after the unmerge goes back to the wallet each part came from
SELECT crm.wallet_refund('pay-merged', 24.00, 'refund-merged', at => '2026-06-05 00:00+00') IS NOT NULL AS refunded;
SELECT pg_temp.wallet(2, '2026-06-05 00:00+00') AS bob_after_refund, pg_temp.wallet(3, '2026-06-05 00:00+00') AS cy_after_refund;

-- 8. The journal is append-only and every transaction balances.
SELECT pg_temp.expect_error($$UPDATE crm.wallet_journal SET amount = amount + 1 WHERE entry_id = (SELECT min(entry_id) FROM crm.wallet_journal)$$) AS edit_journal;
SELECT pg_temp.expect_error($$DELETE FROM crm.wallet_txn WHERE txn_id = (SELECT min(txn_id) FROM crm.wallet_txn)$$) AS delete_txn;
SELECT pg_temp.expect_error($$TRUNCATE crm.wallet_journal$$) AS truncate_journal;
SELECT account, transactions, balance FROM crm.v_wallet_accounts ORDER BY account;
SELECT sum(balance) AS trial_balance FROM crm.v_wallet_accounts;
-- (the refund of order 12 is dated now(): only the months of the story)
SELECT month, topped_up, bonus_given, spent, refunded, breakage, liability_at_month_end FROM crm.v_wallet_liability
WHERE month < '2026-07-01' ORDER BY month;
SELECT sum(cash + bonus + held_cash + held_bonus) AS all_wallets FROM crm.wallet;
SELECT * FROM crm.verify_wallets();
SELECT * FROM crm.verify();

-- 9. crm.verify_wallets() finds a cache that drifted from the journal.
SAVEPOINT drift;
ALTER TABLE crm.wallet_journal DISABLE TRIGGER wallet_journal_append_only;
UPDATE crm.wallet SET cash = cash + 1 WHERE customer_id = 2;
UPDATE crm.wallet_bonus_lot SET remaining = remaining - 1 WHERE customer_id = 3 AND remaining > 0;
UPDATE crm.wallet_journal SET amount = amount + 0.01 WHERE entry_id = (SELECT min(entry_id) FROM crm.wallet_journal);
-- (the details name ids, which depend on earlier tests' sequences)
SELECT invariant, customer_id FROM crm.verify_wallets();
ROLLBACK TO SAVEPOINT drift;
SELECT count(*) AS problems FROM crm.verify_wallets();
ROLLBACK;
