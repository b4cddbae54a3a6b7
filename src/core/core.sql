
-- ===========================================================================
-- core.sql: schema guard, the customer data model and its triggers
-- ===========================================================================

-- PostgreSQL creates schema crm for us (control file: schema = crm) but would
-- silently adopt one that somebody created earlier.  Refuse a schema we do
-- not own, one that grants anything to another role (CREATE would let that
-- role plant operators our code finds), and one that holds anything at all:
-- every object in a schema (tables, functions, types, operators, operator
-- classes, collations, text search objects, default privileges, extensions)
-- records a dependency on it in pg_depend.
DO $guard$
DECLARE
	crm_oid oid := pg_catalog.to_regnamespace('crm');
BEGIN
	IF (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.oid OPERATOR(pg_catalog.=) crm_oid)
	   OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)
	THEN
		RAISE EXCEPTION 'schema "crm" already exists and belongs to another role'
			USING ERRCODE = 'duplicate_schema',
			      HINT = 'Drop or rename that schema, then run CREATE EXTENSION crm_ext again.';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
	           WHERE n.oid OPERATOR(pg_catalog.=) crm_oid AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner)
	THEN
		RAISE EXCEPTION 'schema "crm" already exists and grants privileges to other roles'
			USING ERRCODE = 'duplicate_schema',
			      HINT = 'Drop that schema (or revoke every grant on it), then run CREATE EXTENSION crm_ext again.';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
	           WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
	             AND d.refobjid OPERATOR(pg_catalog.=) crm_oid
	             -- crm_ext itself, being created, depends on its schema
	             AND NOT (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
	                      AND d.objid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e
	                                                          WHERE e.extname OPERATOR(pg_catalog.=) 'crm_ext')))
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.pronamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.typnamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprnamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_opfamily f WHERE f.opfnamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_collation l WHERE l.collnamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_conversion v WHERE v.connamespace OPERATOR(pg_catalog.=) crm_oid)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_default_acl a WHERE a.defaclnamespace OPERATOR(pg_catalog.=) crm_oid)
	THEN
		RAISE EXCEPTION 'schema "crm" already holds objects'
			USING ERRCODE = 'duplicate_schema',
			      HINT = 'crm_ext needs an empty schema "crm"; move those objects elsewhere first.';
	END IF;
END
$guard$;

REVOKE ALL ON SCHEMA crm FROM PUBLIC;
COMMENT ON SCHEMA crm IS 'crm_ext: customer-relationship logic next to the data';

-- ---------------------------------------------------------------------------
-- Row triggers of the core model (C, src/core/origin.c)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.fill_origin_customer() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_fill_origin_customer';
COMMENT ON FUNCTION crm.fill_origin_customer() IS
	'BEFORE INSERT OR UPDATE row trigger: a NULL origin_customer_id becomes customer_id; origin_customer_id never changes afterwards (except by crm.reassign_order), and customer_id only along the origin''s merges (to the origin or a record it is merged into, as merges, unmerges and stitching move rows; else SQLSTATE 55000); arguments: to_golden (a row inserted for a merged record goes to its golden customer, which is locked FOR SHARE first), stitch (crm.identity, with crm.stitch_on_insert on: an identifier inserted for a merged record goes to its golden customer, unlocked, unless the golden holds the same kind and value already), time=<column> (the column lies between 1900-01-01 UTC and now() + crm.max_future, SQLSTATE 22008), pattern (crm.identity: the value matches its kind''s pattern unless blocklisted, SQLSTATE 23514), <column>-><table> (the column references crm.<table>''s primary key: the row is locked FOR KEY SHARE once per key and statement, SQLSTATE 23503 when missing; to_golden checks customer_id and origin_customer_id against crm.customer the same way)';

-- ---------------------------------------------------------------------------
-- Stores
-- ---------------------------------------------------------------------------
CREATE TABLE crm.store (
	store_id	integer PRIMARY KEY CONSTRAINT store_id_positive CHECK (store_id > 0),
	name		text NOT NULL CONSTRAINT store_name_not_blank CHECK (pg_catalog.btrim(name) <> ''),
	city		text,
	region		text,
	opened_on	date,
	time_zone	text CONSTRAINT store_time_zone_valid CHECK (time_zone IS NULL OR pg_catalog.timezone(time_zone, '2000-01-01 00:00+00'::timestamptz) IS NOT NULL)
);
COMMENT ON TABLE crm.store IS 'Physical stores; POS orders and home stores refer to them (store-scoped roles see their own stores'' rows)';
COMMENT ON COLUMN crm.store.time_zone IS 'The store''s time zone, in which its customers'' days and quiet hours are counted (NULL: the loyalty programme''s)';

-- ---------------------------------------------------------------------------
-- Customers: one row per customer record as it arrived from a channel
-- ---------------------------------------------------------------------------
CREATE SEQUENCE crm.customer_id_seq;
CREATE TABLE crm.customer (
	customer_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.customer_id_seq'::pg_catalog.regclass)
					CONSTRAINT customer_id_positive CHECK (customer_id > 0),
	name			text CONSTRAINT customer_name_length CHECK (pg_catalog.length(name) <= 200),
	phone			text CONSTRAINT customer_phone_format CHECK (phone ~ '^\+?[0-9]{5,20}$'),
	email			text CONSTRAINT customer_email_format CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$' AND pg_catalog.length(email) <= 254),
	birthday		date CONSTRAINT customer_birthday_range CHECK (birthday BETWEEN '1900-01-01' AND '2100-12-31'),
	gender			text CONSTRAINT customer_gender_valid CHECK (gender IN ('f', 'm', 'x')),
	home_store_id	integer REFERENCES crm.store (store_id),
	channel			text CONSTRAINT customer_channel_valid CHECK (channel IN ('pos', 'app', 'mini_program', 'web')),
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
					CONSTRAINT customer_created_at_finite CHECK (pg_catalog.isfinite(created_at)),
	merged_into		bigint REFERENCES crm.customer (customer_id),
	forgotten_at	timestamptz,
	CONSTRAINT customer_not_merged_into_self CHECK (merged_into <> customer_id)
);
ALTER SEQUENCE crm.customer_id_seq OWNED BY crm.customer.customer_id;
CREATE INDEX customer_merged_into_idx ON crm.customer (merged_into) WHERE merged_into IS NOT NULL;
CREATE INDEX customer_home_store_idx ON crm.customer (home_store_id);
COMMENT ON TABLE crm.customer IS 'One row per customer record as it arrived from a channel; merged_into points at the surviving golden record (NULL for golden records)';
COMMENT ON COLUMN crm.customer.merged_into IS 'The golden customer this record was merged into; NULL for a golden record';
COMMENT ON COLUMN crm.customer.channel IS 'The channel the record was created in';
COMMENT ON COLUMN crm.customer.forgotten_at IS 'When crm.forget_customer erased this record''s PII';

-- ---------------------------------------------------------------------------
-- Identifiers
-- ---------------------------------------------------------------------------
CREATE TABLE crm.identity_kind (
	kind			text PRIMARY KEY CONSTRAINT identity_kind_name_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,39}$'),
	strength		text NOT NULL CONSTRAINT identity_kind_strength_valid CHECK (strength IN ('strong', 'weak')),
	max_customers	integer NOT NULL DEFAULT 1 CONSTRAINT identity_kind_max_customers_positive CHECK (max_customers >= 1),
	single_valued	boolean NOT NULL DEFAULT false,
	description		text,
	pattern			text CONSTRAINT identity_kind_pattern_valid CHECK (pattern IS NULL OR ('' ~ pattern) IS NOT NULL),
	builtin			boolean NOT NULL DEFAULT false,
	max_holders		integer NOT NULL DEFAULT 20 CONSTRAINT identity_kind_max_holders_valid CHECK (max_holders >= 2)
);
COMMENT ON TABLE crm.identity_kind IS 'Kinds of identifier and how far each is trusted to link customer records';
COMMENT ON COLUMN crm.identity_kind.strength IS 'strong: one shared value links two records; weak: links only while few records share the value';
COMMENT ON COLUMN crm.identity_kind.max_customers IS 'For weak kinds: a value shared by more customers than this links none of them';
COMMENT ON COLUMN crm.identity_kind.max_holders IS 'For strong kinds: a value held by more customer records than this (a shop''s phone, a junk number) is a hub: it links none of them and stitching puts its holders in the review queue';
COMMENT ON COLUMN crm.identity_kind.single_valued IS 'A customer holds at most one value of this kind (e.g. a member number); two different values mean two people';
COMMENT ON COLUMN crm.identity_kind.pattern IS 'Regular expression every value of this kind must match when inserted or changed (SQLSTATE 23514; blocklisted values are exempt); NULL accepts any value';
COMMENT ON COLUMN crm.identity_kind.builtin IS 'Shipped with crm_ext; pg_dump keeps only the rows you add (builtin = false)';
-- Patterns: a phone is 6 to 20 digits, an optional leading +, single spaces
-- or dashes between digits; an e-mail address is what crm.customer.email
-- accepts; a member number is letters, digits and dashes; the token kinds
-- hold no white space.
INSERT INTO crm.identity_kind (kind, strength, max_customers, single_valued, description, pattern, builtin) VALUES
	('phone',       'strong', 1, false, 'Mobile phone number',                 '^\+?[0-9]([ -]?[0-9]){5,19}$', true),
	('member_no',   'strong', 1, true,  'Loyalty programme member number',      '^[A-Za-z0-9]([A-Za-z0-9-]{0,38}[A-Za-z0-9])?$', true),
	('device',      'weak',   2, false, 'App device id; families share tablets', '^[^[:space:]]+$', true),
	('pay_account', 'strong', 1, false, 'Payment account or card token',        '^[^[:space:]]+$', true),
	('openid',      'strong', 1, false, 'Mini-program open id',                 '^[^[:space:]]+$', true),
	('email',       'strong', 1, false, 'E-mail address',                       '^[^@[:space:]]+@[^@[:space:]]+$', true);

CREATE SEQUENCE crm.identity_id_seq;
CREATE TABLE crm.identity (
	identity_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.identity_id_seq'::pg_catalog.regclass),
	kind				text NOT NULL REFERENCES crm.identity_kind (kind) ON UPDATE CASCADE,
	value				text NOT NULL CONSTRAINT identity_value_not_blank CHECK (pg_catalog.btrim(value) <> '' AND pg_catalog.length(value) <= 256),
	customer_id			bigint NOT NULL REFERENCES crm.customer (customer_id),
	origin_customer_id	bigint NOT NULL REFERENCES crm.customer (customer_id),
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT identity_unique_per_customer UNIQUE (kind, value, customer_id)
);
ALTER SEQUENCE crm.identity_id_seq OWNED BY crm.identity.identity_id;
CREATE INDEX identity_customer_idx ON crm.identity (customer_id);
CREATE INDEX identity_origin_idx ON crm.identity (origin_customer_id) WHERE origin_customer_id <> customer_id;
COMMENT ON TABLE crm.identity IS 'Identifiers (phone, member number, device, payment account, openid, e-mail) of customer records';
COMMENT ON COLUMN crm.identity.origin_customer_id IS 'The customer record the identifier arrived on; never changes (merges move customer_id)';
CREATE TRIGGER identity_fill_origin BEFORE INSERT OR UPDATE ON crm.identity
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('pattern', 'stitch');

-- ---------------------------------------------------------------------------
-- Orders and their lines
-- ---------------------------------------------------------------------------
CREATE SEQUENCE crm.order_id_seq;
CREATE TABLE crm.orders (
	order_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.order_id_seq'::pg_catalog.regclass),
	-- customer_id, origin_customer_id and store_id reference crm.customer and
	-- crm.store, checked by the triggers (see "References of the order path")
	customer_id			bigint NOT NULL,
	origin_customer_id	bigint NOT NULL,
	store_id			integer,
	channel				text NOT NULL CONSTRAINT orders_channel_valid CHECK (channel IN ('pos', 'app', 'mini_program', 'web')),
	ordered_at			timestamptz NOT NULL CONSTRAINT orders_ordered_at_finite CHECK (pg_catalog.isfinite(ordered_at)),
	amount				numeric(14,2) NOT NULL CONSTRAINT orders_amount_not_negative CHECK (amount >= 0 AND amount <> 'NaN'::numeric),
	status				text NOT NULL DEFAULT 'paid' CONSTRAINT orders_status_valid CHECK (status IN ('paid', 'refunded')),
	refunded_amount		numeric(14,2) NOT NULL DEFAULT 0
						CONSTRAINT orders_refund_within_amount CHECK (refunded_amount >= 0 AND refunded_amount <= amount AND refunded_amount <> 'NaN'::numeric),
	net_amount			numeric(14,2) GENERATED ALWAYS AS
						(CASE WHEN status = 'refunded' THEN 0::numeric ELSE amount - refunded_amount END) STORED,
	external_ref		text CONSTRAINT orders_external_ref_not_blank CHECK (pg_catalog.btrim(external_ref) <> ''),
	CONSTRAINT orders_pos_has_store CHECK (channel <> 'pos' OR store_id IS NOT NULL),
	CONSTRAINT orders_external_ref_unique UNIQUE (channel, external_ref)
);
ALTER SEQUENCE crm.order_id_seq OWNED BY crm.orders.order_id;
CREATE INDEX orders_customer_idx ON crm.orders (customer_id, ordered_at);
CREATE INDEX orders_origin_idx ON crm.orders (origin_customer_id) WHERE origin_customer_id <> customer_id;
CREATE INDEX orders_store_idx ON crm.orders (store_id, ordered_at) WHERE store_id IS NOT NULL;
COMMENT ON TABLE crm.orders IS 'Purchases in every channel.  status paid or refunded (fully); a partial refund on a paid order raises refunded_amount';
COMMENT ON COLUMN crm.orders.origin_customer_id IS 'The customer record the order arrived on; merges never change it (they move customer_id); crm.reassign_order does, for an order recorded for the wrong customer';
COMMENT ON COLUMN crm.orders.net_amount IS 'What the customer finally paid: 0 when refunded, else amount - refunded_amount';
COMMENT ON COLUMN crm.orders.external_ref IS 'The channel''s own order number (receipt, app order id); unique per channel, so a resent order is rejected';
CREATE TRIGGER orders_fill_origin BEFORE INSERT OR UPDATE ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('to_golden', 'time=ordered_at', 'store_id->store');

CREATE TABLE crm.order_line (
	order_id	bigint NOT NULL,	-- references crm.orders, checked by crm.lock_line_orders
	line_no		integer NOT NULL CONSTRAINT order_line_no_positive CHECK (line_no >= 1),
	sku			text NOT NULL CONSTRAINT order_line_sku_not_blank CHECK (pg_catalog.btrim(sku) <> ''),
	category	text NOT NULL CONSTRAINT order_line_category_not_blank CHECK (pg_catalog.btrim(category) <> ''),
	qty			integer NOT NULL CONSTRAINT order_line_qty_positive CHECK (qty > 0),
	amount		numeric(14,2) NOT NULL CONSTRAINT order_line_amount_not_negative CHECK (amount >= 0 AND amount <> 'NaN'::numeric),
	PRIMARY KEY (order_id, line_no),
	-- the order's customer: optional on one node, where it is checked and
	-- follows the order (merges); required on Citus, where it places the line
	customer_id	bigint
);
CREATE INDEX order_line_sku_idx ON crm.order_line (sku);
-- An order's lines may be inserted without numbers: they are numbered after
-- the order's highest line (src/core/order_line.c).
CREATE FUNCTION crm.number_order_line() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_number_order_line';
COMMENT ON FUNCTION crm.number_order_line() IS
	'BEFORE INSERT row trigger on crm.order_line (WHEN line_no IS NULL): numbers the line after the order''s highest line';
CREATE TRIGGER order_line_number BEFORE INSERT ON crm.order_line
	FOR EACH ROW WHEN (NEW.line_no IS NULL) EXECUTE FUNCTION crm.number_order_line();
-- The orders of inserted or updated lines must exist (order_line.order_id
-- references crm.orders: one lookup per order and statement, not a foreign
-- key's query per line); those another transaction inserted are locked FOR
-- SHARE first (fires before the loyalty and stats triggers, by name), so a
-- merge moving the order cannot leave their bonus and stats on the merged
-- record, and a DELETE cannot take the order from under its lines.
CREATE FUNCTION crm.lock_line_orders() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_lock_line_orders';
COMMENT ON FUNCTION crm.lock_line_orders() IS
	'AFTER INSERT or UPDATE statement trigger on crm.order_line (REFERENCING NEW TABLE AS lock_new), fired before the loyalty and stats triggers: the orders of the lines must exist (23503) and those another transaction inserted are locked FOR SHARE (40001 when a merge moved one meanwhile)';
CREATE TRIGGER order_line_lock_orders AFTER INSERT ON crm.order_line
	REFERENCING NEW TABLE AS lock_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.lock_line_orders();
CREATE TRIGGER order_line_lock_orders_update AFTER UPDATE ON crm.order_line
	REFERENCING NEW TABLE AS lock_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.lock_line_orders();
COMMENT ON TABLE crm.order_line IS 'The lines of an order: sku, category, quantity and amount';
COMMENT ON COLUMN crm.order_line.customer_id IS 'The customer_id of the line''s order, or NULL: optional on one node (checked against the order when given, and kept equal to it when a merge moves the order); required after crm.distribute(), where it places the line on the order''s shard';
-- Lines that carry their order's customer follow the order when a merge,
-- unmerge or crm.reassign_order moves it.
CREATE FUNCTION crm.order_lines_follow() RETURNS trigger
	LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	UPDATE crm.order_line l SET customer_id = n.customer_id
	FROM crm_moved n
	WHERE l.order_id OPERATOR(pg_catalog.=) n.order_id AND l.customer_id IS NOT NULL
	  AND l.customer_id OPERATOR(pg_catalog.<>) n.customer_id;
	RETURN NULL;
END $$;
COMMENT ON FUNCTION crm.order_lines_follow() IS
	'AFTER UPDATE statement trigger on crm.orders (REFERENCING NEW TABLE AS crm_moved): lines that carry a customer_id take their order''s new one';
CREATE TRIGGER orders_lines_follow AFTER UPDATE ON crm.orders
	REFERENCING NEW TABLE AS crm_moved
	FOR EACH STATEMENT EXECUTE FUNCTION crm.order_lines_follow();

-- ---------------------------------------------------------------------------
-- Re-assigning an order recorded for the wrong shopper (issue 13, defect 5)
-- ---------------------------------------------------------------------------
CREATE SEQUENCE crm.order_reassignment_id_seq;
CREATE TABLE crm.order_reassignment (
	reassignment_id	bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.order_reassignment_id_seq'::pg_catalog.regclass),
	-- No foreign keys: the log outlives a deleted order or customer record.
	order_id		bigint NOT NULL,
	from_customer	bigint NOT NULL,
	from_golden		bigint NOT NULL,
	to_customer		bigint NOT NULL,
	to_golden		bigint NOT NULL,
	reason			text NOT NULL CONSTRAINT order_reassignment_reason_not_blank CHECK (pg_catalog.btrim(reason) <> ''),
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reassigned_by	name NOT NULL DEFAULT CURRENT_USER
);
ALTER SEQUENCE crm.order_reassignment_id_seq OWNED BY crm.order_reassignment.reassignment_id;
CREATE INDEX order_reassignment_order_idx ON crm.order_reassignment (order_id);
COMMENT ON TABLE crm.order_reassignment IS 'Every order crm.reassign_order moved to another customer: from which record (and its golden customer) to which, why, when and by whom';
COMMENT ON COLUMN crm.order_reassignment.from_customer IS 'The order''s origin_customer_id before the move';
COMMENT ON COLUMN crm.order_reassignment.to_customer IS 'The record the order was re-assigned to (its new origin_customer_id); to_golden is that record''s golden customer';
SELECT pg_catalog.pg_extension_config_dump('crm.order_reassignment', '');
SELECT pg_catalog.pg_extension_config_dump('crm.order_reassignment_id_seq', '');

CREATE FUNCTION crm.reassign_order_steps(order_id bigint, customer_id bigint, reason text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: NULL arguments are errors.  Only crm.reassign_order (C) lets
-- its UPDATE change origin_customer_id; called directly it fails there.
DECLARE
	o record;
	from_golden bigint;
	to_golden bigint;
	attempts integer := 0;
	logged bigint;
BEGIN
	IF order_id IS NULL OR customer_id IS NULL OR reason IS NULL THEN
		RAISE EXCEPTION 'order_id, customer_id and reason must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_catalog.btrim(reason) OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'the reason must not be blank' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Say why the order moves (for example: cashier scanned the wrong card); it is kept in crm.order_reassignment.';
	END IF;
	-- Lock order (DEVELOPER.md): both golden customers FOR SHARE in id
	-- order, then the order row.  A merge, unmerge or other re-assignment
	-- that committed before the locks were granted moved a golden or the
	-- order: the locks are given back (the block's subtransaction) and taken
	-- again for the customers as they are now.
	LOOP
		SELECT x.customer_id INTO from_golden FROM crm.orders x WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'order % does not exist', reassign_order_steps.order_id USING ERRCODE = 'no_data_found';
		END IF;
		to_golden := crm.resolve_customer(reassign_order_steps.customer_id);
		BEGIN
			IF crm.lock_customer(LEAST(from_golden, to_golden)) OPERATOR(pg_catalog.<>) LEAST(from_golden, to_golden)
			   OR crm.lock_customer(GREATEST(from_golden, to_golden)) OPERATOR(pg_catalog.<>) GREATEST(from_golden, to_golden) THEN
				RAISE EXCEPTION USING ERRCODE = 'CR900';	-- internal, caught below
			END IF;
			SELECT x.customer_id, x.origin_customer_id INTO o FROM crm.orders x
			WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id FOR UPDATE;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'order % does not exist', reassign_order_steps.order_id USING ERRCODE = 'no_data_found';
			END IF;
			IF o.customer_id OPERATOR(pg_catalog.<>) from_golden THEN
				RAISE EXCEPTION USING ERRCODE = 'CR900';
			END IF;
			EXIT;
		EXCEPTION WHEN SQLSTATE 'CR900' THEN
			attempts := attempts OPERATOR(pg_catalog.+) 1;
			IF attempts OPERATOR(pg_catalog.>=) 100 THEN
				RAISE EXCEPTION 'order % keeps moving while it is re-assigned', reassign_order_steps.order_id
					USING ERRCODE = 'serialization_failure', HINT = 'Retry the transaction.';
			END IF;
		END;
	END LOOP;
	-- Already on that record: nothing to do (a retry is harmless).
	IF o.origin_customer_id OPERATOR(pg_catalog.=) reassign_order_steps.customer_id THEN
		RETURN NULL;
	END IF;
	IF EXISTS (SELECT 1 FROM crm.customer c WHERE c.customer_id OPERATOR(pg_catalog.=) to_golden AND c.forgotten_at IS NOT NULL) THEN
		RAISE EXCEPTION 'order % cannot be re-assigned to customer %: the customer was forgotten', reassign_order_steps.order_id, reassign_order_steps.customer_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'A forgotten customer takes no new data; re-assign the order to another customer.';
	END IF;
	-- The loyalty and stats triggers see origin_customer_id change: the
	-- order's points and spend leave the old golden customer and go to the
	-- new one (journaled), both customers' stats, stages and rule tags are
	-- rebuilt; the lines follow the order.
	UPDATE crm.orders x SET origin_customer_id = reassign_order_steps.customer_id, customer_id = to_golden
	WHERE x.order_id OPERATOR(pg_catalog.=) reassign_order_steps.order_id;
	INSERT INTO crm.order_reassignment (order_id, from_customer, from_golden, to_customer, to_golden, reason)
	VALUES (reassign_order_steps.order_id, o.origin_customer_id, from_golden, reassign_order_steps.customer_id, to_golden, reassign_order_steps.reason)
	RETURNING reassignment_id INTO logged;
	RETURN logged;
END
$$;
COMMENT ON FUNCTION crm.reassign_order_steps(bigint, bigint, text) IS
	'Internal: the work of crm.reassign_order (checks, locks, the UPDATE, the log row); fails (23000) unless called by it';

CREATE FUNCTION crm.reassign_order(order_id bigint, customer_id bigint, reason text) RETURNS bigint
	LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'crm_reassign_order';
COMMENT ON FUNCTION crm.reassign_order(bigint, bigint, text) IS
	'Moves an order recorded for the wrong customer to customer_id (its new origin record; the order goes to its golden customer) with its points, qualifying spend, stats and rule tags, journaled and logged in crm.order_reassignment; returns the log id, NULL when the order already came from that record. Not STRICT: NULL arguments are 22004; unknown order P0002, unknown customer 23503, forgotten customer 55000, blank reason 22023';

-- ---------------------------------------------------------------------------
-- Behaviour events
-- ---------------------------------------------------------------------------
CREATE TABLE crm.event_kind (
	kind		text PRIMARY KEY CONSTRAINT event_kind_name_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,39}$'),
	description	text,
	builtin		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.event_kind IS 'Kinds of behaviour event; add your own';
INSERT INTO crm.event_kind (kind, description, builtin) VALUES
	('browse',      'Viewed a product (props.sku)',            true),
	('search',      'Searched (props.query)',                  true),
	('cart',        'Added a product to the cart (props.sku)', true),
	('checkout',    'Started checkout',                        true),
	('sign_in',     'Signed in to the app, web or mini-program', true),
	('store_visit', 'Entered a store (props.store_id)',        true);

CREATE SEQUENCE crm.event_id_seq;
CREATE TABLE crm.event (
	event_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.event_id_seq'::pg_catalog.regclass),
	-- customer_id, origin_customer_id and store_id reference crm.customer and
	-- crm.store, checked by the triggers (see "References of the order path")
	customer_id			bigint NOT NULL,
	origin_customer_id	bigint NOT NULL,
	kind				text NOT NULL REFERENCES crm.event_kind (kind) ON UPDATE CASCADE,
	at					timestamptz NOT NULL CONSTRAINT event_at_finite CHECK (pg_catalog.isfinite(at)),
	channel				text CONSTRAINT event_channel_valid CHECK (channel IN ('pos', 'app', 'mini_program', 'web')),
	store_id			integer,
	props				jsonb NOT NULL DEFAULT '{}'::jsonb
						CONSTRAINT event_props_object CHECK (pg_catalog.jsonb_typeof(props) = 'object')
);
ALTER SEQUENCE crm.event_id_seq OWNED BY crm.event.event_id;
CREATE INDEX event_customer_idx ON crm.event (customer_id, at);
CREATE INDEX event_origin_idx ON crm.event (origin_customer_id) WHERE origin_customer_id <> customer_id;
COMMENT ON TABLE crm.event IS 'Behaviour events (browse, cart, sign_in, store_visit, ...)';
COMMENT ON COLUMN crm.event.origin_customer_id IS 'The customer record the event arrived on; never changes (merges move customer_id)';
CREATE TRIGGER event_fill_origin BEFORE INSERT OR UPDATE ON crm.event
	FOR EACH ROW EXECUTE FUNCTION crm.fill_origin_customer('to_golden', 'time=at', 'store_id->store');

-- ---------------------------------------------------------------------------
-- References of the order path (issue 14; src/common/references.c)
--
-- orders.customer_id, orders.origin_customer_id, orders.store_id,
-- order_line.order_id, event.customer_id, event.origin_customer_id and
-- event.store_id are foreign keys checked by crm's triggers instead of
-- FOREIGN KEY constraints, which cost a query per row and key: a row's
-- customers and store are looked up and locked (FOR SHARE / FOR KEY SHARE)
-- by crm.fill_origin_customer, once per key and statement; the orders of
-- lines by crm.lock_line_orders, once per order and statement.  The parent's
-- side is below: deleting a customer or store that rows still reference, or
-- changing its key, fails as with NO ACTION; deleting an order deletes its
-- lines (ON DELETE CASCADE); TRUNCATE of a parent needs its referencing
-- tables in the same command.  Errors are 23503 with the constraint names
-- (orders_customer_id_fkey, ...) the foreign keys had.
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.referenced_row() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'crm_referenced_row';
COMMENT ON FUNCTION crm.referenced_row() IS
	'AFTER DELETE OR UPDATE row (and AFTER TRUNCATE statement) trigger on a parent of the order path: ''restrict'' or ''cascade'', then the referencing ''table.column''s';
CREATE TRIGGER customer_referenced AFTER DELETE OR UPDATE OF customer_id ON crm.customer
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.customer_id', 'orders.origin_customer_id',
		'event.customer_id', 'event.origin_customer_id');
CREATE TRIGGER customer_referenced_truncate AFTER TRUNCATE ON crm.customer
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.customer_id', 'event.customer_id');
CREATE TRIGGER store_referenced AFTER DELETE OR UPDATE OF store_id ON crm.store
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.store_id', 'event.store_id');
CREATE TRIGGER store_referenced_truncate AFTER TRUNCATE ON crm.store
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'orders.store_id', 'event.store_id');
-- a row trigger: it fires before the DELETE's statement triggers (loyalty,
-- stats), as the foreign key's cascade did
CREATE TRIGGER orders_cascade_lines AFTER DELETE OR UPDATE OF order_id ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.referenced_row('cascade', 'order_line.order_id');
CREATE TRIGGER orders_cascade_lines_truncate AFTER TRUNCATE ON crm.orders
	FOR EACH STATEMENT EXECUTE FUNCTION crm.referenced_row('restrict', 'order_line.order_id');

-- ---------------------------------------------------------------------------
-- pg_dump: tables of an extension are not dumped unless registered.  Data
-- tables are dumped whole; configuration tables only the rows users added.
-- ---------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('crm.store', '');
SELECT pg_catalog.pg_extension_config_dump('crm.customer', '');
SELECT pg_catalog.pg_extension_config_dump('crm.customer_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('crm.identity_kind', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('crm.identity', '');
SELECT pg_catalog.pg_extension_config_dump('crm.identity_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('crm.orders', '');
SELECT pg_catalog.pg_extension_config_dump('crm.order_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('crm.order_line', '');
SELECT pg_catalog.pg_extension_config_dump('crm.event_kind', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('crm.event', '');
SELECT pg_catalog.pg_extension_config_dump('crm.event_id_seq', '');

-- ---------------------------------------------------------------------------
-- crm.tick: all time-driven work, as registered tasks
-- ---------------------------------------------------------------------------
-- Each feature registers the tasks it needs (expire points, downgrade tiers,
-- refresh time-dependent tags, ...).  A task is a function (at timestamptz)
-- RETURNS bigint, the number of things it changed; it must be idempotent, so
-- running tick twice for the same time changes nothing the second time.
CREATE TABLE crm.tick_task (
	task		text PRIMARY KEY CONSTRAINT tick_task_name_format CHECK (task ~ '^[a-z][a-z0-9_]{0,62}$'),
	run_order	integer NOT NULL,
	fn			regprocedure NOT NULL,
	enabled		boolean NOT NULL DEFAULT true,
	builtin		boolean NOT NULL DEFAULT false,
	CONSTRAINT tick_task_order_unique UNIQUE (run_order)
);
COMMENT ON TABLE crm.tick_task IS 'Time-driven tasks run by crm.tick, in run_order; each is a function (at timestamptz) RETURNS bigint and must be idempotent';
SELECT pg_catalog.pg_extension_config_dump('crm.tick_task', 'WHERE NOT builtin');

CREATE FUNCTION crm.tick(at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (task text, changed bigint)
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
BEGIN
	IF crm.on_citus() THEN
		PERFORM crm.citus_one_connection_per_worker();
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'crm.tick needs a finite time, not %', at
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- One tick at a time: a second caller waits, then finds nothing to do.
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crm.tick'));
	FOR t IN SELECT k.task, k.fn FROM crm.tick_task k WHERE k.enabled ORDER BY k.run_order LOOP
		task := t.task;
		EXECUTE pg_catalog.format('SELECT %s($1)', t.fn::oid::regproc) INTO changed USING at;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION crm.tick(timestamptz) IS
	'Runs every enabled crm.tick_task for time "at" (default now()) and reports what each changed; idempotent, safe to run from pg_cron every few minutes';

-- ---------------------------------------------------------------------------
-- Customer hooks: what each feature does when customers merge, unmerge or
-- are forgotten.  Merging moves the core rows itself; features that keep
-- per-customer state (points, stats, tags) register a hook to move theirs.
--   merge:   fn(survivor bigint, merged bigint)   RETURNS void
--   unmerge: fn(survivor bigint, restored bigint) RETURNS void
--   forget:  fn(customer bigint)                  RETURNS void
-- A merge hook may also name set_fn(survivors bigint[], merged bigint[])
-- RETURNS void: the same work for many merges at once (pairs at the same
-- index, in merge order), which batch stitching calls once per pass instead
-- of fn once per merge, so a feature can do it in one pass over its rows.
-- ---------------------------------------------------------------------------
CREATE TABLE crm.customer_hook (
	event		text NOT NULL CONSTRAINT customer_hook_event_valid CHECK (event IN ('merge', 'unmerge', 'forget')),
	hook		text NOT NULL,
	run_order	integer NOT NULL,
	fn			regprocedure NOT NULL,
	builtin		boolean NOT NULL DEFAULT false,
	set_fn		regprocedure,
	PRIMARY KEY (event, hook),
	CONSTRAINT customer_hook_order_unique UNIQUE (event, run_order)
);
COMMENT ON TABLE crm.customer_hook IS 'Per-feature functions run, in run_order, when customers are merged, unmerged or forgotten';
COMMENT ON COLUMN crm.customer_hook.set_fn IS 'Merge hooks only: fn for many merges at once, (survivors bigint[], merged bigint[]) pairs at the same index in merge order; NULL runs fn merge by merge';
SELECT pg_catalog.pg_extension_config_dump('crm.customer_hook', 'WHERE NOT builtin');

-- A task or hook whose function has the wrong signature would fail only when
-- crm.tick or a merge runs it: refuse it when it is registered instead.
CREATE FUNCTION crm.check_registered_signature(what text, fn regprocedure, want_args oidvector, want_ret regtype)
RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
BEGIN
	SELECT f.proargtypes, f.prorettype, f.prokind, f.proretset INTO p FROM pg_catalog.pg_proc f WHERE f.oid = fn;
	IF p.proargtypes::text <> want_args::text OR p.prorettype <> want_ret OR p.prokind <> 'f' OR p.proretset THEN
		RAISE EXCEPTION '% cannot run %', what, fn
			USING ERRCODE = 'invalid_function_definition',
			      HINT = pg_catalog.format('The function must take (%s) and return %s.',
			                               (SELECT pg_catalog.string_agg(t::regtype::text, ', ')
			                                FROM pg_catalog.unnest(want_args::oid[]) t), want_ret);
	END IF;
END
$$;
COMMENT ON FUNCTION crm.check_registered_signature(text, regprocedure, oidvector, regtype) IS
	'Internal: raises 42P13 unless fn takes want_args and returns want_ret (what names the registration in the message)';

CREATE FUNCTION crm.check_registered_function()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	want_args oidvector;
	want_ret regtype;
	what text;
BEGIN
	-- (the table by the trigger's argument: on Citus it fires on a shard, tick_task_102008)
	IF TG_ARGV[0] = 'tick_task' THEN
		want_args := '1184'::oidvector;
		want_ret := 'bigint';
		what := pg_catalog.format('tick task "%s"', NEW.task);
	ELSIF NEW.event NOT IN ('merge', 'unmerge', 'forget') THEN
		RETURN NEW;				-- customer_hook_event_valid reports it
	ELSE
		want_args := CASE WHEN NEW.event = 'forget' THEN '20'::oidvector ELSE '20 20'::oidvector END;
		want_ret := 'void';
		what := pg_catalog.format('%s hook "%s"', NEW.event, NEW.hook);
	END IF;
	PERFORM crm.check_registered_signature(what, NEW.fn, want_args, want_ret);
	-- (tick_task has no set_fn column: look only on customer_hook)
	IF TG_ARGV[0] = 'customer_hook' THEN
		IF NEW.set_fn IS NOT NULL AND NEW.event <> 'merge' THEN
			RAISE EXCEPTION '% cannot have a set_fn', what
				USING ERRCODE = 'invalid_function_definition',
				      HINT = 'Only merge hooks run for many merges at once; leave set_fn NULL.';
		ELSIF NEW.set_fn IS NOT NULL THEN
			PERFORM crm.check_registered_signature(what || ' (set_fn)', NEW.set_fn, '1016 1016'::oidvector, 'void');
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION crm.check_registered_function() IS 'Trigger: a crm.tick_task or crm.customer_hook function must have the signature its caller uses';
CREATE TRIGGER tick_task_signature BEFORE INSERT OR UPDATE OF fn ON crm.tick_task
	FOR EACH ROW EXECUTE FUNCTION crm.check_registered_function('tick_task');
CREATE TRIGGER customer_hook_signature BEFORE INSERT OR UPDATE OF fn, event, set_fn ON crm.customer_hook
	FOR EACH ROW EXECUTE FUNCTION crm.check_registered_function('customer_hook');

CREATE FUNCTION crm.run_customer_hooks(event text, a bigint, b bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: b is NULL for 'forget'.
DECLARE
	h record;
	n integer := 0;
BEGIN
	IF event IS NULL OR event NOT IN ('merge', 'unmerge', 'forget') THEN
		RAISE EXCEPTION 'unknown customer hook event "%"', event
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Use merge, unmerge or forget.';
	END IF;
	IF a IS NULL OR (event <> 'forget' AND b IS NULL) THEN
		RAISE EXCEPTION 'customer hook "%" needs its customer ids', event
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	FOR h IN SELECT k.fn FROM crm.customer_hook k WHERE k.event = run_customer_hooks.event ORDER BY k.run_order LOOP
		IF event = 'forget' THEN
			EXECUTE pg_catalog.format('SELECT %s($1)', h.fn::oid::regproc) USING a;
		ELSE
			EXECUTE pg_catalog.format('SELECT %s($1, $2)', h.fn::oid::regproc) USING a, b;
		END IF;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.run_customer_hooks(text, bigint, bigint) IS
	'Runs the crm.customer_hook functions of one event (merge, unmerge, forget) in run_order; returns how many ran';

CREATE FUNCTION crm.run_merge_hooks(survivors bigint[], merged bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- The merge hooks for many merges at once (survivors[i] absorbed merged[i],
-- in that order): each hook in run_order runs its set_fn once, or its fn
-- merge by merge.  Returns how many hooks ran.
DECLARE
	h record;
	n integer := 0;
BEGIN
	IF pg_catalog.cardinality(survivors) <> pg_catalog.cardinality(merged)
	   OR pg_catalog.array_position(survivors, NULL) IS NOT NULL OR pg_catalog.array_position(merged, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'merge hooks need one survivor per merged customer'
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'Pass two arrays of customer ids of the same length, without NULLs.';
	END IF;
	IF pg_catalog.cardinality(merged) = 0 THEN
		RETURN 0;
	END IF;
	FOR h IN SELECT k.fn, k.set_fn FROM crm.customer_hook k WHERE k.event = 'merge' ORDER BY k.run_order LOOP
		IF h.set_fn IS NOT NULL THEN
			EXECUTE pg_catalog.format('SELECT %s($1, $2)', h.set_fn::oid::regproc) USING survivors, merged;
		ELSE
			FOR i IN 1 .. pg_catalog.cardinality(merged) LOOP
				EXECUTE pg_catalog.format('SELECT %s($1, $2)', h.fn::oid::regproc) USING survivors[i], merged[i];
			END LOOP;
		END IF;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.run_merge_hooks(bigint[], bigint[]) IS
	'Runs the merge hooks for many merges at once (survivors[i] absorbed merged[i], in order): each hook''s set_fn once, or its fn merge by merge; returns how many hooks ran';
