/*
 * tag_rule.c
 *		The rule expression language of tags and segments.
 *
 * Grammar (keywords case-insensitive):
 *		expr	:= and_expr { OR and_expr }
 *		and_expr:= not_expr { AND not_expr }
 *		not_expr:= NOT not_expr | cmp
 *		cmp		:= sum [ (= | != | <> | < | <= | > | >=) sum ]
 *		sum		:= term { (+ | -) term }
 *		term	:= unary { (* | /) unary }
 *		unary	:= - unary | primary
 *		primary := number | 'string' | TRUE | FALSE | feature
 *				 | function ( ['string'] ) | ( expr )
 * A segment expression uses only tag names (bare or quoted), AND, OR, NOT
 * and parentheses.
 *
 * The parser is a pure function: it compiles straight to a postfix program
 * for a small stack machine and reports the first error as an SQLSTATE, a
 * 1-based character position and a message.  Types (number, text, boolean)
 * are checked while compiling, so evaluation cannot fail: a missing value
 * (NaN: no orders yet, division by zero) makes every comparison false.
 *
 * Compiled form (bytea): magic "CRT1", mode, flags, instruction count,
 * string count, the instructions (16 bytes each), then the strings (uint16
 * length + bytes).  tag_program_load validates all of it.
 */
#include "postgres.h"

#include <math.h>

#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "crm_ext.h"
#include "tag_rule.h"

#define TAG_RULE_MAGIC		0x31545243	/* "CRT1" little-endian */
#define TAG_RULE_MAX_LEN	4000
#define TAG_RULE_MAX_INSTR	1000
#define TAG_RULE_MAX_DEPTH	64
#define FLAG_TIME_DEPENDENT 0x01

typedef enum Op
{
	OP_NUM, OP_STR, OP_BOOL, OP_FEAT, OP_STAGE, OP_FN,
	OP_NEG, OP_ADD, OP_SUB, OP_MUL, OP_DIV,
	OP_EQ_N, OP_NE_N, OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ_S, OP_NE_S,
	OP_AND, OP_OR, OP_NOT, OP_TAG,
	OP_N_OPS
} Op;

typedef enum Fn
{
	FN_SHARE, FN_CATEGORY_ORDERS, FN_CATEGORY_SPEND, FN_WEEKDAY_SHARE,
	FN_TOP_WEEKDAY, FN_TOP_WEEKDAY_CAT, FN_N
} Fn;

typedef enum VType
{
	VT_NUM, VT_STR, VT_BOOL
} VType;

typedef struct Instr
{
	uint8		op;
	uint8		fn;
	uint16		pad;
	int32		arg;
	double		num;
} Instr;

struct TagProgram
{
	int			mode;
	int			flags;
	int			ninstr;
	Instr	   *instr;
	int			nstr;
	char	  **str;
};

static const char *const feature_names[TF_N_FEATURES] = {
	"orders", "refunded_orders", "spend", "avg_order_value",
	"orders_30d", "orders_90d", "orders_365d", "spend_30d", "spend_90d", "spend_365d",
	"days_since_first_order", "days_since_last_order", "mean_interval_days",
	"events", "days_since_last_event"
};
static const bool feature_time_dependent[TF_N_FEATURES] = {
	false, false, false, false,
	true, true, true, true, true, true,
	true, true, false,
	false, true
};
static const char *const weekday_names[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
static const char *const op_names[OP_N_OPS] = {
	"num", "str", "bool", "feature", "stage", "fn",
	"neg", "+", "-", "*", "/",
	"=", "!=", "<", "<=", ">", ">=", "=", "!=",
	"and", "or", "not", "tag"
};
static const char *const fn_names[FN_N] = {
	"share", "category_orders", "category_spend", "weekday_share", "top_weekday", "top_weekday"
};

/* ---------------------------------------------------------------------
 * Tokenizer and parser
 * --------------------------------------------------------------------- */
typedef enum Tok
{
	TK_END, TK_NUM, TK_STR, TK_IDENT, TK_LPAREN, TK_RPAREN, TK_COMMA,
	TK_PLUS, TK_MINUS, TK_STAR, TK_SLASH,
	TK_EQ, TK_NE, TK_LT, TK_LE, TK_GT, TK_GE,
	TK_AND, TK_OR, TK_NOT, TK_TRUE, TK_FALSE, TK_BAD
} Tok;

typedef struct Parser
{
	const char *src;
	int			pos;			/* 0-based offset of the next character */
	Tok			tok;
	int			tokpos;			/* 0-based offset of the current token */
	double		num;
	StringInfoData text;		/* identifier (lower-cased) or string literal */
	TagRuleMode mode;
	int			(*lookup_tag) (const char *name, void *arg);
	void	   *lookup_arg;
	Instr	   *instr;
	int			ninstr;
	char	  **str;
	int			nstr;
	int			flags;
	int			depth;
	TagRuleError *err;
	bool		failed;
} Parser;

static bool
fail(Parser *p, int sqlstate, int pos, const char *fmt,...) pg_attribute_printf(4, 5);

static bool
fail(Parser *p, int sqlstate, int pos, const char *fmt,...)
{
	va_list		ap;

	if (p->failed)
		return false;
	p->failed = true;
	p->err->sqlstate = sqlstate;
	p->err->position = pos + 1;
	va_start(ap, fmt);
	vsnprintf(p->err->message, sizeof(p->err->message), fmt, ap);
	va_end(ap);
	return false;
}

static const char *
tok_desc(Parser *p)
{
	switch (p->tok)
	{
		case TK_END:
			return "end of rule";
		case TK_NUM:
			return "a number";
		case TK_STR:
			return "a string";
		case TK_IDENT:
			return "a name";
		default:
			return "an operator";
	}
}

static void
next_token(Parser *p)
{
	const char *s = p->src;
	char		c;

	while (s[p->pos] == ' ' || s[p->pos] == '\t' || s[p->pos] == '\n' || s[p->pos] == '\r')
		p->pos++;
	p->tokpos = p->pos;
	c = s[p->pos];
	resetStringInfo(&p->text);
	if (c == '\0')
	{
		p->tok = TK_END;
		return;
	}
	if ((c >= '0' && c <= '9') || (c == '.' && s[p->pos + 1] >= '0' && s[p->pos + 1] <= '9'))
	{
		int			start = p->pos;
		bool		dot = false;
		char	   *end;

		while ((s[p->pos] >= '0' && s[p->pos] <= '9') || (s[p->pos] == '.' && !dot))
		{
			if (s[p->pos] == '.')
				dot = true;
			p->pos++;
		}
		appendBinaryStringInfo(&p->text, s + start, p->pos - start);
		p->num = strtod(p->text.data, &end);
		p->tok = TK_NUM;
		return;
	}
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
	{
		while ((s[p->pos] >= 'a' && s[p->pos] <= 'z') || (s[p->pos] >= 'A' && s[p->pos] <= 'Z') ||
			   (s[p->pos] >= '0' && s[p->pos] <= '9') || s[p->pos] == '_')
		{
			char		ch = s[p->pos];

			if (ch >= 'A' && ch <= 'Z')
				ch = ch - 'A' + 'a';
			appendStringInfoChar(&p->text, ch);
			p->pos++;
		}
		if (strcmp(p->text.data, "and") == 0)
			p->tok = TK_AND;
		else if (strcmp(p->text.data, "or") == 0)
			p->tok = TK_OR;
		else if (strcmp(p->text.data, "not") == 0)
			p->tok = TK_NOT;
		else if (strcmp(p->text.data, "true") == 0)
			p->tok = TK_TRUE;
		else if (strcmp(p->text.data, "false") == 0)
			p->tok = TK_FALSE;
		else
			p->tok = TK_IDENT;
		return;
	}
	if (c == '\'')
	{
		p->pos++;
		for (;;)
		{
			if (s[p->pos] == '\0')
			{
				p->tok = TK_BAD;
				fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "unterminated string");
				return;
			}
			if (s[p->pos] == '\'')
			{
				if (s[p->pos + 1] == '\'')
				{
					appendStringInfoChar(&p->text, '\'');
					p->pos += 2;
					continue;
				}
				p->pos++;
				break;
			}
			appendStringInfoChar(&p->text, s[p->pos]);
			p->pos++;
		}
		p->tok = TK_STR;
		return;
	}
	p->pos++;
	switch (c)
	{
		case '(':
			p->tok = TK_LPAREN;
			return;
		case ')':
			p->tok = TK_RPAREN;
			return;
		case ',':
			p->tok = TK_COMMA;
			return;
		case '+':
			p->tok = TK_PLUS;
			return;
		case '-':
			p->tok = TK_MINUS;
			return;
		case '*':
			p->tok = TK_STAR;
			return;
		case '/':
			p->tok = TK_SLASH;
			return;
		case '=':
			p->tok = TK_EQ;
			if (s[p->pos] == '=')
				p->pos++;
			return;
		case '!':
			if (s[p->pos] == '=')
			{
				p->pos++;
				p->tok = TK_NE;
				return;
			}
			break;
		case '<':
			if (s[p->pos] == '=')
			{
				p->pos++;
				p->tok = TK_LE;
			}
			else if (s[p->pos] == '>')
			{
				p->pos++;
				p->tok = TK_NE;
			}
			else
				p->tok = TK_LT;
			return;
		case '>':
			if (s[p->pos] == '=')
			{
				p->pos++;
				p->tok = TK_GE;
			}
			else
				p->tok = TK_GT;
			return;
		default:
			break;
	}
	p->tok = TK_BAD;
	if ((unsigned char) c >= 0x20 && (unsigned char) c < 0x7f)
		fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "unexpected character \"%c\"", c);
	else
		fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "unexpected character");
}

static bool
emit(Parser *p, Op op, int fn, int32 arg, double num)
{
	Instr	   *in;

	if (p->ninstr >= TAG_RULE_MAX_INSTR)
		return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, p->tokpos, "rule is too long");
	in = &p->instr[p->ninstr++];
	in->op = op;
	in->fn = fn;
	in->pad = 0;
	in->arg = arg;
	in->num = num;
	return true;
}

static int
add_string(Parser *p, const char *s)
{
	int			i;

	for (i = 0; i < p->nstr; i++)
		if (strcmp(p->str[i], s) == 0)
			return i;
	p->str[p->nstr] = pstrdup(s);
	return p->nstr++;
}

static bool parse_or(Parser *p, VType *t);

static const char *
type_name(VType t)
{
	return t == VT_NUM ? "a number" : t == VT_STR ? "text" : "a condition";
}

/* Segment mode: a tag name, NOT, or a parenthesised expression. */
static bool
parse_tag_primary(Parser *p, VType *t)
{
	*t = VT_BOOL;
	if (p->tok == TK_IDENT || p->tok == TK_STR)
	{
		int			id = p->lookup_tag(p->text.data, p->lookup_arg);

		if (id < 0)
			return fail(p, ERRCODE_UNDEFINED_OBJECT, p->tokpos, "unknown tag \"%s\"", p->text.data);
		if (!emit(p, OP_TAG, 0, id, 0))
			return false;
		next_token(p);
		return !p->failed;
	}
	if (p->tok == TK_LPAREN)
	{
		int			open = p->tokpos;

		next_token(p);
		if (!parse_or(p, t))
			return false;
		if (p->tok != TK_RPAREN)
			return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos,
						"expected \")\" to close \"(\" at position %d, found %s", open + 1, tok_desc(p));
		next_token(p);
		return !p->failed;
	}
	return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "expected a tag name, found %s", tok_desc(p));
}

static bool
parse_primary(Parser *p, VType *t)
{
	if (p->failed)
		return false;
	if (p->mode == TAG_RULE_TAGS)
		return parse_tag_primary(p, t);
	switch (p->tok)
	{
		case TK_NUM:
			*t = VT_NUM;
			if (!emit(p, OP_NUM, 0, 0, p->num))
				return false;
			next_token(p);
			return !p->failed;
		case TK_STR:
			*t = VT_STR;
			if (!emit(p, OP_STR, 0, add_string(p, p->text.data), 0))
				return false;
			next_token(p);
			return !p->failed;
		case TK_TRUE:
		case TK_FALSE:
			*t = VT_BOOL;
			if (!emit(p, OP_BOOL, 0, p->tok == TK_TRUE, 0))
				return false;
			next_token(p);
			return !p->failed;
		case TK_LPAREN:
			{
				int			open = p->tokpos;

				next_token(p);
				if (!parse_or(p, t))
					return false;
				if (p->tok != TK_RPAREN)
					return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos,
								"expected \")\" to close \"(\" at position %d, found %s", open + 1, tok_desc(p));
				next_token(p);
				return !p->failed;
			}
		case TK_IDENT:
			{
				char	   *name = pstrdup(p->text.data);
				int			namepos = p->tokpos;
				int			i;

				next_token(p);
				if (p->failed)
					return false;
				if (p->tok != TK_LPAREN)
				{
					if (strcmp(name, "stage") == 0)
					{
						*t = VT_STR;
						p->flags |= FLAG_TIME_DEPENDENT;
						return emit(p, OP_STAGE, 0, 0, 0);
					}
					for (i = 0; i < TF_N_FEATURES; i++)
						if (strcmp(name, feature_names[i]) == 0)
						{
							*t = VT_NUM;
							if (feature_time_dependent[i])
								p->flags |= FLAG_TIME_DEPENDENT;
							return emit(p, OP_FEAT, 0, i, 0);
						}
					return fail(p, ERRCODE_UNDEFINED_COLUMN, namepos, "unknown feature \"%s\"", name);
				}
				else
				{
					/* a function call: no argument or one string literal */
					int			argidx = -1;
					int			argpos;
					Fn			fn;

					next_token(p);
					argpos = p->tokpos;
					if (p->tok == TK_STR)
					{
						argidx = add_string(p, p->text.data);
						next_token(p);
					}
					else if (p->tok != TK_RPAREN)
					{
						if (p->failed)
							return false;
						return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos,
									"function arguments must be quoted strings, found %s", tok_desc(p));
					}
					if (p->tok != TK_RPAREN)
						return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos,
									"expected \")\" after the argument of %s, found %s", name, tok_desc(p));
					if (strcmp(name, "share") == 0)
						fn = FN_SHARE, *t = VT_NUM;
					else if (strcmp(name, "category_orders") == 0)
						fn = FN_CATEGORY_ORDERS, *t = VT_NUM;
					else if (strcmp(name, "category_spend") == 0)
						fn = FN_CATEGORY_SPEND, *t = VT_NUM;
					else if (strcmp(name, "weekday_share") == 0)
						fn = FN_WEEKDAY_SHARE, *t = VT_NUM;
					else if (strcmp(name, "top_weekday") == 0)
						fn = argidx < 0 ? FN_TOP_WEEKDAY : FN_TOP_WEEKDAY_CAT, *t = VT_STR;
					else
						return fail(p, ERRCODE_UNDEFINED_FUNCTION, namepos, "unknown function \"%s\"", name);
					if (fn != FN_TOP_WEEKDAY && fn != FN_TOP_WEEKDAY_CAT && argidx < 0)
						return fail(p, ERRCODE_UNDEFINED_FUNCTION, argpos,
									"function %s needs one quoted argument", name);
					if (fn == FN_WEEKDAY_SHARE)
					{
						const char *day = p->str[argidx];

						argidx = -1;
						for (i = 0; i < 7; i++)
							if (strcmp(day, weekday_names[i]) == 0)
								argidx = i;
						if (argidx < 0)
							return fail(p, ERRCODE_INVALID_PARAMETER_VALUE, argpos,
										"weekday must be one of sun, mon, tue, wed, thu, fri, sat");
					}
					if (!emit(p, OP_FN, fn, argidx, 0))
						return false;
					next_token(p);
					return !p->failed;
				}
			}
		default:
			if (p->failed)
				return false;
			return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "expected a value, found %s", tok_desc(p));
	}
}

static bool
parse_unary(Parser *p, VType *t)
{
	if (p->tok == TK_MINUS && p->mode == TAG_RULE_FEATURES)
	{
		int			pos = p->tokpos;

		if (++p->depth > TAG_RULE_MAX_DEPTH)
			return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, pos, "rule is nested too deeply");
		next_token(p);
		if (!parse_unary(p, t))
			return false;
		p->depth--;
		if (*t != VT_NUM)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "unary - needs a number, not %s", type_name(*t));
		return emit(p, OP_NEG, 0, 0, 0);
	}
	return parse_primary(p, t);
}

typedef bool (*ParseLevel) (Parser *p, VType *t);

/*
 * One left-associative arithmetic level: operand ((tok1 | tok2) operand)*,
 * both sides numbers.  Products and sums differ only in their tokens and
 * the level below them.
 */
static bool
parse_arith_level(Parser *p, VType *t, ParseLevel operand,
				  Tok tok1, Op op1, Tok tok2, Op op2)
{
	if (!operand(p, t))
		return false;
	while (p->tok == tok1 || p->tok == tok2)
	{
		Op			op = p->tok == tok1 ? op1 : op2;
		int			pos = p->tokpos;
		VType		r;

		next_token(p);
		if (!operand(p, &r))
			return false;
		if (*t != VT_NUM || r != VT_NUM)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "operator %s needs numbers on both sides",
						op_names[op]);
		if (!emit(p, op, 0, 0, 0))
			return false;
	}
	return !p->failed;
}

static bool
parse_term(Parser *p, VType *t)
{
	return parse_arith_level(p, t, parse_unary, TK_STAR, OP_MUL, TK_SLASH, OP_DIV);
}

static bool
parse_sum(Parser *p, VType *t)
{
	return parse_arith_level(p, t, parse_term, TK_PLUS, OP_ADD, TK_MINUS, OP_SUB);
}

static bool
parse_cmp(Parser *p, VType *t)
{
	Tok			tk;
	int			pos;
	VType		r;
	Op			op;
	static const char *const tk_text[] = {
		[TK_EQ] = "=",[TK_NE] = "!=",[TK_LT] = "<",[TK_LE] = "<=",[TK_GT] = ">",[TK_GE] = ">="
	};

	if (!parse_sum(p, t))
		return false;
	if (p->tok < TK_EQ || p->tok > TK_GE)
		return !p->failed;
	tk = p->tok;
	pos = p->tokpos;
	next_token(p);
	if (!parse_sum(p, &r))
		return false;
	if (*t != r)
		return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "cannot compare %s with %s", type_name(*t), type_name(r));
	if (*t == VT_BOOL)
		return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "cannot compare conditions; use and, or, not");
	if (*t == VT_STR)
	{
		if (tk != TK_EQ && tk != TK_NE)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "operator %s needs numbers; text compares only with = and !=",
						tk_text[tk]);
		op = tk == TK_EQ ? OP_EQ_S : OP_NE_S;
	}
	else
		op = tk == TK_EQ ? OP_EQ_N : tk == TK_NE ? OP_NE_N : tk == TK_LT ? OP_LT :
			tk == TK_LE ? OP_LE : tk == TK_GT ? OP_GT : OP_GE;
	*t = VT_BOOL;
	if (!emit(p, op, 0, 0, 0))
		return false;
	if (p->tok >= TK_EQ && p->tok <= TK_GE)
		return fail(p, ERRCODE_SYNTAX_ERROR, p->tokpos, "comparisons cannot be chained; use and");
	return !p->failed;
}

static bool
parse_not(Parser *p, VType *t)
{
	if (p->tok == TK_NOT)
	{
		int			pos = p->tokpos;

		if (++p->depth > TAG_RULE_MAX_DEPTH)
			return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, pos, "rule is nested too deeply");
		next_token(p);
		if (!parse_not(p, t))
			return false;
		p->depth--;
		if (*t != VT_BOOL)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, pos, "not needs a condition, not %s", type_name(*t));
		return emit(p, OP_NOT, 0, 0, 0);
	}
	if (p->mode == TAG_RULE_TAGS)
		return parse_primary(p, t);
	return parse_cmp(p, t);
}

static bool
parse_and(Parser *p, VType *t)
{
	int			lpos = p->tokpos;

	if (!parse_not(p, t))
		return false;
	while (p->tok == TK_AND)
	{
		int			pos = p->tokpos;
		int			rpos;
		VType		r;

		next_token(p);
		rpos = p->tokpos;
		if (!parse_not(p, &r))
			return false;
		if (*t != VT_BOOL)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, lpos, "and needs conditions on both sides, not %s", type_name(*t));
		if (r != VT_BOOL)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, rpos, "and needs conditions on both sides, not %s", type_name(r));
		(void) pos;
		if (!emit(p, OP_AND, 0, 0, 0))
			return false;
	}
	return !p->failed;
}

static bool
parse_or(Parser *p, VType *t)
{
	int			lpos = p->tokpos;

	if (++p->depth > TAG_RULE_MAX_DEPTH)
		return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, p->tokpos, "rule is nested too deeply");
	if (!parse_and(p, t))
		return false;
	while (p->tok == TK_OR)
	{
		int			rpos;
		VType		r;

		next_token(p);
		rpos = p->tokpos;
		if (!parse_and(p, &r))
			return false;
		if (*t != VT_BOOL)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, lpos, "or needs conditions on both sides, not %s", type_name(*t));
		if (r != VT_BOOL)
			return fail(p, ERRCODE_DATATYPE_MISMATCH, rpos, "or needs conditions on both sides, not %s", type_name(r));
		if (!emit(p, OP_OR, 0, 0, 0))
			return false;
	}
	p->depth--;
	return !p->failed;
}

bytea *
tag_rule_compile(const char *rule, TagRuleMode mode,
				 int (*lookup_tag) (const char *name, void *arg),
				 void *lookup_arg, TagRuleError *err)
{
	Parser		p;
	VType		t;
	StringInfoData out;
	uint32		magic = TAG_RULE_MAGIC;
	uint8		b;
	uint16		n;
	int			i;
	size_t		len = strlen(rule);

	memset(err, 0, sizeof(*err));
	memset(&p, 0, sizeof(p));
	p.err = err;
	if (len > TAG_RULE_MAX_LEN)
	{
		fail(&p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, TAG_RULE_MAX_LEN, "rule is longer than %d characters",
			 TAG_RULE_MAX_LEN);
		return NULL;
	}
	p.src = rule;
	p.mode = mode;
	p.lookup_tag = lookup_tag;
	p.lookup_arg = lookup_arg;
	p.instr = palloc(sizeof(Instr) * TAG_RULE_MAX_INSTR);
	p.str = palloc(sizeof(char *) * TAG_RULE_MAX_INSTR);
	initStringInfo(&p.text);
	next_token(&p);
	if (p.failed)
		return NULL;
	if (p.tok == TK_END)
	{
		fail(&p, ERRCODE_SYNTAX_ERROR, 0, "rule is empty");
		return NULL;
	}
	if (!parse_or(&p, &t))
		return NULL;
	if (p.tok != TK_END)
	{
		fail(&p, ERRCODE_SYNTAX_ERROR, p.tokpos, "expected the end of the rule, found %s", tok_desc(&p));
		return NULL;
	}
	if (t != VT_BOOL)
	{
		fail(&p, ERRCODE_DATATYPE_MISMATCH, 0, "rule must be a condition, not %s", type_name(t));
		return NULL;
	}

	initStringInfo(&out);
	appendStringInfoSpaces(&out, VARHDRSZ);
	appendBinaryStringInfo(&out, (char *) &magic, 4);
	b = mode;
	appendBinaryStringInfo(&out, (char *) &b, 1);
	b = p.flags;
	appendBinaryStringInfo(&out, (char *) &b, 1);
	n = p.ninstr;
	appendBinaryStringInfo(&out, (char *) &n, 2);
	n = p.nstr;
	appendBinaryStringInfo(&out, (char *) &n, 2);
	appendBinaryStringInfo(&out, (char *) p.instr, sizeof(Instr) * p.ninstr);
	for (i = 0; i < p.nstr; i++)
	{
		n = strlen(p.str[i]);
		appendBinaryStringInfo(&out, (char *) &n, 2);
		appendBinaryStringInfo(&out, p.str[i], n);
	}
	SET_VARSIZE(out.data, out.len);
	return (bytea *) out.data;
}

/* ---------------------------------------------------------------------
 * Loading and evaluation
 * --------------------------------------------------------------------- */
static void
corrupt(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("invalid compiled tag rule"),
			 errhint("Update the tag's rule to compile it again.")));
}

TagProgram *
tag_program_load(const bytea *compiled)
{
	const char *d = VARDATA_ANY(compiled);
	int			len = VARSIZE_ANY_EXHDR(compiled);
	uint32		magic;
	uint16		ninstr,
				nstr;
	TagProgram *prog;
	int			off,
				i,
				depth = 0;

	if (len < 10)
		corrupt();
	memcpy(&magic, d, 4);
	memcpy(&ninstr, d + 6, 2);
	memcpy(&nstr, d + 8, 2);
	if (magic != TAG_RULE_MAGIC || ninstr == 0 || ninstr > TAG_RULE_MAX_INSTR || nstr > TAG_RULE_MAX_INSTR)
		corrupt();
	off = 10;
	if (len - off < (int) (sizeof(Instr) * ninstr))
		corrupt();
	prog = palloc(sizeof(TagProgram));
	prog->mode = (uint8) d[4];
	prog->flags = (uint8) d[5];
	prog->ninstr = ninstr;
	prog->instr = palloc(sizeof(Instr) * ninstr);
	memcpy(prog->instr, d + off, sizeof(Instr) * ninstr);
	off += sizeof(Instr) * ninstr;
	prog->nstr = nstr;
	prog->str = palloc(sizeof(char *) * Max(nstr, 1));
	for (i = 0; i < nstr; i++)
	{
		uint16		sl;

		if (len - off < 2)
			corrupt();
		memcpy(&sl, d + off, 2);
		off += 2;
		if (len - off < sl)
			corrupt();
		prog->str[i] = pnstrdup(d + off, sl);
		off += sl;
	}
	if (off != len)
		corrupt();
	/* every instruction valid, the stack never underflows and ends at one */
	for (i = 0; i < ninstr; i++)
	{
		Instr	   *in = &prog->instr[i];

		switch (in->op)
		{
			case OP_NUM:
			case OP_BOOL:
			case OP_STAGE:
				depth++;
				break;
			case OP_STR:
				if (in->arg < 0 || in->arg >= nstr)
					corrupt();
				depth++;
				break;
			case OP_FEAT:
				if (in->arg < 0 || in->arg >= TF_N_FEATURES)
					corrupt();
				depth++;
				break;
			case OP_FN:
				if (in->fn >= FN_N ||
					(in->fn == FN_WEEKDAY_SHARE && (in->arg < 0 || in->arg > 6)) ||
					(in->fn != FN_WEEKDAY_SHARE && in->fn != FN_TOP_WEEKDAY && (in->arg < 0 || in->arg >= nstr)))
					corrupt();
				depth++;
				break;
			case OP_TAG:
				depth++;
				break;
			case OP_NEG:
			case OP_NOT:
				if (depth < 1)
					corrupt();
				break;
			default:
				if (in->op >= OP_N_OPS || depth < 2)
					corrupt();
				depth--;
				break;
		}
	}
	if (depth != 1)
		corrupt();
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
	return best < 0 ? NULL : weekday_names[best];
}

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
				corrupt();
		}
	}
	return prog->ninstr;
}

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
				appendStringInfoString(&s, feature_names[in->arg]);
				break;
			case OP_STAGE:
				appendStringInfoString(&s, "stage");
				break;
			case OP_FN:
				if (in->fn == FN_WEEKDAY_SHARE)
					appendStringInfo(&s, "%s('%s')", fn_names[in->fn], weekday_names[in->arg]);
				else if (in->fn == FN_TOP_WEEKDAY)
					appendStringInfo(&s, "%s()", fn_names[in->fn]);
				else
					appendStringInfo(&s, "%s('%s')", fn_names[in->fn], prog->str[in->arg]);
				break;
			case OP_TAG:
				appendStringInfo(&s, "tag#%d", in->arg);
				break;
			default:
				appendStringInfoString(&s, op_names[in->op]);
				break;
		}
	}
	if (prog->flags & FLAG_TIME_DEPENDENT)
		appendStringInfoString(&s, "  [time-dependent]");
	return s.data;
}
