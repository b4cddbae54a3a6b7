
-- ===========================================================================
-- wallet/wallet.sql: stored value (issue 16).
--
-- A customer tops up a wallet (cash, with an optional bonus that is spent
-- last, expires and is never paid out in cash) and pays with it, at once or
-- through a hold on an open POS order that is later captured or released.
--
-- Double entry.  Every movement is one crm.wallet_txn and its entries in
-- crm.wallet_journal, which sum to zero: a wallet entry adds to (> 0) or
-- takes from (< 0) one bucket of a customer's wallet (cash, bonus,
-- held_cash, held_bonus; bonus entries name their lot); the company's
-- accounts carry the other side:
--   cash_received    -x at a top-up of x cash (money taken in, owed as value)
--   bonus_liability  -b at a top-up with bonus b
--   sales            +x when x is spent on an order, -x when refunded
--   breakage         +b when bonus b expires unspent
--   cash_refunded    +x when a refund goes back to the original payment
-- crm.wallet and crm.wallet_bonus_lot are caches of the journal, changed
-- only by crm.wallet_apply in the same transaction; crm.verify_wallets()
-- checks both against it.
--
-- Pockets.  A wallet row belongs to a customer record, not to the golden
-- customer: a top-up goes to the record named, a golden customer spends
-- from all its records' wallets (its own first), and a merge moves no money
-- at all, so an unmerge gives each side exactly what is left of its own.
--
-- Rejections (README, "Stored value"):
--   CR401 too little in the wallet   CR402 hold not open / capture over it
--   CR403 a wallet paying for its own top-up (or a top-up paid by wallet)
--   CR404 refund over what is left of the payment
--   CR405 unknown transaction key     CR002 key reused with other arguments
--
-- Lock order (DEVELOPER.md): the golden customer FOR SHARE
-- (crm.lock_customer), the order row (a payment or top-up for an order),
-- the wallet rows of the pockets involved FOR UPDATE in customer_id order.
-- Bonus lots are changed only under their pocket's wallet row lock, so they
-- need no lock of their own.
-- ===========================================================================

CREATE TABLE crm.wallet_program (
	program			text PRIMARY KEY DEFAULT 'default' CONSTRAINT wallet_program_single CHECK (program = 'default'),
	refund_to		text NOT NULL DEFAULT 'wallet' CONSTRAINT wallet_program_refund_to_valid CHECK (refund_to IN ('wallet', 'original')),
	bonus_valid		interval NOT NULL DEFAULT '12 months' CONSTRAINT wallet_program_bonus_valid_positive CHECK (bonus_valid > interval '0'),
	hold_ttl		interval NOT NULL DEFAULT '1 day' CONSTRAINT wallet_program_hold_ttl_positive CHECK (hold_ttl > interval '0'),
	builtin			boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE crm.wallet_program IS
	'Stored-value settings (one row): where a refund of a wallet payment goes by default (refund_to: wallet, or original = its cash part back to the payment that topped the wallet up, its bonus part to the wallet), how long a top-up''s bonus stays valid, how long a hold lasts';
INSERT INTO crm.wallet_program (program, builtin) VALUES ('default', true);
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_program', 'WHERE NOT builtin');

CREATE TABLE crm.wallet (
	customer_id		bigint PRIMARY KEY REFERENCES crm.customer (customer_id),
	cash			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_cash_never_negative CHECK (cash >= 0),
	bonus			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_bonus_never_negative CHECK (bonus >= 0),
	held_cash		numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_held_cash_never_negative CHECK (held_cash >= 0),
	held_bonus		numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_held_bonus_never_negative CHECK (held_bonus >= 0)
);
COMMENT ON TABLE crm.wallet IS
	'Stored value of one customer record (a golden customer spends from its records'' wallets): cash and bonus to spend, and what holds keep for open orders; a cache of crm.wallet_journal';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet', '');

CREATE SEQUENCE crm.wallet_txn_id_seq;
CREATE TABLE crm.wallet_txn (
	txn_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_txn_id_seq'),
	kind			text NOT NULL CONSTRAINT wallet_txn_kind_valid
					CHECK (kind IN ('top_up', 'pay', 'hold', 'capture', 'release', 'refund', 'expire')),
	customer_id		bigint NOT NULL REFERENCES crm.customer (customer_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_txn_amount_valid CHECK (amount >= 0 AND amount <> 'NaN'::numeric),
	bonus			numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT wallet_txn_bonus_valid CHECK (bonus >= 0 AND bonus <> 'NaN'::numeric),
	idempotency_key	text NOT NULL CONSTRAINT wallet_txn_key_unique UNIQUE
					CONSTRAINT wallet_txn_key_format CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 200 AND pg_catalog.btrim(idempotency_key) <> ''),
	order_id		bigint,
	order_ref		text,
	paid_with		text,
	refund_to		text CONSTRAINT wallet_txn_refund_to_valid CHECK (refund_to IN ('wallet', 'original')),
	ref_txn_id		bigint REFERENCES crm.wallet_txn (txn_id),
	expires_at		timestamptz,
	at				timestamptz NOT NULL,
	CONSTRAINT wallet_txn_top_up_fields CHECK ((kind = 'top_up') = (paid_with IS NOT NULL)),
	CONSTRAINT wallet_txn_refers CHECK ((kind IN ('capture', 'release', 'refund')) = (ref_txn_id IS NOT NULL)),
	CONSTRAINT wallet_txn_refund_fields CHECK ((kind = 'refund') = (refund_to IS NOT NULL)),
	CONSTRAINT wallet_txn_hold_fields CHECK ((kind = 'hold') = (expires_at IS NOT NULL))
);
-- A hold is closed once: captured or released, never both, never twice.
CREATE UNIQUE INDEX wallet_txn_hold_closed_once ON crm.wallet_txn (ref_txn_id) WHERE kind IN ('capture', 'release');
CREATE INDEX wallet_txn_refunds_idx ON crm.wallet_txn (ref_txn_id) WHERE kind = 'refund';
CREATE INDEX wallet_txn_order_idx ON crm.wallet_txn (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX wallet_txn_open_hold_idx ON crm.wallet_txn (expires_at) WHERE kind = 'hold';
COMMENT ON TABLE crm.wallet_txn IS
	'Append-only: every stored-value movement (top_up, pay, hold, capture, release, refund, expire), once per idempotency key; its entries are in crm.wallet_journal';
COMMENT ON COLUMN crm.wallet_txn.customer_id IS 'The customer record named (a top-up goes to its wallet; a payment spends from its golden customer''s wallets)';
COMMENT ON COLUMN crm.wallet_txn.amount IS 'The value moved: topped up (cash), paid, held, captured, released, refunded or expired';
COMMENT ON COLUMN crm.wallet_txn.bonus IS 'A top-up''s bonus (besides amount); an expiry''s amount (all bonus); 0 otherwise';
COMMENT ON COLUMN crm.wallet_txn.ref_txn_id IS 'The hold a capture or release closes; the payment (pay or capture) a refund gives back';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_txn', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_txn_id_seq', '');

CREATE SEQUENCE crm.wallet_bonus_lot_id_seq;
CREATE TABLE crm.wallet_bonus_lot (
	lot_id			bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_bonus_lot_id_seq'),
	customer_id		bigint NOT NULL REFERENCES crm.wallet (customer_id),
	txn_id			bigint NOT NULL REFERENCES crm.wallet_txn (txn_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_bonus_lot_amount_positive CHECK (amount > 0),
	remaining		numeric(14,2) NOT NULL CONSTRAINT wallet_bonus_lot_remaining_range CHECK (remaining >= 0 AND remaining <= amount),
	expires_at		timestamptz NOT NULL
);
CREATE INDEX wallet_bonus_lot_customer_idx ON crm.wallet_bonus_lot (customer_id, expires_at, lot_id);
CREATE INDEX wallet_bonus_lot_expiry_idx ON crm.wallet_bonus_lot (expires_at) WHERE remaining > 0;
COMMENT ON TABLE crm.wallet_bonus_lot IS
	'The bonus of one top-up: amount given, remaining to spend (held bonus is not in it), expires_at; spent after the cash, soonest expiry first; a cache of the journal''s bonus entries';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_bonus_lot', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_bonus_lot_id_seq', '');

CREATE SEQUENCE crm.wallet_journal_id_seq;
CREATE TABLE crm.wallet_journal (
	entry_id		bigint PRIMARY KEY DEFAULT pg_catalog.nextval('crm.wallet_journal_id_seq'),
	txn_id			bigint NOT NULL REFERENCES crm.wallet_txn (txn_id),
	account			text NOT NULL CONSTRAINT wallet_journal_account_valid
					CHECK (account IN ('wallet', 'cash_received', 'bonus_liability', 'sales', 'breakage', 'cash_refunded')),
	customer_id		bigint REFERENCES crm.wallet (customer_id),
	bucket			text CONSTRAINT wallet_journal_bucket_valid CHECK (bucket IN ('cash', 'bonus', 'held_cash', 'held_bonus')),
	lot_id			bigint REFERENCES crm.wallet_bonus_lot (lot_id),
	amount			numeric(14,2) NOT NULL CONSTRAINT wallet_journal_amount_nonzero CHECK (amount <> 0 AND amount <> 'NaN'::numeric),
	CONSTRAINT wallet_journal_wallet_fields CHECK (
		CASE WHEN account = 'wallet' THEN customer_id IS NOT NULL AND bucket IS NOT NULL
		     ELSE customer_id IS NULL AND bucket IS NULL AND lot_id IS NULL END),
	CONSTRAINT wallet_journal_lot_fields CHECK ((bucket IN ('bonus', 'held_bonus')) = (lot_id IS NOT NULL))
);
CREATE INDEX wallet_journal_txn_idx ON crm.wallet_journal (txn_id);
CREATE INDEX wallet_journal_customer_idx ON crm.wallet_journal (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX wallet_journal_lot_idx ON crm.wallet_journal (lot_id) WHERE lot_id IS NOT NULL;
COMMENT ON TABLE crm.wallet_journal IS
	'Append-only double-entry journal: the entries of each crm.wallet_txn, summing to zero; a wallet entry adds to (> 0) or takes from (< 0) one bucket of a customer record''s wallet, the company accounts (cash_received, bonus_liability, sales, breakage, cash_refunded) carry the other side';
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_journal', '');
SELECT pg_catalog.pg_extension_config_dump('crm.wallet_journal_id_seq', '');

CREATE TRIGGER wallet_txn_append_only BEFORE UPDATE OR DELETE ON crm.wallet_txn
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_txn_no_truncate BEFORE TRUNCATE ON crm.wallet_txn
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_journal_append_only BEFORE UPDATE OR DELETE ON crm.wallet_journal
	FOR EACH ROW EXECUTE FUNCTION crm.refuse_edit_of_history();
CREATE TRIGGER wallet_journal_no_truncate BEFORE TRUNCATE ON crm.wallet_journal
	FOR EACH STATEMENT EXECUTE FUNCTION crm.refuse_edit_of_history();

-- ---------------------------------------------------------------------------
-- The ledger's owner: entries in, caches updated, balance checked
-- ---------------------------------------------------------------------------

-- Applies the entries of transaction txn to the wallets and bonus lots (the
-- caller inserted them and holds the pockets' wallet rows); refuses a
-- transaction whose entries do not sum to zero.  The CHECKs of crm.wallet
-- and crm.wallet_bonus_lot are the last guard of "never negative": the
-- callers refuse first, with CR401.
CREATE FUNCTION crm.wallet_apply(txn bigint) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- (every call runs the same statements on a few rows: a generic plan is
-- the right one, and planning each call cost as much as running it)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	total numeric;
	bonus_moved boolean;
BEGIN
	SELECT pg_catalog.sum(j.amount), pg_catalog.bool_or(j.lot_id IS NOT NULL) INTO total, bonus_moved
	FROM crm.wallet_journal j WHERE j.txn_id = txn;
	IF total IS DISTINCT FROM 0 THEN
		RAISE EXCEPTION 'wallet transaction % does not balance: its entries sum to %', txn, COALESCE(total::text, 'nothing')
			USING ERRCODE = 'check_violation';
	END IF;
	UPDATE crm.wallet w SET cash = w.cash + d.cash, bonus = w.bonus + d.bonus,
	                        held_cash = w.held_cash + d.held_cash, held_bonus = w.held_bonus + d.held_bonus
	FROM (SELECT j.customer_id,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'cash'), 0) AS cash,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'bonus'), 0) AS bonus,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_cash'), 0) AS held_cash,
	             COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_bonus'), 0) AS held_bonus
	      FROM crm.wallet_journal j WHERE j.txn_id = txn AND j.account = 'wallet' GROUP BY j.customer_id) d
	WHERE w.customer_id = d.customer_id;
	IF bonus_moved THEN
		UPDATE crm.wallet_bonus_lot l SET remaining = l.remaining + d.amount
		FROM (SELECT j.lot_id, pg_catalog.sum(j.amount) AS amount FROM crm.wallet_journal j
		      WHERE j.txn_id = txn AND j.bucket = 'bonus' GROUP BY j.lot_id) d
		WHERE l.lot_id = d.lot_id;
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_apply(bigint) IS
	'Internal: applies a wallet transaction''s journal entries to the wallets and bonus lots (the caches), refusing one whose entries do not sum to zero (23514)';

-- The transaction already written under key, checked against the call
-- that repeats it (CR002 when it differs), or NULL for a new key.
CREATE FUNCTION crm.wallet_retry(key text, kind text, golden bigint, amount numeric) RETURNS crm.wallet_txn
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
BEGIN
	SELECT * INTO t FROM crm.wallet_txn x WHERE x.idempotency_key = key;
	IF FOUND AND (t.kind <> kind OR t.amount <> amount OR crm.golden_customer(t.customer_id) <> golden) THEN
		RAISE EXCEPTION 'idempotency key "%" was used for another wallet movement (% of % for customer %)',
			key, t.kind, t.amount, t.customer_id USING ERRCODE = 'CR002';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_retry(text, text, bigint, numeric) IS
	'Internal: the wallet transaction written under an idempotency key (NULL when new); CR002 when it was another kind, amount or customer';

-- Refuses what no wallet movement may take: NULL arguments, an amount that
-- is not a positive number of cents, a time that is not finite.
CREATE FUNCTION crm.wallet_check_args(what text, customer_id bigint, amount numeric, key text, at timestamptz) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF customer_id IS NULL OR amount IS NULL OR key IS NULL OR at IS NULL THEN
		RAISE EXCEPTION '% needs a customer, an amount, an idempotency key and a time', what
			USING ERRCODE = 'null_value_not_allowed',
			      HINT = 'Pass a key unique to this movement; a retry with the same key returns the first result.';
	END IF;
	IF amount <= 0 OR amount = 'NaN'::numeric OR amount <> pg_catalog.round(amount, 2) OR amount > 999999999999.99 THEN
		RAISE EXCEPTION '% needs a positive amount in cents, not %', what, amount USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION '% needs a finite time, not %', what, at USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_check_args(text, bigint, numeric, text, timestamptz) IS
	'Internal: 22004 for a NULL argument, 22023 for an amount that is not a positive number of cents or a time that is not finite';

-- Locks the wallet rows of the given customer records FOR UPDATE in
-- customer_id order (records without a wallet have nothing to lock: only a
-- top-up creates a wallet).
CREATE FUNCTION crm.wallet_lock(pockets bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM 1 FROM crm.wallet w WHERE w.customer_id = ANY (pockets) ORDER BY w.customer_id FOR UPDATE;
END
$$;
COMMENT ON FUNCTION crm.wallet_lock(bigint[]) IS
	'Internal: locks the wallet rows of customer records FOR UPDATE in customer_id order';

-- Locks the wallets that transactions moved (a hold's, a payment's: an
-- unmerge may have put them under another golden since), all at once in
-- customer_id order.
CREATE FUNCTION crm.wallet_lock_txns(txns bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM crm.wallet_lock(ARRAY(SELECT DISTINCT j.customer_id FROM crm.wallet_journal j
	                              WHERE j.txn_id = ANY (txns) AND j.account = 'wallet'));
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_txns(bigint[]) IS
	'Internal: locks the wallet rows that wallet transactions moved, in customer_id order (crm.wallet_lock)';

-- The order a payment or top-up is for, locked (so a payment and a top-up
-- of one order are decided one after the other), refused unless it is the
-- golden customer's and not refunded, and refused when the wallet's own
-- top-up and a wallet payment would meet on it: "other" is the kind of
-- movement that may not be on the order already (top_up for a payment,
-- pay or hold for a top-up).
CREATE FUNCTION crm.wallet_lock_order(order_id bigint, golden bigint, other text[]) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	o record;
BEGIN
	SELECT x.customer_id, x.status INTO o FROM crm.orders x WHERE x.order_id = wallet_lock_order.order_id FOR NO KEY UPDATE;
	IF NOT FOUND OR o.customer_id <> golden THEN
		RAISE EXCEPTION 'order % is not an order of customer %', order_id, golden USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF o.status = 'refunded' THEN
		RAISE EXCEPTION 'order % is refunded', order_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT 1 FROM crm.wallet_txn x WHERE x.order_id = wallet_lock_order.order_id AND x.kind = ANY (other)) THEN
		RAISE EXCEPTION 'a wallet cannot pay for its own top-up: order % %', order_id,
			CASE WHEN 'top_up' = ANY (other) THEN 'tops up the wallet' ELSE 'was paid with the wallet' END
			USING ERRCODE = 'CR403', HINT = 'Pay for a top-up with cash, a card or another outside payment.';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_order(bigint, bigint, text[]) IS
	'Internal: locks the order a wallet movement is for; 23503 when it is not the customer''s, 22023 when it is refunded, CR403 when the wallet would pay for its own top-up';

-- ---------------------------------------------------------------------------
-- Top-up
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_top_up(customer_id bigint, amount numeric, idempotency_key text,
	bonus numeric DEFAULT 0, paid_with text DEFAULT 'cash', order_id bigint DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now(), bonus_expires_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id and bonus_expires_at may be NULL.  Returns the txn id.
DECLARE
	g bigint;
	t crm.wallet_txn;
	lot bigint;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_top_up()');
	PERFORM crm.wallet_check_args('a top-up', customer_id, amount, idempotency_key, at);
	IF bonus IS NULL OR bonus < 0 OR bonus <> pg_catalog.round(bonus, 2) OR bonus > 999999999999.99 OR paid_with IS NULL THEN
		RAISE EXCEPTION 'a top-up needs a bonus of zero or more cents (not %) and a payment method', bonus
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF paid_with = 'wallet' THEN
		RAISE EXCEPTION 'a wallet cannot pay for its own top-up' USING ERRCODE = 'CR403',
			HINT = 'Top up with cash, a card or another outside payment.';
	END IF;
	g := crm.lock_customer(customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_top_up.order_id FOR NO KEY UPDATE;
	END IF;
	INSERT INTO crm.wallet (customer_id) VALUES (customer_id) ON CONFLICT DO NOTHING;
	PERFORM crm.wallet_lock(ARRAY[customer_id]);
	-- A retry returns the first result: checked under the wallet's lock,
	-- where a concurrent call with the same key is decided.
	t := crm.wallet_retry(idempotency_key, 'top_up', g, amount);
	IF t.txn_id IS NOT NULL THEN
		RETURN t.txn_id;
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, g, ARRAY['pay', 'hold']);
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, bonus, idempotency_key, order_id, paid_with, at)
	VALUES ('top_up', customer_id, amount, bonus, idempotency_key, order_id, paid_with, at)
	RETURNING * INTO t;
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, amount) VALUES
		(t.txn_id, 'wallet', customer_id, 'cash', amount),
		(t.txn_id, 'cash_received', NULL, NULL, -amount);
	IF bonus > 0 THEN
		INSERT INTO crm.wallet_bonus_lot (customer_id, txn_id, amount, remaining, expires_at)
		VALUES (customer_id, t.txn_id, bonus, 0,
		        COALESCE(bonus_expires_at, at + (SELECT p.bonus_valid FROM crm.wallet_program p)))
		RETURNING lot_id INTO lot;
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount) VALUES
			(t.txn_id, 'wallet', customer_id, 'bonus', lot, bonus),
			(t.txn_id, 'bonus_liability', NULL, NULL, NULL, -bonus);
	END IF;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t.txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_top_up(bigint, numeric, text, numeric, text, bigint, timestamptz, timestamptz) IS
	'Tops up the wallet of the customer record named with amount cash (paid_with: cash, card, ...; never wallet) and an optional bonus, spent after the cash, valid until bonus_expires_at (default: at + wallet_program.bonus_valid), never paid out in cash; exactly once per idempotency key; returns the transaction id.  CR403 paid with the wallet, or for an order the wallet paid; CR002 key reused; 22023 bad amount; 23503 unknown customer or another customer''s order';

-- ---------------------------------------------------------------------------
-- Paying: at once, or hold then capture or release
-- ---------------------------------------------------------------------------

-- Takes amount from the wallets of pockets (the golden customer g's first):
-- cash first, pocket by pocket, then bonus, soonest expiry first, from lots
-- valid at "at".  Writes the wallet entries of txn (held: into the held
-- buckets, same pocket and lot, not out of the wallet).  CR401 when the
-- wallets hold less than amount.
CREATE FUNCTION crm.wallet_draw(txn bigint, g bigint, pockets bigint[], amount numeric, held boolean, at timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
-- (a custom plan for the draw took three times as long as running it)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	taken numeric;
BEGIN
	WITH source AS (
		SELECT w.customer_id, NULL::bigint AS lot_id, w.cash AS avail,
		       0 AS pass, (w.customer_id <> g)::integer AS own_last, NULL::timestamptz AS expires_at, w.customer_id AS tie
		FROM crm.wallet w WHERE w.customer_id = ANY (pockets) AND w.cash > 0
		UNION ALL
		SELECT l.customer_id, l.lot_id, l.remaining, 1, 0, l.expires_at, l.lot_id
		FROM crm.wallet_bonus_lot l WHERE l.customer_id = ANY (pockets) AND l.remaining > 0 AND l.expires_at > at),
	running AS (
		SELECT s.*, pg_catalog.row_number() OVER w AS n, pg_catalog.sum(s.avail) OVER w - s.avail AS before
		FROM source s WINDOW w AS (ORDER BY s.pass, s.own_last, s.expires_at, s.tie ROWS UNBOUNDED PRECEDING)),
	draw AS (
		SELECT r.customer_id, r.lot_id, r.n, LEAST(r.avail, amount - r.before) AS take FROM running r WHERE r.before < amount),
	-- The entries in the order drawn (a capture spends a hold in that order):
	-- out of the buckets, then, for a hold, into the held buckets.
	entries AS (
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
		SELECT txn, 'wallet', d.customer_id,
		       CASE WHEN k.into_held THEN 'held_' ELSE '' END || CASE WHEN d.lot_id IS NULL THEN 'cash' ELSE 'bonus' END,
		       d.lot_id, CASE WHEN k.into_held THEN d.take ELSE -d.take END
		FROM draw d CROSS JOIN (VALUES (false), (true)) k(into_held)
		WHERE NOT k.into_held OR held
		ORDER BY k.into_held, d.n
		RETURNING wallet_journal.amount AS moved)
	SELECT COALESCE(-pg_catalog.sum(e.moved) FILTER (WHERE e.moved < 0), 0) INTO taken FROM entries e;
	IF taken < amount THEN
		RAISE EXCEPTION 'customer % has % in the wallet, % needed', g, taken, amount
			USING ERRCODE = 'CR401', HINT = 'Held and expired value cannot be spent; see crm.wallet_balance().';
	END IF;
END
$$;
COMMENT ON FUNCTION crm.wallet_draw(bigint, bigint, bigint[], numeric, boolean, timestamptz) IS
	'Internal: writes the wallet entries that take an amount from a golden customer''s wallets (cash first, own wallet first, then bonus by expiry; into the held buckets for a hold); CR401 when too little';

-- What pay and hold share: arguments checked, customer and order locked,
-- a retry answered, the draw written.  Returns the transaction.
CREATE FUNCTION crm.wallet_spend(kind text, customer_id bigint, amount numeric, idempotency_key text,
	order_id bigint, order_ref text, at timestamptz, hold_until timestamptz)
RETURNS crm.wallet_txn
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint;
	t crm.wallet_txn;
	pockets bigint[];
BEGIN
	PERFORM crm.refuse_on_citus(pg_catalog.format('crm.wallet_%s()', kind));
	PERFORM crm.wallet_check_args(CASE kind WHEN 'pay' THEN 'a wallet payment' ELSE 'a hold' END, customer_id, amount, idempotency_key, at);
	g := crm.lock_customer(customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_spend.order_id FOR NO KEY UPDATE;
	END IF;
	pockets := crm.records_under(g);
	PERFORM crm.wallet_lock(pockets);
	-- A retry returns the first result: checked under the wallets' lock,
	-- where a concurrent call with the same key is decided.
	t := crm.wallet_retry(idempotency_key, kind, g, amount);
	IF t.txn_id IS NOT NULL THEN
		RETURN t;
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, g, ARRAY['top_up']);
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, expires_at, at)
	VALUES (kind, customer_id, amount, idempotency_key, order_id, order_ref, hold_until, at)
	RETURNING * INTO t;
	PERFORM crm.wallet_draw(t.txn_id, g, pockets, amount, kind = 'hold', at);
	IF kind = 'pay' THEN
		INSERT INTO crm.wallet_journal (txn_id, account, amount) VALUES (t.txn_id, 'sales', amount);
	END IF;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_spend(text, bigint, numeric, text, bigint, text, timestamptz, timestamptz) IS
	'Internal: a payment or a hold of amount from a customer''s wallets, exactly once per key (crm.wallet_pay, crm.wallet_hold)';

CREATE FUNCTION crm.wallet_pay(customer_id bigint, amount numeric, idempotency_key text,
	order_id bigint DEFAULT NULL, order_ref text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- (PL/pgSQL, not SQL: a SQL function is planned again on every call)
BEGIN
	RETURN (crm.wallet_spend('pay', customer_id, amount, idempotency_key, order_id, order_ref, at, NULL)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_pay(bigint, numeric, text, bigint, text, timestamptz) IS
	'Pays amount from the customer''s stored value (a merged record''s id means its golden customer; all its records'' wallets, its own first; cash before bonus, bonus by expiry), exactly once per idempotency key; returns the transaction id.  CR401 too little in the wallet, CR403 the order tops up the wallet, CR002 key reused, 22023 bad amount or refunded order, 23503 unknown customer or another customer''s order';

CREATE FUNCTION crm.wallet_hold(customer_id bigint, amount numeric, idempotency_key text,
	order_ref text DEFAULT NULL, ttl interval DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (crm.wallet_spend('hold', customer_id, amount, idempotency_key, NULL, order_ref, at,
		at + COALESCE(ttl, (SELECT p.hold_ttl FROM crm.wallet_program p)))).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_hold(bigint, numeric, text, text, interval, timestamptz) IS
	'Holds amount of the customer''s stored value for an open order (order_ref) until crm.wallet_capture or crm.wallet_release, or until ttl (default wallet_program.hold_ttl) passes and crm.tick releases it; held value cannot be spent elsewhere; exactly once per idempotency key; returns the hold''s transaction id.  CR401 too little, CR002 key reused';

-- The hold under key with its customer, the order it is captured for (when
-- given) and the wallets it holds locked, in the lock order (CR405 when
-- there is none), and the transaction that closed it (capture or release;
-- NULL while it is open).
CREATE FUNCTION crm.wallet_lock_hold(hold_key text, order_id bigint, OUT hold crm.wallet_txn, OUT closed crm.wallet_txn)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id may be NULL.
BEGIN
	SELECT * INTO hold FROM crm.wallet_txn x WHERE x.idempotency_key = hold_key AND x.kind = 'hold';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no wallet hold has the key "%"', hold_key USING ERRCODE = 'CR405';
	END IF;
	PERFORM crm.lock_customer(hold.customer_id);
	IF order_id IS NOT NULL THEN
		PERFORM 1 FROM crm.orders x WHERE x.order_id = wallet_lock_hold.order_id FOR NO KEY UPDATE;
	END IF;
	PERFORM crm.wallet_lock_txns(ARRAY[hold.txn_id]);
	SELECT * INTO closed FROM crm.wallet_txn x WHERE x.ref_txn_id = hold.txn_id AND x.kind IN ('capture', 'release');
END
$$;
COMMENT ON FUNCTION crm.wallet_lock_hold(text, bigint) IS
	'Internal: the wallet hold under a key, its customer, the order it is captured for and its wallets locked, and the capture or release that closed it (NULL while open); CR405 unknown';

-- Closes hold h: of what it holds, "captured" is spent (to sales: cash
-- first, in the order it was drawn), the rest goes back to the buckets it
-- came from.  One transaction of the kind given.
CREATE FUNCTION crm.wallet_close_hold(h crm.wallet_txn, kind text, captured numeric, key text, at timestamptz)
RETURNS crm.wallet_txn
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
BEGIN
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, ref_txn_id, at)
	VALUES (kind, h.customer_id, CASE kind WHEN 'capture' THEN captured ELSE h.amount END, key, h.order_id, h.order_ref, h.txn_id, at)
	RETURNING * INTO t;
	WITH held AS (
		SELECT j.customer_id, j.bucket, j.lot_id, j.amount,
		       pg_catalog.sum(j.amount) OVER (ORDER BY j.entry_id ROWS UNBOUNDED PRECEDING) - j.amount AS before
		FROM crm.wallet_journal j WHERE j.txn_id = h.txn_id AND j.amount > 0),
	split AS (
		SELECT x.*, GREATEST(LEAST(x.amount, captured - x.before), 0) AS spent FROM held x)
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
	SELECT t.txn_id, 'wallet', s.customer_id, s.bucket, s.lot_id, -s.amount FROM split s
	UNION ALL
	SELECT t.txn_id, 'wallet', s.customer_id, pg_catalog.substr(s.bucket, 6), s.lot_id, s.amount - s.spent FROM split s WHERE s.amount > s.spent
	UNION ALL
	SELECT t.txn_id, 'sales', NULL, NULL, NULL, captured WHERE captured > 0;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t;
END
$$;
COMMENT ON FUNCTION crm.wallet_close_hold(crm.wallet_txn, text, numeric, text, timestamptz) IS
	'Internal: closes a wallet hold: captured of it spent (cash first), the rest back where it was drawn from';

CREATE FUNCTION crm.wallet_capture(hold_key text, amount numeric, order_id bigint DEFAULT NULL,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: order_id may be NULL.  Once per hold: the capture's key is
-- 'capture:' || hold_key, and a retry with the same amount returns it.  A
-- hold past its ttl can still be captured until crm.tick releases it.
DECLARE
	h record;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_capture()');
	PERFORM crm.wallet_check_args('a capture', 0, amount, hold_key, at);
	h := crm.wallet_lock_hold(hold_key, order_id);
	IF (h.closed).kind = 'capture' AND (h.closed).amount = amount THEN
		RETURN (h.closed).txn_id;			-- a retry: the first result
	ELSIF (h.closed).txn_id IS NOT NULL THEN
		RAISE EXCEPTION 'wallet hold "%" was % already', hold_key, CASE (h.closed).kind WHEN 'capture' THEN 'captured' ELSE 'released' END
			USING ERRCODE = 'CR402', DETAIL = pg_catalog.format('%s of %s at %s', (h.closed).kind, (h.closed).amount, (h.closed).at);
	ELSIF amount > (h.hold).amount THEN
		RAISE EXCEPTION 'wallet hold "%" holds %, % cannot be captured', hold_key, (h.hold).amount, amount
			USING ERRCODE = 'CR402', HINT = 'Pay the rest with crm.wallet_pay() or another payment.';
	END IF;
	IF order_id IS NOT NULL THEN
		PERFORM crm.wallet_lock_order(order_id, crm.golden_customer((h.hold).customer_id), ARRAY['top_up']);
		h.hold.order_id := order_id;
	END IF;
	RETURN (crm.wallet_close_hold(h.hold, 'capture', amount, 'capture:' || hold_key, at)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_capture(text, numeric, bigint, timestamptz) IS
	'Spends amount (at most what it holds) of an open wallet hold on its order (order_id: the order as finally written) and gives the rest back; once per hold (a retry with the same amount returns the first transaction id); a hold past its ttl can be captured until crm.tick releases it.  CR405 unknown hold, CR402 captured or released already, or amount over the hold, CR403 the order tops up the wallet';

CREATE FUNCTION crm.wallet_release(hold_key text, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	h record;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_release()');
	h := crm.wallet_lock_hold(hold_key, NULL);
	IF (h.closed).kind = 'release' THEN
		RETURN (h.closed).txn_id;			-- released already (a retry, or the tick)
	ELSIF (h.closed).txn_id IS NOT NULL THEN
		RAISE EXCEPTION 'wallet hold "%" was captured already', hold_key USING ERRCODE = 'CR402',
			HINT = 'Refund the capture instead: crm.wallet_refund(''capture:'' || hold key, ...).';
	END IF;
	RETURN (crm.wallet_close_hold(h.hold, 'release', 0, 'release:' || hold_key, at)).txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_release(text, timestamptz) IS
	'Gives everything an open wallet hold holds back to the wallets it came from; a second release returns the first; CR405 unknown hold, CR402 captured already';

-- ---------------------------------------------------------------------------
-- Refunds
-- ---------------------------------------------------------------------------

-- What of payment p (pay or capture) has not been refunded yet, per
-- wallet, bucket and lot it came from (held buckets count as the bucket
-- they were held from): the payment's entries less what its refunds gave
-- back (their entries into the wallet: a refund to the original payment
-- puts the cash back where it came from and takes it out again, so it
-- counts too).
CREATE FUNCTION crm.wallet_unrefunded(p bigint)
RETURNS TABLE (customer_id bigint, bucket text, lot_id bigint, expires_at timestamptz, amount numeric)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT j.customer_id, pg_catalog.replace(j.bucket, 'held_', ''), j.lot_id, l.expires_at, -pg_catalog.sum(j.amount)
	FROM crm.wallet_journal j
	LEFT JOIN crm.wallet_bonus_lot l ON l.lot_id = j.lot_id
	WHERE j.account = 'wallet'
	  AND (j.txn_id = p OR (j.amount > 0 AND j.txn_id IN (SELECT r.txn_id FROM crm.wallet_txn r WHERE r.ref_txn_id = p AND r.kind = 'refund')))
	GROUP BY 1, 2, 3, 4
	HAVING pg_catalog.sum(j.amount) < 0;
END;
COMMENT ON FUNCTION crm.wallet_unrefunded(bigint) IS
	'Internal: what of a wallet payment is not refunded yet, per wallet, bucket and bonus lot it came from';

-- Refund of amount of payment p: bonus first (the last value spent is the
-- first given back: latest expiry first, to its lot), then cash, each to
-- the wallet it came from; to = original then pays the cash part out to
-- the outside payment (a second entry takes it out of the wallet again;
-- bonus is never paid out).  The caller locked the payment's wallets.
CREATE FUNCTION crm.wallet_refund_txn(p crm.wallet_txn, amount numeric, key text, refund_to text, at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t crm.wallet_txn;
	left_to_refund numeric;
BEGIN
	SELECT COALESCE(pg_catalog.sum(u.amount), 0) INTO left_to_refund FROM crm.wallet_unrefunded(p.txn_id) u;
	IF amount > left_to_refund THEN
		RAISE EXCEPTION 'wallet payment "%" has % left to refund, not %', p.idempotency_key, left_to_refund, amount
			USING ERRCODE = 'CR404';
	END IF;
	INSERT INTO crm.wallet_txn (kind, customer_id, amount, idempotency_key, order_id, order_ref, refund_to, ref_txn_id, at)
	VALUES ('refund', p.customer_id, amount, key, p.order_id, p.order_ref, refund_to, p.txn_id, at)
	RETURNING * INTO t;
	WITH source AS (
		SELECT u.*, pg_catalog.sum(u.amount) OVER (ORDER BY u.bucket = 'cash', u.expires_at DESC, u.lot_id DESC, u.customer_id DESC
		                                           ROWS UNBOUNDED PRECEDING) - u.amount AS before
		FROM crm.wallet_unrefunded(p.txn_id) u),
	back AS (
		SELECT s.customer_id, s.bucket, s.lot_id, LEAST(s.amount, wallet_refund_txn.amount - s.before) AS give
		FROM source s WHERE s.before < wallet_refund_txn.amount)
	INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
	SELECT t.txn_id, 'sales', NULL, NULL, NULL, -amount
	UNION ALL
	SELECT t.txn_id, 'wallet', b.customer_id, b.bucket, b.lot_id, b.give FROM back b
	UNION ALL
	SELECT t.txn_id, 'wallet', b.customer_id, b.bucket, NULL, -b.give FROM back b
	WHERE b.bucket = 'cash' AND refund_to = 'original'
	UNION ALL
	SELECT t.txn_id, 'cash_refunded', NULL, NULL, NULL, pg_catalog.sum(b.give) FROM back b
	WHERE b.bucket = 'cash' AND refund_to = 'original' HAVING pg_catalog.sum(b.give) > 0;
	PERFORM crm.wallet_apply(t.txn_id);
	RETURN t.txn_id;
END
$$;
COMMENT ON FUNCTION crm.wallet_refund_txn(crm.wallet_txn, numeric, text, text, timestamptz) IS
	'Internal: refunds amount of a wallet payment (bonus first, each part to where it came from; cash to the original payment when refund_to = original); CR404 over what is left';

CREATE FUNCTION crm.wallet_refund(payment_key text, amount numeric, idempotency_key text,
	refund_to text DEFAULT NULL, at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
-- Not STRICT: refund_to NULL means the programme's policy.
DECLARE
	p crm.wallet_txn;
	t crm.wallet_txn;
BEGIN
	PERFORM crm.refuse_on_citus('crm.wallet_refund()');
	PERFORM crm.wallet_check_args('a wallet refund', 0, amount, idempotency_key, at);
	IF payment_key IS NULL OR (refund_to IS NOT NULL AND refund_to NOT IN ('wallet', 'original')) THEN
		RAISE EXCEPTION 'a wallet refund needs the payment''s key and refund_to wallet or original, not %', refund_to
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO p FROM crm.wallet_txn x WHERE x.idempotency_key = payment_key AND x.kind IN ('pay', 'capture');
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no wallet payment has the key "%"', payment_key USING ERRCODE = 'CR405',
			HINT = 'A hold is refunded through its capture, whose key is capture:<hold key>.';
	END IF;
	PERFORM crm.lock_customer(p.customer_id);
	PERFORM crm.wallet_lock_txns(ARRAY[p.txn_id]);
	t := crm.wallet_retry(idempotency_key, 'refund', crm.golden_customer(p.customer_id), amount);
	IF t.txn_id IS NOT NULL THEN
		IF t.ref_txn_id <> p.txn_id THEN
			RAISE EXCEPTION 'idempotency key "%" refunded another payment', idempotency_key USING ERRCODE = 'CR002';
		END IF;
		RETURN t.txn_id;
	END IF;
	RETURN crm.wallet_refund_txn(p, amount, idempotency_key,
		COALESCE(refund_to, (SELECT w.refund_to FROM crm.wallet_program w)), at);
END
$$;
COMMENT ON FUNCTION crm.wallet_refund(text, numeric, text, text, timestamptz) IS
	'Refunds amount of a wallet payment (pay, or capture:<hold key>): bonus first, back to the lots it came from, then cash, to the wallet it came from or (refund_to = original; default wallet_program.refund_to) to the original payment; exactly once per idempotency key; returns the transaction id.  CR404 more than is left of the payment, CR405 unknown payment, CR002 key reused';

-- AFTER UPDATE statement trigger on crm.orders: the wallet payments of
-- orders this statement fully refunded are refunded too, whatever is left
-- of each, by the programme's policy, once (key order-refund:<txn id>).
CREATE FUNCTION crm.wallet_on_refund() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	payments crm.wallet_txn[];
	p crm.wallet_txn;
	left_to_refund numeric;
BEGIN
	IF crm.on_citus() THEN
		RETURN NULL;					-- stored value does not run on a cluster yet
	END IF;
	payments := ARRAY(
		SELECT x FROM crm_new n
		JOIN crm_old o ON o.order_id = n.order_id
		JOIN crm.wallet_txn x ON x.order_id = n.order_id AND x.kind IN ('pay', 'capture')
		WHERE n.status = 'refunded' AND o.status <> 'refunded'
		ORDER BY x.txn_id);
	IF payments = '{}' THEN
		RETURN NULL;
	END IF;
	-- The wallets of all these payments at once, in customer_id order (one
	-- payment's after another's could lock them out of order).  No customer
	-- lock: the UPDATE holds the order rows (step 2 of the lock order),
	-- which a merge waits for while holding its customers.
	PERFORM crm.wallet_lock_txns(ARRAY(SELECT u.txn_id FROM pg_catalog.unnest(payments) u));
	FOREACH p IN ARRAY payments LOOP
		SELECT COALESCE(pg_catalog.sum(u.amount), 0) INTO left_to_refund FROM crm.wallet_unrefunded(p.txn_id) u;
		IF left_to_refund > 0 AND NOT EXISTS (SELECT 1 FROM crm.wallet_txn x WHERE x.idempotency_key = 'order-refund:' || p.txn_id) THEN
			PERFORM crm.wallet_refund_txn(p, left_to_refund, 'order-refund:' || p.txn_id,
				(SELECT w.refund_to FROM crm.wallet_program w), pg_catalog.now());
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION crm.wallet_on_refund() IS
	'Trigger: the wallet payments (pay, capture) of orders an UPDATE fully refunded are refunded, what is left of each, by wallet_program.refund_to, once (key order-refund:<txn id>)';
CREATE TRIGGER orders_wallet_refund AFTER UPDATE ON crm.orders
	REFERENCING OLD TABLE AS crm_old NEW TABLE AS crm_new
	FOR EACH STATEMENT EXECUTE FUNCTION crm.wallet_on_refund();

-- ---------------------------------------------------------------------------
-- Time: holds lapse, bonus expires (crm.tick)
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_expire(at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
-- Each lapsed hold is released and each pocket's expired bonus goes to
-- breakage in its own transaction row, locked as a payment would lock it;
-- a wallet a payment holds now is skipped (the next tick does it).
DECLARE
	r record;
	h record;
	t crm.wallet_txn;
	n bigint := 0;
BEGIN
	IF crm.on_citus() THEN
		RETURN 0;
	END IF;
	FOR r IN SELECT x.idempotency_key FROM crm.wallet_txn x
	         WHERE x.kind = 'hold' AND x.expires_at <= wallet_expire.at
	           AND NOT EXISTS (SELECT 1 FROM crm.wallet_txn c WHERE c.ref_txn_id = x.txn_id AND c.kind IN ('capture', 'release'))
	         ORDER BY x.txn_id LOOP
		-- locked as a capture locks it; one captured meanwhile stays captured
		h := crm.wallet_lock_hold(r.idempotency_key, NULL);
		IF (h.closed).txn_id IS NULL THEN
			PERFORM crm.wallet_close_hold(h.hold, 'release', 0, 'release:' || (h.hold).idempotency_key, at);
			n := n + 1;
		END IF;
	END LOOP;
	FOR r IN SELECT l.customer_id, pg_catalog.array_agg(l.lot_id ORDER BY l.lot_id) AS lots
	         FROM crm.wallet_bonus_lot l WHERE l.remaining > 0 AND l.expires_at <= wallet_expire.at
	         GROUP BY 1 ORDER BY 1 LOOP
		PERFORM 1 FROM crm.wallet w WHERE w.customer_id = r.customer_id FOR UPDATE SKIP LOCKED;
		CONTINUE WHEN NOT FOUND;
		INSERT INTO crm.wallet_txn (kind, customer_id, amount, bonus, idempotency_key, at)
		SELECT 'expire', r.customer_id, pg_catalog.sum(l.remaining), pg_catalog.sum(l.remaining),
		       pg_catalog.format('expire:%s:%s', r.customer_id, pg_catalog.nextval('crm.wallet_txn_id_seq')), at
		FROM crm.wallet_bonus_lot l WHERE l.lot_id = ANY (r.lots) AND l.remaining > 0
		HAVING pg_catalog.sum(l.remaining) > 0
		RETURNING * INTO t;
		CONTINUE WHEN t.txn_id IS NULL;
		INSERT INTO crm.wallet_journal (txn_id, account, customer_id, bucket, lot_id, amount)
		SELECT t.txn_id, 'wallet', l.customer_id, 'bonus', l.lot_id, -l.remaining
		FROM crm.wallet_bonus_lot l WHERE l.lot_id = ANY (r.lots) AND l.remaining > 0
		UNION ALL
		SELECT t.txn_id, 'breakage', NULL, NULL, NULL, t.amount;
		PERFORM crm.wallet_apply(t.txn_id);
		n := n + 1;
		t := NULL;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION crm.wallet_expire(timestamptz) IS
	'crm.tick task: releases wallet holds whose ttl passed by "at" and moves bonus past its expiry to breakage (one transaction per wallet); returns how many; idempotent';
INSERT INTO crm.tick_task (task, run_order, fn, builtin)
	VALUES ('wallet_expire', 140, 'crm.wallet_expire(timestamptz)'::regprocedure, true);

-- ---------------------------------------------------------------------------
-- Reading
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.wallet_balance(customer_id bigint, at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (cash numeric, bonus numeric, held numeric, spendable numeric)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	g bigint := crm.golden_customer(customer_id);
	pockets bigint[];
BEGIN
	IF g IS NULL THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id USING ERRCODE = 'foreign_key_violation';
	END IF;
	pockets := crm.records_under(g);
	SELECT COALESCE(pg_catalog.sum(w.cash), 0), COALESCE(pg_catalog.sum(w.held_cash + w.held_bonus), 0)
	INTO cash, held FROM crm.wallet w WHERE w.customer_id = ANY (pockets);
	SELECT COALESCE(pg_catalog.sum(l.remaining), 0) INTO bonus
	FROM crm.wallet_bonus_lot l WHERE l.customer_id = ANY (pockets) AND l.remaining > 0 AND l.expires_at > at;
	spendable := cash + bonus;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION crm.wallet_balance(bigint, timestamptz) IS
	'A customer''s stored value at "at" (a merged record''s id means its golden customer, over all its records'' wallets): cash, bonus still valid, held for open orders, and spendable = cash + bonus; 23503 for an unknown customer';

CREATE VIEW crm.v_wallet_accounts AS
SELECT j.account, pg_catalog.count(DISTINCT j.txn_id) AS transactions, pg_catalog.sum(j.amount) AS balance
FROM crm.wallet_journal j
GROUP BY j.account;
COMMENT ON VIEW crm.v_wallet_accounts IS
	'Trial balance of stored value: per account (wallet, cash_received, bonus_liability, sales, breakage, cash_refunded) the sum of its entries; the balances sum to zero';

CREATE VIEW crm.v_wallet_liability AS
SELECT pg_catalog.date_trunc('month', t.at) AS month,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'top_up'), 0) AS topped_up,
       COALESCE(pg_catalog.sum(t.bonus) FILTER (WHERE t.kind = 'top_up'), 0) AS bonus_given,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind IN ('pay', 'capture')), 0) AS spent,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'refund'), 0) AS refunded,
       COALESCE(pg_catalog.sum(t.amount) FILTER (WHERE t.kind = 'expire'), 0) AS breakage,
       pg_catalog.sum(pg_catalog.sum(COALESCE(w.moved, 0))) OVER (ORDER BY pg_catalog.date_trunc('month', t.at)) AS liability_at_month_end
FROM crm.wallet_txn t
LEFT JOIN LATERAL (SELECT pg_catalog.sum(j.amount) AS moved FROM crm.wallet_journal j
                   WHERE j.txn_id = t.txn_id AND j.account = 'wallet') w ON true
GROUP BY 1;
COMMENT ON VIEW crm.v_wallet_liability IS
	'Stored value per month (UTC): cash topped up, bonus given, spent, refunded, bonus expired (breakage), and the liability (all wallets: cash, bonus and held) at the month''s end';

-- ---------------------------------------------------------------------------
-- Checking
-- ---------------------------------------------------------------------------
CREATE FUNCTION crm.verify_wallets()
RETURNS TABLE (invariant text, customer_id bigint, detail text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT 'wallet transaction balances', t.customer_id,
	       pg_catalog.format('%s %s (%s): entries sum to %s', t.kind, t.txn_id, t.idempotency_key, COALESCE(pg_catalog.sum(j.amount)::text, 'nothing'))
	FROM crm.wallet_txn t LEFT JOIN crm.wallet_journal j ON j.txn_id = t.txn_id
	-- (every column grouped: a function that leans on the primary key would
	-- depend on it, and crm.distribute() rebuilds that key on Citus)
	GROUP BY t.txn_id, t.customer_id, t.kind, t.idempotency_key
	HAVING COALESCE(pg_catalog.sum(j.amount), 1) <> 0
	UNION ALL
	SELECT 'wallet matches its journal', COALESCE(w.customer_id, e.customer_id),
	       pg_catalog.format('wallet cash %s bonus %s held %s/%s, journal %s %s %s/%s', w.cash, w.bonus, w.held_cash, w.held_bonus,
	                         e.cash, e.bonus, e.held_cash, e.held_bonus)
	FROM crm.wallet w
	FULL JOIN (SELECT j.customer_id,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'cash'), 0) AS cash,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'bonus'), 0) AS bonus,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_cash'), 0) AS held_cash,
	                  COALESCE(pg_catalog.sum(j.amount) FILTER (WHERE j.bucket = 'held_bonus'), 0) AS held_bonus
	           FROM crm.wallet_journal j WHERE j.account = 'wallet' GROUP BY j.customer_id) e ON e.customer_id = w.customer_id
	WHERE (w.cash, w.bonus, w.held_cash, w.held_bonus) IS DISTINCT FROM
	      (COALESCE(e.cash, 0), COALESCE(e.bonus, 0), COALESCE(e.held_cash, 0), COALESCE(e.held_bonus, 0))
	UNION ALL
	SELECT 'bonus lot matches its journal', l.customer_id,
	       pg_catalog.format('lot %s: %s remaining, journal %s', l.lot_id, l.remaining, COALESCE(e.s, 0))
	FROM crm.wallet_bonus_lot l
	LEFT JOIN (SELECT j.lot_id, pg_catalog.sum(j.amount) AS s FROM crm.wallet_journal j WHERE j.bucket = 'bonus' GROUP BY 1) e
	  ON e.lot_id = l.lot_id
	WHERE l.remaining <> COALESCE(e.s, 0)
	UNION ALL
	SELECT 'wallet bonus matches its lots', w.customer_id, pg_catalog.format('bonus %s, lots %s', w.bonus, COALESCE(l.s, 0))
	FROM crm.wallet w
	LEFT JOIN (SELECT x.customer_id, pg_catalog.sum(x.remaining) AS s FROM crm.wallet_bonus_lot x GROUP BY 1) l ON l.customer_id = w.customer_id
	WHERE w.bonus <> COALESCE(l.s, 0)
	UNION ALL
	SELECT 'wallet hold holds its amount', h.customer_id,
	       pg_catalog.format('hold %s (%s) of %s is %s and holds %s', h.txn_id, h.idempotency_key, h.amount,
	                         CASE WHEN c.txn_id IS NULL THEN 'open' ELSE 'closed' END, COALESCE(held.s, 0))
	FROM crm.wallet_txn h
	LEFT JOIN crm.wallet_txn c ON c.ref_txn_id = h.txn_id AND c.kind IN ('capture', 'release')
	LEFT JOIN LATERAL (SELECT pg_catalog.sum(j.amount) AS s FROM crm.wallet_journal j
	                   WHERE j.txn_id IN (h.txn_id, c.txn_id) AND j.bucket IN ('held_cash', 'held_bonus')) held ON true
	WHERE h.kind = 'hold' AND COALESCE(held.s, 0) <> CASE WHEN c.txn_id IS NULL THEN h.amount ELSE 0 END
	UNION ALL
	SELECT 'wallet refunds within the payment', p.customer_id,
	       pg_catalog.format('payment %s (%s) of %s: %s refunded', p.txn_id, p.idempotency_key, p.amount, pg_catalog.sum(r.amount))
	FROM crm.wallet_txn p JOIN crm.wallet_txn r ON r.ref_txn_id = p.txn_id AND r.kind = 'refund'
	GROUP BY p.txn_id, p.customer_id, p.idempotency_key, p.amount
	HAVING pg_catalog.sum(r.amount) > p.amount;
END;
COMMENT ON FUNCTION crm.verify_wallets() IS
	'Every violated stored-value invariant, one row each (invariant, customer, detail): each transaction''s entries sum to zero, each wallet and bonus lot equals its journal, each wallet''s bonus equals its lots, each hold holds its amount while open and nothing once closed, no payment refunded beyond its amount.  Empty when all is well';
