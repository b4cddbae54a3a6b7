-- crm.id_merge: text and binary I/O, the aggregate (serial and forced
-- parallel), accessors, NULLs, self-edges and malformed input.
\i sql/include/expect_error.sql

-- text form: components in order of their golden (smallest) id, each sorted
SELECT '{{3,1},{ 5 , 4,9}, {-2}}'::crm.id_merge AS parsed;
SELECT '{}'::crm.id_merge AS empty, ' { } '::crm.id_merge AS spaced;
SELECT '{{9223372036854775807,-9223372036854775808}}'::crm.id_merge AS extremes;

-- malformed input: 22P02 (syntax, duplicates), 22003 (range)
SELECT pg_temp.expect_error($$SELECT ''::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '   '::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{1,2},}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{1,,2}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{1,2}}x'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{1,2}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{1.5}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{-}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{a}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{1,2},{2,3}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{7,7}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{9223372036854775808}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{-9223372036854775809}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT '{{99999999999999999999999}}'::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT (E'{{1}}\x01')::crm.id_merge$$);
-- a large well-formed value round-trips
SELECT crm.id_merge_size(v) AS ids, v::text::crm.id_merge::text = v::text AS round_trip
FROM (SELECT ('{{' || string_agg(g::text, ',') || '}}')::crm.id_merge AS v FROM generate_series(1, 100000) g) s;

-- the aggregate: edges (a, b); a NULL end adds the other id alone; two NULLs
-- add nothing; a self-edge adds the id alone
SELECT crm.id_merge_agg(a, b) FROM (VALUES (1, 2), (3, 4), (2, 3), (10, NULL), (NULL, NULL), (7, 7), (NULL, 12)) v(a, b);
SELECT crm.id_merge_agg(a, b) AS no_rows FROM (VALUES (1::bigint, 2::bigint)) v(a, b) WHERE false;
SELECT crm.id_merge_agg(a, b) AS only_nulls FROM (VALUES (NULL::bigint, NULL::bigint)) v(a, b);
SELECT * FROM crm.id_merge_groups((SELECT crm.id_merge_agg(a, b) FROM (VALUES (5, 3), (3, 8), (20, 21), (4, 4)) v(a, b))) ORDER BY member;
SELECT crm.id_merge_golden('{{3,1},{5,4,9}}', 9) AS of_9, crm.id_merge_golden('{{3,1},{5,4,9}}', 3) AS of_3,
       crm.id_merge_golden('{{3,1},{5,4,9}}', 100) AS of_unknown, crm.id_merge_golden('{}', 1) AS of_empty;
SELECT crm.id_merge_size('{{3,1},{5,4,9}}') AS size, crm.id_merge_size('{}') AS empty_size;
-- STRICT accessors: NULL in, NULL out
SELECT crm.id_merge_golden(NULL, 1) IS NULL AS golden_null_state, crm.id_merge_golden('{{1}}', NULL) IS NULL AS golden_null_id,
       (SELECT count(*) FROM crm.id_merge_groups(NULL)) AS groups_of_null;

-- a long chain and a star: one component each
SELECT crm.id_merge_size(s) AS ids, (SELECT count(DISTINCT golden) FROM crm.id_merge_groups(s)) AS components,
       (SELECT min(golden) FROM crm.id_merge_groups(s)) AS golden
FROM (SELECT crm.id_merge_agg(g, g + 1) AS s FROM generate_series(1, 50000) g) x;
SELECT crm.id_merge_size(s) AS ids, (SELECT count(DISTINCT golden) FROM crm.id_merge_groups(s)) AS components
FROM (SELECT crm.id_merge_agg(1000000, g) AS s FROM generate_series(1, 100000) g) x;

-- forced parallel plan == serial plan
-- (a regular table: parallel workers cannot read temporary ones)
CREATE TABLE public.idm_edges AS
	SELECT g::bigint AS a, ((g * 7919) % 60000)::bigint AS b FROM generate_series(1, 60000) g
	UNION ALL SELECT g, NULL FROM generate_series(70001, 70100) g;
ANALYZE public.idm_edges;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET force_parallel_mode = on;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF) SELECT crm.id_merge_agg(a, b) FROM public.idm_edges;
CREATE TEMP TABLE par AS SELECT crm.id_merge_agg(a, b)::text AS v FROM public.idm_edges;
RESET parallel_leader_participation;
RESET force_parallel_mode;
SET max_parallel_workers_per_gather = 0;
CREATE TEMP TABLE ser AS SELECT crm.id_merge_agg(a, b)::text AS v FROM public.idm_edges;
RESET ALL;
SELECT par.v = ser.v AS parallel_equals_serial, length(ser.v) > 0 AS nonempty,
       crm.id_merge_size(ser.v::crm.id_merge) AS ids,
       (SELECT count(DISTINCT golden) FROM crm.id_merge_groups(ser.v::crm.id_merge)) AS components
FROM par, ser;

-- binary round trip through COPY
CREATE TEMP TABLE bin (v crm.id_merge);
INSERT INTO bin VALUES ('{{1,2,5},{3,4}}'), ('{}'), ('{{-7}}');
SELECT '/tmp/crm_id_merge_' || pg_backend_pid() || '.bin' AS binfile \gset
COPY bin TO :'binfile' WITH (FORMAT binary);
CREATE TEMP TABLE bin2 (v crm.id_merge);
COPY bin2 FROM :'binfile' WITH (FORMAT binary);
SELECT v FROM bin2 ORDER BY v::text;
-- corrupted binary values are rejected (22P03): a bytea field's bytes are
-- read back as an id_merge
CREATE TEMP TABLE bad (label text, hex text);
INSERT INTO bad VALUES
	('too short',        '00000000'),
	('count too large',  '0000000000000005' || '0000000000000001' || '0000000000000001'),
	('negative count',   'ffffffffffffffff'),
	('golden > member',  '0000000000000002' || '0000000000000001' || '0000000000000001' || '0000000000000002' || '0000000000000003'),
	('not sorted',       '0000000000000002' || '0000000000000002' || '0000000000000002' || '0000000000000001' || '0000000000000001'),
	('golden not own',   '0000000000000002' || '0000000000000001' || '0000000000000001' || '0000000000000002' || '0000000000000000'),
	('valid',            '0000000000000002' || '0000000000000001' || '0000000000000001' || '0000000000000002' || '0000000000000001');
CREATE FUNCTION pg_temp.recv_hex(hex text, f text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('COPY (SELECT decode(%L, ''hex'')) TO %L WITH (FORMAT binary)', hex, f);
	TRUNCATE bin2;
	EXECUTE format('COPY bin2 FROM %L WITH (FORMAT binary)', f);
	RETURN (SELECT v::text FROM bin2);
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'COPY bin2, line 1, column v: .*', '');
END
$$;
SELECT label, pg_temp.recv_hex(hex, :'binfile') AS result FROM bad ORDER BY label;
DROP TABLE public.idm_edges, par, ser, bin, bin2, bad;

-- huge and nested malformed input fails fast with 22P02
SELECT pg_temp.expect_error($$SELECT repeat('{', 1000000)::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT ('{{' || repeat('1', 1000000) || '}}')::crm.id_merge$$);
SELECT pg_temp.expect_error($$SELECT ('{{1' || repeat(',', 1000000) || '}}')::crm.id_merge$$);
SELECT * FROM crm.verify();
