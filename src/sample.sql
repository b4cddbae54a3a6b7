
-- ===========================================================================
-- sample.sql: deterministic sample retail data (crm.generate_sample)
-- ===========================================================================

CREATE FUNCTION crm.sample_uniform(seed integer, stream integer, key bigint) RETURNS double precision
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_uniform';
COMMENT ON FUNCTION crm.sample_uniform(integer, integer, bigint) IS
	'Deterministic uniform draw on [0, 1): a pure function of (seed, stream, key), used by crm.generate_sample';

CREATE FUNCTION crm.sample_normal(seed integer, stream integer, key bigint) RETURNS double precision
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_sample_normal';
COMMENT ON FUNCTION crm.sample_normal(integer, integer, bigint) IS
	'Deterministic standard normal draw: a pure function of (seed, stream, key), used by crm.generate_sample';

CREATE FUNCTION crm.sample_as_of() RETURNS timestamptz
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN '2026-07-01 00:00:00+00'::timestamptz;
COMMENT ON FUNCTION crm.sample_as_of() IS
	'The moment sample data is "as of": crm.generate_sample puts orders and events in the two years before it (2024-07-01 to 2026-06-30 UTC)';
