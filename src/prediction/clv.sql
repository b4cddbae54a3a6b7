
-- ===========================================================================
-- clv.sql: customer lifetime value -- BG/NBD, MBG/NBD, Pareto/NBD and
-- Gamma-Gamma fitted and scored inside the database (src/prediction/clv.c,
-- src/prediction/clv_models.c, src/prediction/optimize.c)
-- ===========================================================================

-- ---------------------------------------------------------------------------
-- Summaries: frequency, recency, T and monetary value per golden customer
-- ---------------------------------------------------------------------------
CREATE TYPE crm.purchase_summary_result AS (
	days			integer,
	first_day		date,
	last_day		date,
	repeat_amount	double precision
);
COMMENT ON TYPE crm.purchase_summary_result IS
	'One customer''s purchases folded by crm.purchase_summary: distinct purchase days, first and last day, amount spent after the first day';

CREATE FUNCTION crm.purchase_summary_trans(internal, date, double precision) RETURNS internal
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_purchase_summary_trans';
COMMENT ON FUNCTION crm.purchase_summary_trans(internal, date, double precision) IS
	'Transition function of crm.purchase_summary (not STRICT: the first call creates the state; NULL days are skipped)';

CREATE FUNCTION crm.purchase_summary_final(internal) RETURNS crm.purchase_summary_result
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_purchase_summary_final';
COMMENT ON FUNCTION crm.purchase_summary_final(internal) IS
	'Final function of crm.purchase_summary (not STRICT: no purchases give NULL)';

CREATE AGGREGATE crm.purchase_summary(day date, amount double precision) (
	SFUNC = crm.purchase_summary_trans,
	STYPE = internal,
	FINALFUNC = crm.purchase_summary_final,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.purchase_summary(date, double precision) IS
	'Folds purchases (day, amount) into distinct days, first and last day and the amount after the first day, in one pass (used by crm.clv_summary)';

CREATE FUNCTION crm.clv_summary(as_of timestamptz, period interval DEFAULT '1 week')
RETURNS TABLE (customer_id bigint, frequency integer, recency double precision, t double precision,
	monetary numeric, first_purchase date, last_purchase date)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	days double precision;
	as_of_day date;
BEGIN
	IF NOT pg_catalog.isfinite(as_of) THEN
		RAISE EXCEPTION 'as_of must be a finite time'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	days := pg_catalog.date_part('epoch', period) / 86400.0;
	IF days < 1 THEN
		RAISE EXCEPTION 'period must be at least one day, not %', period
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Purchases are counted per calendar day, so the time unit is one day or longer (e.g. ''1 week'').';
	END IF;
	as_of_day := as_of::date;
	RETURN QUERY
	SELECT q.cid,
	       ((q.s).days OPERATOR(pg_catalog.-) 1)::integer,
	       ((q.s).last_day OPERATOR(pg_catalog.-) (q.s).first_day)::double precision OPERATOR(pg_catalog./) days,
	       (as_of_day OPERATOR(pg_catalog.-) (q.s).first_day)::double precision OPERATOR(pg_catalog./) days,
	       CASE WHEN (q.s).days OPERATOR(pg_catalog.>) 1
	            THEN ((q.s).repeat_amount OPERATOR(pg_catalog./) ((q.s).days OPERATOR(pg_catalog.-) 1))::numeric
	            ELSE 0::numeric END,
	       (q.s).first_day,
	       (q.s).last_day
	FROM (SELECT o.customer_id AS cid,
	             crm.purchase_summary(o.ordered_at::date, o.net_amount::double precision) AS s
	      FROM crm.orders o
	      JOIN crm.customer c ON c.customer_id OPERATOR(pg_catalog.=) o.customer_id
	      WHERE c.merged_into IS NULL
	        AND o.status OPERATOR(pg_catalog.=) 'paid'
	        AND o.ordered_at OPERATOR(pg_catalog.<=) as_of
	      GROUP BY o.customer_id) q;
END
$$;
COMMENT ON FUNCTION crm.clv_summary(timestamptz, interval) IS
	'Per golden customer with paid orders up to as_of: frequency (purchase days after the first), recency and T (from the first purchase day to the last one and to as_of, in periods), monetary (mean net amount of the repeat purchase days; 0 without repeats).  Days are calendar days in the session time zone';

-- ---------------------------------------------------------------------------
-- Fitting aggregates (C)
-- ---------------------------------------------------------------------------
CREATE TYPE crm.clv_estimate_result AS (
	model			text,
	params			double precision[],
	param_names		text[],
	log_likelihood	double precision,
	customers		double precision,
	summary_rows	integer,
	iterations		integer,
	evaluations		integer,
	grad_norm		double precision,
	seconds			double precision
);
COMMENT ON TYPE crm.clv_estimate_result IS
	'A maximum-likelihood fit: parameters (named in param_names), log-likelihood, customers (total weight), distinct summary rows after compression, optimiser iterations and evaluations, final gradient norm and fitting time';

CREATE FUNCTION crm.clv_estimate_trans(internal, text, double precision, double precision, double precision, double precision)
	RETURNS internal
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_clv_estimate_trans';
COMMENT ON FUNCTION crm.clv_estimate_trans(internal, text, double precision, double precision, double precision, double precision) IS
	'Transition function of crm.clv_estimate (not STRICT: it reports NULL inputs as errors)';

CREATE FUNCTION crm.clv_spend_trans(internal, double precision, double precision, double precision)
	RETURNS internal
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_clv_spend_trans';
COMMENT ON FUNCTION crm.clv_spend_trans(internal, double precision, double precision, double precision) IS
	'Transition function of crm.clv_estimate_spend (not STRICT: it reports NULL inputs as errors)';

CREATE FUNCTION crm.clv_estimate_final(internal)
	RETURNS crm.clv_estimate_result
	LANGUAGE c PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_clv_estimate_final';
COMMENT ON FUNCTION crm.clv_estimate_final(internal) IS
	'Final function of the CLV fitting aggregates: compresses identical rows, fits, errors when it cannot (not STRICT: an empty input is an error)';

CREATE AGGREGATE crm.clv_estimate(model text, frequency double precision, recency double precision,
	t double precision, weight double precision) (
	SFUNC = crm.clv_estimate_trans,
	STYPE = internal,
	FINALFUNC = crm.clv_estimate_final,
	FINALFUNC_EXTRA = false,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.clv_estimate(text, double precision, double precision, double precision, double precision) IS
	'Fits a transaction model (bgnbd, mbgnbd, paretonbd) by maximum likelihood to summary rows (frequency, recency, T, weight); identical rows are compressed first';

CREATE AGGREGATE crm.clv_estimate_spend(frequency double precision, monetary double precision, weight double precision) (
	SFUNC = crm.clv_spend_trans,
	STYPE = internal,
	FINALFUNC = crm.clv_estimate_final,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.clv_estimate_spend(double precision, double precision, double precision) IS
	'Fits the Gamma-Gamma spend model to (frequency, mean repeat spend, weight); rows with frequency 0 are skipped';

-- ---------------------------------------------------------------------------
-- Stored fits
-- ---------------------------------------------------------------------------
CREATE TABLE crm.clv_model (
	name			text PRIMARY KEY CONSTRAINT clv_model_name_format CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
	model			text NOT NULL CONSTRAINT clv_model_kind_valid CHECK (model IN ('bgnbd', 'mbgnbd', 'paretonbd', 'gammagamma')),
	params			double precision[] NOT NULL,
	param_names		text[] NOT NULL,
	log_likelihood	double precision,
	customers		bigint,
	summary_rows	integer,
	as_of			timestamptz,
	period			interval NOT NULL DEFAULT '1 week',
	seconds			double precision,
	fitted_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT clv_model_params_valid CHECK (
		pg_catalog.array_ndims(params) = 1
		AND pg_catalog.cardinality(params) = CASE model WHEN 'gammagamma' THEN 3 ELSE 4 END
		AND 0 < ALL (params) AND 'Infinity'::double precision > ALL (params)),
	CONSTRAINT clv_model_names_match CHECK (param_names = CASE model
		WHEN 'gammagamma' THEN ARRAY['p', 'q', 'v']
		WHEN 'paretonbd' THEN ARRAY['r', 'alpha', 's', 'beta']
		ELSE ARRAY['r', 'alpha', 'a', 'b'] END),
	CONSTRAINT clv_model_period_positive CHECK (period >= '1 day')
);
COMMENT ON TABLE crm.clv_model IS
	'Named CLV model fits (crm.clv_fit) or parameters entered by hand; the scoring functions look models up here by name';
COMMENT ON COLUMN crm.clv_model.params IS 'Parameters in the order of param_names: r, alpha, a, b (bgnbd, mbgnbd); r, alpha, s, beta (paretonbd); p, q, v (gammagamma)';
COMMENT ON COLUMN crm.clv_model.as_of IS 'End of the calibration period the model was fitted on; the default scoring time';
COMMENT ON COLUMN crm.clv_model.period IS 'Time unit of recency, T and horizons (alpha and beta are in this unit)';
COMMENT ON COLUMN crm.clv_model.seconds IS 'Wall-clock time of the fit, summary included';
SELECT pg_catalog.pg_extension_config_dump('crm.clv_model', '');

CREATE FUNCTION crm.clv_fit(model text, as_of timestamptz, period interval DEFAULT '1 week', name text DEFAULT NULL)
RETURNS crm.clv_model
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: name NULL means "the model's own name".
DECLARE
	started timestamptz := pg_catalog.clock_timestamp();
	e crm.clv_estimate_result;
	result crm.clv_model;
BEGIN
	IF model IS NULL OR as_of IS NULL OR period IS NULL THEN
		RAISE EXCEPTION 'crm.clv_fit needs a model, as_of and period'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF model NOT IN ('bgnbd', 'mbgnbd', 'paretonbd', 'gammagamma') THEN
		RAISE EXCEPTION 'unknown CLV model "%"', model
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Use bgnbd, mbgnbd, paretonbd or gammagamma.';
	END IF;
	IF model OPERATOR(pg_catalog.=) 'gammagamma' THEN
		e := (SELECT crm.clv_estimate_spend(s.frequency, s.monetary::double precision, 1)
		      FROM crm.clv_summary(as_of, period) s
		      WHERE s.frequency OPERATOR(pg_catalog.>) 0 AND s.monetary OPERATOR(pg_catalog.>) 0);
	ELSE
		e := (SELECT crm.clv_estimate(model, s.frequency, s.recency, s.t, 1)
		      FROM crm.clv_summary(as_of, period) s
		      WHERE s.t OPERATOR(pg_catalog.>) 0);
	END IF;
	INSERT INTO crm.clv_model AS m (name, model, params, param_names, log_likelihood, customers,
		summary_rows, as_of, period, seconds, fitted_at)
	VALUES (COALESCE(clv_fit.name, clv_fit.model), e.model, e.params, e.param_names, e.log_likelihood,
		e.customers::bigint, e.summary_rows, clv_fit.as_of, clv_fit.period,
		pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started),
		pg_catalog.now())
	ON CONFLICT ON CONSTRAINT clv_model_pkey DO UPDATE SET
		model = EXCLUDED.model, params = EXCLUDED.params, param_names = EXCLUDED.param_names,
		log_likelihood = EXCLUDED.log_likelihood, customers = EXCLUDED.customers,
		summary_rows = EXCLUDED.summary_rows, as_of = EXCLUDED.as_of, period = EXCLUDED.period,
		seconds = EXCLUDED.seconds, fitted_at = EXCLUDED.fitted_at
	RETURNING m.* INTO result;
	RETURN result;
END
$$;
COMMENT ON FUNCTION crm.clv_fit(text, timestamptz, interval, text) IS
	'Fits model (bgnbd, mbgnbd, paretonbd, gammagamma) to crm.clv_summary(as_of, period) and stores it in crm.clv_model under name (default: the model''s name), replacing an earlier fit of that name';

-- ---------------------------------------------------------------------------
-- Scoring (C); models are looked up by name once per query
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.p_alive(model text, frequency double precision, recency double precision, t double precision)
	RETURNS double precision
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_p_alive';
COMMENT ON FUNCTION crm.p_alive(text, double precision, double precision, double precision) IS
	'Probability that a customer with this summary (frequency, recency, T) is still active, under the named transaction model';

CREATE FUNCTION crm.expected_purchases(model text, frequency double precision, recency double precision,
	t double precision, horizon double precision)
	RETURNS double precision
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_expected_purchases';
COMMENT ON FUNCTION crm.expected_purchases(text, double precision, double precision, double precision, double precision) IS
	'Expected number of purchases in the next horizon periods of a customer with this summary, under the named transaction model';

CREATE FUNCTION crm.expected_purchases(model text, horizon double precision)
	RETURNS double precision
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_expected_purchases_new';
COMMENT ON FUNCTION crm.expected_purchases(text, double precision) IS
	'Expected number of repeat purchases in the first horizon periods of a newly acquired customer (unconditional E[X(t)])';

CREATE FUNCTION crm.expected_spend(spend_model text, frequency double precision, monetary double precision)
	RETURNS double precision
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_expected_spend';
COMMENT ON FUNCTION crm.expected_spend(text, double precision, double precision) IS
	'Expected spend per purchase of a customer with frequency repeat purchases of mean value monetary, under the named Gamma-Gamma model';

CREATE FUNCTION crm.clv(model text, spend_model text, frequency double precision, recency double precision,
	t double precision, monetary double precision, horizon double precision, discount_rate double precision DEFAULT 0)
	RETURNS double precision
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_clv';
COMMENT ON FUNCTION crm.clv(text, text, double precision, double precision, double precision, double precision, double precision, double precision) IS
	'Customer lifetime value over the next horizon periods: expected purchases per period times expected spend, discounted at discount_rate per period';

CREATE FUNCTION crm.clv_at_risk_threshold() RETURNS double precision
	LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_clv_at_risk_threshold';
COMMENT ON FUNCTION crm.clv_at_risk_threshold() IS
	'The P(alive) below which a customer is at risk: setting crm.at_risk_threshold, a number between 0 and 1 (e.g. ALTER DATABASE ... SET crm.at_risk_threshold = 0.3), 0.5 when unset';

CREATE FUNCTION crm.clv_scores(model text, spend_model text DEFAULT NULL, horizon double precision DEFAULT 52,
	discount_rate double precision DEFAULT 0, as_of timestamptz DEFAULT NULL)
RETURNS TABLE (customer_id bigint, frequency integer, recency double precision, t double precision,
	monetary numeric, p_alive double precision, expected_purchases double precision,
	clv double precision, at_risk boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: spend_model NULL leaves clv NULL; as_of NULL means the model's own as_of.
DECLARE
	m crm.clv_model;
	threshold double precision := crm.clv_at_risk_threshold();
BEGIN
	IF model IS NULL THEN
		RAISE EXCEPTION 'no CLV model to score with'
			USING ERRCODE = 'undefined_object', HINT = 'Fit one first, e.g. SELECT crm.clv_fit(''bgnbd'', now()).';
	END IF;
	SELECT * INTO m FROM crm.clv_model c WHERE c.name OPERATOR(pg_catalog.=) clv_scores.model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no CLV model named "%"', model
			USING ERRCODE = 'undefined_object', HINT = 'Fit one with crm.clv_fit, or list them in crm.clv_model.';
	END IF;
	IF COALESCE(as_of, m.as_of) IS NULL THEN
		RAISE EXCEPTION 'model "%" has no as_of; pass the scoring time', model
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	RETURN QUERY
	SELECT s.customer_id, s.frequency, s.recency, s.t, s.monetary, q.pa,
	       crm.expected_purchases(model, s.frequency, s.recency, s.t, horizon),
	       CASE WHEN spend_model IS NOT NULL THEN
	           crm.clv(model, spend_model, s.frequency, s.recency, s.t, s.monetary::double precision, horizon, discount_rate) END,
	       q.pa OPERATOR(pg_catalog.<) threshold
	FROM crm.clv_summary(COALESCE(as_of, m.as_of), m.period) s,
	     LATERAL (SELECT crm.p_alive(model, s.frequency, s.recency, s.t) AS pa) q;
END
$$;
COMMENT ON FUNCTION crm.clv_scores(text, text, double precision, double precision, timestamptz) IS
	'Scores every golden customer with purchases: summary, P(alive), expected purchases and CLV over horizon periods, and the at-risk flag (P(alive) below crm.clv_at_risk_threshold())';

CREATE VIEW crm.v_clv AS
SELECT s.*
FROM crm.clv_scores(
	(SELECT m.name FROM crm.clv_model m
	 WHERE m.model <> 'gammagamma' AND m.as_of IS NOT NULL ORDER BY m.fitted_at DESC, m.name LIMIT 1),
	(SELECT m.name FROM crm.clv_model m
	 WHERE m.model = 'gammagamma' ORDER BY m.fitted_at DESC, m.name LIMIT 1)) s;
COMMENT ON VIEW crm.v_clv IS
	'Every golden customer scored with the latest transaction model and the latest Gamma-Gamma model: P(alive), expected purchases and CLV over 52 periods, at-risk flag';
