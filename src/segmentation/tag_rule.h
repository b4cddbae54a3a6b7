/*
 * tag_rule.h
 *		The rule expression language of crm.tag and crm.segment: a parser
 *		with error positions, a compiled (stack machine) form stored with the
 *		tag, and its evaluator.
 */
#ifndef TAG_RULE_H
#define TAG_RULE_H

/* Numeric features of a customer (see README, "Segmentation"). */
typedef enum TagFeature
{
	TF_ORDERS,
	TF_REFUNDED_ORDERS,
	TF_SPEND,
	TF_AVG_ORDER_VALUE,
	TF_ORDERS_30D,
	TF_ORDERS_90D,
	TF_ORDERS_365D,
	TF_SPEND_30D,
	TF_SPEND_90D,
	TF_SPEND_365D,
	TF_DAYS_SINCE_FIRST_ORDER,
	TF_DAYS_SINCE_LAST_ORDER,
	TF_MEAN_INTERVAL_DAYS,
	TF_EVENTS,
	TF_DAYS_SINCE_LAST_EVENT,
	TF_N_FEATURES
} TagFeature;

/* Per-category facts the functions share() and friends read. */
typedef struct TagCategory
{
	const char *name;
	int32		orders;
	int64		cents;
	int32		weekday[7];		/* orders per weekday, 0 = Sunday */
} TagCategory;

/* Everything a rule may look at, for one customer at one time. */
typedef struct TagFacts
{
	double		num[TF_N_FEATURES];	/* NaN = unknown (e.g. no orders yet) */
	const char *stage;
	int32		weekday[7];		/* paid orders per weekday, 0 = Sunday */
	int64		line_cents;		/* spend over all order lines */
	const TagCategory *cats;
	int			ncats;
} TagFacts;

/* A compiled rule: opaque bytes, as stored in crm.tag.compiled. */
typedef struct TagProgram TagProgram;

typedef enum TagRuleMode
{
	TAG_RULE_FEATURES,			/* a tag rule over customer features */
	TAG_RULE_TAGS				/* a segment: tag names with and/or/not */
} TagRuleMode;

/* Result of a parse: 0 = ok, else an SQLSTATE, a 1-based position and a message. */
typedef struct TagRuleError
{
	int			sqlstate;
	int			position;
	char		message[200];
} TagRuleError;

/*
 * Parse and compile (the pure compiler is tag_rule_parse.c): no ERRORs,
 * result in palloc'd memory.  Returns NULL and fills *err (a character
 * position) on a bad rule.  In TAG_RULE_TAGS mode every identifier is passed
 * to lookup_tag, which returns its tag id or -1.
 */
extern bytea *tag_rule_compile(const char *rule, TagRuleMode mode,
							   int (*lookup_tag) (const char *name, void *arg),
							   void *lookup_arg, TagRuleError *err);

/* Does a compiled rule read time-dependent features? */
extern bool tag_rule_time_dependent(const bytea *compiled);

/* Load a compiled rule (validated; 22P03 if invalid) into memory of the current context. */
extern TagProgram *tag_program_load(const bytea *compiled);

/* Evaluate a feature rule. */
extern bool tag_program_eval(const TagProgram *prog, const TagFacts *facts);

/* Postfix text form of a compiled rule, for crm.tag_rule_explain. */
extern char *tag_rule_explain(const bytea *compiled);

/* Segment mode: tag ids referenced and the postfix program over them. */
typedef enum TagSetOp
{
	TSO_TAG,
	TSO_AND,
	TSO_OR,
	TSO_NOT
} TagSetOp;
extern int	tag_program_set_ops(const TagProgram *prog, TagSetOp **ops, int32 **args);

#endif							/* TAG_RULE_H */
