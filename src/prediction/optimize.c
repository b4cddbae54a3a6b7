/*
 * optimize.c
 *		A small, deterministic optimiser for maximum-likelihood fits on
 *		log-parameters.  Each start is first improved by Nelder-Mead (robust
 *		far from the optimum, needs no gradient); the best point then goes to
 *		BFGS with an Armijo backtracking line search, which converges fast,
 *		and Newton steps with a finite-difference Hessian finish the job where
 *		the objective is too flat for BFGS to tell points apart.  When a cheap
 *		screening objective (a subsample) is given, each start is taken close
 *		to its optimum there before the full data are touched.  If BFGS stalls
 *		away from a stationary point it restarts from the identity Hessian,
 *		then from the next best start.  The caller decides what
 *		non-convergence means.
 */
#include "postgres.h"

#include <math.h>

#include "miscadmin.h"

#include "optimize.h"

typedef struct OptState
{
	opt_fn		fn;
	void	   *ctx;
	int			k;
	int			evals;
	int			budget;			/* stop iterating past this many evaluations */
} OptState;

static double
eval(OptState *s, const double *x, double *grad)
{
	bool		have = false;
	double		f;
	int			i;

	CHECK_FOR_INTERRUPTS();
	s->evals++;
	f = s->fn(x, grad, &have, s->ctx);
	if (isnan(f))
		f = HUGE_VAL;
	if (grad && !have && f < HUGE_VAL)
	{
		/* central differences */
		double		xp[OPT_MAX_DIM];

		for (i = 0; i < s->k; i++)
			xp[i] = x[i];
		for (i = 0; i < s->k; i++)
		{
			double		h = 1e-5 * Max(1.0, fabs(x[i]));
			double		fp,
						fm;

			xp[i] = x[i] + h;
			fp = s->fn(xp, NULL, &have, s->ctx);
			xp[i] = x[i] - h;
			fm = s->fn(xp, NULL, &have, s->ctx);
			xp[i] = x[i];
			s->evals += 2;
			if (!(fp < HUGE_VAL && fm < HUGE_VAL))
				return HUGE_VAL;
			grad[i] = (fp - fm) / (2 * h);
		}
	}
	return f;
}

/* Nelder-Mead on s->fn from x0; writes the best vertex to x0, returns its value. */
static double
nelder_mead(OptState *s, double *x0, int maxevals)
{
	int			k = s->k,
				i,
				j;
	double		simplex[OPT_MAX_DIM + 1][OPT_MAX_DIM];
	double		fv[OPT_MAX_DIM + 1];
	int			start = s->evals;

	for (i = 0; i <= k; i++)
	{
		for (j = 0; j < k; j++)
			simplex[i][j] = x0[j] + (i == j + 1 ? 0.5 : 0.0);
		fv[i] = eval(s, simplex[i], NULL);
	}
	while (s->evals - start < maxevals)
	{
		int			lo = 0,
					hi = 0,
					nh = 0;
		double		cen[OPT_MAX_DIM],
					xr[OPT_MAX_DIM],
					xe[OPT_MAX_DIM],
					fr,
					fe;

		for (i = 1; i <= k; i++)
		{
			if (fv[i] < fv[lo])
				lo = i;
			if (fv[i] > fv[hi])
				hi = i;
		}
		nh = lo;
		for (i = 0; i <= k; i++)
			if (i != hi && fv[i] >= fv[nh])
				nh = i;
		if (fv[hi] < HUGE_VAL && fabs(fv[hi] - fv[lo]) <= 1e-12 * (fabs(fv[lo]) + 1e-12))
			break;
		for (j = 0; j < k; j++)
		{
			cen[j] = 0.0;
			for (i = 0; i <= k; i++)
				if (i != hi)
					cen[j] += simplex[i][j];
			cen[j] /= k;
			xr[j] = cen[j] + (cen[j] - simplex[hi][j]);
		}
		fr = eval(s, xr, NULL);
		if (fr < fv[lo])
		{
			for (j = 0; j < k; j++)
				xe[j] = cen[j] + 2.0 * (cen[j] - simplex[hi][j]);
			fe = eval(s, xe, NULL);
			if (fe < fr)
			{
				memcpy(simplex[hi], xe, sizeof(double) * k);
				fv[hi] = fe;
			}
			else
			{
				memcpy(simplex[hi], xr, sizeof(double) * k);
				fv[hi] = fr;
			}
		}
		else if (fr < fv[nh])
		{
			memcpy(simplex[hi], xr, sizeof(double) * k);
			fv[hi] = fr;
		}
		else
		{
			double		xc[OPT_MAX_DIM],
						fc;

			for (j = 0; j < k; j++)
				xc[j] = cen[j] + 0.5 * (simplex[hi][j] - cen[j]);
			fc = eval(s, xc, NULL);
			if (fc < fv[hi])
			{
				memcpy(simplex[hi], xc, sizeof(double) * k);
				fv[hi] = fc;
			}
			else
			{
				/* shrink towards the best vertex */
				for (i = 0; i <= k; i++)
					if (i != lo)
					{
						for (j = 0; j < k; j++)
							simplex[i][j] = simplex[lo][j] + 0.5 * (simplex[i][j] - simplex[lo][j]);
						fv[i] = eval(s, simplex[i], NULL);
					}
			}
		}
	}
	j = 0;
	for (i = 1; i <= k; i++)
		if (fv[i] < fv[j])
			j = i;
	memcpy(x0, simplex[j], sizeof(double) * k);
	return fv[j];
}

static double
max_abs(const double *g, int k)
{
	double		m = 0.0;
	int			i;

	for (i = 0; i < k; i++)
		m = Max(m, fabs(g[i]));
	return m;
}

/* BFGS from x (updated in place).  Returns the value; sets *gnorm, *iters. */
static double
bfgs(OptState *s, double *x, double gtol, double *gnorm, int *iters, bool *converged)
{
	int			k = s->k,
				i,
				j,
				it;
	double		H[OPT_MAX_DIM][OPT_MAX_DIM];
	double		g[OPT_MAX_DIM],
				gn[OPT_MAX_DIM],
				d[OPT_MAX_DIM],
				xn[OPT_MAX_DIM],
				sv[OPT_MAX_DIM],
				y[OPT_MAX_DIM];
	double		f,
				fn = 0;
	bool		fresh = true;
	int			small_steps = 0;

	*converged = false;
	f = eval(s, x, g);
	if (!(f < HUGE_VAL))
	{
		*gnorm = HUGE_VAL;
		*iters = 0;
		return f;
	}
	for (i = 0; i < k; i++)
		for (j = 0; j < k; j++)
			H[i][j] = i == j ? 1.0 : 0.0;
	for (it = 0; it < 500 && s->evals < s->budget; it++)
	{
		double		slope = 0.0,
					step = 1.0,
					sy = 0.0;
		bool		accepted = false;

		*gnorm = max_abs(g, k);
		if (*gnorm < gtol)
		{
			*converged = true;
			break;
		}
		for (i = 0; i < k; i++)
		{
			d[i] = 0.0;
			for (j = 0; j < k; j++)
				d[i] -= H[i][j] * g[j];
			slope += d[i] * g[i];
		}
		if (slope >= 0.0)
		{
			/* not a descent direction: fall back to steepest descent */
			for (i = 0; i < k; i++)
			{
				d[i] = -g[i];
				for (j = 0; j < k; j++)
					H[i][j] = i == j ? 1.0 : 0.0;
			}
			slope = 0.0;
			for (i = 0; i < k; i++)
				slope -= g[i] * g[i];
			fresh = true;
		}
		/* keep steps in log-parameters moderate */
		{
			double		dm = max_abs(d, k);

			if (dm > 2.0)
				step = 2.0 / dm;
		}
		for (j = 0; j < 60; j++)
		{
			for (i = 0; i < k; i++)
				xn[i] = x[i] + step * d[i];
			fn = eval(s, xn, gn);
			if (fn < HUGE_VAL && fn <= f + 1e-4 * step * slope)
			{
				accepted = true;
				break;
			}
			step *= 0.5;
		}
		if (!accepted)
		{
			if (fresh)
				break;			/* no progress even along the gradient */
			for (i = 0; i < k; i++)
				for (j = 0; j < k; j++)
					H[i][j] = i == j ? 1.0 : 0.0;
			fresh = true;
			continue;
		}
		fresh = false;
		for (i = 0; i < k; i++)
		{
			sv[i] = xn[i] - x[i];
			y[i] = gn[i] - g[i];
			sy += sv[i] * y[i];
		}
		if (f - fn <= 1e-11 * (fabs(f) + 1e-300))
			small_steps++;
		else
			small_steps = 0;
		memcpy(x, xn, sizeof(double) * k);
		memcpy(g, gn, sizeof(double) * k);
		f = fn;
		if (small_steps >= 2)
		{
			/* the objective is flat to 11 digits: done, if also nearly stationary */
			*gnorm = max_abs(g, k);
			*converged = *gnorm < 1e-6;
			break;
		}
		if (sy > 1e-300)
		{
			double		Hy[OPT_MAX_DIM],
						yHy = 0.0;

			if (it == 0)
			{
				/* scale the first Hessian guess */
				double		yy = 0.0;

				for (i = 0; i < k; i++)
					yy += y[i] * y[i];
				for (i = 0; i < k; i++)
					H[i][i] = sy / yy;
			}
			for (i = 0; i < k; i++)
			{
				Hy[i] = 0.0;
				for (j = 0; j < k; j++)
					Hy[i] += H[i][j] * y[j];
				yHy += y[i] * Hy[i];
			}
			for (i = 0; i < k; i++)
				for (j = 0; j < k; j++)
					H[i][j] += (sy + yHy) * sv[i] * sv[j] / (sy * sy)
						- (Hy[i] * sv[j] + sv[i] * Hy[j]) / sy;
		}
	}
	*gnorm = max_abs(g, k);
	if (*gnorm < gtol)
		*converged = true;
	*iters = it;
	return f;
}


/*
 * Newton polish: Hessian from central differences of the gradient, damped
 * until positive definite.  Near the optimum, where the objective can no
 * longer tell points apart in double precision, the gradient norm decides
 * whether a step is accepted; the fit has converged when the Newton step in
 * log-parameters is below 1e-7 (parameters stable to that relative amount)
 * or the gradient is below gtol.
 */
static bool
newton_polish(OptState *s, double *x, double *f, double gtol, double *gnorm, int *iters)
{
	int			k = s->k,
				i,
				j,
				it;
	double		g[OPT_MAX_DIM];

	*f = eval(s, x, g);
	if (!(*f < HUGE_VAL))
		return false;
	*gnorm = max_abs(g, k);
	for (it = 0; it < 12 && s->evals < s->budget; it++)
	{
		double		H[OPT_MAX_DIM][OPT_MAX_DIM],
					L[OPT_MAX_DIM][OPT_MAX_DIM];
		double		gp[OPT_MAX_DIM],
					gm[OPT_MAX_DIM],
					xp[OPT_MAX_DIM],
					d[OPT_MAX_DIM],
					y[OPT_MAX_DIM];
		double		mu = 0.0,
					dmax,
					step = 1.0;
		bool		chol_ok = false,
					accepted = false;

		(*iters)++;
		if (*gnorm < gtol)
			return true;
		memcpy(xp, x, sizeof(double) * k);
		for (j = 0; j < k; j++)
		{
			double		h = 1e-4;

			xp[j] = x[j] + h;
			if (!(eval(s, xp, gp) < HUGE_VAL))
				return false;
			xp[j] = x[j] - h;
			if (!(eval(s, xp, gm) < HUGE_VAL))
				return false;
			xp[j] = x[j];
			for (i = 0; i < k; i++)
				H[i][j] = (gp[i] - gm[i]) / (2 * h);
		}
		for (i = 0; i < k; i++)
			for (j = 0; j < i; j++)
				H[i][j] = H[j][i] = 0.5 * (H[i][j] + H[j][i]);
		/* Cholesky of H + mu I, raising mu until it succeeds */
		for (int attempt = 0; attempt < 40 && !chol_ok; attempt++)
		{
			chol_ok = true;
			for (i = 0; i < k && chol_ok; i++)
				for (j = 0; j <= i; j++)
				{
					double		sum = H[i][j] + (i == j ? mu : 0.0);
					int			m;

					for (m = 0; m < j; m++)
						sum -= L[i][m] * L[j][m];
					if (i == j)
					{
						if (!(sum > 0.0))
						{
							chol_ok = false;
							break;
						}
						L[i][i] = sqrt(sum);
					}
					else
						L[i][j] = sum / L[j][j];
				}
			if (!chol_ok)
				mu = mu == 0.0 ? 1e-8 : mu * 10.0;
		}
		if (!chol_ok)
			return false;
		/* solve L L' d = -g */
		for (i = 0; i < k; i++)
		{
			double		sum = -g[i];

			for (j = 0; j < i; j++)
				sum -= L[i][j] * y[j];
			y[i] = sum / L[i][i];
		}
		for (i = k - 1; i >= 0; i--)
		{
			double		sum = y[i];

			for (j = i + 1; j < k; j++)
				sum -= L[j][i] * d[j];
			d[i] = sum / L[i][i];
		}
		dmax = max_abs(d, k);
		if (dmax > 1.0)
			step = 1.0 / dmax;
		for (j = 0; j < 30; j++)
		{
			double		gn[OPT_MAX_DIM],
						fn;

			for (i = 0; i < k; i++)
				xp[i] = x[i] + step * d[i];
			fn = eval(s, xp, gn);
			if (fn < HUGE_VAL && (fn < *f - 1e-14 * fabs(*f) || max_abs(gn, k) < *gnorm))
			{
				memcpy(x, xp, sizeof(double) * k);
				memcpy(g, gn, sizeof(double) * k);
				*f = fn;
				*gnorm = max_abs(gn, k);
				accepted = true;
				break;
			}
			step *= 0.5;
		}
		if (mu == 0.0 && dmax * step < 1e-7 && step == 1.0)
			return true;
		if (!accepted)
			return mu == 0.0 && dmax < 1e-6;
	}
	return *gnorm < gtol;
}

/* Minimises fn: Nelder-Mead from each start (screened on a subsample), then BFGS and Newton steps. */
void
opt_minimize(opt_fn fn, void *ctx, opt_fn screen_fn, void *screen_ctx,
			 int k, const double *starts, int nstarts, double gtol,
			 OptResult *res)
{
	OptState	full = {fn, ctx, k, 0, 150};
	OptState	screen = {screen_fn, screen_ctx, k, 0, 1000000};
	double		pts[16][OPT_MAX_DIM];
	double		vals[16];
	int			order[16];
	int			i,
				j,
				tries;

	Assert(k <= OPT_MAX_DIM && nstarts <= 16 && nstarts >= 1);
	for (i = 0; i < nstarts; i++)
	{
		memcpy(pts[i], starts + i * k, sizeof(double) * k);
		vals[i] = nelder_mead(&screen, pts[i], 150 * k);
		order[i] = i;
	}
	/* rank starts by screened value (insertion sort, stable) */
	for (i = 1; i < nstarts; i++)
		for (j = i; j > 0 && vals[order[j]] < vals[order[j - 1]]; j--)
		{
			int			t = order[j];

			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	res->converged = false;
	res->value = HUGE_VAL;
	res->grad_norm = HUGE_VAL;
	res->iterations = 0;
	for (tries = 0; tries < Min(nstarts, 3); tries++)
	{
		double		x[OPT_MAX_DIM],
					gnorm,
					f;
		int			iters;
		bool		conv;

		memcpy(x, pts[order[tries]], sizeof(double) * k);
		if (!(vals[order[tries]] < HUGE_VAL))
			break;
		if (screen_ctx != ctx)
		{
			/* get close on the subsample, where evaluations are cheap */
			f = bfgs(&screen, x, gtol, &gnorm, &iters, &conv);
			if (f < HUGE_VAL)
				(void) newton_polish(&screen, x, &f, gtol, &gnorm, &iters);
		}
		f = bfgs(&full, x, gtol, &gnorm, &iters, &conv);
		if (f < HUGE_VAL)
			conv = newton_polish(&full, x, &f, gtol, &gnorm, &iters) || conv;
		if (f < res->value || (conv && !res->converged))
		{
			memcpy(res->theta, x, sizeof(double) * k);
			res->value = f;
			res->grad_norm = gnorm;
			res->iterations = iters;
			res->converged = conv;
		}
		if (res->converged)
			break;
	}
	/*
	 * A likelihood that is flat to double precision along some direction
	 * (typically a parameter running off to a boundary, e.g. no dropout in
	 * the data) leaves a tiny gradient that cannot be reduced further;
	 * below 1e-6 per customer per unit log-parameter it changes no
	 * prediction, so it counts as converged.
	 */
	if (!res->converged && res->grad_norm < 1e-6)
		res->converged = true;
	res->evaluations = full.evals + screen.evals;
}
