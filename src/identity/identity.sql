
-- ===========================================================================
-- identity.sql: identity resolution.  Blocklist, review queue, merge log,
-- crm.merge_customers / crm.unmerge, online stitching (trigger in C,
-- src/identity/identity.c) and batch stitching (crm.stitch_identities),
-- both under the link policy of src/identity/identity_policy.c.
--
-- Invariants kept here:
--   * a golden customer has merged_into NULL; every other record's
--     merged_into is its golden (never a chain);
--   * merges move customer_id of orders, events and identities to the
--     survivor; origin_customer_id never changes;
--   * an identity the survivor already holds (same kind and value) is not
--     moved: it stays on the record it was on ("parked"), so UNIQUE (kind,
--     value, customer_id) holds and unmerge has nothing to re-create.
-- ===========================================================================

-- ---------------------------------------------------------------------------
-- Blocklist: values that never link anybody
-- ---------------------------------------------------------------------------
CREATE TABLE crm.identity_blocklist (
	kind		text REFERENCES crm.identity_kind (kind) ON UPDATE CASCADE ON DELETE CASCADE,
	value		text NOT NULL CONSTRAINT identity_blocklist_value_normalized
					CHECK (value = pg_catalog.lower(pg_catalog.btrim(value))),
	reason		text,
	builtin		boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX identity_blocklist_unique ON crm.identity_blocklist (COALESCE(kind, ''), value);
CREATE INDEX identity_blocklist_value_idx ON crm.identity_blocklist (value);
COMMENT ON TABLE crm.identity_blocklist IS
	'Identifier values that never link customer records (junk phones, placeholders, test numbers); kind NULL means every kind.  Values are stored lower-case and trimmed';
COMMENT ON COLUMN crm.identity_blocklist.kind IS 'The kind the value is blocked for; NULL blocks it for every kind';
COMMENT ON COLUMN crm.identity_blocklist.builtin IS 'Shipped with crm_ext; pg_dump keeps only the rows you add (builtin = false)';
INSERT INTO crm.identity_blocklist (kind, value, reason, builtin) VALUES
	(NULL,    '',            'empty',                 true),
	(NULL,    '0',           'placeholder',           true),
	(NULL,    'null',        'placeholder',           true),
	(NULL,    'none',        'placeholder',           true),
	(NULL,    'unknown',     'placeholder',           true),
	(NULL,    'n/a',         'placeholder',           true),
	('phone', '00000000000', 'junk phone',            true),
	('phone', '0000000000',  'junk phone',            true),
	('phone', '11111111111', 'junk phone',            true),
	('phone', '12345678901', 'junk phone',            true),
	('phone', '13800138000', 'well-known test number', true),
	('phone', '13888888888', 'well-known test number', true),
	('email', 'test@test.com', 'test address',        true),
	('email', 'noreply@example.com', 'test address',  true);
SELECT pg_catalog.pg_extension_config_dump('crm.identity_blocklist', 'WHERE NOT builtin');

-- ---------------------------------------------------------------------------
-- The link policy (C, src/identity/identity_policy.c): online and batch
-- stitching both ask it whether a shared value may link
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.identity_blocked(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_blocked';
COMMENT ON FUNCTION crm.identity_blocked(text, text) IS
	'True when crm.identity_blocklist blocks the value (compared lower-case and trimmed) for the kind';

CREATE FUNCTION crm.identity_may_link(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_may_link_sql';
COMMENT ON FUNCTION crm.identity_may_link(text, text) IS
	'The identity link policy: true when the value may link the customer records holding it (not blocklisted for the kind; a known kind; strong, or weak and held by at most max_customers records of crm.identity)';

CREATE FUNCTION crm.identity_may_link(kind text, value text, holders bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_may_link_sql';
COMMENT ON FUNCTION crm.identity_may_link(text, text, bigint) IS
	'The identity link policy for a value held by the given number of customer records (batch stitching counts them itself); holders must not be negative';

CREATE FUNCTION crm.identity_is_hub(kind text, value text) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_is_hub_sql';
COMMENT ON FUNCTION crm.identity_is_hub(text, text) IS
	'The identity link policy''s hubs: true when a strong kind''s value is held by more records of crm.identity than the kind''s max_holders (and not blocklisted); a hub links nobody, stitching sends its holders to review';

CREATE FUNCTION crm.identity_is_hub(kind text, value text, holders bigint) RETURNS boolean
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_identity_is_hub_sql';
COMMENT ON FUNCTION crm.identity_is_hub(text, text, bigint) IS
	'crm.identity_is_hub for a value held by the given number of customer records (batch stitching counts them itself); holders must not be negative';

-- ---------------------------------------------------------------------------
-- Review queue: links stitching would not make on its own
-- ---------------------------------------------------------------------------
CREATE TABLE crm.identity_review (
	review_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	customer_a		bigint NOT NULL REFERENCES crm.customer (customer_id),
	customer_b		bigint NOT NULL REFERENCES crm.customer (customer_id),
	conflict_kind	text REFERENCES crm.identity_kind (kind) ON UPDATE CASCADE,
	via_kind		text REFERENCES crm.identity_kind (kind) ON UPDATE CASCADE,
	source			text NOT NULL CONSTRAINT identity_review_source_valid CHECK (source IN ('online', 'batch', 'unmerge')),
	merge_id		bigint,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	resolved_at		timestamptz,
	resolution		text CONSTRAINT identity_review_resolution_valid CHECK (resolution IN ('merged', 'kept_apart')),
	CONSTRAINT identity_review_ordered CHECK (customer_a < customer_b),
	CONSTRAINT identity_review_resolved CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
CREATE UNIQUE INDEX identity_review_open_pair ON crm.identity_review (customer_a, customer_b) WHERE resolved_at IS NULL;
CREATE INDEX identity_review_pair_idx ON crm.identity_review (customer_a, customer_b);
COMMENT ON TABLE crm.identity_review IS
	'Pairs of customers stitching will not merge: linked by an identifier but holding different values of a single-valued kind (two member numbers), or sharing a hub (a strong identifier held by more records than its kind''s max_holders), waiting for a person to decide; and pairs kept apart (resolution kept_apart, e.g. by crm.unmerge), which stitching never merges again';
COMMENT ON COLUMN crm.identity_review.conflict_kind IS 'The single-valued kind both customers hold with different values (NULL for a hub pair or a pair an unmerge separated)';
COMMENT ON COLUMN crm.identity_review.merge_id IS 'For source unmerge: the merge that was undone';
COMMENT ON COLUMN crm.identity_review.resolution IS 'merged: a person merged them (crm.merge_customers); kept_apart: stitching must never merge them';
COMMENT ON COLUMN crm.identity_review.via_kind IS 'The kind of the shared identifier that linked them (NULL from batch stitching, except for a hub pair: the hub''s kind)';

CREATE FUNCTION crm.identity_review_hub(kind text, value text, source text) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- A hub (crm.identity_is_hub) links nobody: every golden customer holding
-- the value goes to the review queue beside the oldest golden holding it
-- (conflict_kind NULL, via_kind the hub's kind), unless the pair has a
-- review already (open or decided).  Online and batch stitching both call
-- this.  Returns the rows added.
DECLARE
	n bigint;
BEGIN
	WITH holder AS (
		SELECT DISTINCT COALESCE(c.merged_into, c.customer_id) AS g
		FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		WHERE i.kind = identity_review_hub.kind AND i.value = identity_review_hub.value
	), ranked AS (
		SELECT h.g, pg_catalog.first_value(h.g) OVER (ORDER BY c.created_at, c.customer_id) AS anchor
		FROM holder h JOIN crm.customer c ON c.customer_id = h.g
		WHERE c.forgotten_at IS NULL
	)
	INSERT INTO crm.identity_review (customer_a, customer_b, via_kind, source)
	SELECT LEAST(r.anchor, r.g), GREATEST(r.anchor, r.g), identity_review_hub.kind, identity_review_hub.source
	FROM ranked r
	WHERE r.g <> r.anchor
	  AND NOT EXISTS (SELECT 1 FROM crm.identity_review x
	                  WHERE x.customer_a = LEAST(r.anchor, r.g) AND x.customer_b = GREATEST(r.anchor, r.g))
	ORDER BY r.g
	ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.identity_review_hub(text, text, text) IS
	'Internal: puts the golden customers holding a hub value (crm.identity_is_hub) in the review queue beside the oldest one, once per pair; returns the rows added';
SELECT pg_catalog.pg_extension_config_dump('crm.identity_review', '');
SELECT pg_catalog.pg_extension_config_dump('crm.identity_review_review_id_seq', '');

-- ---------------------------------------------------------------------------
-- Merge log: everything needed to undo a merge
-- ---------------------------------------------------------------------------
CREATE TABLE crm.merge_log (
	merge_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	survivor		bigint NOT NULL REFERENCES crm.customer (customer_id),
	merged			bigint NOT NULL REFERENCES crm.customer (customer_id),
	members			bigint[] NOT NULL,
	source			text NOT NULL CONSTRAINT merge_log_source_valid CHECK (source IN ('manual', 'online', 'batch')),
	reason			text,
	via_identity_id	bigint,
	merged_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	merged_by		name NOT NULL DEFAULT CURRENT_USER,
	orders_moved	bigint NOT NULL DEFAULT 0,
	events_moved	bigint NOT NULL DEFAULT 0,
	identities_moved bigint NOT NULL DEFAULT 0,
	identities_parked bigint NOT NULL DEFAULT 0,
	undone_at		timestamptz,
	undone_by		name,
	CONSTRAINT merge_log_distinct CHECK (survivor <> merged),
	CONSTRAINT merge_log_members_hold_merged CHECK (merged = ANY (members))
);
CREATE INDEX merge_log_survivor_idx ON crm.merge_log (survivor);
CREATE INDEX merge_log_merged_idx ON crm.merge_log (merged);
COMMENT ON TABLE crm.merge_log IS
	'One row per merge of two golden customers: who survived, which records moved (members), how many rows, and when it was undone';
COMMENT ON COLUMN crm.merge_log.members IS
	'The customer records that moved under the survivor: the merged golden record and the records merged into it before';
COMMENT ON COLUMN crm.merge_log.via_identity_id IS 'The crm.identity row whose insert caused an online merge';
COMMENT ON COLUMN crm.merge_log.identities_parked IS
	'Identities of the merged records that the survivor already held: left on their record, so unique (kind, value, customer_id) holds';
SELECT pg_catalog.pg_extension_config_dump('crm.merge_log', '');
SELECT pg_catalog.pg_extension_config_dump('crm.merge_log_merge_id_seq', '');

CREATE FUNCTION crm.golden_customer(customer_id bigint) RETURNS bigint
	LANGUAGE c STABLE STRICT PARALLEL SAFE
	AS 'MODULE_PATHNAME', 'crm_golden_customer';
COMMENT ON FUNCTION crm.golden_customer(bigint) IS
	'The golden customer a record belongs to now (itself when not merged; merged_into followed to its end, in C: every merge and entry point asks); NULL for an unknown id';

-- ---------------------------------------------------------------------------
-- The merge itself (used by every path)
-- ---------------------------------------------------------------------------
-- A golden record and every record under it: those merged into it, and
-- (a chain left by an older release) the records merged into those, level
-- by level (a recursive query over crm.customer is refused by Citus).
CREATE FUNCTION crm.records_under(golden bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	found bigint[] := ARRAY[golden];
	level bigint[] := ARRAY[golden];
	depth integer := 0;
BEGIN
	WHILE level <> '{}' AND depth < 1000 LOOP
		level := ARRAY(SELECT c.customer_id FROM crm.customer c
		               WHERE c.merged_into = ANY (level) AND c.customer_id <> ALL (found));
		found := found || level;
		depth := depth + 1;
	END LOOP;
	RETURN ARRAY(SELECT DISTINCT u.id FROM pg_catalog.unnest(found) u(id) ORDER BY 1);
END
$$;
COMMENT ON FUNCTION crm.records_under(bigint) IS
	'Internal: a golden record and every record merged into it, also along a chain an older release left, sorted';

-- Identifiers parked on the records under a golden customer (a value the
-- golden held already when their record was merged) that the golden does
-- not hold now move up to it: of each value, the lowest identity_id; the
-- rest stay parked.  Returns how many moved.
CREATE FUNCTION crm.identities_to_golden(golden bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN crm.move_customer_rows('crm.identity', golden, 't.identity_id = ANY ($2)',
		ARRAY(SELECT DISTINCT ON (i.kind, i.value) i.identity_id
		      FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		      WHERE c.merged_into = golden
		        AND (i.kind, i.value) NOT IN (SELECT d.kind, d.value FROM crm.identity d WHERE d.customer_id = golden)
		      ORDER BY i.kind, i.value, i.identity_id));
END
$$;
COMMENT ON FUNCTION crm.identities_to_golden(bigint) IS
	'Internal: moves identifiers parked on the records under golden that golden does not hold up to it (the lowest identity_id of a value); returns how many moved';

CREATE FUNCTION crm.merge_goldens(a bigint, b bigint, source text, reason text, via_identity_id bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- Not STRICT: reason and via_identity_id may be NULL.
-- Merges the golden customers of records a and b.  Returns the merge_id, or
-- NULL when they are one customer already or (source online/batch) when a
-- single-valued kind conflicts, which is written to crm.identity_review.
-- source 'manual' raises CR004 instead of returning NULL.
DECLARE
	ga bigint;
	gb bigint;
	s bigint;
	m bigint;
	mem bigint[];
	survivor_records bigint[];
	chained bigint[];
	middle bigint;
	conflict text;
	via_kind text;
	n_orders bigint;
	n_events bigint;
	n_ids bigint;
	n_parked bigint;
	mid bigint;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	IF a IS NULL OR b IS NULL OR source IS NULL THEN
		RAISE EXCEPTION 'merging needs two customer ids'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	LOOP
		-- Both sides resolve to their golden customers: merged_into is
		-- followed to its end, so even a chain left by an older release
		-- (a record merged into a record that was merged later) is merged
		-- golden into golden, never a merged record into another one.
		ga := crm.golden_customer(a);
		gb := crm.golden_customer(b);
		IF ga IS NULL OR gb IS NULL THEN
			RAISE EXCEPTION 'merge refused: customer % does not exist', CASE WHEN ga IS NULL THEN a ELSE b END
				USING ERRCODE = 'CR004';
		END IF;
		IF ga = gb THEN
			IF source = 'manual' THEN
				RAISE EXCEPTION 'merge refused: customers % and % are already one customer (%)', a, b, ga
					USING ERRCODE = 'CR004';
			END IF;
			RETURN NULL;
		END IF;
		-- Lock both golden records in id order (DEVELOPER.md, "Lock order"),
		-- so A->B and B->A at once wait for each other instead of
		-- deadlocking.  FOR NO KEY UPDATE does not block the foreign-key
		-- checks of concurrent inserts.  Another session may have merged or
		-- unmerged a record of theirs while we waited: a and b must still
		-- resolve to the goldens locked (then nobody can change that until
		-- we commit), else the locks are given back (the subtransaction
		-- rolls back: a lock kept on a customer that is no longer golden
		-- would take the next ones out of order) and both sides resolve again.
		BEGIN
			PERFORM crm.lock_rows('crm.customer', ARRAY[ga, gb], 'NO KEY UPDATE');
			IF crm.golden_customer(a) = ga AND crm.golden_customer(b) = gb THEN
				EXIT;
			END IF;
			RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			NULL;
		END;
	END LOOP;

	IF EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id IN (ga, gb) AND c.forgotten_at IS NOT NULL) THEN
		IF source <> 'manual' THEN
			RETURN NULL;	-- stitching leaves forgotten customers alone
		END IF;
		RAISE EXCEPTION 'merge refused: a forgotten customer cannot be merged'
			USING ERRCODE = 'CR004';
	END IF;

	-- The survivor is the oldest golden record (created_at, then id).
	SELECT c.customer_id INTO s FROM crm.customer c WHERE c.customer_id IN (ga, gb)
	ORDER BY c.created_at, c.customer_id LIMIT 1;
	m := CASE WHEN s = ga THEN gb ELSE ga END;

	-- The merged golden and every record under it (all of them point at m;
	-- records chained below one of them by an older release too) move
	-- under the survivor, so no record ends up merged into a merged one.
	mem := crm.records_under(m);
	IF source <> 'manual' THEN
		-- A pair a person kept apart (or an unmerge separated) stays apart:
		-- any record of one golden against any record of the other.
		survivor_records := crm.records_under(s);
		IF EXISTS (SELECT 1 FROM crm.identity_review r
		           WHERE r.resolution = 'kept_apart'
		             AND ((r.customer_a = ANY (survivor_records) AND r.customer_b = ANY (mem))
		               OR (r.customer_a = ANY (mem) AND r.customer_b = ANY (survivor_records)))) THEN
			RETURN NULL;
		END IF;
		-- Two different values of a single-valued kind mean two people: a
		-- kind both hold with more than one value between them.
		SELECT x.kind INTO conflict
		FROM (SELECT i.kind, i.value, i.customer_id FROM crm.identity i WHERE i.customer_id IN (s, m)) x
		JOIN crm.identity_kind k ON k.kind = x.kind AND k.single_valued
		GROUP BY x.kind
		HAVING pg_catalog.bool_or(x.customer_id = s) AND pg_catalog.bool_or(x.customer_id = m)
		   AND pg_catalog.count(DISTINCT x.value) > 1
		ORDER BY x.kind LIMIT 1;
		IF conflict IS NOT NULL THEN
			SELECT i.kind INTO via_kind FROM crm.identity i WHERE i.identity_id = via_identity_id;
			INSERT INTO crm.identity_review (customer_a, customer_b, conflict_kind, via_kind, source)
			VALUES (LEAST(s, m), GREATEST(s, m), conflict, via_kind, source)
			ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
			RETURN NULL;
		END IF;
	END IF;

	-- Members other records were merged into (only a chain left by an older
	-- release has them): their points, stats and tags follow below.
	chained := ARRAY(SELECT DISTINCT c.merged_into FROM crm.customer c
	                 WHERE c.merged_into = ANY (mem) AND c.merged_into <> m
	                 ORDER BY 1);
	UPDATE crm.customer c SET merged_into = s WHERE c.customer_id = ANY (mem);

	-- Core rows of every member (strays inserted for a merged-away record
	-- included) move to the survivor; identifiers the survivor holds
	-- already stay parked on m.
	n_orders := crm.move_customer_rows('crm.orders', s, 't.customer_id = ANY ($2)', mem);
	n_events := crm.move_customer_rows('crm.event', s, 't.customer_id = ANY ($2)', mem);
	n_ids := crm.move_customer_rows('crm.identity', s,
		't.customer_id = $2[1] AND (t.kind, t.value) NOT IN (SELECT d.kind, d.value FROM crm.identity d WHERE d.customer_id = $1)',
		ARRAY[m]);
	SELECT pg_catalog.count(*) INTO n_parked FROM crm.identity i WHERE i.customer_id = m;

	INSERT INTO crm.merge_log (survivor, merged, members, source, reason, via_identity_id,
	                           orders_moved, events_moved, identities_moved, identities_parked)
	VALUES (s, m, mem, source, reason, via_identity_id, n_orders, n_events, n_ids, n_parked)
	RETURNING merge_id INTO mid;

	-- Features with per-customer state (points, stats, tags) move theirs.
	PERFORM crm.run_customer_hooks('merge', s, m);
	FOREACH middle IN ARRAY chained LOOP
		PERFORM crm.run_customer_hooks('merge', s, middle);
	END LOOP;
	RETURN mid;
END
$$;
COMMENT ON FUNCTION crm.merge_goldens(bigint, bigint, text, text, bigint) IS
	'Merges the golden customers of two records (the oldest survives), moves their rows, logs the merge and runs the merge hooks; used by crm.merge_customers and stitching';

CREATE FUNCTION crm.merge_customers(a bigint, b bigint, reason text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: reason may be NULL; NULL ids raise an error.
BEGIN
	IF a IS NULL OR b IS NULL THEN
		RAISE EXCEPTION 'crm.merge_customers needs two customer ids'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF a = b THEN
		RAISE EXCEPTION 'merge refused: a customer cannot be merged with itself'
			USING ERRCODE = 'CR004';
	END IF;
	-- an unknown id is 23503, as at every entry point
	PERFORM crm.resolve_customer(a), crm.resolve_customer(b);
	RETURN crm.merge_goldens(a, b, 'manual', reason, NULL);
END
$$;
COMMENT ON FUNCTION crm.merge_customers(bigint, bigint, text) IS
	'Merges the golden customers of records a and b by hand (the oldest survives) and returns the merge_id; refused with CR004 when they are one customer already, 23503 for an unknown id';

CREATE FUNCTION crm.unmerge(merge_id bigint, cascade boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: a NULL merge_id or cascade raises an error.
-- Undoes one merge, selectively: the merged record and the records under it
-- (merged into it by merges not undone, crm.unmerge_subtree) leave the
-- golden customer they are in now with exactly the rows that arrived on
-- them (origin_customer_id), also rows added since; the golden keeps
-- everything else, so merges made later stay as they are.  cascade undoes
-- the later merges of the same customers first, newest first.  Returns the
-- number of merges undone.
DECLARE
	l crm.merge_log;
	later bigint;
	n bigint := 0;
	who bigint[];
	g bigint;
	sub bigint[];
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	IF merge_id IS NULL THEN
		RAISE EXCEPTION 'crm.unmerge needs a merge_id'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF cascade IS NULL THEN
		RAISE EXCEPTION 'cascade of crm.unmerge must be true or false, not NULL'
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Leave it out (false) to undo this merge alone, or pass cascade => true to undo the later merges of the same customers too.';
	END IF;
	SELECT * INTO l FROM crm.merge_log ml WHERE ml.merge_id = unmerge.merge_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unmerge refused: merge % does not exist', merge_id
			USING ERRCODE = 'CR004',
			      HINT = 'crm.merge_log lists every merge; a merged record''s merge is the row whose merged is that record and undone_at is NULL.';
	END IF;
	IF l.undone_at IS NOT NULL THEN
		RAISE EXCEPTION 'unmerge refused: merge % was already undone', merge_id
			USING ERRCODE = 'CR004',
			      HINT = 'crm.merge_log.undone_at and undone_by say when and by whom; crm.merge_customers merges the customers again.';
	END IF;

	IF cascade THEN
		who := l.members || l.survivor;
		FOR later IN
			SELECT ml.merge_id FROM crm.merge_log ml
			WHERE ml.merge_id > l.merge_id AND ml.undone_at IS NULL
			  AND (ml.survivor = ANY (who) OR ml.merged = ANY (who))
			ORDER BY ml.merge_id DESC
		LOOP
			-- an earlier iteration may have undone it already
			IF (SELECT ml.undone_at IS NULL FROM crm.merge_log ml WHERE ml.merge_id = later) THEN
				n := n + crm.unmerge(later, true);
			END IF;
		END LOOP;
	END IF;

	-- The golden customer the merged record is in now (the survivor, or
	-- whoever the survivor was merged into since), then the merged record
	-- (a golden's records after the golden: DEVELOPER.md, "Lock order"); a
	-- merge that moved them meanwhile is followed, its locks given back as
	-- in crm.merge_goldens.
	LOOP
		g := crm.golden_customer(l.merged);
		IF g = l.merged THEN
			RAISE EXCEPTION 'unmerge refused: merge % is not undone, but customer % is not merged', l.merge_id, l.merged
				USING ERRCODE = 'CR004',
				      HINT = 'crm.merge_log and crm.customer.merged_into disagree: crm.verify() lists such records.';
		END IF;
		BEGIN
			PERFORM 1 FROM crm.customer c WHERE c.customer_id = g FOR NO KEY UPDATE;
			PERFORM 1 FROM crm.customer c WHERE c.customer_id = l.merged FOR NO KEY UPDATE;
			IF crm.golden_customer(l.merged) = g THEN
				EXIT;
			END IF;
			RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			NULL;
		END;
	END LOOP;
	sub := crm.unmerge_subtree(l.merge_id);

	UPDATE crm.customer c
	SET merged_into = CASE WHEN c.customer_id = l.merged THEN NULL ELSE l.merged END
	WHERE c.customer_id = ANY (sub);
	-- Every row that arrived on one of these records goes back (attribution
	-- by origin_customer_id, also for rows added since the merge); the
	-- golden keeps the rows of its other records.
	PERFORM crm.move_customer_rows(x.tbl, l.merged, 't.customer_id = $2[1] AND t.origin_customer_id = ANY ($3)', ARRAY[g], sub)
	FROM (VALUES ('crm.orders'::regclass), ('crm.event'), ('crm.identity')) x(tbl);
	-- An identity parked on a record of either side because its golden held
	-- the same value, from a record that just went to the other side, moves
	-- up to its golden now (the lowest identity_id of a value; the rest stay
	-- parked), as batch stitching moves stray identities.
	PERFORM crm.identities_to_golden(g), crm.identities_to_golden(l.merged);

	UPDATE crm.merge_log x SET undone_at = pg_catalog.now(), undone_by = CURRENT_USER
	WHERE x.merge_id = l.merge_id;
	-- Stitching must not merge the pair a person separated again: only
	-- that pair is kept apart (delete the row to let stitching decide
	-- again), never the golden's other records.
	UPDATE crm.identity_review r SET resolved_at = pg_catalog.now(), resolution = 'kept_apart', merge_id = l.merge_id
	WHERE r.customer_a = LEAST(l.survivor, l.merged) AND r.customer_b = GREATEST(l.survivor, l.merged) AND r.resolved_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO crm.identity_review (customer_a, customer_b, source, merge_id, resolved_at, resolution)
		VALUES (LEAST(l.survivor, l.merged), GREATEST(l.survivor, l.merged), 'unmerge', l.merge_id, pg_catalog.now(), 'kept_apart');
	END IF;
	-- Points, stats and tags: the hooks see the golden and the record restored.
	PERFORM crm.run_customer_hooks('unmerge', g, l.merged);
	RETURN n + 1;
END
$$;
COMMENT ON FUNCTION crm.unmerge(bigint, boolean) IS
	'Undoes one merge selectively: the merged record and the records merged into it leave their golden customer with exactly the rows and points that arrived on them, later merges stay; the unmerge hooks run and only the pair separated is kept apart; cascade => true undoes the later merges of the same customers first; returns the merges undone';

CREATE FUNCTION crm.unmerge_subtree(merge_id bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- A merge hangs the merged golden under the survivor; the records under a
-- record are those merged into it (merged = a golden then, survivor = it)
-- by merges not undone, and the records under those.  Only records still
-- in the same golden customer count.  (Two statements: the walk reads the
-- merge log alone, which Citus can recurse over; crm.customer is
-- distributed there.)
DECLARE
	down bigint[];
	golden bigint;
	found bigint[];
BEGIN
	down := ARRAY(WITH RECURSIVE down(id, depth) AS (
	                  SELECT l.merged, 0 FROM crm.merge_log l WHERE l.merge_id = unmerge_subtree.merge_id
	                  UNION
	                  SELECT x.merged, d.depth + 1 FROM down d
	                  JOIN crm.merge_log x ON x.survivor = d.id AND x.undone_at IS NULL
	                  WHERE d.depth < 1000)
	              SELECT DISTINCT d.id FROM down d);
	SELECT c.merged_into INTO golden FROM crm.customer c
	WHERE c.customer_id = (SELECT l.merged FROM crm.merge_log l WHERE l.merge_id = unmerge_subtree.merge_id);
	SELECT pg_catalog.array_agg(c.customer_id ORDER BY c.customer_id) INTO found
	FROM crm.customer c
	WHERE c.customer_id = ANY (down) AND c.merged_into = golden;
	RETURN found;
END
$$;
COMMENT ON FUNCTION crm.unmerge_subtree(bigint) IS
	'Internal: the records an unmerge of the merge takes back: its merged record and the records merged into that one (by merges not undone, recursively) that are still in the same golden customer';

-- ---------------------------------------------------------------------------
-- Online stitching: the trigger (C) calls crm.stitch_identity when another
-- customer holds the inserted value
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.stitch_identity(identity_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
-- Applies the kind's policy to one identity row and merges its customer
-- with the other golden customers holding the same (kind, value).  Returns
-- the number of merges made.
DECLARE
	r crm.identity;
	g bigint;
	h bigint;
	n integer := 0;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	-- Citus plans a statement on a distributed table for its values (a
	-- generic plan cannot route it): custom plans there.
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	SELECT * INTO r FROM crm.identity i WHERE i.identity_id = stitch_identity.identity_id;
	IF NOT FOUND THEN
		RETURN 0;
	END IF;
	-- An identifier inserted for a merged-away record belongs to its golden
	-- (unless the golden holds the value already).  The insert put it there
	-- (crm.fill_origin_customer('stitch')); this moves one whose record a
	-- merge that committed since the insert's snapshot took away.
	g := crm.golden_customer(r.customer_id);
	IF g <> r.customer_id AND NOT EXISTS (SELECT 1 FROM crm.identity d
	                                      WHERE d.kind = r.kind AND d.value = r.value AND d.customer_id = g) THEN
		PERFORM crm.move_customer_rows('crm.identity', g, 't.identity_id = $2[1] AND t.customer_id = $3[1]',
		                               ARRAY[r.identity_id], ARRAY[r.customer_id]);
	END IF;
	-- The link policy (blocklist, weak kinds' limit, strong kinds' hubs) is
	-- crm.identity_may_link's; a hub's holders go to review instead.
	IF NOT crm.identity_may_link(r.kind, r.value) THEN
		IF crm.identity_is_hub(r.kind, r.value) THEN
			PERFORM crm.identity_review_hub(r.kind, r.value, 'online');
		END IF;
		RETURN 0;
	END IF;
	-- The other golden customers holding the value (the row's own golden
	-- has nothing to merge: most values a shopper adds are held by their
	-- own records already).
	FOR h IN
		SELECT DISTINCT COALESCE(c.merged_into, c.customer_id)
		FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
		WHERE i.kind = r.kind AND i.value = r.value
		  AND COALESCE(c.merged_into, c.customer_id) <> g
		ORDER BY 1
	LOOP
		IF crm.merge_goldens(r.customer_id, h, 'online', 'shared ' || r.kind, r.identity_id) IS NOT NULL THEN
			n := n + 1;
		END IF;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.stitch_identity(bigint) IS
	'Online stitching of one crm.identity row: merges its customer with every other golden customer holding the same value, if the kind''s policy and the blocklist allow';

CREATE FUNCTION crm.identity_stitch_trigger() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_identity_stitch_trigger';
COMMENT ON FUNCTION crm.identity_stitch_trigger() IS
	'AFTER INSERT row trigger on crm.identity: calls crm.stitch_identity when another customer holds the value (off when crm.stitch_on_insert is off)';
CREATE TRIGGER identity_stitch AFTER INSERT ON crm.identity
	FOR EACH ROW EXECUTE FUNCTION crm.identity_stitch_trigger();

-- ---------------------------------------------------------------------------
-- Batch stitching
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.identity_graph() RETURNS crm.id_merge
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	-- The links the policies allow, between customer records (origin ids):
	-- values held by 2+ records that crm.identity_may_link lets link (not
	-- blocklisted; for weak kinds held by at most max_customers records).
	-- A value on exactly two records is one edge (min, max); the rare
	-- larger groups are joined back for theirs.
	WITH grp AS (
		SELECT i.kind, i.value, pg_catalog.min(i.origin_customer_id) AS lo,
		       pg_catalog.max(i.origin_customer_id) AS hi, pg_catalog.count(*) AS n
		FROM crm.identity i
		GROUP BY i.kind, i.value
		HAVING pg_catalog.count(*) > 1
	), linking AS (
		SELECT g.kind, g.value, g.lo, g.hi, g.n
		FROM grp g
		WHERE crm.identity_may_link(g.kind, g.value, g.n)
	), edges AS (
		SELECT l.lo AS a, l.hi AS b FROM linking l WHERE l.n = 2
		UNION ALL
		SELECT l.lo, i.origin_customer_id FROM linking l
		JOIN crm.identity i ON i.kind = l.kind AND i.value = l.value
		WHERE l.n > 2
	)
	SELECT crm.id_merge_agg(e.a, e.b) FROM edges e;
END;
COMMENT ON FUNCTION crm.identity_graph() IS
	'The identity graph as an id_merge over customer records: components of records linked by identifiers the kinds'' policies and the blocklist allow';

-- The pairs kept apart (crm.identity_review, resolution kept_apart), by the
-- golden customers their records have now.  (Each side is looked up in its
-- own step: on Citus crm.customer is distributed by the id, and one query
-- cannot join it on two other columns.)
CREATE FUNCTION crm.kept_apart_goldens() RETURNS TABLE (golden_a bigint, golden_b bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH a AS MATERIALIZED (
		SELECT COALESCE(c.merged_into, c.customer_id) AS ga, r.customer_b
		FROM crm.identity_review r JOIN crm.customer c ON c.customer_id = r.customer_a
		WHERE r.resolution = 'kept_apart')
	SELECT a.ga, COALESCE(c.merged_into, c.customer_id)
	FROM a JOIN crm.customer c ON c.customer_id = a.customer_b;
END;
COMMENT ON FUNCTION crm.kept_apart_goldens() IS
	'Internal (stitching): the pairs kept apart, as the golden customers of their two records now';

CREATE FUNCTION crm.stitch_plan_component(goldens bigint[], OUT golden bigint, OUT decision text, OUT conflict_kind text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
-- What crm.merge_goldens would decide, merging goldens[2:] one by one into
-- goldens[1] (batch stitching's careful components), without merging: one
-- row per golden, in order: 'merge'; 'kept_apart' (a review kept it apart
-- from the survivor or from a golden merged before it); or 'review' (it
-- holds another value of a single-valued kind than the survivor holds by
-- then; conflict_kind names the first such kind).
DECLARE
	merged_so_far bigint[] := goldens[1:1];
	held_kind text[];
	held_value text[];
	kept_a bigint[];
	kept_b bigint[];
	h bigint;
BEGIN
	-- the survivor's single-valued identifiers; the pairs kept apart
	-- within the component (by the goldens their records have now)
	SELECT pg_catalog.array_agg(i.kind), pg_catalog.array_agg(i.value) INTO held_kind, held_value
	FROM crm.identity i JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
	WHERE i.customer_id = goldens[1];
	IF crm.on_citus() THEN
		PERFORM pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true);
	END IF;
	SELECT pg_catalog.array_agg(x.golden_a), pg_catalog.array_agg(x.golden_b) INTO kept_a, kept_b
	FROM crm.kept_apart_goldens() x
	WHERE x.golden_a = ANY (goldens) AND x.golden_b = ANY (goldens);
	FOREACH h IN ARRAY goldens[2:] LOOP
		golden := h;
		conflict_kind := NULL;
		IF EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest(kept_a), pg_catalog.unnest(kept_b)) k(a, b)
		           WHERE (k.a = h AND k.b = ANY (merged_so_far)) OR (k.b = h AND k.a = ANY (merged_so_far))) THEN
			decision := 'kept_apart';
		ELSE
			SELECT pg_catalog.min(i.kind) INTO conflict_kind
			FROM crm.identity i
			JOIN ROWS FROM (pg_catalog.unnest(held_kind), pg_catalog.unnest(held_value)) v(kind, value)
			  ON v.kind = i.kind AND v.value <> i.value
			WHERE i.customer_id = h;
			IF conflict_kind IS NOT NULL THEN
				decision := 'review';
			ELSE
				decision := 'merge';
				merged_so_far := merged_so_far || h;
				SELECT held_kind || pg_catalog.array_agg(i.kind), held_value || pg_catalog.array_agg(i.value)
				INTO held_kind, held_value
				FROM crm.identity i JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
				WHERE i.customer_id = h;
			END IF;
		END IF;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.stitch_plan_component(bigint[]) IS
	'Internal: the decisions (merge, kept_apart, review with the conflicting kind) crm.merge_goldens would make merging goldens[2:] one by one into goldens[1], without merging; batch stitching merges a careful component by them in one step';

-- Batch stitching: identifiers held by so many customers that they link
-- nobody in the graph (hubs) send their holders to review.
CREATE FUNCTION crm.stitch_review_hubs() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.identity_review_hub(h.kind, h.value, 'batch')
	FROM (SELECT i.kind, i.value FROM crm.identity i GROUP BY i.kind, i.value
	      HAVING pg_catalog.count(*) > 2 AND crm.identity_is_hub(i.kind, i.value, pg_catalog.count(*))) h
	ORDER BY h.kind, h.value;
END
$$;
COMMENT ON FUNCTION crm.stitch_review_hubs() IS
	'Internal (batch stitching): sends the holders of every hub identifier to review';

-- Batch stitching's components: every component of the graph with more
-- than one golden customer, one row per golden, the oldest (created_at,
-- id) first.  The graph links records; merges made meanwhile (by hand,
-- say) link them too: two components whose records share a golden
-- customer are one component, so each golden is in exactly one and is
-- merged at most once, into the survivor of the whole, never into a golden
-- merged in the same pass.  Forgotten customers are left out.
CREATE FUNCTION crm.stitch_goldens(graph crm.id_merge)
RETURNS TABLE (comp bigint, cust bigint, rn bigint, ngold bigint)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
BEGIN
	RETURN QUERY
	WITH rg AS MATERIALIZED (
		SELECT DISTINCT m.golden AS comp, COALESCE(c.merged_into, c.customer_id) AS cust
		FROM crm.id_merge_groups(graph) m JOIN crm.customer c ON c.customer_id = m.member
	), g AS (
		SELECT DISTINCT j.golden AS comp, rg.cust
		FROM crm.id_merge_groups((SELECT crm.id_merge_agg(r.comp, r.cust) FROM rg r)) j
		JOIN rg ON rg.cust = j.member
	), ranked AS (
		SELECT g.comp, g.cust,
		       pg_catalog.row_number() OVER (PARTITION BY g.comp ORDER BY c.created_at, c.customer_id) AS rn,
		       pg_catalog.count(*) OVER (PARTITION BY g.comp) AS ngold
		FROM g JOIN crm.customer c ON c.customer_id = g.cust
		WHERE c.forgotten_at IS NULL)
	SELECT r.comp, r.cust, r.rn, r.ngold FROM ranked r WHERE r.ngold > 1;
END
$$;
COMMENT ON FUNCTION crm.stitch_goldens(crm.id_merge) IS
	'Internal (batch stitching): the golden customers of each component of graph with more than one, oldest first (rn), forgotten ones left out';

-- Batch stitching on Citus moves rows by customer (a row's customer
-- places it on a shard: crm.move_customer_rows), where one node moves them
-- in one statement per table.  Stray rows: those left on records merged
-- away go to their golden, record by record; returns the rows moved and
-- the records whose orders or events moved.
CREATE FUNCTION crm.stitch_strays_by_record(OUT moved bigint, OUT records bigint[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	r record;
BEGIN
	moved := 0;
	records := '{}';
	FOR r IN SELECT 'crm.orders'::regclass AS tbl, x.rec, x.golden
	         FROM (SELECT DISTINCT o.customer_id AS rec, c.merged_into AS golden
	               FROM crm.orders o JOIN crm.customer c ON c.customer_id = o.customer_id
	               WHERE c.merged_into IS NOT NULL) x
	         UNION ALL
	         SELECT 'crm.event'::regclass, x.rec, x.golden
	         FROM (SELECT DISTINCT e.customer_id AS rec, c.merged_into AS golden
	               FROM crm.event e JOIN crm.customer c ON c.customer_id = e.customer_id
	               WHERE c.merged_into IS NOT NULL) x
	         ORDER BY 1, 2 LOOP
		moved := moved + crm.move_customer_rows(r.tbl, r.golden, 't.customer_id = $2[1]', ARRAY[r.rec]);
		records := records || r.rec;
	END LOOP;
	FOR r IN SELECT DISTINCT c.merged_into AS golden
	         FROM crm.identity i JOIN crm.customer c ON c.customer_id = i.customer_id
	         WHERE c.merged_into IS NOT NULL ORDER BY 1 LOOP
		moved := moved + crm.identities_to_golden(r.golden);
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.stitch_strays_by_record() IS
	'Internal (batch stitching on Citus): moves the rows left on merged records to their golden, record by record; returns the rows moved and the records whose orders or events moved';

-- The fast path's moves on Citus, one statement per table for the whole
-- pass: each merged golden's orders, events (its records' too) and
-- identifiers (the lowest identity_id of each value its survivor does not
-- hold, among all the goldens merged into it in this pass) go to its
-- survivor; reads the pass's pg_temp.crm_stitch_pair and crm_stitch_member.
-- Returns the counts crm.merge_log keeps, per merged golden.
CREATE FUNCTION crm.stitch_move_by_merged() RETURNS TABLE (what text, merged bigint, cnt bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	members bigint[];
	survivors bigint[];
BEGIN
	SELECT pg_catalog.array_agg(m.member ORDER BY m.member), pg_catalog.array_agg(m.survivor ORDER BY m.member)
	INTO members, survivors FROM pg_temp.crm_stitch_member m;
	IF members IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY
	SELECT 'orders', m.merged, pg_catalog.sum(x.moved)::bigint
	FROM crm.move_customers('crm.orders', members, survivors) x JOIN pg_temp.crm_stitch_member m ON m.member = x.from_customer
	GROUP BY m.merged;
	RETURN QUERY
	SELECT 'events', m.merged, pg_catalog.sum(x.moved)::bigint
	FROM crm.move_customers('crm.event', members, survivors) x JOIN pg_temp.crm_stitch_member m ON m.member = x.from_customer
	GROUP BY m.merged;
	-- (the identifiers of the pass's goldens read first, each set in a
	-- query of its own: Citus joins a distributed table with a local one
	-- only on the distribution column)
	CREATE TEMP TABLE crm_stitch_idmove ON COMMIT DROP AS
	WITH held AS MATERIALIZED (
		SELECT d.kind, d.value, d.customer_id FROM crm.identity d
		WHERE d.customer_id IN (SELECT v.survivor FROM pg_temp.crm_stitch_pair v)),
	cand AS MATERIALIZED (
		SELECT i.identity_id, i.kind, i.value, i.customer_id FROM crm.identity i
		WHERE i.customer_id IN (SELECT q.merged FROM pg_temp.crm_stitch_pair q))
	SELECT DISTINCT ON (i.kind, i.value, q.survivor) i.identity_id, q.survivor, q.merged
	FROM cand i JOIN pg_temp.crm_stitch_pair q ON i.customer_id = q.merged
	WHERE (i.kind, i.value, q.survivor) NOT IN (SELECT h.kind, h.value, h.customer_id FROM held h)
	ORDER BY i.kind, i.value, q.survivor, i.identity_id;
	PERFORM crm.move_rows_on_citus('crm.identity',
		'USING ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) m(id, t2) WHERE t.identity_id OPERATOR(pg_catalog.=) m.id',
		'm.t2',
		ARRAY(SELECT x.identity_id FROM pg_temp.crm_stitch_idmove x ORDER BY x.identity_id),
		ARRAY(SELECT x.survivor FROM pg_temp.crm_stitch_idmove x ORDER BY x.identity_id), NULL);
	RETURN QUERY SELECT 'identities', x.merged, pg_catalog.count(*) FROM pg_temp.crm_stitch_idmove x GROUP BY x.merged;
	DROP TABLE pg_temp.crm_stitch_idmove;
END
$$;
COMMENT ON FUNCTION crm.stitch_move_by_merged() IS
	'Internal (batch stitching on Citus): moves each merged golden''s orders, events and identifiers to its survivor; returns the counts per merged golden';

CREATE FUNCTION crm.stitch_identities(OUT merges bigint, OUT reviews bigint, OUT rows_redirected bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- No arguments.  Builds the identity graph with crm.id_merge_agg and merges
-- every component's golden customers into its oldest one, under the same
-- policies as online stitching.  Idempotent: a second run merges nothing.
DECLARE
	graph crm.id_merge;
	comp record;
	h bigint;
	reviews_before bigint;
	n bigint;
	chained bigint[];
	strays bigint[];
	g bigint;
	citus boolean := crm.on_citus();
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	merges := 0;
	rows_redirected := 0;
	SELECT pg_catalog.count(*) INTO reviews_before FROM crm.identity_review;

	-- Chains an older release left (a record merged into a record that was
	-- merged later, as 0.1.0's batch stitching made after manual merges):
	-- every record points at its golden again; the middle records' rows
	-- follow with the strays below, then the merge hooks move the points,
	-- stats and tags they still hold to the golden.
	chained := ARRAY(SELECT DISTINCT c.merged_into FROM crm.customer c
	                 WHERE c.merged_into IN (SELECT p.customer_id FROM crm.customer p WHERE p.merged_into IS NOT NULL)
	                 ORDER BY 1);
	IF chained <> '{}' THEN
		PERFORM crm.lock_rows('crm.customer', chained || ARRAY(SELECT crm.golden_customer(u.id) FROM pg_catalog.unnest(chained) u(id)), 'NO KEY UPDATE');
		FOREACH h IN ARRAY chained LOOP
			g := crm.golden_customer(h);
			UPDATE crm.customer c SET merged_into = g WHERE c.merged_into = h;
		END LOOP;
	END IF;

	-- Rows left on records that were merged away (loaded with the origin
	-- trigger off) go to their golden; the merge hooks below move what
	-- they brought (points, stats, tags), as for the middle records.
	IF citus THEN
		SELECT x.moved, x.records INTO rows_redirected, strays FROM crm.stitch_strays_by_record() x;
	ELSE
	WITH u AS (UPDATE crm.orders o SET customer_id = c.merged_into
	           FROM crm.customer c WHERE c.merged_into IS NOT NULL AND o.customer_id = c.customer_id
	           RETURNING c.customer_id AS rec)
	SELECT pg_catalog.count(*), pg_catalog.array_agg(DISTINCT u.rec) INTO n, strays FROM u;
	rows_redirected := rows_redirected + n;
	WITH u AS (UPDATE crm.event e SET customer_id = c.merged_into
	           FROM crm.customer c WHERE c.merged_into IS NOT NULL AND e.customer_id = c.customer_id
	           RETURNING c.customer_id AS rec)
	SELECT pg_catalog.count(*), coalesce(strays, '{}') || coalesce(pg_catalog.array_agg(DISTINCT u.rec), '{}') INTO n, strays FROM u;
	rows_redirected := rows_redirected + n;
	-- identities too, unless the golden holds the value (then they are
	-- parked duplicates and stay); of several records of one golden that
	-- hold the same stray value, the lowest identity_id moves and the
	-- others stay parked on their records (unmerge finds them there).
	WITH cand AS (
		SELECT i.identity_id, c.merged_into AS golden,
		       pg_catalog.row_number() OVER (PARTITION BY i.kind, i.value, c.merged_into ORDER BY i.identity_id) AS rn
		FROM crm.identity i JOIN crm.customer c ON i.customer_id = c.customer_id
		WHERE c.merged_into IS NOT NULL
		  AND NOT EXISTS (SELECT 1 FROM crm.identity d
		                  WHERE d.kind = i.kind AND d.value = i.value AND d.customer_id = c.merged_into)
	)
	UPDATE crm.identity i SET customer_id = x.golden
	FROM cand x
	WHERE i.identity_id = x.identity_id AND x.rn = 1;
	GET DIAGNOSTICS n = ROW_COUNT;
	rows_redirected := rows_redirected + n;
	END IF;
	-- the middle records of chains and the records whose strays moved
	chained := ARRAY(SELECT DISTINCT x.id FROM pg_catalog.unnest(chained || strays) x(id) ORDER BY 1);
	PERFORM crm.run_merge_hooks(ARRAY(SELECT crm.golden_customer(u.h) FROM pg_catalog.unnest(chained) WITH ORDINALITY u(h, i) ORDER BY u.i),
	                               chained);

	graph := crm.identity_graph();
	PERFORM crm.stitch_review_hubs();
	CREATE TEMP TABLE crm_stitch_golden ON COMMIT DROP AS SELECT * FROM crm.stitch_goldens(graph);
	ANALYZE crm_stitch_golden;

	-- Components that need the careful path, merge by merge: a single-valued
	-- kind with two values among its goldens, or a pair kept apart.
	CREATE TEMP TABLE crm_stitch_pair ON COMMIT DROP AS
	SELECT g.comp, s.cust AS survivor, g.cust AS merged, g.rn, false AS careful
	FROM crm_stitch_golden g JOIN crm_stitch_golden s ON s.comp = g.comp AND s.rn = 1
	WHERE g.rn > 1
	  AND g.comp NOT IN (
		SELECT x.comp FROM crm_stitch_golden x
		JOIN crm.identity i ON i.customer_id = x.cust
		JOIN crm.identity_kind k ON k.kind = i.kind AND k.single_valued
		GROUP BY x.comp, i.kind HAVING pg_catalog.count(DISTINCT i.value) > 1
		UNION
		SELECT x.comp FROM crm.kept_apart_goldens() r
		JOIN crm_stitch_golden x ON x.cust = r.golden_a
		JOIN crm_stitch_golden y ON y.cust = r.golden_b AND y.comp = x.comp);
	-- The careful components are decided as merging their goldens one by
	-- one would decide (crm.stitch_plan_component), then merged with the
	-- others in one step; their reviews are written once they are locked.
	CREATE TEMP TABLE crm_stitch_careful ON COMMIT DROP AS
	SELECT g.comp, d.rn + 1 AS rn, d.golden, d.decision, d.conflict_kind
	FROM (SELECT x.comp, pg_catalog.array_agg(x.cust ORDER BY x.rn) AS goldens
	      FROM crm_stitch_golden x WHERE x.comp NOT IN (SELECT p.comp FROM crm_stitch_pair p)
	      GROUP BY x.comp) g,
	     LATERAL crm.stitch_plan_component(g.goldens) WITH ORDINALITY d(golden, decision, conflict_kind, rn);
	INSERT INTO crm_stitch_pair (comp, survivor, merged, rn, careful)
	SELECT c.comp, s.cust, c.golden, c.rn, true
	FROM crm_stitch_careful c JOIN crm_stitch_golden s ON s.comp = c.comp AND s.rn = 1
	WHERE c.decision = 'merge';
	ANALYZE crm_stitch_pair;

	-- The fast path, set-based: lock every golden involved in id order,
	-- drop components a concurrent merge changed meanwhile (the careful
	-- path takes them), then move everything in one statement per table.
	PERFORM crm.lock_rows('crm.customer', ARRAY(SELECT p.survivor FROM crm_stitch_pair p UNION SELECT p.merged FROM crm_stitch_pair p), 'NO KEY UPDATE');
	WITH changed AS (
		DELETE FROM crm_stitch_pair p WHERE p.comp IN (
			SELECT q.comp FROM crm_stitch_pair q JOIN crm.customer c ON c.customer_id = q.survivor WHERE c.merged_into IS NOT NULL
			UNION
			SELECT q.comp FROM crm_stitch_pair q JOIN crm.customer c ON c.customer_id = q.merged WHERE c.merged_into IS NOT NULL)
		RETURNING p.comp)
	DELETE FROM crm_stitch_careful c WHERE c.comp IN (SELECT changed.comp FROM changed);
	INSERT INTO crm.identity_review (customer_a, customer_b, conflict_kind, source)
	SELECT LEAST(s.cust, c.golden), GREATEST(s.cust, c.golden), c.conflict_kind, 'batch'
	FROM crm_stitch_careful c JOIN crm_stitch_golden s ON s.comp = c.comp AND s.rn = 1
	WHERE c.decision = 'review'
	ORDER BY c.comp, c.rn
	ON CONFLICT (customer_a, customer_b) WHERE resolved_at IS NULL DO NOTHING;
	CREATE TEMP TABLE crm_stitch_member ON COMMIT DROP AS
	SELECT p.survivor, p.merged, p.merged AS member FROM crm_stitch_pair p
	UNION ALL
	SELECT p.survivor, p.merged, c.customer_id FROM crm_stitch_pair p JOIN crm.customer c ON c.merged_into = p.merged;
	CREATE TEMP TABLE crm_stitch_count (what text, merged bigint, cnt bigint) ON COMMIT DROP;
	ANALYZE crm_stitch_member;

	UPDATE crm.customer c SET merged_into = m.survivor FROM crm_stitch_member m WHERE c.customer_id = m.member;
	IF citus THEN
		-- rows change shards: moved merged golden by merged golden
		INSERT INTO crm_stitch_count SELECT * FROM crm.stitch_move_by_merged();
	ELSE
	WITH u AS (UPDATE crm.orders o SET customer_id = m.survivor FROM crm_stitch_member m
	           WHERE o.customer_id = m.member RETURNING m.merged)
	INSERT INTO crm_stitch_count SELECT 'orders', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	WITH u AS (UPDATE crm.event e SET customer_id = m.survivor FROM crm_stitch_member m
	           WHERE e.customer_id = m.member RETURNING m.merged)
	INSERT INTO crm_stitch_count SELECT 'events', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	-- Identities of each merged golden move unless the survivor holds the
	-- value already, or another merged golden of the component moves the
	-- same value in this pass (the lowest identity_id moves, the rest stay).
	WITH cand AS (
		SELECT i.identity_id, p.survivor, p.merged,
		       pg_catalog.row_number() OVER (PARTITION BY i.kind, i.value, p.survivor ORDER BY i.identity_id) AS rn
		FROM crm.identity i JOIN crm_stitch_pair p ON i.customer_id = p.merged
		WHERE NOT EXISTS (SELECT 1 FROM crm.identity d
		                  WHERE d.kind = i.kind AND d.value = i.value AND d.customer_id = p.survivor)
	), u AS (
		UPDATE crm.identity i SET customer_id = c.survivor FROM cand c
		WHERE i.identity_id = c.identity_id AND c.rn = 1 RETURNING c.merged
	)
	INSERT INTO crm_stitch_count SELECT 'identities', u.merged, pg_catalog.count(*) FROM u GROUP BY u.merged;
	END IF;
	INSERT INTO crm_stitch_count
	SELECT 'parked', i.customer_id, pg_catalog.count(*) FROM crm.identity i
	WHERE i.customer_id IN (SELECT p.merged FROM crm_stitch_pair p) GROUP BY i.customer_id;

	INSERT INTO crm.merge_log (survivor, merged, members, source, reason,
	                           orders_moved, events_moved, identities_moved, identities_parked)
	SELECT p.survivor, p.merged, mm.members, 'batch', 'batch stitching',
	       COALESCE(k.orders, 0), COALESCE(k.events, 0), COALESCE(k.identities, 0), COALESCE(k.parked, 0)
	FROM crm_stitch_pair p
	JOIN (SELECT m.merged, pg_catalog.array_agg(m.member ORDER BY m.member) AS members
	      FROM crm_stitch_member m GROUP BY m.merged) mm ON mm.merged = p.merged
	LEFT JOIN (SELECT c.merged,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'orders') AS orders,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'events') AS events,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'identities') AS identities,
	                  pg_catalog.sum(c.cnt) FILTER (WHERE c.what = 'parked') AS parked
	           FROM crm_stitch_count c GROUP BY c.merged) k ON k.merged = p.merged
	ORDER BY p.careful, p.comp, p.rn;
	GET DIAGNOSTICS n = ROW_COUNT;
	merges := merges + n;
	-- The features move their state for all these merges at once (a hook's
	-- set_fn makes that one pass over its rows, however large a component).
	PERFORM crm.run_merge_hooks(ARRAY(SELECT p.survivor FROM crm_stitch_pair p ORDER BY p.careful, p.comp, p.rn),
	                            ARRAY(SELECT p.merged FROM crm_stitch_pair p ORDER BY p.careful, p.comp, p.rn));

	-- Components a concurrent merge changed meanwhile: merge by merge,
	-- under crm.merge_goldens' checks (reviews, kept-apart pairs).
	FOR comp IN
		SELECT g.comp, pg_catalog.array_agg(g.cust ORDER BY g.rn) AS goldens
		FROM crm_stitch_golden g
		WHERE g.comp NOT IN (SELECT p.comp FROM crm_stitch_pair p)
		  AND g.comp NOT IN (SELECT c.comp FROM crm_stitch_careful c)
		GROUP BY g.comp ORDER BY g.comp
	LOOP
		FOREACH h IN ARRAY comp.goldens[2:] LOOP
			IF crm.merge_goldens(comp.goldens[1], h, 'batch', 'batch stitching', NULL) IS NOT NULL THEN
				merges := merges + 1;
			END IF;
		END LOOP;
	END LOOP;
	DROP TABLE pg_temp.crm_stitch_golden, pg_temp.crm_stitch_pair, pg_temp.crm_stitch_careful, pg_temp.crm_stitch_member,
	           pg_temp.crm_stitch_count;
	SELECT pg_catalog.count(*) - reviews_before INTO reviews FROM crm.identity_review;
END
$$;
COMMENT ON FUNCTION crm.stitch_identities() IS
	'Batch stitching: merges every component of crm.identity_graph() into its oldest golden customer under the kinds'' policies; idempotent; reports merges, new reviews and stray rows redirected';
