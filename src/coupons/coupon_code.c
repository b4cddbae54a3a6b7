/*
 * coupon_code.c
 *		Coupon codes: unguessable, short enough to type, with a check
 *		character that catches a mistyped one before the database is asked.
 *
 * A code is 20 characters of Crockford's base 32 (0-9, A-Z without I, L,
 * O, U) carrying 100 bits from the operating system's strong random source
 * (pg_strong_random), then one check character: the 100-bit value modulo
 * 37, written with Crockford's check symbols (the 32 digits, then * ~ $ =
 * U).  Guessing a valid code among 2^100 is hopeless, and a single wrong or
 * swapped character changes the check.  Reading accepts lower case and the
 * look-alikes Crockford maps (I and L are 1, O is 0) and ignores hyphens
 * and spaces, as a cashier types them.
 */
#include "postgres.h"

#include "fmgr.h"
#include "port.h"
#include "utils/builtins.h"

#include "crm_ext.h"

#define CODE_DIGITS 20			/* 20 x 5 = 100 bits */

static const char symbols[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";

/* The value of a typed character, or -1; the check symbols only where allowed. */
static int
symbol_value(char c, bool check)
{
	c = (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c;
	if (c == 'O')
		return 0;
	if (c == 'I' || c == 'L')
		return 1;
	for (int i = 0; i < (check ? 37 : 32); i++)
		if (symbols[i] == c)
			return i;
	return -1;
}

/* The check symbol of digits (values 0-31), the whole number modulo 37. */
static char
check_symbol(const int *digits)
{
	int			r = 0;

	for (int i = 0; i < CODE_DIGITS; i++)
		r = (r * 32 + digits[i]) % 37;
	return symbols[r];
}

PG_FUNCTION_INFO_V1(crm_coupon_code);

/* crm.coupon_code(): a new random code (VOLATILE). */
Datum
crm_coupon_code(PG_FUNCTION_ARGS)
{
	unsigned char bytes[CODE_DIGITS];
	int			digits[CODE_DIGITS];
	char		code[CODE_DIGITS + 2];

	if (!pg_strong_random(bytes, sizeof(bytes)))
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not read random bytes for a coupon code")));
	for (int i = 0; i < CODE_DIGITS; i++)
	{
		digits[i] = bytes[i] & 31;	/* a byte's low 5 bits: uniform */
		code[i] = symbols[digits[i]];
	}
	code[CODE_DIGITS] = check_symbol(digits);
	code[CODE_DIGITS + 1] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(code));
}

PG_FUNCTION_INFO_V1(crm_coupon_code_normal);

/*
 * crm.coupon_code_normal(typed text): the code as stored (upper case, the
 * look-alikes mapped, hyphens and spaces dropped) when its check character
 * matches; NULL when it is not a well-formed code.
 */
Datum
crm_coupon_code_normal(PG_FUNCTION_ARGS)
{
	text	   *typed = PG_GETARG_TEXT_PP(0);
	const char *p = VARDATA_ANY(typed);
	int			len = VARSIZE_ANY_EXHDR(typed);
	int			digits[CODE_DIGITS];
	char		code[CODE_DIGITS + 2];
	int			n = 0;

	for (int i = 0; i < len; i++)
	{
		int			v;

		if (p[i] == '-' || p[i] == ' ')
			continue;
		if (n > CODE_DIGITS)
			PG_RETURN_NULL();
		v = symbol_value(p[i], n == CODE_DIGITS);
		if (v < 0)
			PG_RETURN_NULL();
		if (n < CODE_DIGITS)
			digits[n] = v;
		code[n++] = symbols[v];
	}
	if (n != CODE_DIGITS + 1 || check_symbol(digits) != code[CODE_DIGITS])
		PG_RETURN_NULL();
	code[n] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(code));
}
