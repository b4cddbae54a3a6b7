-- pg_temp.expect_error(sql): runs sql and returns 'SQLSTATE: message' of the
-- error it raised, or 'no error'.  Keeps expected outputs free of server
-- source locations while still asserting the exact SQLSTATE and message.
CREATE FUNCTION pg_temp.expect_error(sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
