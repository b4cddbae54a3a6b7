/*
 * tag_rule.c
 *		The rule expression language of tags and segments: the server side
 *		of the pure compiler in tag_rule_parse.c (limits in characters,
 *		positions in characters, errors), loading and evaluation.
 */
#include "postgres.h"

#include <math.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "crm_ext.h"
#include "tag_rule.h"
#include "tag_rule_parse.h"

struct TagProgram
{
	int			mode;
	int			flags;
	int			ninstr;
	Instr	   *instr;
	int			nstr;
	char	  **str;
};

/*
 * Compile a rule.  The limit is TAG_RULE_MAX_LEN characters of the server
 * encoding, so at most that many tokens and instructions; positions in
 * errors are characters too.
 */
bytea *
tag_rule_compile(const char *rule, TagRuleMode mode,
				 int (*lookup_tag) (const char *name, void *arg),
				 void *lookup_arg, TagRuleError *err)
{
	size_t		len = strlen(rule);
	TagRuleBuild *b;
	bytea	   *res;

	if (pg_mbstrlen_with_len(rule, len) > TAG_RULE_MAX_LEN)
	{
		memset(err, 0, sizeof(*err));
		err->sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		err->position = TAG_RULE_MAX_LEN + 1;
		snprintf(err->message, sizeof(err->message), "rule is longer than %d characters",
				 TAG_RULE_MAX_LEN);
		return NULL;
	}
	b = palloc(sizeof(TagRuleBuild));
	if (!tag_rule_build(rule, len, mode, lookup_tag, lookup_arg, b, err))
	{
		/* a byte position to a character position */
		if (err->position > 1 && (size_t) err->position - 1 <= len)
			err->position = pg_mbstrlen_with_len(rule, err->position - 1) + 1;
		pfree(b);
		return NULL;
	}
	res = palloc(VARHDRSZ + b->outlen);
	SET_VARSIZE(res, VARHDRSZ + b->outlen);
	memcpy(VARDATA(res), b->out, b->outlen);
	pfree(b);
	return res;
}

/* ---------------------------------------------------------------------
 * Loading and evaluation
 * --------------------------------------------------------------------- */
static void
corrupt(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid compiled tag rule"),
			 errdetail("%s", detail),
			 errhint("Update the tag's rule to compile it again.")));
}

TagProgram *
tag_program_load(const bytea *compiled)
{
	const char *d = VARDATA_ANY(compiled);
	int			len = VARSIZE_ANY_EXHDR(compiled);
	const char *problem = tag_program_check(d, len);
	uint16		ninstr,
				nstr;
	TagProgram *prog;
	int			off,
				i;

	if (problem != NULL)
		corrupt(problem);
	memcpy(&ninstr, d + 6, 2);
	memcpy(&nstr, d + 8, 2);
	prog = palloc(sizeof(TagProgram));
	prog->mode = (uint8) d[4];
	prog->flags = (uint8) d[5];
	prog->ninstr = ninstr;
	prog->instr = palloc(sizeof(Instr) * ninstr);
	off = TAG_RULE_HDRSZ;
	memcpy(prog->instr, d + off, sizeof(Instr) * ninstr);
	off += sizeof(Instr) * ninstr;
	prog->nstr = nstr;
	prog->str = palloc(sizeof(char *) * Max(nstr, 1));
	for (i = 0; i < nstr; i++)
	{
		uint16		sl;

		memcpy(&sl, d + off, 2);
		off += 2;
		prog->str[i] = pnstrdup(d + off, sl);
		off += sl;
	}
	return prog;
}

bool
tag_rule_time_dependent(const bytea *compiled)
{
	if (VARSIZE_ANY_EXHDR(compiled) < 6)
		return false;
	return (((const uint8 *) VARDATA_ANY(compiled))[5] & FLAG_TIME_DEPENDENT) != 0;
}

typedef struct Value
{
	double		n;
	const char *s;
	bool		b;
} Value;

static const TagCategory *
find_cat(const TagFacts *f, const char *name)
{
	int			i;

	for (i = 0; i < f->ncats; i++)
		if (strcmp(f->cats[i].name, name) == 0)
			return &f->cats[i];
	return NULL;
}

/* The weekday with most orders (earliest in the week on ties), NULL if none. */
static const char *
top_weekday(const int32 *wd)
{
	int			best = -1,
				i;

	for (i = 0; i < 7; i++)
		if (wd[i] > 0 && (best < 0 || wd[i] > wd[best]))
			best = i;
	return best < 0 ? NULL : tag_weekday_names[best];
}

/* Run a compiled feature rule's stack machine over one customer's facts. */
bool
tag_program_eval(const TagProgram *prog, const TagFacts *f)
{
	Value		stackbuf[64];
	Value	   *st = prog->ninstr <= 64 ? stackbuf : palloc(sizeof(Value) * prog->ninstr);
	int			sp = 0;
	int			i;

	for (i = 0; i < prog->ninstr; i++)
	{
		const Instr *in = &prog->instr[i];
		Value	   *a,
				   *b;

		switch (in->op)
		{
			case OP_NUM:
				st[sp++].n = in->num;
				break;
			case OP_STR:
				st[sp++].s = prog->str[in->arg];
				break;
			case OP_BOOL:
				st[sp++].b = in->arg != 0;
				break;
			case OP_FEAT:
				st[sp++].n = f->num[in->arg];
				break;
			case OP_STAGE:
				st[sp++].s = f->stage;
				break;
			case OP_FN:
				{
					const TagCategory *c = NULL;
					Value	   *v = &st[sp++];

					if (in->fn != FN_WEEKDAY_SHARE && in->fn != FN_TOP_WEEKDAY)
						c = find_cat(f, prog->str[in->arg]);
					switch (in->fn)
					{
						case FN_SHARE:
							v->n = f->line_cents > 0 ? (c ? (double) c->cents / (double) f->line_cents : 0.0) : NAN;
							break;
						case FN_CATEGORY_ORDERS:
							v->n = c ? c->orders : 0;
							break;
						case FN_CATEGORY_SPEND:
							v->n = c ? (double) c->cents / 100.0 : 0;
							break;
						case FN_WEEKDAY_SHARE:
							{
								int64		tot = 0;
								int			k;

								for (k = 0; k < 7; k++)
									tot += f->weekday[k];
								v->n = tot > 0 ? (double) f->weekday[in->arg] / (double) tot : NAN;
								break;
							}
						case FN_TOP_WEEKDAY:
							v->s = top_weekday(f->weekday);
							break;
						default:
							v->s = c ? top_weekday(c->weekday) : NULL;
							break;
					}
					break;
				}
			case OP_TAG:
				st[sp++].b = false;
				break;
			case OP_NEG:
				st[sp - 1].n = -st[sp - 1].n;
				break;
			case OP_NOT:
				st[sp - 1].b = !st[sp - 1].b;
				break;
			default:
				b = &st[--sp];
				a = &st[sp - 1];
				switch (in->op)
				{
					case OP_ADD:
						a->n = a->n + b->n;
						break;
					case OP_SUB:
						a->n = a->n - b->n;
						break;
					case OP_MUL:
						a->n = a->n * b->n;
						break;
					case OP_DIV:
						a->n = b->n == 0 ? NAN : a->n / b->n;
						break;
					case OP_EQ_N:
						a->b = a->n == b->n;
						break;
					case OP_NE_N:
						a->b = !isnan(a->n) && !isnan(b->n) && a->n != b->n;
						break;
					case OP_LT:
						a->b = a->n < b->n;
						break;
					case OP_LE:
						a->b = a->n <= b->n;
						break;
					case OP_GT:
						a->b = a->n > b->n;
						break;
					case OP_GE:
						a->b = a->n >= b->n;
						break;
					case OP_EQ_S:
						a->b = a->s && b->s && strcmp(a->s, b->s) == 0;
						break;
					case OP_NE_S:
						a->b = a->s && b->s && strcmp(a->s, b->s) != 0;
						break;
					case OP_AND:
						a->b = a->b && b->b;
						break;
					case OP_OR:
						a->b = a->b || b->b;
						break;
					default:
						elog(ERROR, "unexpected tag rule instruction %d", in->op);
				}
				break;
		}
	}
	return st[0].b;
}

int
tag_program_set_ops(const TagProgram *prog, TagSetOp **ops, int32 **args)
{
	int			i;

	*ops = palloc(sizeof(TagSetOp) * prog->ninstr);
	*args = palloc(sizeof(int32) * prog->ninstr);
	for (i = 0; i < prog->ninstr; i++)
	{
		const Instr *in = &prog->instr[i];

		(*args)[i] = in->arg;
		switch (in->op)
		{
			case OP_TAG:
				(*ops)[i] = TSO_TAG;
				break;
			case OP_AND:
				(*ops)[i] = TSO_AND;
				break;
			case OP_OR:
				(*ops)[i] = TSO_OR;
				break;
			case OP_NOT:
				(*ops)[i] = TSO_NOT;
				break;
			default:
				corrupt("A segment expression holds an instruction other than a tag, and, or, not.");
		}
	}
	return prog->ninstr;
}

/* The postfix text form of a compiled rule (crm.tag_rule_explain). */
char *
tag_rule_explain(const bytea *compiled)
{
	TagProgram *prog = tag_program_load(compiled);
	StringInfoData s;
	int			i;

	initStringInfo(&s);
	for (i = 0; i < prog->ninstr; i++)
	{
		const Instr *in = &prog->instr[i];

		if (i > 0)
			appendStringInfoChar(&s, ' ');
		switch (in->op)
		{
			case OP_NUM:
				appendStringInfo(&s, "%g", in->num);
				break;
			case OP_STR:
				appendStringInfo(&s, "'%s'", prog->str[in->arg]);
				break;
			case OP_BOOL:
				appendStringInfoString(&s, in->arg ? "true" : "false");
				break;
			case OP_FEAT:
				appendStringInfoString(&s, tag_feature_names[in->arg]);
				break;
			case OP_STAGE:
				appendStringInfoString(&s, "stage");
				break;
			case OP_FN:
				if (in->fn == FN_WEEKDAY_SHARE)
					appendStringInfo(&s, "%s('%s')", tag_fn_names[in->fn], tag_weekday_names[in->arg]);
				else if (in->fn == FN_TOP_WEEKDAY)
					appendStringInfo(&s, "%s()", tag_fn_names[in->fn]);
				else
					appendStringInfo(&s, "%s('%s')", tag_fn_names[in->fn], prog->str[in->arg]);
				break;
			case OP_TAG:
				appendStringInfo(&s, "tag#%d", in->arg);
				break;
			default:
				appendStringInfoString(&s, tag_op_names[in->op]);
				break;
		}
	}
	if (prog->flags & FLAG_TIME_DEPENDENT)
		appendStringInfoString(&s, "  [time-dependent]");
	return s.data;
}
