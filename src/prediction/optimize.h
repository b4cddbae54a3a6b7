/*
 * optimize.h
 *		Unconstrained minimisation for model fitting: Nelder-Mead screening
 *		from several starts, then BFGS with a backtracking line search.
 */
#ifndef CRM_OPTIMIZE_H
#define CRM_OPTIMIZE_H

#define OPT_MAX_DIM 8

/*
 * Objective: value at theta; when grad is not NULL the function may fill it
 * and set *have_grad (otherwise central differences are used).  Return
 * HUGE_VAL (not NaN) where the objective is undefined.
 */
typedef double (*opt_fn) (const double *theta, double *grad, bool *have_grad, void *ctx);

typedef struct OptResult
{
	double		theta[OPT_MAX_DIM];
	double		value;
	double		grad_norm;		/* max |gradient| at the end */
	int			iterations;		/* BFGS iterations of the final run */
	int			evaluations;	/* objective evaluations, screening included */
	bool		converged;
} OptResult;

/*
 * Minimise fn over R^k.  starts holds nstarts starting points (k values
 * each).  screen_fn/screen_ctx evaluate a cheaper proxy (e.g. a subsample)
 * used only to pick the best start; pass fn/ctx to screen on the full data.
 * gtol: convergence when every gradient component is below it.
 */
extern void opt_minimize(opt_fn fn, void *ctx, opt_fn screen_fn, void *screen_ctx,
						 int k, const double *starts, int nstarts, double gtol,
						 OptResult *res);

#endif							/* CRM_OPTIMIZE_H */
