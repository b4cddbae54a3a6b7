-- pgTAP: the core schema's tables, columns, keys, indexes, and the security
-- rules every function of the extension follows.
BEGIN;
SELECT plan(53);

SELECT has_schema('crm');
SELECT tables_are('crm', ARRAY['store', 'customer', 'identity_kind', 'identity', 'orders', 'order_line', 'event_kind', 'event']
	|| ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
	         WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'p')
	           AND c.relname NOT IN ('store', 'customer', 'identity_kind', 'identity', 'orders', 'order_line', 'event_kind', 'event')),
	'crm holds the core tables (and the tables later features add)');

SELECT columns_are('crm', 'customer', ARRAY['customer_id', 'name', 'phone', 'email', 'birthday', 'gender',
	'home_store_id', 'channel', 'created_at', 'merged_into', 'forgotten_at']);
SELECT col_is_pk('crm', 'customer', 'customer_id', 'col_is_pk crm,customer,customer_id');
SELECT col_type_is('crm', 'customer', 'customer_id', 'bigint', 'col_type_is crm,customer,customer_id,bigint');
SELECT col_type_is('crm', 'customer', 'created_at', 'timestamp with time zone', 'col_type_is crm,customer,created_at,timestampwithtimezone');
SELECT col_type_is('crm', 'customer', 'birthday', 'date', 'col_type_is crm,customer,birthday,date');
SELECT fk_ok('crm', 'customer', 'merged_into', 'crm', 'customer', 'customer_id', 'fk_ok crm,customer,merged_into -> customer,customer_id');
SELECT fk_ok('crm', 'customer', 'home_store_id', 'crm', 'store', 'store_id', 'fk_ok crm,customer,home_store_id -> store,store_id');
SELECT has_index('crm', 'customer', 'customer_merged_into_idx', ARRAY['merged_into'], 'has_index crm,customer,customer_merged_into_idx,[merged_into]');

SELECT col_is_pk('crm', 'identity_kind', 'kind', 'col_is_pk crm,identity_kind,kind');
SELECT results_eq($$SELECT kind, strength, max_customers FROM crm.identity_kind ORDER BY kind$$,
	$$VALUES ('device'::text, 'weak'::text, 2), ('email', 'strong', 1), ('member_no', 'strong', 1),
	         ('openid', 'strong', 1), ('pay_account', 'strong', 1), ('phone', 'strong', 1)$$,
	'the six default identity kinds');
SELECT col_type_is('crm', 'identity', 'customer_id', 'bigint', 'col_type_is crm,identity,customer_id,bigint');
SELECT col_not_null('crm', 'identity', 'origin_customer_id', 'col_not_null crm,identity,origin_customer_id');
SELECT fk_ok('crm', 'identity', 'kind', 'crm', 'identity_kind', 'kind', 'fk_ok crm,identity,kind -> identity_kind,kind');
SELECT fk_ok('crm', 'identity', 'customer_id', 'crm', 'customer', 'customer_id', 'fk_ok crm,identity,customer_id -> customer,customer_id');
SELECT col_is_unique('crm', 'identity', ARRAY['kind', 'value', 'customer_id'], 'col_is_unique crm,identity,[kind,value,customer_id]');
SELECT has_index('crm', 'identity', 'identity_customer_idx', ARRAY['customer_id'], 'has_index crm,identity,identity_customer_idx,[customer_id]');
SELECT has_trigger('crm', 'identity', 'identity_fill_origin', 'has_trigger crm,identity,identity_fill_origin');

SELECT col_is_pk('crm', 'orders', 'order_id', 'col_is_pk crm,orders,order_id');
SELECT col_type_is('crm', 'orders', 'amount', 'numeric(14,2)', 'col_type_is crm,orders,amount,numeric(14,2)');
SELECT col_type_is('crm', 'orders', 'refunded_amount', 'numeric(14,2)', 'col_type_is crm,orders,refunded_amount,numeric(14,2)');
SELECT col_type_is('crm', 'orders', 'ordered_at', 'timestamp with time zone', 'col_type_is crm,orders,ordered_at,timestampwithtimezone');
SELECT col_type_is('crm', 'orders', 'store_id', 'integer', 'col_type_is crm,orders,store_id,integer');
SELECT col_not_null('crm', 'orders', 'origin_customer_id', 'col_not_null crm,orders,origin_customer_id');
SELECT col_default_is('crm', 'orders', 'status', 'paid', 'col_default_is crm,orders,status,paid');
-- orders, order_line and event reference their parents through triggers (issue 14)
SELECT trigger_is('crm', 'orders', 'orders_fill_origin', 'crm', 'fill_origin_customer', 'orders.customer_id, origin_customer_id and store_id are checked by orders_fill_origin');
SELECT trigger_is('crm', 'customer', 'customer_referenced', 'crm', 'referenced_row', 'a referenced customer cannot be deleted (customer_referenced)');
SELECT trigger_is('crm', 'store', 'store_referenced', 'crm', 'referenced_row', 'a referenced store cannot be deleted (store_referenced)');
SELECT has_index('crm', 'orders', 'orders_customer_idx', ARRAY['customer_id', 'ordered_at'], 'has_index crm,orders,orders_customer_idx,[customer_id,ordered_at]');
SELECT has_index('crm', 'orders', 'orders_origin_idx', ARRAY['origin_customer_id'], 'has_index crm,orders,orders_origin_idx,[origin_customer_id]');
SELECT col_is_unique('crm', 'orders', ARRAY['channel', 'external_ref'], 'col_is_unique crm,orders,[channel,external_ref]');
SELECT has_trigger('crm', 'orders', 'orders_fill_origin', 'has_trigger crm,orders,orders_fill_origin');

SELECT col_is_pk('crm', 'order_line', ARRAY['order_id', 'line_no'], 'col_is_pk crm,order_line,[order_id,line_no]');
SELECT col_type_is('crm', 'order_line', 'amount', 'numeric(14,2)', 'col_type_is crm,order_line,amount,numeric(14,2)');
SELECT col_type_is('crm', 'order_line', 'qty', 'integer', 'col_type_is crm,order_line,qty,integer');
SELECT trigger_is('crm', 'orders', 'orders_cascade_lines', 'crm', 'referenced_row', 'deleting an order deletes its lines (orders_cascade_lines)');
SELECT has_index('crm', 'order_line', 'order_line_sku_idx', ARRAY['sku'], 'has_index crm,order_line,order_line_sku_idx,[sku]');

SELECT col_is_pk('crm', 'event', 'event_id', 'col_is_pk crm,event,event_id');
SELECT col_type_is('crm', 'event', 'props', 'jsonb', 'col_type_is crm,event,props,jsonb');
SELECT col_type_is('crm', 'event', 'at', 'timestamp with time zone', 'col_type_is crm,event,at,timestampwithtimezone');
SELECT fk_ok('crm', 'event', 'kind', 'crm', 'event_kind', 'kind', 'fk_ok crm,event,kind -> event_kind,kind');
SELECT has_index('crm', 'event', 'event_customer_idx', ARRAY['customer_id', 'at'], 'has_index crm,event,event_customer_idx,[customer_id,at]');
SELECT has_trigger('crm', 'event', 'event_fill_origin', 'has_trigger crm,event,event_fill_origin');

-- pg_dump keeps the data: every table of crm is registered as configuration.
SELECT is_empty($$
	SELECT c.relname FROM pg_catalog.pg_class c
	WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'S')
	  AND c.oid <> ALL (SELECT unnest(e.extconfig) FROM pg_catalog.pg_extension e WHERE e.extname = 'crm_ext')
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')
	ORDER BY 1$$,
	'every table and sequence of crm is registered with pg_extension_config_dump');

-- Security rules (TESTING.md).
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
	JOIN pg_catalog.pg_language l ON l.oid = p.prolang
	WHERE p.pronamespace = 'crm'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
	  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
	ORDER BY 1$$,
	'every SQL and PL/pgSQL function in crm sets search_path = pg_catalog, pg_temp');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
	WHERE p.pronamespace = 'crm'::regnamespace AND p.prosecdef
	  AND (NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
	       OR has_function_privilege('public', p.oid, 'EXECUTE'))
	ORDER BY 1$$,
	'SECURITY DEFINER functions fix search_path and are not executable by PUBLIC');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
	WHERE p.pronamespace = 'crm'::regnamespace
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
	                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
	                    AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e')
	ORDER BY 1$$,
	'every function in crm belongs to the extension');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
	WHERE p.pronamespace = 'crm'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
	ORDER BY 1$$,
	'every function in crm has a COMMENT');
SELECT is_empty($$
	SELECT c.relname FROM pg_catalog.pg_class c
	WHERE c.relnamespace = 'crm'::regnamespace AND c.relkind IN ('r', 'v', 'm')
	  AND obj_description(c.oid, 'pg_class') IS NULL
	ORDER BY 1$$,
	'every table and view in crm has a COMMENT');
SELECT ok(NOT has_schema_privilege('public', 'crm', 'CREATE'), 'PUBLIC cannot create objects in crm');
SELECT is((SELECT e.extrelocatable FROM pg_catalog.pg_extension e WHERE e.extname = 'crm_ext'), false, 'crm_ext is not relocatable');
SELECT is((SELECT e.extnamespace::regnamespace::text FROM pg_catalog.pg_extension e WHERE e.extname = 'crm_ext'), 'crm', 'crm_ext lives in schema crm');

SELECT * FROM finish();
ROLLBACK;
