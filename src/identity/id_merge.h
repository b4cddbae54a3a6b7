/*
 * id_merge.h
 *		crm.id_merge: a disjoint-set (union-find) state over bigint ids.
 *
 * On disk an id_merge is the flattened result: every id of the state with
 * the golden (smallest) id of its component, sorted by id.  While an
 * aggregate runs, the state is a growable union-find (IdMergeState) in the
 * aggregate's memory context.
 */
#ifndef CRM_ID_MERGE_H
#define CRM_ID_MERGE_H

#define IDMERGE_VERSION		1

typedef struct IdMergePair
{
	int64		member;
	int64		golden;
} IdMergePair;

/* The stored value: pairs sorted by member, golden = min of the component. */
typedef struct IdMergeData
{
	int32		vl_len_;		/* varlena header (do not touch directly) */
	int32		version;		/* IDMERGE_VERSION */
	int64		count;			/* number of pairs */
	IdMergePair pairs[FLEXIBLE_ARRAY_MEMBER];
} IdMergeData;

#define IDMERGE_HDRSZ	offsetof(IdMergeData, pairs)
/* The most pairs a value can hold: a varlena is at most 1 GB. */
#define IDMERGE_MAX_PAIRS	((int64) ((MaxAllocSize - IDMERGE_HDRSZ) / sizeof(IdMergePair)))

#define DatumGetIdMergeP(X)		((IdMergeData *) PG_DETOAST_DATUM(X))
#define PG_GETARG_IDMERGE_P(n)	DatumGetIdMergeP(PG_GETARG_DATUM(n))

/* Result codes of the pure text parser. */
typedef enum IdMergeParseResult
{
	IDMERGE_PARSE_OK = 0,
	IDMERGE_PARSE_SYNTAX,		/* not {{id,...},...} */
	IDMERGE_PARSE_RANGE,		/* a number outside bigint */
	IDMERGE_PARSE_DUPLICATE,	/* an id listed twice */
	IDMERGE_PARSE_TOO_MANY		/* more ids than a value can hold */
} IdMergeParseResult;

/*
 * The parsers are pure (src/identity/id_merge_parse.c: no palloc, no ereport), so
 * test/fuzz builds them without a server.
 *
 * crm_id_merge_parse: {{id,...},...} into pairs[0..cap-1] with each pair's
 * golden, in input order; with pairs NULL it only checks and counts.  On
 * failure *errpos is the byte offset where parsing stopped.
 */
extern IdMergeParseResult crm_id_merge_parse(const char *str, IdMergePair *pairs, int64 cap,
											 int64 *npairs, int *errpos);
/* Sorts pairs by member; IDMERGE_PARSE_DUPLICATE when a member repeats. */
extern IdMergeParseResult crm_id_merge_sort(IdMergePair *pairs, int64 n);
/* Position of member in pairs sorted by member, or -1. */
extern int64 crm_id_merge_search(const IdMergePair *pairs, int64 n, int64 member);
/* NULL when pairs are a valid stored value, else what is wrong. */
extern const char *crm_id_merge_check(const IdMergePair *pairs, int64 n);

/*
 * Binary form: int64 count, then count (member, golden) pairs.  The header
 * gives IDMERGE_PARSE_SYNTAX when shorter than the count and
 * IDMERGE_PARSE_RANGE when the count does not match the length; the pairs
 * are read and checked with crm_id_merge_check.
 */
extern IdMergeParseResult crm_id_merge_recv_header(const char *data, int len, int64 *count);
extern const char *crm_id_merge_recv_pairs(const char *data, int64 count, IdMergePair *pairs);

#endif							/* CRM_ID_MERGE_H */
