-- pgTAP: the prediction feature's objects, their labels, and a fit/score round trip.
BEGIN;
SELECT plan(16);

SELECT has_table('crm', 'clv_model', 'crm.clv_model exists');
SELECT col_is_pk('crm', 'clv_model', 'name', 'clv_model is keyed by name');
SELECT has_table('crm', 'association_rule', 'crm.association_rule exists');
SELECT col_is_pk('crm', 'association_rule', ARRAY['antecedent', 'consequent'], 'association_rule is keyed by the pair');
SELECT has_view('crm', 'v_clv', 'crm.v_clv exists');
SELECT has_function('crm', 'clv_summary', ARRAY['timestamp with time zone', 'interval']);
SELECT has_function('crm', 'clv_fit', ARRAY['text', 'timestamp with time zone', 'interval', 'text']);
SELECT volatility_is('crm', 'p_alive', ARRAY['text', 'double precision', 'double precision', 'double precision'], 'stable',
	'crm.p_alive is STABLE (it reads crm.clv_model)');
SELECT is_strict('crm', 'clv', ARRAY['text', 'text', 'double precision', 'double precision', 'double precision',
	'double precision', 'double precision', 'double precision'], 'crm.clv is STRICT');
SELECT is_aggregate('crm', 'clv_estimate', ARRAY['text', 'double precision', 'double precision', 'double precision', 'double precision']);
SELECT is_aggregate('crm', 'purchase_interval', ARRAY['date']);
SELECT has_function('crm', 'refresh_associations', ARRAY['double precision', 'double precision']);
SELECT has_function('crm', 'replenishment_due', ARRAY['timestamp with time zone', 'interval']);

-- A round trip on a small hand-made summary: fit, store, score.
INSERT INTO crm.clv_model (name, model, params, param_names, log_likelihood, customers, summary_rows)
SELECT 'tap', (e).model, (e).params, (e).param_names, (e).log_likelihood, (e).customers::bigint, (e).summary_rows
FROM (SELECT crm.clv_estimate('bgnbd', x, tx, t, w) AS e
      FROM (VALUES (0, 0, 30, 40), (1, 5, 30, 20), (2, 20, 30, 10), (3, 28, 30, 8), (1, 2, 30, 15), (4, 10, 30, 5),
                   (0, 0, 20, 30), (2, 18, 20, 12), (5, 19, 20, 6), (1, 1, 20, 14)) v(x, tx, t, w)) q;
SELECT is((SELECT customers FROM crm.clv_model WHERE name = 'tap'), 160::bigint, 'the fit counts the weights');
SELECT ok(crm.p_alive('tap', 3, 28, 30) > crm.p_alive('tap', 3, 5, 30),
	'a recent buyer is more likely alive than one silent for long');
SELECT ok(crm.expected_purchases('tap', 5, 19, 20, 10) > crm.expected_purchases('tap', 1, 1, 20, 10),
	'a frequent buyer is expected to buy more');

SELECT * FROM finish();
ROLLBACK;
