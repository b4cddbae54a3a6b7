/*
 * clv.c
 *		SQL entry points of the CLV models: the fitting aggregates
 *		crm.clv_estimate / crm.clv_estimate_spend and the scoring functions
 *		crm.p_alive, crm.expected_purchases, crm.expected_spend and crm.clv.
 *
 * The aggregates collect summary rows (frequency, recency, T, weight) in the
 * aggregate's memory, compress identical rows into one weighted row, and fit
 * by maximum likelihood on log-parameters (src/prediction/optimize.c).  A fit that does
 * not converge is an ERROR (CR006), never a row of NaNs.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "crm_ext.h"
#include "clv_models.h"
#include "optimize.h"

/* Above this many distinct rows, starts are screened on a subsample. */
#define CLV_SCREEN_ROWS 5000

typedef struct ClvAggState
{
	ClvModelKind kind;
	bool		spend;			/* Gamma-Gamma aggregate */
	int			n;
	int			cap;
	double	   *x;
	double	   *tx;
	double	   *T;
	double	   *w;
} ClvAggState;

static ClvModelKind
parse_model(text *t, bool transactions_only)
{
	char	   *name = text_to_cstring(t);
	ClvModelKind kind;

	if (!clv_model_from_name(name, &kind) || (transactions_only && kind == CLV_GAMMAGAMMA))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("unknown transaction model \"%s\"", name),
				errhint(transactions_only
						? "Use bgnbd, mbgnbd or paretonbd (gammagamma is fitted by crm.clv_estimate_spend)."
						: "Use bgnbd, mbgnbd, paretonbd or gammagamma."));
	pfree(name);
	return kind;
}

static double
arg_double(FunctionCallInfo fcinfo, int argno, const char *what)
{
	double		v;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("%s must not be null", what));
	v = PG_GETARG_FLOAT8(argno);
	if (isnan(v) || isinf(v))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("%s must be a finite number", what));
	if (v < 0.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("%s must not be negative", what));
	return v;
}

/* Validates one customer's summary; shared by the aggregates and the scorers. */
static void
check_summary(double x, double tx, double T)
{
	if (x != floor(x))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("frequency must be a whole number of repeat purchases"));
	if (tx > T)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("recency must not exceed T"),
				errdetail("Recency is the time from the first to the last purchase; T is the time from the first purchase to the end of the period."));
	if (x == 0.0 && tx != 0.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("recency must be 0 when frequency is 0"));
}

static void
state_add(ClvAggState *st, double x, double tx, double T, double w)
{
	if (st->n >= st->cap)
	{
		int			ncap = st->cap * 2;

		if (ncap > 100000000)
			ereport(ERROR,
					errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					errmsg("too many summary rows for one fit"),
					errhint("Compress identical rows into weights first."));
		st->x = repalloc(st->x, sizeof(double) * ncap);
		st->tx = repalloc(st->tx, sizeof(double) * ncap);
		st->T = repalloc(st->T, sizeof(double) * ncap);
		st->w = repalloc(st->w, sizeof(double) * ncap);
		st->cap = ncap;
	}
	st->x[st->n] = x;
	st->tx[st->n] = tx;
	st->T[st->n] = T;
	st->w[st->n] = w;
	st->n++;
}

static ClvAggState *
state_get(FunctionCallInfo fcinfo, ClvModelKind kind, bool spend)
{
	MemoryContext aggcxt,
				old;
	ClvAggState *st;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("crm.clv_estimate transition function called outside an aggregate"));
	if (!PG_ARGISNULL(0))
	{
		st = (ClvAggState *) PG_GETARG_POINTER(0);
		if (st->kind != kind)
			ereport(ERROR,
					errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					errmsg("one fit needs one model"),
					errdetail("The model argument changed from %s to %s within the group.",
							  clv_model_name(st->kind), clv_model_name(kind)));
		return st;
	}
	old = MemoryContextSwitchTo(aggcxt);
	st = palloc0(sizeof(ClvAggState));
	st->kind = kind;
	st->spend = spend;
	st->cap = 1024;
	st->x = palloc(sizeof(double) * st->cap);
	st->tx = palloc(sizeof(double) * st->cap);
	st->T = palloc(sizeof(double) * st->cap);
	st->w = palloc(sizeof(double) * st->cap);
	MemoryContextSwitchTo(old);
	return st;
}

PG_FUNCTION_INFO_V1(crm_clv_estimate_trans);

/*
 * crm.clv_estimate(model, frequency, recency, t, weight) transition:
 *		validates and collects one summary row.  Rows of weight 0 are skipped.
 */
Datum
crm_clv_estimate_trans(PG_FUNCTION_ARGS)
{
	ClvModelKind kind;
	ClvAggState *st;
	double		x,
				tx,
				T,
				w;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("model must not be null"));
	kind = parse_model(PG_GETARG_TEXT_PP(1), true);
	x = arg_double(fcinfo, 2, "frequency");
	tx = arg_double(fcinfo, 3, "recency");
	T = arg_double(fcinfo, 4, "T");
	w = arg_double(fcinfo, 5, "weight");
	check_summary(x, tx, T);
	if (T <= 0.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("T must be positive"),
				errhint("A customer whose first purchase is at the end of the period carries no information; leave such rows out."));
	st = state_get(fcinfo, kind, false);
	if (w > 0.0)
		state_add(st, x, tx, T, w);
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(crm_clv_spend_trans);

/*
 * crm.clv_estimate_spend(frequency, monetary, weight) transition: collects
 *		customers with repeat purchases (frequency 0 rows carry no spend
 *		information for Gamma-Gamma and are skipped).
 */
Datum
crm_clv_spend_trans(PG_FUNCTION_ARGS)
{
	ClvAggState *st;
	double		x,
				m,
				w;

	x = arg_double(fcinfo, 1, "frequency");
	m = arg_double(fcinfo, 2, "monetary");
	w = arg_double(fcinfo, 3, "weight");
	if (x != floor(x))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("frequency must be a whole number of repeat purchases"));
	if (x > 0.0 && m <= 0.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("monetary must be positive for a customer with repeat purchases"),
				errhint("Leave customers whose repeat purchases were all refunded out of the spend fit."));
	st = state_get(fcinfo, CLV_GAMMAGAMMA, true);
	if (w > 0.0 && x > 0.0)
		state_add(st, x, m, 0.0, w);
	PG_RETURN_POINTER(st);
}

/* Sort order of rows for compression. */
static ClvAggState *sort_state;

static int
cmp_rows(const void *pa, const void *pb)
{
	int			a = *(const int *) pa,
				b = *(const int *) pb;
	ClvAggState *s = sort_state;

	if (s->x[a] != s->x[b])
		return s->x[a] < s->x[b] ? -1 : 1;
	if (s->tx[a] != s->tx[b])
		return s->tx[a] < s->tx[b] ? -1 : 1;
	if (s->T[a] != s->T[b])
		return s->T[a] < s->T[b] ? -1 : 1;
	return a < b ? -1 : (a > b ? 1 : 0);
}

/* Identical rows become one row with the summed weight. */
static void
compress(ClvAggState *st, ClvData *d)
{
	int		   *idx = palloc(sizeof(int) * Max(st->n, 1));
	int			i;

	for (i = 0; i < st->n; i++)
		idx[i] = i;
	sort_state = st;
	qsort(idx, st->n, sizeof(int), cmp_rows);
	d->x = palloc(sizeof(double) * Max(st->n, 1));
	d->tx = palloc(sizeof(double) * Max(st->n, 1));
	d->T = palloc(sizeof(double) * Max(st->n, 1));
	d->w = palloc(sizeof(double) * Max(st->n, 1));
	d->n = 0;
	for (i = 0; i < st->n; i++)
	{
		int			j = idx[i];

		if (d->n > 0 && d->x[d->n - 1] == st->x[j] && d->tx[d->n - 1] == st->tx[j]
			&& d->T[d->n - 1] == st->T[j])
			d->w[d->n - 1] += st->w[j];
		else
		{
			d->x[d->n] = st->x[j];
			d->tx[d->n] = st->tx[j];
			d->T[d->n] = st->T[j];
			d->w[d->n] = st->w[j];
			d->n++;
		}
	}
	pfree(idx);
	clv_data_prepare(d);
}

/* An every-k-th-row subsample with weights scaled to the same total. */
static void
subsample(const ClvData *d, ClvData *s, int target)
{
	int			step = (d->n + target - 1) / target;
	int			i;
	double		tw = 0.0;

	s->n = 0;
	s->x = palloc(sizeof(double) * (target + 1));
	s->tx = palloc(sizeof(double) * (target + 1));
	s->T = palloc(sizeof(double) * (target + 1));
	s->w = palloc(sizeof(double) * (target + 1));
	for (i = 0; i < d->n && s->n <= target; i += step)
	{
		s->x[s->n] = d->x[i];
		s->tx[s->n] = d->tx[i];
		s->T[s->n] = d->T[i];
		s->w[s->n] = d->w[i];
		tw += d->w[i];
		s->n++;
	}
	for (i = 0; i < s->n; i++)
		s->w[i] *= d->total_weight / tw;
	clv_data_prepare(s);
}

typedef struct FitCtx
{
	ClvModelKind kind;
	ClvData    *d;
} FitCtx;

/* Objective: minus the mean log-likelihood over log-parameters. */
static double
fit_objective(const double *theta, double *grad, bool *have_grad, void *vctx)
{
	FitCtx	   *c = (FitCtx *) vctx;
	double		p[CLV_MAX_PARAMS];
	double		g[CLV_MAX_PARAMS];
	int			k = clv_model_nparams(c->kind),
				i;
	double		ll;

	for (i = 0; i < k; i++)
	{
		if (theta[i] > 30.0 || theta[i] < -30.0)
			return HUGE_VAL;
		p[i] = exp(theta[i]);
	}
	ll = clv_loglik(c->kind, c->d, p, grad ? g : NULL, have_grad);
	if (!(ll > -HUGE_VAL))
	{
		*have_grad = false;
		return HUGE_VAL;
	}
	if (grad && *have_grad)
		for (i = 0; i < k; i++)
			grad[i] = -g[i] / c->d->total_weight;
	return -ll / c->d->total_weight;
}

PG_FUNCTION_INFO_V1(crm_clv_estimate_final);

/*
 * Final function of both fitting aggregates: compress, fit, and return a
 * crm.clv_estimate_result.  NULL for an empty group is not an option: no
 * data is an error, as is a sample without repeat purchases.
 */
Datum
crm_clv_estimate_final(PG_FUNCTION_ARGS)
{
	ClvAggState *st;
	ClvData		d = {0},
				sub = {0};
	FitCtx		full_ctx,
				screen_ctx;
	OptResult	res;
	double		starts[16 * OPT_MAX_DIM];
	int			nstarts = 0,
				k,
				i;
	double		mean_T = 0.0,
				mean_m = 0.0,
				repeaters = 0.0;
	double		params[CLV_MAX_PARAMS];
	double		ll;
	bool		have;
	TupleDesc	tupdesc;
	Datum		values[10];
	bool		nulls[10] = {0};
	Datum		pd[CLV_MAX_PARAMS],
				nd[CLV_MAX_PARAMS];
	const char *const *names;
	instr_time	t0,
				t1;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				errcode(ERRCODE_CRM_INSUFFICIENT_DATA),
				errmsg("no customers to fit the model on"),
				errhint("The summary is empty: check the period and that there are paid orders before it ends."));
	st = (ClvAggState *) PG_GETARG_POINTER(0);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "crm.clv_estimate must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);
	INSTR_TIME_SET_CURRENT(t0);

	if (st->n == 0)
		ereport(ERROR,
				errcode(ERRCODE_CRM_INSUFFICIENT_DATA),
				errmsg("no customers to fit the model on"),
				errhint(st->spend ? "Gamma-Gamma needs customers with at least one repeat purchase."
						: "The summary is empty or every row has weight 0."));
	compress(st, &d);
	k = clv_model_nparams(st->kind);
	for (i = 0; i < d.n; i++)
	{
		mean_T += d.w[i] * d.T[i];
		mean_m += d.w[i] * d.tx[i];
		if (d.x[i] > 0.0)
			repeaters += d.w[i];
	}
	mean_T /= d.total_weight;
	mean_m /= d.total_weight;
	if (repeaters == 0.0)
		ereport(ERROR,
				errcode(ERRCODE_CRM_INSUFFICIENT_DATA),
				errmsg("nobody in the summary made a repeat purchase"),
				errdetail("With no repeat purchases the purchase and dropout rates cannot be told apart."));
	if (!st->spend && repeaters == d.total_weight && st->kind == CLV_BGNBD && d.nx == 1)
		ereport(ERROR,
				errcode(ERRCODE_CRM_INSUFFICIENT_DATA),
				errmsg("every customer made the same number of repeat purchases"),
				errdetail("The model's heterogeneity cannot be estimated from identical frequencies."));

	/* starting points, on log scale */
#define ADD_START(a0, a1, a2, a3) \
	do { double v_[4] = {a0, a1, a2, a3}; \
		for (i = 0; i < k; i++) starts[nstarts * k + i] = log(v_[i]); \
		nstarts++; } while (0)
	if (st->kind == CLV_GAMMAGAMMA)
	{
		ADD_START(1.0, 2.0, mean_m, 0);
		ADD_START(5.0, 4.0, mean_m * 3.0, 0);
		ADD_START(0.5, 1.5, mean_m * 0.5, 0);
		ADD_START(20.0, 10.0, mean_m * 5.0, 0);
	}
	else
	{
		double		sT = Max(mean_T, 1e-6);

		ADD_START(1.0, sT, 1.0, 1.0);
		ADD_START(0.3, sT / 10.0, 0.7, 2.5);
		ADD_START(0.5, sT / 3.0, 0.5, 0.5);
		ADD_START(2.0, sT * 3.0, 2.0, 5.0);
	}
#undef ADD_START

	full_ctx.kind = st->kind;
	full_ctx.d = &d;
	screen_ctx.kind = st->kind;
	screen_ctx.d = &d;
	if (d.n > CLV_SCREEN_ROWS)
	{
		subsample(&d, &sub, CLV_SCREEN_ROWS);
		screen_ctx.d = &sub;
	}
	opt_minimize(fit_objective, &full_ctx, fit_objective, &screen_ctx,
				 k, starts, nstarts, 1e-9, &res);
	if (!res.converged || !(res.value < HUGE_VAL))
		ereport(ERROR,
				errcode(ERRCODE_CRM_MODEL_NOT_CONVERGED),
				errmsg("%s fit did not converge", clv_model_name(st->kind)),
				errdetail("After %d iterations the largest gradient component was %g.",
						  res.iterations, res.grad_norm),
				errhint("The data may not fit the model: check the summary, or try another model."));
	for (i = 0; i < k; i++)
		params[i] = exp(res.theta[i]);
	ll = clv_loglik(st->kind, &d, params, NULL, &have);
	for (i = 0; i < k; i++)
		if (!isfinite(params[i]))
			ereport(ERROR,
					errcode(ERRCODE_CRM_MODEL_NOT_CONVERGED),
					errmsg("%s fit did not converge", clv_model_name(st->kind)),
					errdetail("A parameter left the finite range."));
	INSTR_TIME_SET_CURRENT(t1);
	INSTR_TIME_SUBTRACT(t1, t0);

	names = clv_model_param_names(st->kind);
	for (i = 0; i < k; i++)
	{
		pd[i] = Float8GetDatum(params[i]);
		nd[i] = CStringGetTextDatum(names[i]);
	}
	values[0] = CStringGetTextDatum(clv_model_name(st->kind));
	values[1] = PointerGetDatum(construct_array(pd, k, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(nd, k, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = Float8GetDatum(ll);
	values[4] = Float8GetDatum(d.total_weight);
	values[5] = Int32GetDatum(d.n);
	values[6] = Int32GetDatum(res.iterations);
	values[7] = Int32GetDatum(res.evaluations);
	values[8] = Float8GetDatum(res.grad_norm);
	values[9] = Float8GetDatum(INSTR_TIME_GET_DOUBLE(t1));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* ------------------------------------------------------------------------
 * Scoring with a stored model
 * ------------------------------------------------------------------------ */

typedef struct ModelCache
{
	char		name[NAMEDATALEN * 2];
	ClvModelKind kind;
	double		p[CLV_MAX_PARAMS];
	bool		valid;
} ModelCache;

/* Columns of lookup_model's query of crm.clv_model. */
enum
{
	MODEL_KIND = 1, MODEL_PARAMS
};

/* Looks a model up in crm.clv_model, once per call site and name. */
static ModelCache *
lookup_model(FunctionCallInfo fcinfo, int argno, ModelCache *slot)
{
	text	   *t;
	char	   *name;
	int			ret;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		isnull;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			nel,
				i;
	char	   *model;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				errmsg("model name must not be null"));
	t = PG_GETARG_TEXT_PP(argno);
	name = text_to_cstring(t);
	if (strlen(name) >= sizeof(slot->name))
		ereport(ERROR,
				errcode(ERRCODE_NAME_TOO_LONG),
				errmsg("model name is too long"));
	if (slot->valid && strcmp(slot->name, name) == 0)
	{
		pfree(name);
		return slot;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	args[0] = PointerGetDatum(t);
	ret = SPI_execute_with_args(crm_config_sql("SELECT m.model, m.params FROM crm.clv_model m WHERE m.name OPERATOR(pg_catalog.=) $1"),
								1, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %d", ret);
	if (SPI_processed == 0)
		ereport(ERROR,
				errcode(ERRCODE_UNDEFINED_OBJECT),
				errmsg("no CLV model named \"%s\"", name),
				errhint("Fit one with crm.clv_fit, or list them in crm.clv_model."));
	model = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, MODEL_KIND);
	if (!clv_model_from_name(model, &slot->kind))
		elog(ERROR, "crm.clv_model holds unknown model \"%s\"", model);
	arr = DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, MODEL_PARAMS, &isnull));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &enulls, &nel);
	if (nel != clv_model_nparams(slot->kind))
		elog(ERROR, "crm.clv_model \"%s\" has %d parameters", name, nel);
	for (i = 0; i < nel; i++)
		slot->p[i] = DatumGetFloat8(elems[i]);
	SPI_finish();
	strlcpy(slot->name, name, sizeof(slot->name));
	slot->valid = true;
	pfree(name);
	return slot;
}

static ModelCache *
cache_slots(FunctionCallInfo fcinfo, int nslots)
{
	if (fcinfo->flinfo->fn_extra == NULL)
		fcinfo->flinfo->fn_extra = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
														  sizeof(ModelCache) * nslots);
	return (ModelCache *) fcinfo->flinfo->fn_extra;
}

static ModelCache *
transaction_model(FunctionCallInfo fcinfo, int argno, ModelCache *slot)
{
	ModelCache *m = lookup_model(fcinfo, argno, slot);

	if (m->kind == CLV_GAMMAGAMMA)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("model \"%s\" is a spend model", m->name),
				errhint("Use a bgnbd, mbgnbd or paretonbd model here."));
	return m;
}

static ModelCache *
spend_model(FunctionCallInfo fcinfo, int argno, ModelCache *slot)
{
	ModelCache *m = lookup_model(fcinfo, argno, slot);

	if (m->kind != CLV_GAMMAGAMMA)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("model \"%s\" is not a spend model", m->name),
				errhint("Use a gammagamma model here."));
	if (m->p[1] <= 1.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("spend model \"%s\" has q <= 1, so its mean spend is infinite", m->name));
	return m;
}

static double
finite_result(double v, const char *what)
{
	if (!isfinite(v))
		ereport(ERROR,
				errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				errmsg("%s could not be computed for these inputs", what),
				errhint("The hypergeometric series did not settle; such extreme inputs are outside the model's range."));
	return v;
}

/*
 * crm.at_risk_threshold: the P(alive) below which crm.v_clv flags a customer
 * at risk.  It changes how a query reads the scores, nothing stored, so any
 * role may set it; the range is checked when it is set.
 */
static double at_risk_threshold = 0.5;

void
crm_prediction_init(void)
{
	DefineCustomRealVariable("crm.at_risk_threshold",
							 "P(alive) below which a customer counts as at risk (crm.v_clv).",
							 NULL,
							 &at_risk_threshold,
							 0.5, 0.0, 1.0,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

PG_FUNCTION_INFO_V1(crm_clv_at_risk_threshold);

/* crm.clv_at_risk_threshold(): the setting crm.at_risk_threshold */
Datum
crm_clv_at_risk_threshold(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(at_risk_threshold);
}

PG_FUNCTION_INFO_V1(crm_p_alive);

/* crm.p_alive(model, frequency, recency, t): probability the customer is still active. */
Datum
crm_p_alive(PG_FUNCTION_ARGS)
{
	ModelCache *m = transaction_model(fcinfo, 0, cache_slots(fcinfo, 1));
	double		x = arg_double(fcinfo, 1, "frequency"),
				tx = arg_double(fcinfo, 2, "recency"),
				T = arg_double(fcinfo, 3, "T");

	check_summary(x, tx, T);
	PG_RETURN_FLOAT8(finite_result(clv_p_alive(m->kind, m->p, x, tx, T), "P(alive)"));
}

PG_FUNCTION_INFO_V1(crm_expected_purchases);

/* crm.expected_purchases(model, frequency, recency, t, horizon): E[X(horizon) | history]. */
Datum
crm_expected_purchases(PG_FUNCTION_ARGS)
{
	ModelCache *m = transaction_model(fcinfo, 0, cache_slots(fcinfo, 1));
	double		x = arg_double(fcinfo, 1, "frequency"),
				tx = arg_double(fcinfo, 2, "recency"),
				T = arg_double(fcinfo, 3, "T"),
				h = arg_double(fcinfo, 4, "horizon");

	check_summary(x, tx, T);
	PG_RETURN_FLOAT8(finite_result(clv_expected_conditional(m->kind, m->p, h, x, tx, T),
								   "expected purchases"));
}

PG_FUNCTION_INFO_V1(crm_expected_purchases_new);

/* crm.expected_purchases(model, horizon): E[X(horizon)] of a newly acquired customer. */
Datum
crm_expected_purchases_new(PG_FUNCTION_ARGS)
{
	ModelCache *m = transaction_model(fcinfo, 0, cache_slots(fcinfo, 1));
	double		h = arg_double(fcinfo, 1, "horizon");

	PG_RETURN_FLOAT8(finite_result(clv_expected_unconditional(m->kind, m->p, h),
								   "expected purchases"));
}

PG_FUNCTION_INFO_V1(crm_expected_spend);

/* crm.expected_spend(spend_model, frequency, monetary): expected mean spend per purchase. */
Datum
crm_expected_spend(PG_FUNCTION_ARGS)
{
	ModelCache *m = spend_model(fcinfo, 0, cache_slots(fcinfo, 1));
	double		x = arg_double(fcinfo, 1, "frequency"),
				mv = arg_double(fcinfo, 2, "monetary");

	if (x != floor(x))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("frequency must be a whole number of repeat purchases"));
	PG_RETURN_FLOAT8(finite_result(clv_expected_spend(m->p, x, x > 0 ? mv : 0.0), "expected spend"));
}

PG_FUNCTION_INFO_V1(crm_clv);

/*
 * crm.clv(model, spend_model, frequency, recency, t, monetary, horizon,
 *		discount_rate): discounted expected spend over the next horizon
 *		periods, summed period by period (lifetimes' discrete form).
 */
Datum
crm_clv(PG_FUNCTION_ARGS)
{
	ModelCache *slots = cache_slots(fcinfo, 2);
	ModelCache *m = transaction_model(fcinfo, 0, &slots[0]);
	ModelCache *sm = spend_model(fcinfo, 1, &slots[1]);
	double		x = arg_double(fcinfo, 2, "frequency"),
				tx = arg_double(fcinfo, 3, "recency"),
				T = arg_double(fcinfo, 4, "T"),
				mv = arg_double(fcinfo, 5, "monetary"),
				h = arg_double(fcinfo, 6, "horizon"),
				dr = arg_double(fcinfo, 7, "discount_rate");
	double		spend,
				prev = 0.0,
				total = 0.0;
	int			i,
				steps;

	check_summary(x, tx, T);
	if (h > 10000.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("horizon must be at most 10000 periods"));
	spend = clv_expected_spend(sm->p, x, x > 0 ? mv : 0.0);
	if (dr == 0.0)
	{
		/* undiscounted, the period sum telescopes to E[X(h)] * spend */
		PG_RETURN_FLOAT8(finite_result(clv_expected_conditional(m->kind, m->p, h, x, tx, T) * spend, "CLV"));
	}
	steps = (int) ceil(h);
	for (i = 1; i <= steps; i++)
	{
		double		t = Min((double) i, h);
		double		e = clv_expected_conditional(m->kind, m->p, t, x, tx, T);

		total += (e - prev) * spend / pow(1.0 + dr, i);
		prev = e;
	}
	PG_RETURN_FLOAT8(finite_result(total, "CLV"));
}

/* ------------------------------------------------------------------------
 * crm.purchase_summary(day date, amount float8): one customer's purchase
 * days folded into (days, first day, last day, amount after the first day)
 * in a single pass, for crm.clv_summary.
 * ------------------------------------------------------------------------ */

typedef struct PurchaseState
{
	int			n;
	int			cap;
	int32	   *day;
	double	   *amount;
} PurchaseState;

PG_FUNCTION_INFO_V1(crm_purchase_summary_trans);

/* Transition: collects (day, amount); NULL days are skipped. */
Datum
crm_purchase_summary_trans(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	PurchaseState *st;
	int32		d;
	double		a;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				errmsg("crm.purchase_summary transition function called outside an aggregate"));
	if (PG_ARGISNULL(0))
	{
		st = MemoryContextAllocZero(aggcxt, sizeof(PurchaseState));
		st->cap = 8;
		st->day = MemoryContextAlloc(aggcxt, sizeof(int32) * st->cap);
		st->amount = MemoryContextAlloc(aggcxt, sizeof(double) * st->cap);
	}
	else
		st = (PurchaseState *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(st);
	d = PG_GETARG_INT32(1);		/* DateADT */
	a = PG_ARGISNULL(2) ? 0.0 : PG_GETARG_FLOAT8(2);
	if (DATE_NOT_FINITE(d))
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("purchase days must be finite"));
	if (isnan(a) || isinf(a) || a < 0.0)
		ereport(ERROR,
				errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				errmsg("purchase amounts must be finite and not negative"));
	if (st->n == st->cap)
	{
		if (st->cap >= 50000000)
			ereport(ERROR,
					errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					errmsg("too many purchases for one customer"));
		st->cap *= 2;
		st->day = repalloc(st->day, sizeof(int32) * st->cap);
		st->amount = repalloc(st->amount, sizeof(double) * st->cap);
	}
	st->day[st->n] = d;
	st->amount[st->n] = a;
	st->n++;
	PG_RETURN_POINTER(st);
}

typedef struct Purchase
{
	int32		day;
	double		amount;
} Purchase;

static int
cmp_purchase(const void *a, const void *b)
{
	const Purchase *x = a;
	const Purchase *y = b;

	if (x->day != y->day)
		return x->day < y->day ? -1 : 1;
	return x->amount < y->amount ? -1 : (x->amount > y->amount ? 1 : 0);
}

PG_FUNCTION_INFO_V1(crm_purchase_summary_final);

/*
 * Final: a crm.purchase_summary_result (days, first_day, last_day,
 * repeat_amount), NULL when there were no purchases.
 */
Datum
crm_purchase_summary_final(PG_FUNCTION_ARGS)
{
	PurchaseState *st;
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {0};
	int32		first,
				last;
	int			days = 0,
				i;
	double		repeat_amount = 0.0;
	bool		sorted = true;
	Purchase   *pairs;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	st = (PurchaseState *) PG_GETARG_POINTER(0);
	if (st->n == 0)
		PG_RETURN_NULL();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "crm.purchase_summary must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);

	/*
	 * Sums in (day, amount) order, whatever order the rows came in: a sum
	 * of doubles depends on its order, and the same purchases must give
	 * the same summary on one node and on a Citus shard, which read them
	 * in another order.
	 */
	pairs = palloc(sizeof(Purchase) * st->n);
	for (i = 0; i < st->n; i++)
	{
		pairs[i].day = st->day[i];
		pairs[i].amount = st->amount[i];
		if (i > 0 && cmp_purchase(&pairs[i - 1], &pairs[i]) > 0)
			sorted = false;
	}
	if (!sorted)
		qsort(pairs, st->n, sizeof(Purchase), cmp_purchase);
	first = pairs[0].day;
	last = pairs[st->n - 1].day;
	for (i = 0; i < st->n; i++)
	{
		if (i == 0 || pairs[i].day != pairs[i - 1].day)
			days++;
		if (pairs[i].day != first)
			repeat_amount += pairs[i].amount;
	}
	pfree(pairs);
	values[0] = Int32GetDatum(days);
	values[1] = DateADTGetDatum(first);
	values[2] = DateADTGetDatum(last);
	values[3] = Float8GetDatum(repeat_amount);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
