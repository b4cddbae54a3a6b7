/*
 * clv_models.c
 *		Log-likelihoods, gradients and scoring formulas of the "buy till you
 *		die" models: BG/NBD (Fader, Hardie & Lee 2005), MBG/NBD (Batislam,
 *		Denizel & Filiztekin 2007), Pareto/NBD (Schmittlein, Morrison &
 *		Colombo 1987, in the form of Fader & Hardie's 2005 note) and
 *		Gamma-Gamma spend (Fader, Hardie & Lee 2005, "RFM and CLV").
 *
 * Everything is computed in log space.  Terms that depend only on the
 * frequency x are computed once per distinct x, so a fit touches each
 * summary row with two or three logarithms per evaluation.  The Gauss
 * hypergeometric function is summed in whichever of its two Euler forms has
 * decaying terms, which keeps every term finite and positive for the
 * arguments these models produce.
 */
#include "postgres.h"

#include <math.h>

#include "clv_models.h"

/*
 * Hypergeometric series length caps: a fit gives up on a parameter region
 * whose series crawl (the optimiser then steers away); scoring, once per
 * customer, may sum long series for far horizons.
 */
#define FIT_MAX_TERMS 20000
#define SCORE_MAX_TERMS 5000000

static const char *const bg_names[] = {"r", "alpha", "a", "b"};
static const char *const pnbd_names[] = {"r", "alpha", "s", "beta"};
static const char *const gg_names[] = {"p", "q", "v"};

int
clv_model_nparams(ClvModelKind kind)
{
	return kind == CLV_GAMMAGAMMA ? 3 : 4;
}

const char *
clv_model_name(ClvModelKind kind)
{
	switch (kind)
	{
		case CLV_BGNBD:
			return "bgnbd";
		case CLV_MBGNBD:
			return "mbgnbd";
		case CLV_PARETONBD:
			return "paretonbd";
		case CLV_GAMMAGAMMA:
			return "gammagamma";
	}
	return "?";
}

const char *const *
clv_model_param_names(ClvModelKind kind)
{
	switch (kind)
	{
		case CLV_BGNBD:
		case CLV_MBGNBD:
			return bg_names;
		case CLV_PARETONBD:
			return pnbd_names;
		case CLV_GAMMAGAMMA:
			return gg_names;
	}
	return bg_names;
}

bool
clv_model_from_name(const char *name, ClvModelKind *kind)
{
	if (strcmp(name, "bgnbd") == 0)
		*kind = CLV_BGNBD;
	else if (strcmp(name, "mbgnbd") == 0)
		*kind = CLV_MBGNBD;
	else if (strcmp(name, "paretonbd") == 0)
		*kind = CLV_PARETONBD;
	else if (strcmp(name, "gammagamma") == 0)
		*kind = CLV_GAMMAGAMMA;
	else
		return false;
	return true;
}

/* ------------------------------------------------------------------------
 * Special functions
 * ------------------------------------------------------------------------ */

/* Digamma for x > 0: recurrence up to 6, then the asymptotic series. */
static double
clv_digamma(double x)
{
	double		acc = 0.0;
	double		inv,
				inv2;

	if (!(x > 0.0))
		return NAN;
	while (x < 6.0)
	{
		acc -= 1.0 / x;
		x += 1.0;
	}
	inv = 1.0 / x;
	inv2 = inv * inv;
	return acc + log(x) - 0.5 * inv
		- inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 * (1.0 / 132)))));
}

/*
 * log 2F1(a, b; c; z) for 0 <= z < 1 and c > 0.  When a + b - c > 0 the
 * Euler transformation 2F1(a,b;c;z) = (1-z)^(c-a-b) 2F1(c-a,c-b;c;z) gives a
 * series whose terms decay even as z approaches 1.  *ok is false when the
 * series does not settle (then the caller reports an error).
 */
static double
clv_log_hyp2f1(double a, double b, double c, double z, int max_terms, bool *ok)
{
	double		pre = 0.0;
	double		sum = 1.0,
				term = 1.0;
	int			n;

	*ok = true;
	if (z == 0.0)
		return 0.0;
	if (!(z > 0.0 && z < 1.0 && c > 0.0))
	{
		*ok = false;
		return NAN;
	}
	if (a + b - c > 0.0)
	{
		double		na = c - a,
					nb = c - b;

		pre = (c - a - b) * log1p(-z);
		a = na;
		b = nb;
	}
	for (n = 0; n < max_terms; n++)
	{
		double		ratio = (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;

		term *= ratio;
		sum += term;
		if (!isfinite(sum))
			break;
		if (fabs(ratio) < 1.0 && fabs(term) <= 1e-17 * fabs(sum) * (1.0 - fabs(ratio)))
			return sum > 0.0 ? pre + log(sum) : (*ok = false, NAN);
		if (term == 0.0)
			return sum > 0.0 ? pre + log(sum) : (*ok = false, NAN);
	}
	*ok = false;
	return NAN;
}

static inline double
logaddexp(double u, double v)
{
	double		m = u > v ? u : v;

	if (m == -HUGE_VAL)
		return -HUGE_VAL;
	return m + log(exp(u - m) + exp(v - m));
}

/* ------------------------------------------------------------------------
 * Data preparation
 * ------------------------------------------------------------------------ */

static int
cmp_double(const void *pa, const void *pb)
{
	double		a = *(const double *) pa,
				b = *(const double *) pb;

	return a < b ? -1 : (a > b ? 1 : 0);
}

/* Index of v in the sorted array vals (which holds it). */
static int
find_value(const double *vals, int n, double v)
{
	int			lo = 0,
				hi = n - 1;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (vals[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Fills the derived columns of the summary (logs, sorted distinct values) the likelihoods read. */
void
clv_data_prepare(ClvData *d)
{
	double	   *sorted;
	int			i,
				j;

	d->total_weight = 0.0;
	d->gg_xlogm = d->gg_logm = d->gg_xlogx = 0.0;
	sorted = palloc(sizeof(double) * Max(d->n, 1));
	for (i = 0; i < d->n; i++)
	{
		sorted[i] = d->x[i];
		d->total_weight += d->w[i];
	}
	qsort(sorted, d->n, sizeof(double), cmp_double);
	d->nx = 0;
	d->xval = palloc(sizeof(double) * Max(d->n, 1));
	for (i = 0; i < d->n; i++)
		if (d->nx == 0 || sorted[i] != d->xval[d->nx - 1])
			d->xval[d->nx++] = sorted[i];
	pfree(sorted);
	d->xw = palloc0(sizeof(double) * Max(d->nx, 1));
	d->xs1 = palloc0(sizeof(double) * Max(d->nx, 1));
	d->xs2 = palloc0(sizeof(double) * Max(d->nx, 1));
	/* distinct times */
	sorted = palloc(sizeof(double) * Max(2 * d->n, 1));
	for (i = 0; i < d->n; i++)
	{
		sorted[2 * i] = d->T[i];
		sorted[2 * i + 1] = d->tx[i];
	}
	qsort(sorted, 2 * d->n, sizeof(double), cmp_double);
	d->nt = 0;
	d->tval = palloc(sizeof(double) * Max(2 * d->n, 1));
	for (i = 0; i < 2 * d->n; i++)
		if (d->nt == 0 || sorted[i] != d->tval[d->nt - 1])
			d->tval[d->nt++] = sorted[i];
	pfree(sorted);
	d->tlog = palloc0(sizeof(double) * Max(d->nt, 1));
	d->tinv = palloc0(sizeof(double) * Max(d->nt, 1));
	d->iT = palloc(sizeof(int) * Max(d->n, 1));
	d->itx = palloc(sizeof(int) * Max(d->n, 1));
	for (i = 0; i < d->n; i++)
	{
		d->iT[i] = find_value(d->tval, d->nt, d->T[i]);
		d->itx[i] = find_value(d->tval, d->nt, d->tx[i]);
	}
	d->xidx = palloc(sizeof(int) * Max(d->n, 1));
	for (i = 0; i < d->n; i++)
	{
		/* binary search: xval is sorted and holds every x */
		int			lo = 0,
					hi = d->nx - 1;

		while (lo < hi)
		{
			j = (lo + hi) / 2;
			if (d->xval[j] < d->x[i])
				lo = j + 1;
			else
				hi = j;
		}
		d->xidx[i] = lo;
		d->xw[lo] += d->w[i];
		if (d->x[i] > 0.0 && d->tx[i] > 0.0)
		{
			d->gg_xlogm += d->w[i] * d->x[i] * log(d->tx[i]);
			d->gg_logm += d->w[i] * log(d->tx[i]);
			d->gg_xlogx += d->w[i] * d->x[i] * log(d->x[i]);
		}
	}
}

/* ------------------------------------------------------------------------
 * Log-likelihoods
 * ------------------------------------------------------------------------ */

/* BG/NBD (k = 0) and MBG/NBD (k = 1) share one form. */
static double
bg_loglik(const ClvData *d, const double *p, int k, double *grad)
{
	double		r = p[0],
				alpha = p[1],
				a = p[2],
				b = p[3];
	double		la = log(a),
				lalpha = log(alpha);
	double		ll = 0.0;
	double		g_r = 0.0,
				g_alpha = 0.0,
				g_a = 0.0,
				g_b = 0.0;
	double		lg_ab = lgamma(a + b),
				lg_b = lgamma(b),
				lg_r = lgamma(r);
	double		psi_ab = 0.0,
				psi_b = 0.0,
				psi_r = 0.0;
	int			i;

	if (grad)
	{
		psi_ab = clv_digamma(a + b);
		psi_b = clv_digamma(b);
		psi_r = clv_digamma(r);
	}
	/* terms of the frequency alone */
	for (i = 0; i < d->nx; i++)
	{
		double		x = d->xval[i],
					W = d->xw[i];

		ll += W * (lgamma(r + x) - lg_r + lgamma(b + x + k) - lgamma(a + b + x + k) + lg_ab - lg_b);
		d->xs1[i] = log(b + x + k - 1);
		d->xs2[i] = 1.0 / (b + x + k - 1);
		if (grad)
		{
			double		psi_abxk = clv_digamma(a + b + x + k);

			g_r += W * (clv_digamma(r + x) - psi_r);
			g_a += W * (psi_ab - psi_abxk);
			g_b += W * (psi_ab - psi_b + clv_digamma(b + x + k) - psi_abxk);
		}
	}
	ll += d->total_weight * r * lalpha;
	if (grad)
	{
		g_r += d->total_weight * lalpha;
		g_alpha += d->total_weight * r / alpha;
	}
	for (i = 0; i < d->nt; i++)
	{
		d->tlog[i] = log(alpha + d->tval[i]);
		d->tinv[i] = 1.0 / (alpha + d->tval[i]);
	}
	for (i = 0; i < d->n; i++)
	{
		double		x = d->x[i],
					w = d->w[i];
		int			iT = d->iT[i];
		double		lT = d->tlog[iT];
		double		A3 = -(r + x) * lT;

		if (k == 1 || x > 0.0)
		{
			int			xi = d->xidx[i];
			int			itx = d->itx[i];
			double		ltx = d->tlog[itx];
			double		A4 = la - d->xs1[xi] - (r + x) * ltx;
			double		dif = A4 - A3;
			double		e = exp(-fabs(dif));

			ll += w * ((dif > 0 ? A4 : A3) + log1p(e));
			if (grad)
			{
				double		pbig = 1.0 / (1.0 + e),
							psmall = e * pbig;
				double		p3 = dif > 0 ? psmall : pbig,
							p4 = dif > 0 ? pbig : psmall;

				g_r -= w * (p3 * lT + p4 * ltx);
				g_alpha -= w * (r + x) * (p3 * d->tinv[iT] + p4 * d->tinv[itx]);
				g_a += w * p4 / a;
				g_b -= w * p4 * d->xs2[xi];
			}
		}
		else
		{
			ll += w * A3;
			if (grad)
			{
				g_r -= w * lT;
				g_alpha -= w * (r + x) * d->tinv[iT];
			}
		}
	}
	if (grad)
	{
		grad[0] = g_r * r;
		grad[1] = g_alpha * alpha;
		grad[2] = g_a * a;
		grad[3] = g_b * b;
	}
	return ll;
}

/* log A_0 of the Pareto/NBD likelihood (Fader & Hardie 2005, note). */
static double
pnbd_log_a0(const double *p, double x, double tx, double T, int max_terms, bool *ok)
{
	double		r = p[0],
				alpha = p[1],
				s = p[2],
				beta = p[3];
	double		mx,
				b2,
				dif,
				rsx = r + s + x;
	double		l1,
				l2;
	bool		ok1,
				ok2;

	if (alpha >= beta)
	{
		mx = alpha;
		b2 = s + 1.0;
		dif = alpha - beta;
	}
	else
	{
		mx = beta;
		b2 = r + x;
		dif = beta - alpha;
	}
	l1 = clv_log_hyp2f1(rsx, b2, rsx + 1.0, dif / (mx + tx), max_terms, &ok1) - rsx * log(mx + tx);
	l2 = clv_log_hyp2f1(rsx, b2, rsx + 1.0, dif / (mx + T), max_terms, &ok2) - rsx * log(mx + T);
	*ok = ok1 && ok2;
	if (!(l1 > l2))
		return -HUGE_VAL;
	return l1 + log1p(-exp(l2 - l1));
}

static double
pnbd_loglik(const ClvData *d, const double *p, bool *ok)
{
	double		r = p[0],
				alpha = p[1],
				s = p[2],
				beta = p[3];
	double		ll = 0.0;
	double		lg_r = lgamma(r);
	int			i;

	*ok = true;
	for (i = 0; i < d->nx; i++)
		ll += d->xw[i] * (lgamma(r + d->xval[i]) - lg_r);
	ll += d->total_weight * (r * log(alpha) + s * log(beta));
	for (i = 0; i < d->n; i++)
	{
		double		x = d->x[i];
		double		first = -(r + x) * log(alpha + d->T[i]) - s * log(beta + d->T[i]);
		double		la0 = pnbd_log_a0(p, x, d->tx[i], d->T[i], FIT_MAX_TERMS, ok);
		double		second = log(s) - log(r + s + x) + la0;

		if (!*ok)
			return -HUGE_VAL;
		ll += d->w[i] * logaddexp(first, second);
	}
	return ll;
}

/* Gamma-Gamma log-likelihood of the repeat customers' mean spend, with its gradient in log-parameters. */
static double
gg_loglik(const ClvData *d, const double *p, double *grad)
{
	double		pp = p[0],
				q = p[1],
				v = p[2];
	double		ll = 0.0,
				lv = log(v),
				lg_q = lgamma(q);
	double		g_p = 0.0,
				g_q = 0.0,
				g_v = 0.0,
				psi_q = 0.0;
	int			i;

	if (grad)
		psi_q = clv_digamma(q);
	for (i = 0; i < d->nx; i++)
	{
		double		x = d->xval[i],
					W = d->xw[i];

		ll += W * (lgamma(pp * x + q) - lgamma(pp * x) - lg_q + q * lv);
		if (grad)
		{
			double		psi_pxq = clv_digamma(pp * x + q);

			g_p += W * x * (psi_pxq - clv_digamma(pp * x));
			g_q += W * (psi_pxq - psi_q + lv);
			g_v += W * q / v;
		}
	}
	ll += pp * d->gg_xlogm - d->gg_logm + pp * d->gg_xlogx;
	if (grad)
		g_p += d->gg_xlogm + d->gg_xlogx;
	for (i = 0; i < d->n; i++)
	{
		double		x = d->x[i],
					w = d->w[i];
		double		u = x * d->tx[i] + v;
		double		lu = log(u);

		ll -= w * (pp * x + q) * lu;
		if (grad)
		{
			g_p -= w * x * lu;
			g_q -= w * lu;
			g_v -= w * (pp * x + q) / u;
		}
	}
	if (grad)
	{
		grad[0] = g_p * pp;
		grad[1] = g_q * q;
		grad[2] = g_v * v;
	}
	return ll;
}

/* Log-likelihood of a model (and its gradient where it has an analytic one) at log-parameters. */
double
clv_loglik(ClvModelKind kind, const ClvData *d, const double *params,
		   double *grad, bool *have_grad)
{
	double		ll;
	int			i,
				np = clv_model_nparams(kind);
	bool		ok = true;

	*have_grad = false;
	for (i = 0; i < np; i++)
		if (!(params[i] > 0.0 && isfinite(params[i])))
			return -HUGE_VAL;
	switch (kind)
	{
		case CLV_BGNBD:
		case CLV_MBGNBD:
			ll = bg_loglik(d, params, kind == CLV_MBGNBD ? 1 : 0, grad);
			*have_grad = grad != NULL;
			break;
		case CLV_PARETONBD:
			ll = pnbd_loglik(d, params, &ok);
			break;
		case CLV_GAMMAGAMMA:
			ll = gg_loglik(d, params, grad);
			*have_grad = grad != NULL;
			break;
		default:
			ll = NAN;
	}
	if (!ok || !isfinite(ll))
	{
		*have_grad = false;
		return -HUGE_VAL;
	}
	if (*have_grad)
		for (i = 0; i < np; i++)
			if (!isfinite(grad[i]))
			{
				*have_grad = false;
				return -HUGE_VAL;
			}
	return ll;
}

/* ------------------------------------------------------------------------
 * Scoring.  Callers check inputs; results are NaN when a series fails.
 * ------------------------------------------------------------------------ */

/* a = 1 makes (a+b-1)/(a-1) singular; the limit is smooth, so step aside. */
static inline double
away_from_one(double a)
{
	if (fabs(a - 1.0) < 1e-7)
		return a < 1.0 ? 1.0 - 1e-7 : 1.0 + 1e-7;
	return a;
}

double
clv_p_alive(ClvModelKind kind, const double *p, double x, double tx, double T)
{
	double		r = p[0],
				alpha = p[1];

	switch (kind)
	{
		case CLV_BGNBD:
			if (x <= 0.0)
				return 1.0;
			return 1.0 / (1.0 + exp(log(p[2]) - log(p[3] + x - 1.0)
									+ (r + x) * (log(alpha + T) - log(alpha + tx))));
		case CLV_MBGNBD:
			return 1.0 / (1.0 + exp(log(p[2]) - log(p[3] + x)
									+ (r + x) * (log(alpha + T) - log(alpha + tx))));
		case CLV_PARETONBD:
			{
				double		s = p[2],
							beta = p[3];
				bool		ok;
				double		la0 = pnbd_log_a0(p, x, tx, T, SCORE_MAX_TERMS, &ok);

				if (!ok)
					return NAN;
				return 1.0 / (1.0 + exp(log(s) - log(r + s + x) + (r + x) * log(alpha + T)
										+ s * log(beta + T) + la0));
			}
		default:
			return NAN;
	}
}

/* Expected purchases in the next t periods of a customer with history (x, tx, T). */
double
clv_expected_conditional(ClvModelKind kind, const double *p, double t,
						 double x, double tx, double T)
{
	double		r = p[0],
				alpha = p[1];
	bool		ok;

	if (t == 0.0)
		return 0.0;
	switch (kind)
	{
		case CLV_BGNBD:
		case CLV_MBGNBD:
			{
				int			k = kind == CLV_MBGNBD ? 1 : 0;
				double		a = away_from_one(p[2]),
							b = p[3];
				double		lh = clv_log_hyp2f1(r + x, b + x + k, a + b + x - 1 + k,
												t / (alpha + T + t), SCORE_MAX_TERMS, &ok);
				double		first = (a + b + x - 1 + k) / (a - 1);
				double		second = -expm1(lh + (r + x) * (log(alpha + T) - log(alpha + T + t)));

				if (!ok)
					return NAN;
				return first * second * clv_p_alive(kind, p, x, tx, T);
			}
		case CLV_PARETONBD:
			{
				double		s = p[2],
							beta = p[3];
				double		pa = clv_p_alive(kind, p, x, tx, T);
				double		f;

				if (fabs(s - 1.0) < 1e-9)
					f = log((beta + T + t) / (beta + T));
				else
					f = -expm1((s - 1.0) * (log(beta + T) - log(beta + T + t))) / (s - 1.0);
				return (r + x) * (beta + T) / (alpha + T) * f * pa;
			}
		default:
			return NAN;
	}
}

double
clv_expected_unconditional(ClvModelKind kind, const double *p, double t)
{
	double		r = p[0],
				alpha = p[1];
	bool		ok;

	if (t == 0.0)
		return 0.0;
	switch (kind)
	{
		case CLV_BGNBD:
		case CLV_MBGNBD:
			{
				int			k = kind == CLV_MBGNBD ? 1 : 0;
				double		a = away_from_one(p[2]),
							b = p[3];
				double		lh = clv_log_hyp2f1(r, b + k, a + b - 1 + k, t / (alpha + t), SCORE_MAX_TERMS, &ok);

				if (!ok)
					return NAN;
				return (a + b - 1 + k - (double) k * a) / (a - 1)
					* -expm1(lh + r * (log(alpha) - log(alpha + t)));
			}
		case CLV_PARETONBD:
			{
				double		s = p[2],
							beta = p[3];
				double		f;

				if (fabs(s - 1.0) < 1e-9)
					f = log((beta + t) / beta);
				else
					f = -expm1((s - 1.0) * (log(beta) - log(beta + t))) / (s - 1.0);
				return r * beta / alpha * f;
			}
		default:
			return NAN;
	}
}

/* Gamma-Gamma: expected mean spend of a customer with x repeat purchases of mean m. */
double
clv_expected_spend(const double *p, double x, double m)
{
	double		pp = p[0],
				q = p[1],
				v = p[2];

	return pp * (v + x * m) / (pp * x + q - 1.0);
}
