/*
 * tag_rule_parse.h
 *		The pure core of the tag rule language (src/segmentation/tag_rule_parse.c): the
 *		compiler and the check of a compiled rule.
 *
 * Nothing here allocates or raises: the caller provides a TagRuleBuild (a
 * fixed-size workspace, about 200 kB) and turns a TagRuleError into an
 * ereport.  Besides libc the code uses only PostgreSQL's port library
 * (snprintf, strlcpy), so test/fuzz builds it without a server.  Limits and
 * positions here are in bytes; tag_rule.c applies the documented limit in
 * characters and reports positions in characters.
 */
#ifndef TAG_RULE_PARSE_H
#define TAG_RULE_PARSE_H

#include "tag_rule.h"

#define TAG_RULE_MAGIC		0x31545243	/* "CRT1" little-endian */
/* The documented limit, in characters of the server encoding. */
#define TAG_RULE_MAX_LEN	4000
/* The same in bytes: at most 4 bytes per character. */
#define TAG_RULE_MAX_BYTES	(TAG_RULE_MAX_LEN * 4)
/* Every token is at least one character and emits at most one instruction. */
#define TAG_RULE_MAX_INSTR	TAG_RULE_MAX_LEN
#define TAG_RULE_MAX_DEPTH	64
#define FLAG_TIME_DEPENDENT 0x01
#define TAG_RULE_HDRSZ		10

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

/* Workspace and result of tag_rule_build. */
typedef struct TagRuleBuild
{
	char		src[TAG_RULE_MAX_BYTES + 1];	/* the rule, NUL-terminated */
	char		text[TAG_RULE_MAX_BYTES + 1];	/* the current token */
	Instr		instr[TAG_RULE_MAX_INSTR];
	int			ninstr;
	int			stroff[TAG_RULE_MAX_INSTR];	/* strings in strbuf */
	int			nstr;
	char		strbuf[TAG_RULE_MAX_BYTES + TAG_RULE_MAX_INSTR];
	int			strused;
	/* the compiled form, without a varlena header */
	char		out[TAG_RULE_HDRSZ + sizeof(Instr) * TAG_RULE_MAX_INSTR +
					2 * TAG_RULE_MAX_INSTR + TAG_RULE_MAX_BYTES];
	size_t		outlen;
} TagRuleBuild;

extern const char *const tag_feature_names[TF_N_FEATURES];
extern const char *const tag_weekday_names[7];
extern const char *const tag_op_names[OP_N_OPS];
extern const char *const tag_fn_names[FN_N];

/*
 * Compile rule[0..len-1] (a NUL ends it early) into b->out.  Returns false and fills *err (byte
 * position) on a bad rule.  In TAG_RULE_TAGS mode every identifier is passed
 * to lookup_tag, which returns its tag id or -1.
 */
extern bool tag_rule_build(const char *rule, size_t len, TagRuleMode mode,
						   int (*lookup_tag) (const char *name, void *arg),
						   void *lookup_arg, TagRuleBuild *b, TagRuleError *err);

/* NULL when d[0..len-1] is a valid compiled rule, else what is wrong. */
extern const char *tag_program_check(const char *d, int len);

#endif							/* TAG_RULE_PARSE_H */
