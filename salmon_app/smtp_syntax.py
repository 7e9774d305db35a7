"""Reading the arguments of MAIL, RCPT and XFORWARD: one left-to-right scan each, no regex.

These arguments are attacker text, and the receiver runs every session in a thread of one
process: a backtracking regex on them (vxgate had one: ``MAIL FROM:<"a""a"...`` took 8 s
for 19 of them, 2.5 times more for each further one) holds the GIL and stops every
session. So paths are split with ``bytes.find`` and a two-state scan for quoted local parts
(RFC 5321 4.1.2, with quoted pairs), and XFORWARD values are checked the way Postfix's
smtpd checks them. A refusal is a ``BadSyntax`` with the reason, which the receiver sends
back with a 501.
"""
import ipaddress

_WSP = b" \t\r\n\f\v"          # white space clients put around the path (the old regex's \s)
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
MAX_XFORWARD_VALUE = 255       # Postfix's smtpd limit ("attribute value too long")
MAX_XFORWARD_PROTO = 64        # likewise for PROTO
_XTEXT_CHARS = bytes(range(33, 127))    # printable ASCII: what an xtext value may hold


class BadSyntax(ValueError):
    """The reason a command's argument was refused, ready for a ``501 5.5.4`` reply."""


def split_path(line, prefix):
    """``(path, parameters)`` of ``<prefix><path> parameters`` (``prefix`` such as ``b"MAIL FROM:"``).

    The path comes without its angle brackets, exactly as sent: quoted strings may hold
    ``>`` and quoted pairs; an obsolete source route is left for the caller to drop."""
    if line[:len(prefix)].upper() != prefix:
        raise BadSyntax("Syntax: %s<address>" % prefix.decode())
    rest = line[len(prefix):].lstrip(_WSP)
    if rest[:1] != b"<":
        raise BadSyntax("Syntax: %s<address>" % prefix.decode())
    end = _path_end(rest, 1)
    return rest[1:end], rest[end + 1:].lstrip(_WSP)


def _path_end(data, start):
    """Index of the ``>`` that closes the path; ``>`` inside a quoted string does not count."""
    pos, close = start, data.find(b">", start)
    while close >= 0:
        quote = data.find(b'"', pos, close)
        if quote < 0:
            return close
        pos = _after_quoted(data, quote + 1)
        if close < pos:   # that '>' was quoted: look for the next one, from here on only
            close = data.find(b">", pos)
    raise BadSyntax("Bad address syntax: no closing '>'")


def _after_quoted(data, pos):
    """Index after the ``"`` that ends a quoted string opened just before ``pos``."""
    while True:
        quote = data.find(b'"', pos)
        if quote < 0:
            raise BadSyntax("Bad address syntax: unterminated quoted string")
        run = quote   # backslashes right before the quote: an odd run escapes it
        while run > pos and data[run - 1] == 0x5C:
            run -= 1
        if (quote - run) % 2 == 0:
            return quote + 1
        pos = quote + 1


def printable(text, limit=64):
    """``text`` shortened and with anything but printable ASCII as ``?``, to quote in a reply."""
    text = text[:limit]
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def xforward_value(name, raw):
    """The value of XFORWARD attribute ``name`` (str) from ``raw`` (bytes), kept xtext-encoded.

    Checked like Postfix's smtpd does (value length, PORT digits, ADDR an address, PROTO
    length) and as xtext (RFC 3461), so that it can be relayed to the next hop unchanged."""
    if not raw:
        raise BadSyntax("XFORWARD %s: attribute=value expected" % name)
    if len(raw) > MAX_XFORWARD_VALUE:
        raise BadSyntax("XFORWARD %s value longer than %d characters" % (name, MAX_XFORWARD_VALUE))
    if raw.translate(None, _XTEXT_CHARS):     # something is left: a byte outside them
        raise BadSyntax("XFORWARD %s value must be printable ASCII (xtext)" % name)
    value = raw.decode("ascii")
    plus = value.find("+")
    while plus >= 0:
        if not (len(raw) > plus + 2 and raw[plus + 1] in _HEX and raw[plus + 2] in _HEX):
            raise BadSyntax("XFORWARD %s value is not valid xtext ('+' without two hex digits)" % name)
        plus = value.find("+", plus + 3)
    if value in _UNAVAILABLE:
        return value
    if name == "PORT" and not (value.isdigit() and len(value) <= 5 and int(value) <= 65535):
        raise BadSyntax("Bad XFORWARD PORT syntax: %s" % printable(value))
    if name == "ADDR":
        address = value[5:] if value[:5].upper() == "IPV6:" else value
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise BadSyntax("Bad XFORWARD ADDR syntax: %s" % printable(value)) from None
    if name == "PROTO" and len(value) > MAX_XFORWARD_PROTO:
        raise BadSyntax("Bad XFORWARD PROTO syntax: longer than %d characters" % MAX_XFORWARD_PROTO)
    return value


def relayable_xforward(client):
    """The XFORWARD attributes of a record's ``client`` dict to pass on to the next hop.

    A value the receiver would refuse today (a record from an older version, or the
    session's own EHLO name standing in for HELO) is left out: relaying it would fail."""
    attributes = {}
    for key, value in client.items():
        name = key.upper()
        if name in XFORWARD_ATTRS:
            try:
                attributes[name] = xforward_value(name, str(value).encode("utf-8"))
            except BadSyntax:
                pass
    return attributes
