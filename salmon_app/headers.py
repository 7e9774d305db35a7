"""Reading a few header fields of a stored message for records and reports, for people.

Only the header block is parsed (never the body), RFC 2047 words are decoded, and nothing
here raises: a malformed header gives empty values, never an error for the message.
"""
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser


def fields(block, names):
    """{name.lower(): decoded value} for the ``names`` present in the header ``block`` (bytes)."""
    try:
        parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    except Exception:
        return {}
    values = {}
    for name in names:
        value = parsed.get(name)
        if value is None:
            continue
        try:
            values[name.lower()] = str(make_header(decode_header(str(value))))[:500]
        except Exception:
            values[name.lower()] = str(value)[:500]
    return values
