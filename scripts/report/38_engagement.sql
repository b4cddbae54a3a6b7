-- Demo report, section 3e: engagement, as crm.generate_sample_activity set
-- it up (marketing consents, some revoked, and the programme's journeys)
-- and the tick at the sample's end ran it: who entered which journey, who
-- was held out as control, which messages were queued for the consumers and
-- which consent held back.  This section only reads.
\pset border 1
\echo '== Engagement (consents and journeys made by crm.generate_sample_activity; the tick ran them) =='
\echo 'Marketing consent answers (crm.consent_event: opt-ins at registration, some STOP replies later):'
SELECT channel, CASE WHEN granted THEN 'opt in' ELSE 'opt out' END AS answer, count(*) AS answers,
       count(DISTINCT customer_id) AS records
FROM crm.consent_event WHERE purpose = 'marketing' GROUP BY 1, 2 ORDER BY 1, 2;

\echo 'Journeys (crm.v_journey_funnel):'
SELECT name, entry, entered, control AS held_out, done, exited_on_purchase, messages, suppressed
FROM crm.v_journey_funnel ORDER BY journey_id;

\echo 'The outbox by journey and reason (crm.v_outbox_stats):'
SELECT source, channel, status, COALESCE(suppressed_reason, '') AS reason, messages
FROM crm.v_outbox_stats ORDER BY 1, 2, 3, 4;

\echo 'A campaign''s effect (crm.v_campaign_effect: treated against held out, 14 days after the send; the sample''s orders were made without it, so the interval around the uplift should hold 0):'
SELECT name, treated, control, treated_rate, control_rate, uplift, uplift_low, uplift_high,
       treated_revenue_per_customer, control_revenue_per_customer, incremental_revenue
FROM crm.v_campaign_effect ORDER BY campaign_id;
