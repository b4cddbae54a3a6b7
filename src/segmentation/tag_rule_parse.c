/*
 * tag_rule_parse.c
 *		The tag rule language's tokenizer, parser and compiler, and the check
 *		of a compiled rule: pure functions (see tag_rule_parse.h).
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
 * The parser compiles straight to a postfix program for a small stack
 * machine and reports the first error as an SQLSTATE, a 1-based byte
 * position and a message.  Types (number, text, boolean) are checked while
 * compiling, so evaluation cannot fail: a missing value (NaN: no orders yet,
 * division by zero) makes every comparison false.
 *
 * Compiled form: magic "CRT1", mode, flags, instruction count, string
 * count, the instructions (16 bytes each), then the strings (uint16 length
 * + bytes).  tag_program_check validates all of it, types included.
 */
#include "postgres.h"

#include "tag_rule_parse.h"

const char *const tag_feature_names[TF_N_FEATURES] = {
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
const char *const tag_weekday_names[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
const char *const tag_op_names[OP_N_OPS] = {
	"num", "str", "bool", "feature", "stage", "fn",
	"neg", "+", "-", "*", "/",
	"=", "!=", "<", "<=", ">", ">=", "=", "!=",
	"and", "or", "not", "tag"
};
const char *const tag_fn_names[FN_N] = {
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
	char	   *text;			/* identifier (lower-cased) or string literal */
	int			textlen;
	TagRuleMode mode;
	int			(*lookup_tag) (const char *name, void *arg);
	void	   *lookup_arg;
	TagRuleBuild *b;			/* instructions, strings and output */
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

/* The token text never outgrows the rule, which fits the buffer. */
static void
text_append(Parser *p, const char *s, int n)
{
	n = Min(n, TAG_RULE_MAX_BYTES - p->textlen);
	memcpy(p->text + p->textlen, s, n);
	p->textlen += n;
	p->text[p->textlen] = '\0';
}

/* Read the next token of the rule into p->tok (TK_BAD and a failure on an unterminated string). */
static void
next_token(Parser *p)
{
	const char *s = p->src;
	char		c;

	while (s[p->pos] == ' ' || s[p->pos] == '\t' || s[p->pos] == '\n' || s[p->pos] == '\r')
		p->pos++;
	p->tokpos = p->pos;
	c = s[p->pos];
	p->textlen = 0;
	p->text[0] = '\0';
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
		text_append(p, s + start, p->pos - start);
		p->num = strtod(p->text, &end);
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
			text_append(p, &ch, 1);
			p->pos++;
		}
		if (strcmp(p->text, "and") == 0)
			p->tok = TK_AND;
		else if (strcmp(p->text, "or") == 0)
			p->tok = TK_OR;
		else if (strcmp(p->text, "not") == 0)
			p->tok = TK_NOT;
		else if (strcmp(p->text, "true") == 0)
			p->tok = TK_TRUE;
		else if (strcmp(p->text, "false") == 0)
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
					text_append(p, "'", 1);
					p->pos += 2;
					continue;
				}
				p->pos++;
				break;
			}
			text_append(p, &s[p->pos], 1);
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

	if (p->b->ninstr >= TAG_RULE_MAX_INSTR)
		return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, p->tokpos, "rule is too long");
	in = &p->b->instr[p->b->ninstr++];
	in->op = op;
	in->fn = fn;
	in->pad = 0;
	in->arg = arg;
	in->num = num;
	return true;
}

/*
 * Index of string s, adding it when new.  Every string comes from a string
 * literal of at least two bytes, so the strings fit their buffers.
 */
static int
add_string(Parser *p, const char *s)
{
	TagRuleBuild *b = p->b;
	int			len = strlen(s);
	int			i;

	for (i = 0; i < b->nstr; i++)
		if (strcmp(b->strbuf + b->stroff[i], s) == 0)
			return i;
	if (b->nstr >= TAG_RULE_MAX_INSTR || b->strused + len + 1 > (int) sizeof(b->strbuf))
		return -1;
	b->stroff[b->nstr] = b->strused;
	memcpy(b->strbuf + b->strused, s, len + 1);
	b->strused += len + 1;
	return b->nstr++;
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
		int			id = p->lookup_tag(p->text, p->lookup_arg);

		if (id < 0)
			return fail(p, ERRCODE_UNDEFINED_OBJECT, p->tokpos, "unknown tag \"%s\"", p->text);
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

/* primary: a number, a string, true/false, a feature, a function call or a parenthesised expression; compiled. */
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
			{
				int			k = add_string(p, p->text);

				if (k < 0)
					return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, p->tokpos, "rule is too long");
				if (!emit(p, OP_STR, 0, k, 0))
					return false;
			}
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
				char		name[sizeof(((TagRuleError *) NULL)->message)];
				int			namepos = p->tokpos;
				int			i;

				/* a longer name is no feature or function, and errors show 199 bytes */
				strlcpy(name, p->text, sizeof(name));

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
						if (strcmp(name, tag_feature_names[i]) == 0)
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
						argidx = add_string(p, p->text);
						if (argidx < 0)
							return fail(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, p->tokpos, "rule is too long");
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
						const char *day = p->b->strbuf + p->b->stroff[argidx];

						argidx = -1;
						for (i = 0; i < 7; i++)
							if (strcmp(day, tag_weekday_names[i]) == 0)
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
						tag_op_names[op]);
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

/* cmp: a sum, or two sums compared (the rule grammar at the top of the file). */
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

/* Append n bytes to the compiled form (sized for the largest program). */
static void
out_append(TagRuleBuild *b, const void *data, size_t n)
{
	memcpy(b->out + b->outlen, data, n);
	b->outlen += n;
}

bool
tag_rule_build(const char *rule, size_t len, TagRuleMode mode,
			   int (*lookup_tag) (const char *name, void *arg),
			   void *lookup_arg, TagRuleBuild *b, TagRuleError *err)
{
	Parser		p;
	VType		t;
	uint32		magic = TAG_RULE_MAGIC;
	uint8		u8;
	uint16		n;
	int			i;

	memset(err, 0, sizeof(*err));
	memset(&p, 0, sizeof(p));
	p.err = err;
	b->ninstr = 0;
	b->nstr = 0;
	b->strused = 0;
	b->outlen = 0;
	if (len > TAG_RULE_MAX_BYTES)
	{
		fail(&p, ERRCODE_PROGRAM_LIMIT_EXCEEDED, TAG_RULE_MAX_BYTES, "rule is longer than %d bytes",
			 TAG_RULE_MAX_BYTES);
		return false;
	}
	memcpy(b->src, rule, len);
	b->src[len] = '\0';
	p.src = b->src;
	p.mode = mode;
	p.lookup_tag = lookup_tag;
	p.lookup_arg = lookup_arg;
	p.b = b;
	p.text = b->text;
	next_token(&p);
	if (p.failed)
		return false;
	if (p.tok == TK_END)
	{
		fail(&p, ERRCODE_SYNTAX_ERROR, 0, "rule is empty");
		return false;
	}
	if (!parse_or(&p, &t))
		return false;
	if (p.tok != TK_END)
	{
		fail(&p, ERRCODE_SYNTAX_ERROR, p.tokpos, "expected the end of the rule, found %s", tok_desc(&p));
		return false;
	}
	if (t != VT_BOOL)
	{
		fail(&p, ERRCODE_DATATYPE_MISMATCH, 0, "rule must be a condition, not %s", type_name(t));
		return false;
	}

	out_append(b, &magic, 4);
	u8 = mode;
	out_append(b, &u8, 1);
	u8 = p.flags;
	out_append(b, &u8, 1);
	n = b->ninstr;
	out_append(b, &n, 2);
	n = b->nstr;
	out_append(b, &n, 2);
	out_append(b, b->instr, sizeof(Instr) * b->ninstr);
	for (i = 0; i < b->nstr; i++)
	{
		const char *s = b->strbuf + b->stroff[i];

		n = strlen(s);
		out_append(b, &n, 2);
		out_append(b, s, n);
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Checking a compiled rule
 * --------------------------------------------------------------------- */
const char *
tag_program_check(const char *d, int len)
{
	uint32		magic;
	uint16		ninstr,
				nstr;
	int			mode;
	int			off,
				i,
				sp = 0;
	uint8		types[TAG_RULE_MAX_INSTR];
	Instr		in;

	if (len < TAG_RULE_HDRSZ)
		return "The compiled rule is shorter than its header.";
	memcpy(&magic, d, 4);
	memcpy(&ninstr, d + 6, 2);
	memcpy(&nstr, d + 8, 2);
	mode = (uint8) d[4];
	if (magic != TAG_RULE_MAGIC || (mode != TAG_RULE_FEATURES && mode != TAG_RULE_TAGS) ||
		((uint8) d[5] & ~FLAG_TIME_DEPENDENT) != 0)
		return "The compiled rule has an unknown header.";
	if (ninstr == 0 || ninstr > TAG_RULE_MAX_INSTR || nstr > TAG_RULE_MAX_INSTR)
		return "The compiled rule's instruction or string count is out of range.";
	off = TAG_RULE_HDRSZ;
	if (len - off < (int) (sizeof(Instr) * ninstr))
		return "The compiled rule is shorter than its instructions.";
	off += sizeof(Instr) * ninstr;
	for (i = 0; i < nstr; i++)
	{
		uint16		sl;

		if (len - off < 2)
			return "The compiled rule is shorter than its strings.";
		memcpy(&sl, d + off, 2);
		off += 2;
		if (len - off < sl || memchr(d + off, '\0', sl) != NULL)
			return "The compiled rule has an invalid string.";
		off += sl;
	}
	if (off != len)
		return "The compiled rule has trailing bytes.";

	/* every instruction valid for the mode, operand types as compiled */
	for (i = 0; i < ninstr; i++)
	{
		VType		need = VT_NUM,
					res;
		int			pops;

		memcpy(&in, d + TAG_RULE_HDRSZ + sizeof(Instr) * i, sizeof(Instr));
		if (in.op >= OP_N_OPS ||
			(mode == TAG_RULE_TAGS && in.op != OP_TAG && in.op != OP_AND &&
			 in.op != OP_OR && in.op != OP_NOT) ||
			(mode == TAG_RULE_FEATURES && in.op == OP_TAG))
			return "The compiled rule has an unknown instruction.";
		switch (in.op)
		{
			case OP_NUM:
				pops = 0, res = VT_NUM;
				break;
			case OP_BOOL:
			case OP_TAG:
				pops = 0, res = VT_BOOL;
				break;
			case OP_STAGE:
				pops = 0, res = VT_STR;
				break;
			case OP_STR:
				if (in.arg < 0 || in.arg >= nstr)
					return "The compiled rule refers to a missing string.";
				pops = 0, res = VT_STR;
				break;
			case OP_FEAT:
				if (in.arg < 0 || in.arg >= TF_N_FEATURES)
					return "The compiled rule refers to an unknown feature.";
				pops = 0, res = VT_NUM;
				break;
			case OP_FN:
				if (in.fn >= FN_N ||
					(in.fn == FN_WEEKDAY_SHARE && (in.arg < 0 || in.arg > 6)) ||
					(in.fn != FN_WEEKDAY_SHARE && in.fn != FN_TOP_WEEKDAY && (in.arg < 0 || in.arg >= nstr)))
					return "The compiled rule calls an unknown function.";
				pops = 0;
				res = (in.fn == FN_TOP_WEEKDAY || in.fn == FN_TOP_WEEKDAY_CAT) ? VT_STR : VT_NUM;
				break;
			case OP_NEG:
				pops = 1, need = VT_NUM, res = VT_NUM;
				break;
			case OP_NOT:
				pops = 1, need = VT_BOOL, res = VT_BOOL;
				break;
			case OP_ADD:
			case OP_SUB:
			case OP_MUL:
			case OP_DIV:
				pops = 2, need = VT_NUM, res = VT_NUM;
				break;
			case OP_EQ_S:
			case OP_NE_S:
				pops = 2, need = VT_STR, res = VT_BOOL;
				break;
			case OP_AND:
			case OP_OR:
				pops = 2, need = VT_BOOL, res = VT_BOOL;
				break;
			default:			/* numeric comparisons */
				pops = 2, need = VT_NUM, res = VT_BOOL;
				break;
		}
		if (sp < pops)
			return "The compiled rule's stack underflows.";
		while (pops-- > 0)
			if (types[--sp] != need)
				return "The compiled rule mixes types.";
		types[sp++] = res;
	}
	if (sp != 1 || types[0] != VT_BOOL)
		return "The compiled rule does not end with one condition.";
	return NULL;
}
