/*
 * fuzz_tag_rule.c
 *		libFuzzer target: the tag rule compiler and the check of compiled
 *		rules (src/segmentation/tag_rule_parse.c).  First byte: bit 0 picks the mode
 *		(feature rule or segment expression), bit 1 feeds the rest to
 *		tag_program_check as a compiled rule instead of compiling it.  A rule
 *		that compiles must pass tag_program_check, and a failure must carry
 *		an SQLSTATE, a position within the rule and a message.
 */
#include "postgres.h"

#include <stdlib.h>

#include "tag_rule_parse.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static TagRuleBuild *build;

/* Segment mode: names starting with "x" are unknown, others get an id. */
static int
lookup_tag(const char *name, void *arg)
{
	(void) arg;
	if (name[0] == 'x' || name[0] == '\0')
		return -1;
	return (int) (strlen(name) % 1000) + 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TagRuleError err;
	TagRuleMode mode;

	if (size < 1 || size > TAG_RULE_MAX_BYTES + 2)
		return 0;
	if (build == NULL)
		build = malloc(sizeof(TagRuleBuild));
	mode = (data[0] & 1) ? TAG_RULE_TAGS : TAG_RULE_FEATURES;
	if (data[0] & 2)
	{
		int			len = (int) size - 1;
		char	   *d = malloc(len > 0 ? len : 1);

		memcpy(d, data + 1, len);
		(void) tag_program_check(d, len);
		free(d);
		return 0;
	}
	if (tag_rule_build((const char *) data + 1, size - 1, mode, lookup_tag, NULL, build, &err))
	{
		const char *problem = tag_program_check(build->out, (int) build->outlen);

		if (problem != NULL)
			abort();
	}
	else if (err.sqlstate == 0 || err.position < 1 ||
			 (err.position > (int) size && err.position != TAG_RULE_MAX_BYTES + 1) ||
			 err.message[0] == '\0')
		abort();
	return 0;
}
