"""The readable text of a message for its page: text/plain parts only, as text, bounded.

No part is ever rendered as HTML; an HTML part is only named (its source is in the
``.eml`` download). The email package's compat32 policy records defects instead of raising,
and whatever still goes wrong is one line in place of the text, never an error page.
"""
import email.parser
from email import policy

LIMIT = 64 * 1024      # characters shown per part
PARTS = 5


def text_parts(store, queue_id):
    """[(title, text)] of the first text/plain parts (the spool file, or the copy in the database)."""
    try:
        with store.open_message(store.lookup(queue_id)) as handle:
            raw = handle.read(8 * 1024 * 1024)
        message = email.parser.BytesParser(policy=policy.compat32).parsebytes(raw)
    except Exception as exc:
        return [("unreadable", "the message could not be read: %s" % exc)]
    found = []
    for part in message.walk():
        if len(found) >= PARTS:
            break
        ctype = part.get_content_type()
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        if ctype == "text/html":
            found.append(("text/html", "(an HTML part: not shown; download the .eml to read its source)"))
        elif ctype == "text/plain":
            try:
                data = part.get_payload(decode=True) or b""
                text = data.decode(part.get_content_charset() or "utf-8", "replace")
            except (LookupError, ValueError):
                text = data.decode("utf-8", "replace")
            text = text.replace("\r\n", "\n")      # line ends; a CR alone is shown as one (shown_lines)
            if len(text) > LIMIT:
                text = text[:LIMIT] + "\n[... %d more characters: download the .eml]" % (len(text) - LIMIT)
            found.append(("text/plain", text))
    return found
