
-- ===========================================================================
-- id_merge.sql: crm.id_merge, a union-find state over bigint ids, and the
-- parallel aggregate crm.id_merge_agg (C, src/identity/id_merge.c)
-- ===========================================================================

CREATE TYPE crm.id_merge;

CREATE FUNCTION crm.id_merge_in(cstring) RETURNS crm.id_merge
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_in';
COMMENT ON FUNCTION crm.id_merge_in(cstring) IS 'Text input of crm.id_merge: ''{{1,2,5},{3,4}}'', each id at most once';
CREATE FUNCTION crm.id_merge_out(crm.id_merge) RETURNS cstring
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_out';
COMMENT ON FUNCTION crm.id_merge_out(crm.id_merge) IS 'Text output of crm.id_merge: components in order of their golden (smallest) id, each sorted';
CREATE FUNCTION crm.id_merge_recv(internal) RETURNS crm.id_merge
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_recv';
COMMENT ON FUNCTION crm.id_merge_recv(internal) IS 'Binary input of crm.id_merge; validates every field';
CREATE FUNCTION crm.id_merge_send(crm.id_merge) RETURNS bytea
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_send';
COMMENT ON FUNCTION crm.id_merge_send(crm.id_merge) IS 'Binary output of crm.id_merge';

CREATE TYPE crm.id_merge (
	INPUT = crm.id_merge_in,
	OUTPUT = crm.id_merge_out,
	RECEIVE = crm.id_merge_recv,
	SEND = crm.id_merge_send,
	INTERNALLENGTH = VARIABLE,
	ALIGNMENT = double,
	STORAGE = extended
);
COMMENT ON TYPE crm.id_merge IS
	'Disjoint-set (union-find) result over bigint ids: every id with the golden (smallest) id of its component; 16 bytes per id';

CREATE FUNCTION crm.id_merge_golden(crm.id_merge, bigint) RETURNS bigint
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_golden';
COMMENT ON FUNCTION crm.id_merge_golden(crm.id_merge, bigint) IS
	'The golden (smallest) id of the component holding the id; an id not in the state is its own golden';

CREATE FUNCTION crm.id_merge_size(crm.id_merge) RETURNS bigint
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_size';
COMMENT ON FUNCTION crm.id_merge_size(crm.id_merge) IS 'The number of ids an id_merge holds';

CREATE FUNCTION crm.id_merge_groups(crm.id_merge, OUT member bigint, OUT golden bigint)
	RETURNS SETOF record
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE ROWS 1000 AS 'MODULE_PATHNAME', 'crm_id_merge_groups';
COMMENT ON FUNCTION crm.id_merge_groups(crm.id_merge) IS
	'Every id of the state with its golden (the smallest id of its component), in order of member';

CREATE FUNCTION crm.id_merge_agg_trans(internal, bigint, bigint) RETURNS internal
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_agg_trans';
COMMENT ON FUNCTION crm.id_merge_agg_trans(internal, bigint, bigint) IS
	'Transition of crm.id_merge_agg: links a and b (not STRICT: a NULL end adds the other id alone)';
CREATE FUNCTION crm.id_merge_agg_final(internal) RETURNS crm.id_merge
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_agg_final';
COMMENT ON FUNCTION crm.id_merge_agg_final(internal) IS
	'Final function of crm.id_merge_agg (not STRICT: no rows give the empty state)';
CREATE FUNCTION crm.id_merge_agg_combine(internal, internal) RETURNS internal
	LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_agg_combine';
COMMENT ON FUNCTION crm.id_merge_agg_combine(internal, internal) IS
	'Combine function of crm.id_merge_agg (not STRICT: a worker may have seen no rows)';
CREATE FUNCTION crm.id_merge_agg_serialize(internal) RETURNS bytea
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_agg_serialize';
COMMENT ON FUNCTION crm.id_merge_agg_serialize(internal) IS 'Serialize function of crm.id_merge_agg';
CREATE FUNCTION crm.id_merge_agg_deserialize(bytea, internal) RETURNS internal
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_id_merge_agg_deserialize';
COMMENT ON FUNCTION crm.id_merge_agg_deserialize(bytea, internal) IS 'Deserialize function of crm.id_merge_agg; checks version and length';

CREATE AGGREGATE crm.id_merge_agg(a bigint, b bigint) (
	SFUNC = crm.id_merge_agg_trans,
	STYPE = internal,
	FINALFUNC = crm.id_merge_agg_final,
	FINALFUNC_MODIFY = READ_WRITE,
	COMBINEFUNC = crm.id_merge_agg_combine,
	SERIALFUNC = crm.id_merge_agg_serialize,
	DESERIALFUNC = crm.id_merge_agg_deserialize,
	PARALLEL = SAFE
);
COMMENT ON AGGREGATE crm.id_merge_agg(bigint, bigint) IS
	'Union-find over the edges (a, b): the connected components of the ids seen; a NULL end adds the other id alone';
