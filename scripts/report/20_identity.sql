-- Demo report, section 2: identity resolution.  The sample identities were
-- loaded with online stitching off; this section runs the batch path once
-- (crm.stitch_identities()), scores it against the generator's true persons,
-- and shows one merge and its undo.  It comes before loyalty, segmentation
-- and prediction so that those count shoppers (golden customers), not the
-- records a shopper was split over.
\pset border 1
\echo '== Identity resolution =='
\echo 'Before stitching: every customer record counts as a customer of its own:'
SELECT count(*) AS customer_records,
       count(*) FILTER (WHERE merged_into IS NULL) AS golden_customers,
       (SELECT count(DISTINCT person_id) FROM crm.sample_person) AS true_persons
FROM crm.customer;

\echo 'Batch stitching (crm.stitch_identities()): merges made, pairs sent to review, stray rows redirected:'
SELECT * FROM crm.stitch_identities();

\echo 'After stitching: records, shoppers (golden customers) and duplicates merged:'
SELECT count(*) AS customer_records,
       count(*) FILTER (WHERE merged_into IS NULL) AS golden_customers,
       count(*) FILTER (WHERE merged_into IS NOT NULL) AS duplicate_records_merged,
       (SELECT count(DISTINCT person_id) FROM crm.sample_person) AS true_persons
FROM crm.customer;

\echo 'Golden customers by how many records they stitch together:'
SELECT records, count(*) AS golden_customers
FROM (SELECT COALESCE(merged_into, customer_id) AS golden, count(*) AS records FROM crm.customer GROUP BY 1) g
GROUP BY 1 ORDER BY 1;

\echo 'What linked them (identifier values shared by records of one golden customer), and what was kept apart:'
SELECT g.kind, k.strength, k.max_customers,
       count(*) FILTER (WHERE g.goldens = 1 AND g.n > 1 AND NOT g.blocked) AS linking_values,
       count(*) FILTER (WHERE g.goldens > 1 AND NOT g.blocked) AS values_on_several_customers_not_linked,
       count(*) FILTER (WHERE g.blocked AND g.n > 1) AS blocklisted_shared_values
FROM (SELECT i.kind, i.value, count(*) AS n,
             count(DISTINCT COALESCE(c.merged_into, c.customer_id)) AS goldens,
             crm.identity_blocked(i.kind, i.value) AS blocked
      FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.origin_customer_id
      GROUP BY 1, 2) g
JOIN crm.identity_kind k ON k.kind = g.kind
GROUP BY 1, 2, 3 ORDER BY 1;

\echo 'Precision and recall against the sample truth (pairs of records in one person / one golden customer):'
WITH p AS (SELECT s.person_id, COALESCE(c.merged_into, c.customer_id) AS golden
           FROM crm.sample_person s JOIN crm.customer c USING (customer_id)),
     both_ AS (SELECT sum(n * (n - 1) / 2) AS v FROM (SELECT count(*) AS n FROM p GROUP BY person_id, golden) x),
     truth AS (SELECT sum(n * (n - 1) / 2) AS v FROM (SELECT count(*) AS n FROM p GROUP BY person_id) x),
     found AS (SELECT sum(n * (n - 1) / 2) AS v FROM (SELECT count(*) AS n FROM p GROUP BY golden) x)
SELECT truth.v AS true_pairs, found.v AS stitched_pairs, both_.v AS correct_pairs,
       round(both_.v / NULLIF(found.v, 0), 4) AS "precision", round(both_.v / NULLIF(truth.v, 0), 4) AS recall
FROM both_, truth, found;

\echo 'Running it again changes nothing (idempotent):'
SELECT * FROM crm.stitch_identities();

\echo 'The merge log (latest three) and the review queue:'
SELECT merge_id, survivor, merged, members, source, orders_moved, events_moved, identities_moved, identities_parked
FROM crm.merge_log ORDER BY merge_id DESC LIMIT 3;
SELECT count(*) AS open_reviews FROM crm.identity_review WHERE resolved_at IS NULL;

\echo 'Undo the latest merge exactly, then look at both customers:'
BEGIN;
SELECT crm.unmerge(max(merge_id)) AS merges_undone FROM crm.merge_log;
SELECT c.customer_id, c.merged_into,
       (SELECT count(*) FROM crm.orders o WHERE o.customer_id = c.customer_id) AS orders,
       (SELECT count(*) FROM crm.identity i WHERE i.customer_id = c.customer_id) AS identities
FROM crm.customer c
WHERE c.customer_id IN (SELECT unnest(ARRAY[survivor, merged]) FROM crm.merge_log WHERE merge_id = (SELECT max(merge_id) FROM crm.merge_log))
ORDER BY 1;
ROLLBACK;

\echo 'From here on the report counts shoppers: golden customers after stitching, each with the'
\echo 'orders, points, spend and stats of all the records stitched into it.'
