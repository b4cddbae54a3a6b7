-- The PL/pgSQL way of earning points, for bench/scenarios/20_loyalty.sh and
-- 15_order_path.sh: the same rules as crm_ext's C trigger (rule by validity
-- window and priority, tier multiplier, birthday month, member day,
-- month-end expiry, tier upgrade on spend) with a row per lot in a plain
-- table, one loop step per order (the step below, on record o).  Two shapes
-- of trigger function, made from the one text of the step: a statement
-- trigger looping over its transition table (bench_plpgsql_earn, needs
-- REFERENCING NEW TABLE AS loyalty_new) and the row trigger most code bases
-- have (bench_plpgsql_earn_row).  Both read the order's columns only, so
-- they work on crm.orders and on a plain table of its shape; the scenario
-- creates the triggers.  Loaded into the bench databases only, never into
-- the extension.
CREATE TABLE bench_lot (customer_id bigint NOT NULL, expires_at timestamptz NOT NULL, points bigint NOT NULL,
	earned_at timestamptz NOT NULL, order_id bigint);
CREATE INDEX ON bench_lot (customer_id, expires_at);
CREATE TABLE bench_pjournal (id bigserial PRIMARY KEY, customer_id bigint, kind text, points bigint, order_id bigint, at timestamptz);
CREATE TABLE bench_paccount (customer_id bigint PRIMARY KEY, tier text NOT NULL, spend numeric NOT NULL);

DO $do$
DECLARE
	vars constant text := 'o record; r record; a record; mult numeric; pts bigint; exp timestamptz; local timestamp;';
	step constant text := $step$
		INSERT INTO bench_paccount VALUES (o.customer_id, 'bronze', 0) ON CONFLICT DO NOTHING;
		SELECT p.*, t.multiplier, t.rank INTO a FROM bench_paccount p JOIN crm.tier t USING (tier)
		WHERE p.customer_id = o.customer_id FOR UPDATE OF p;
		SELECT * INTO r FROM crm.earn_rule e WHERE e.valid_from <= o.ordered_at AND o.ordered_at < e.valid_to
		ORDER BY e.priority DESC, e.valid_from DESC LIMIT 1;
		local := o.ordered_at AT TIME ZONE 'UTC';
		IF r IS NOT NULL AND o.amount - o.refunded_amount > 0 THEN
			mult := a.multiplier;
			IF extract(month FROM o.birthday) = extract(month FROM local) THEN mult := mult * r.birthday_multiplier; END IF;
			IF extract(day FROM local) = r.member_day THEN mult := mult * r.member_day_multiplier; END IF;
			pts := floor((o.amount - o.refunded_amount) * r.points_per_unit * mult);
			exp := (date_trunc('month', local) + interval '13 months') AT TIME ZONE 'UTC';
			IF pts > 0 THEN
				INSERT INTO bench_lot VALUES (o.customer_id, exp, pts, o.ordered_at, o.order_id);
				INSERT INTO bench_pjournal (customer_id, kind, points, order_id, at) VALUES (o.customer_id, 'earn', pts, o.order_id, o.ordered_at);
			END IF;
		END IF;
		UPDATE bench_paccount p SET spend = p.spend + (o.amount - o.refunded_amount),
			tier = coalesce((SELECT t.tier FROM crm.tier t WHERE t.threshold <= p.spend + (o.amount - o.refunded_amount)
			        AND t.rank > a.rank ORDER BY t.rank DESC LIMIT 1), p.tier)
		WHERE p.customer_id = o.customer_id;$step$;
BEGIN
	EXECUTE format($f$CREATE FUNCTION bench_plpgsql_earn() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE %s
BEGIN
	FOR o IN SELECT n.*, c.birthday FROM loyalty_new n JOIN crm.customer c ON c.customer_id = n.customer_id
	         WHERE n.status = 'paid' ORDER BY n.customer_id, n.ordered_at, n.order_id LOOP %s
	END LOOP;
	RETURN NULL;
END
$body$$f$, vars, step);
	EXECUTE format($f$CREATE FUNCTION bench_plpgsql_earn_row() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE %s
BEGIN
	FOR o IN SELECT NEW.*, c.birthday FROM crm.customer c WHERE c.customer_id = NEW.customer_id AND NEW.status = 'paid' LOOP %s
	END LOOP;
	RETURN NULL;
END
$body$$f$, vars, step);
END
$do$;
