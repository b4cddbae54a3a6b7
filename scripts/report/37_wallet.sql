-- Demo report, section 3d: stored value, as crm.generate_sample_activity
-- made it: top-ups (some with a bonus that expires in 90 days), payments
-- and POS holds for orders, refunds of orders paid with the wallet, and
-- what crm.tick at the sample's end did (lapsed holds released, expired
-- bonus to breakage).  This section only reads.
\pset border 1
\echo '== Stored value (made by crm.generate_sample_activity; the tick ran at the end) =='
\echo 'Movements (crm.wallet_txn):'
SELECT kind, count(*) AS movements, count(DISTINCT customer_id) AS wallets,
       to_char(sum(amount), 'FM999,999,990.00') AS amount, to_char(sum(bonus), 'FM999,999,990.00') AS bonus
FROM crm.wallet_txn GROUP BY kind
ORDER BY array_position(ARRAY['top_up', 'pay', 'hold', 'capture', 'release', 'refund', 'expire'], kind);

\echo 'Liability and breakage per month (crm.v_wallet_liability):'
SELECT to_char(month, 'YYYY-MM') AS month, topped_up, bonus_given, spent, refunded, breakage, liability_at_month_end
FROM crm.v_wallet_liability WHERE month < crm.sample_as_of() ORDER BY month;

\echo 'Trial balance (crm.v_wallet_accounts: the accounts sum to zero):'
SELECT t.account, t.transactions, to_char(t.balance, 'FM999,999,990.00') AS balance
FROM (SELECT account, transactions, balance FROM crm.v_wallet_accounts
      UNION ALL
      SELECT 'sum', NULL, sum(balance) FROM crm.v_wallet_accounts) t
ORDER BY t.account = 'sum', t.account;

\echo 'Checks (crm.verify_wallets(): every wallet equals its journal, every movement balances):'
SELECT count(*) AS problems FROM crm.verify_wallets();
