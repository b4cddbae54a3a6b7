-- Consent (issue 17): answers per customer, channel and purpose kept as
-- history; the answer in force (explicit opt-in for marketing and research,
-- service allowed until an opt-out); merges (the stricter answer wins, a
-- later answer decides) and unmerges (each side's own answers again).
\i sql/include/expect_error.sql
SET TimeZone = 'UTC';
BEGIN;
INSERT INTO crm.customer (customer_id, name, created_at) VALUES
	(1, 'ann', '2026-01-01'), (2, 'bob', '2026-01-02'), (3, 'bob b', '2026-01-03');

-- 1. Without an answer: marketing and research need an opt-in, service is allowed.
SELECT crm.consent_allows(1, 'sms', 'marketing') AS marketing, crm.consent_allows(1, 'sms', 'service') AS service,
       crm.consent_allows(1, 'email', 'research') AS research;

-- 2. Answers take effect at once; the history keeps them all.
SELECT crm.set_consent(1, 'sms', 'marketing', true, 'app', '2026-02-01 10:00+00') IS NOT NULL AS opted_in;
SELECT crm.consent_allows(1, 'sms', 'marketing', '2026-02-01 10:00+00') AS after_opt_in,
       crm.consent_allows(1, 'email', 'marketing', '2026-02-01 10:00+00') AS other_channel,
       crm.consent_allows(1, 'sms', 'marketing', '2026-01-31 10:00+00') AS before_it;
SELECT crm.set_consent(1, 'sms', 'marketing', false, 'sms STOP', '2026-03-01 10:00+00') IS NOT NULL AS opted_out;
SELECT crm.set_consent(1, 'sms', 'service', false, 'agent', '2026-03-01 10:00+00') IS NOT NULL AS service_opted_out;
SELECT crm.consent_allows(1, 'sms', 'marketing', '2026-03-02') AS marketing_now, crm.consent_allows(1, 'sms', 'marketing', '2026-02-15') AS marketing_in_february,
       crm.consent_allows(1, 'sms', 'service', '2026-03-02') AS service_now;
SELECT channel, purpose, granted, source, at FROM crm.consent_event WHERE customer_id = 1 ORDER BY event_id;
SELECT channel, purpose, allowed, answer, source FROM crm.v_consent WHERE customer_id = 1 AND channel = 'sms' ORDER BY purpose;

-- 3. Bad input.
SELECT pg_temp.expect_error($$SELECT crm.set_consent(1, 'fax', 'marketing', true, 'app')$$) AS unknown_channel;
SELECT pg_temp.expect_error($$SELECT crm.set_consent(1, 'sms', 'spam', true, 'app')$$) AS unknown_purpose;
SELECT pg_temp.expect_error($$SELECT crm.set_consent(1, 'sms', 'marketing', NULL, 'app')$$) AS no_answer;
SELECT pg_temp.expect_error($$SELECT crm.set_consent(1, 'sms', 'marketing', true, ' ')$$) AS no_source;
SELECT pg_temp.expect_error($$SELECT crm.set_consent(99, 'sms', 'marketing', true, 'app')$$) AS unknown_customer;
SELECT pg_temp.expect_error($$SELECT crm.consent_allows(99, 'sms', 'marketing')$$) AS unknown_customer_asked;
SELECT pg_temp.expect_error($$UPDATE crm.consent_event SET granted = true$$) AS edit_history;
SELECT pg_temp.expect_error($$DELETE FROM crm.consent_event$$) AS delete_history;

-- 4. Merges: bob (2) said yes to e-mail marketing, his other record (3)
--    said no earlier; merged, the stricter answer wins; an answer given
--    after the merge decides; an unmerge gives each side its own answers.
SELECT crm.set_consent(2, 'email', 'marketing', true, 'web', '2026-04-01') IS NOT NULL,
       crm.set_consent(3, 'email', 'marketing', false, 'pos', '2026-03-01') IS NOT NULL,
       crm.set_consent(3, 'push', 'marketing', true, 'app', '2026-03-01') IS NOT NULL;
SELECT crm.merge_customers(2, 3, 'same shopper') AS merge_id \gset
SELECT crm.consent_allows(2, 'email', 'marketing') AS email_after_merge, crm.consent_allows(3, 'email', 'marketing') AS asked_by_merged_id,
       crm.consent_allows(2, 'push', 'marketing') AS push_from_merged_record;
SELECT answer, source, answered_on FROM crm.v_consent WHERE customer_id = 2 AND channel = 'email' AND purpose = 'marketing';
SELECT crm.set_consent(2, 'email', 'marketing', true, 'preference centre', now() + interval '1 second') IS NOT NULL AS answered_again;
SELECT crm.consent_allows(2, 'email', 'marketing', now() + interval '1 minute') AS email_after_new_answer;
SELECT crm.unmerge(:merge_id) IS NOT NULL AS unmerged;
SELECT crm.consent_allows(2, 'email', 'marketing', now() + interval '1 minute') AS bob_email,
       crm.consent_allows(3, 'email', 'marketing', now() + interval '1 minute') AS bob_b_email,
       crm.consent_allows(2, 'push', 'marketing', now() + interval '1 minute') AS bob_push,
       crm.consent_allows(3, 'push', 'marketing', now() + interval '1 minute') AS bob_b_push;
ROLLBACK;
