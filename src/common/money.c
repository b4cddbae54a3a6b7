/*
 * money.c
 *		Money as int64 cents: the arithmetic of spend, thresholds and points
 *		runs on integers, and numeric only at the SQL boundary.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/numeric.h"

#include "crm_ext.h"

/*
 * crm_numeric_to_cents
 *		A numeric with at most two decimals as an int64 count of cents.  The
 *		common case (numeric(14,2) columns) decodes the on-disk digits
 *		directly; anything unusual goes through numeric arithmetic, which
 *		raises the proper errors.
 */
#define NUMERIC_SIGN_MASK	0xC000
#define NUMERIC_SHORT		0x8000
#define NUMERIC_SHORT_SIGN_MASK 0x2000
#define NUMERIC_SHORT_WEIGHT_SIGN_MASK 0x0040
#define NUMERIC_SHORT_WEIGHT_MASK 0x003F

/* A numeric with at most two decimals as int64 cents (see above). */
int64
crm_numeric_to_cents(Datum num)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(num);

	if (!VARATT_IS_EXTENDED(v) || VARATT_IS_SHORT(v))
	{
		const char *data = VARDATA_ANY(v);
		int			len = VARSIZE_ANY_EXHDR(v);
		uint16		header;

		if (len >= 2)
		{
			memcpy(&header, data, sizeof(uint16));
			if ((header & NUMERIC_SIGN_MASK) == NUMERIC_SHORT)
			{
				int			weight = (header & NUMERIC_SHORT_WEIGHT_SIGN_MASK) ?
				(int) (~NUMERIC_SHORT_WEIGHT_MASK | (header & NUMERIC_SHORT_WEIGHT_MASK)) :
				(int) (header & NUMERIC_SHORT_WEIGHT_MASK);
				int			ndigits = (len - 2) / 2;
				int64		cents = 0;
				bool		ok = (weight <= 3);
				int			i;

				for (i = 0; ok && i < ndigits; i++)
				{
					int16		d;
					int			pos = weight - i;

					memcpy(&d, data + 2 + 2 * i, sizeof(int16));
					if (pos >= 0)
					{
						int64		mult = 100;
						int			k;

						for (k = 0; k < pos; k++)
							mult *= 10000;
						cents += (int64) d * mult;
					}
					else if (pos == -1 && d % 100 == 0)
						cents += d / 100;
					else
						ok = false;
				}
				if (ok)
					return (header & NUMERIC_SHORT_SIGN_MASK) ? -cents : cents;
			}
		}
	}
	{
		Numeric		hundred = int64_to_numeric(100);
		Datum		prod = DirectFunctionCall2(numeric_mul, num, NumericGetDatum(hundred));
		Datum		rounded = DirectFunctionCall2(numeric_round, prod, Int32GetDatum(0));

		return DatumGetInt64(DirectFunctionCall1(numeric_int8, rounded));
	}
}

Datum
crm_cents_to_numeric(int64 cents)
{
	return NumericGetDatum(int64_div_fast_to_numeric(cents, 2));
}
