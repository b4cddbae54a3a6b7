/*
 * clv_models.h
 *		"Buy till you die" models of customer lifetime value: BG/NBD, MBG/NBD,
 *		Pareto/NBD (transactions) and Gamma-Gamma (spend per transaction).
 */
#ifndef CLV_MODELS_H
#define CLV_MODELS_H

typedef enum ClvModelKind
{
	CLV_BGNBD = 0,
	CLV_MBGNBD,
	CLV_PARETONBD,
	CLV_GAMMAGAMMA
} ClvModelKind;

#define CLV_MAX_PARAMS 4

/*
 * A compressed summary: one row per distinct (x, t_x, T) or (x, m), with the
 * number of customers sharing it as weight.  For Gamma-Gamma, tx holds the
 * mean spend per repeat transaction and T is unused.
 */
typedef struct ClvData
{
	int			n;				/* rows */
	double	   *x;
	double	   *tx;
	double	   *T;
	double	   *w;
	double		total_weight;
	/* distinct frequencies and their summed weights, for x-only terms */
	int			nx;
	double	   *xval;
	double	   *xw;
	int		   *xidx;			/* row -> index into xval */
	/* scratch of nx doubles for per-frequency terms */
	double	   *xs1;
	double	   *xs2;
	/* distinct values of T and t_x, and each row's index into them */
	int			nt;
	double	   *tval;
	int		   *iT;
	int		   *itx;
	double	   *tlog;			/* scratch: log(alpha + tval) */
	double	   *tinv;			/* scratch: 1 / (alpha + tval) */
	/* Gamma-Gamma: sum of w*x*log(m), sum of w*log(m), sum of w*x*log(x) */
	double		gg_xlogm;
	double		gg_logm;
	double		gg_xlogx;
} ClvData;

extern int	clv_model_nparams(ClvModelKind kind);
extern const char *clv_model_name(ClvModelKind kind);
extern const char *const *clv_model_param_names(ClvModelKind kind);
extern bool clv_model_from_name(const char *name, ClvModelKind *kind);

/* Prepare derived fields (distinct frequencies, sums) after rows are set. */
extern void clv_data_prepare(ClvData *d);

/*
 * Log-likelihood of the data at params (natural scale).  When grad is not
 * NULL it receives the gradient with respect to log(params), and the return
 * value tells whether it was computed (false: caller uses differences).
 * Returns -HUGE_VAL where the likelihood is not finite.
 */
extern double clv_loglik(ClvModelKind kind, const ClvData *d, const double *params,
						 double *grad, bool *have_grad);

/* Scoring for one customer; a negative return of the checks means bad input. */
extern double clv_p_alive(ClvModelKind kind, const double *p, double x, double tx, double T);
extern double clv_expected_conditional(ClvModelKind kind, const double *p, double t,
									   double x, double tx, double T);
extern double clv_expected_unconditional(ClvModelKind kind, const double *p, double t);
extern double clv_expected_spend(const double *p, double x, double m);

#endif							/* CLV_MODELS_H */
