-- crm_ext's settings in parallel workers: a worker restores the leader's
-- settings before the ones date parsing needs (timezone_abbreviations), and
-- parsing crm.loyalty_now there crashed the worker (signal 11), which took
-- the whole server down: the sample's activity sets it and met a parallel
-- plan at 100,000 customers.  Now the worker takes the leader's (checked)
-- value and parses it when it is first read.
SET force_parallel_mode = on;
-- (the form crm.generate_sample_activity writes: its "T" is looked up among
-- the time zone abbreviations, which the worker has not restored yet)
SET crm.loyalty_now = '2026-07-01T00:00:00.000000+00';
SET crm.as_of = '2026-07-01T00:00:00.000000+00';
-- a worker restores the settings (the query runs under a Gather)
SELECT count(*) AS customers FROM crm.customer;
-- and reads them: crm.loyalty_now() is PARALLEL SAFE, so it runs in the worker
SELECT crm.loyalty_now() = '2026-07-01 00:00:00+00'::timestamptz AS the_leaders_value;
RESET crm.loyalty_now;
RESET crm.as_of;
SELECT crm.loyalty_now() = now() AS transaction_start_again;
RESET force_parallel_mode;
