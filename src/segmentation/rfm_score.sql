
-- ===========================================================================
-- rfm_score.sql: the crm.rfm_score type (src/segmentation/rfm_score.c)
-- ===========================================================================
CREATE TYPE crm.rfm_score;

CREATE FUNCTION crm.rfm_score_in(cstring) RETURNS crm.rfm_score
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_in';
COMMENT ON FUNCTION crm.rfm_score_in(cstring) IS 'Text input of rfm_score: R5F4M3, case-insensitive, each score 1-9';
CREATE FUNCTION crm.rfm_score_out(crm.rfm_score) RETURNS cstring
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_out';
COMMENT ON FUNCTION crm.rfm_score_out(crm.rfm_score) IS 'Text output of rfm_score: R5F4M3';
CREATE FUNCTION crm.rfm_score_recv(internal) RETURNS crm.rfm_score
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_recv';
COMMENT ON FUNCTION crm.rfm_score_recv(internal) IS 'Binary input of rfm_score: three bytes R, F, M';
CREATE FUNCTION crm.rfm_score_send(crm.rfm_score) RETURNS bytea
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_send';
COMMENT ON FUNCTION crm.rfm_score_send(crm.rfm_score) IS 'Binary output of rfm_score: three bytes R, F, M';

CREATE TYPE crm.rfm_score (
	INPUT = crm.rfm_score_in,
	OUTPUT = crm.rfm_score_out,
	RECEIVE = crm.rfm_score_recv,
	SEND = crm.rfm_score_send,
	INTERNALLENGTH = 4,
	PASSEDBYVALUE,
	ALIGNMENT = int4,
	STORAGE = plain
);
COMMENT ON TYPE crm.rfm_score IS 'Recency, frequency and monetary scores 1-9 (quintiles 1-5 by default), text form R5F4M3; ordered by R, then F, then M';

CREATE FUNCTION crm.rfm_score(r integer, f integer, m integer) RETURNS crm.rfm_score
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_make';
COMMENT ON FUNCTION crm.rfm_score(integer, integer, integer) IS 'Builds an rfm_score from its three scores (each 1-9)';
CREATE FUNCTION crm.r(crm.rfm_score) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_r';
COMMENT ON FUNCTION crm.r(crm.rfm_score) IS 'The recency score of an rfm_score';
CREATE FUNCTION crm.f(crm.rfm_score) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_f';
COMMENT ON FUNCTION crm.f(crm.rfm_score) IS 'The frequency score of an rfm_score';
CREATE FUNCTION crm.m(crm.rfm_score) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_m';
COMMENT ON FUNCTION crm.m(crm.rfm_score) IS 'The monetary score of an rfm_score';

CREATE FUNCTION crm.rfm_score_cmp(crm.rfm_score, crm.rfm_score) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_cmp';
COMMENT ON FUNCTION crm.rfm_score_cmp(crm.rfm_score, crm.rfm_score) IS 'btree support: compares by R, then F, then M';
CREATE FUNCTION crm.rfm_score_eq(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_eq';
COMMENT ON FUNCTION crm.rfm_score_eq(crm.rfm_score, crm.rfm_score) IS 'rfm_score =';
CREATE FUNCTION crm.rfm_score_ne(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_ne';
COMMENT ON FUNCTION crm.rfm_score_ne(crm.rfm_score, crm.rfm_score) IS 'rfm_score <>';
CREATE FUNCTION crm.rfm_score_lt(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_lt';
COMMENT ON FUNCTION crm.rfm_score_lt(crm.rfm_score, crm.rfm_score) IS 'rfm_score <';
CREATE FUNCTION crm.rfm_score_le(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_le';
COMMENT ON FUNCTION crm.rfm_score_le(crm.rfm_score, crm.rfm_score) IS 'rfm_score <=';
CREATE FUNCTION crm.rfm_score_gt(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_gt';
COMMENT ON FUNCTION crm.rfm_score_gt(crm.rfm_score, crm.rfm_score) IS 'rfm_score >';
CREATE FUNCTION crm.rfm_score_ge(crm.rfm_score, crm.rfm_score) RETURNS boolean
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'MODULE_PATHNAME', 'crm_rfm_score_ge';
COMMENT ON FUNCTION crm.rfm_score_ge(crm.rfm_score, crm.rfm_score) IS 'rfm_score >=';
CREATE FUNCTION crm.rfm_score_hash(crm.rfm_score) RETURNS integer
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_hash';
COMMENT ON FUNCTION crm.rfm_score_hash(crm.rfm_score) IS 'hash support: 32-bit hash';
CREATE FUNCTION crm.rfm_score_hash_extended(crm.rfm_score, bigint) RETURNS bigint
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'crm_rfm_score_hash_extended';
COMMENT ON FUNCTION crm.rfm_score_hash_extended(crm.rfm_score, bigint) IS 'hash support: seeded 64-bit hash';

CREATE OPERATOR crm.= (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_eq,
	COMMUTATOR = OPERATOR(crm.=), NEGATOR = OPERATOR(crm.<>), RESTRICT = eqsel, JOIN = eqjoinsel, HASHES, MERGES);
CREATE OPERATOR crm.<> (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_ne,
	COMMUTATOR = OPERATOR(crm.<>), NEGATOR = OPERATOR(crm.=), RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR crm.< (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_lt,
	COMMUTATOR = OPERATOR(crm.>), NEGATOR = OPERATOR(crm.>=), RESTRICT = scalarltsel, JOIN = scalarltjoinsel);
CREATE OPERATOR crm.<= (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_le,
	COMMUTATOR = OPERATOR(crm.>=), NEGATOR = OPERATOR(crm.>), RESTRICT = scalarlesel, JOIN = scalarlejoinsel);
CREATE OPERATOR crm.> (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_gt,
	COMMUTATOR = OPERATOR(crm.<), NEGATOR = OPERATOR(crm.<=), RESTRICT = scalargtsel, JOIN = scalargtjoinsel);
CREATE OPERATOR crm.>= (LEFTARG = crm.rfm_score, RIGHTARG = crm.rfm_score, FUNCTION = crm.rfm_score_ge,
	COMMUTATOR = OPERATOR(crm.<=), NEGATOR = OPERATOR(crm.<), RESTRICT = scalargesel, JOIN = scalargejoinsel);
COMMENT ON OPERATOR crm.= (crm.rfm_score, crm.rfm_score) IS 'rfm_score equality';
COMMENT ON OPERATOR crm.<> (crm.rfm_score, crm.rfm_score) IS 'rfm_score inequality';
COMMENT ON OPERATOR crm.< (crm.rfm_score, crm.rfm_score) IS 'rfm_score less than (by R, then F, then M)';
COMMENT ON OPERATOR crm.<= (crm.rfm_score, crm.rfm_score) IS 'rfm_score less than or equal';
COMMENT ON OPERATOR crm.> (crm.rfm_score, crm.rfm_score) IS 'rfm_score greater than';
COMMENT ON OPERATOR crm.>= (crm.rfm_score, crm.rfm_score) IS 'rfm_score greater than or equal';

CREATE OPERATOR CLASS crm.rfm_score_ops DEFAULT FOR TYPE crm.rfm_score USING btree AS
	OPERATOR 1 crm.<,
	OPERATOR 2 crm.<=,
	OPERATOR 3 crm.=,
	OPERATOR 4 crm.>=,
	OPERATOR 5 crm.>,
	FUNCTION 1 crm.rfm_score_cmp(crm.rfm_score, crm.rfm_score);
CREATE OPERATOR CLASS crm.rfm_score_hash_ops DEFAULT FOR TYPE crm.rfm_score USING hash AS
	OPERATOR 1 crm.=,
	FUNCTION 1 crm.rfm_score_hash(crm.rfm_score),
	FUNCTION 2 crm.rfm_score_hash_extended(crm.rfm_score, bigint);
