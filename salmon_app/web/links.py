"""Recipients' signed, expiring links: ``<WebBaseUrl>/r/<token>`` opens that address's quarantine.

The token is the address signed with WebSecret and a time stamp (itsdangerous); it is
valid for DigestLinkLifetime. A token signed with another key, or altered, is forged (403);
an old one has expired (410, "ask for a new digest"). Without WebSecret there are no links.
"""
import itsdangerous

SALT = "vxgate-recipient-link"


class Forged(Exception):
    pass


class Expired(Exception):
    pass


def _serializer(config):
    if not config.WebSecret:
        raise Forged("recipient links are off (no WebSecret)")
    return itsdangerous.URLSafeTimedSerializer(config.WebSecret, salt=SALT)


def make(config, address):
    return _serializer(config).dumps(address.lower())


def read(config, token):
    """The address ``token`` was made for; Forged or Expired."""
    try:
        address = _serializer(config).loads(token, max_age=config.DigestLinkLifetime)
    except itsdangerous.SignatureExpired:
        raise Expired("this link has expired") from None
    except itsdangerous.BadData:
        raise Forged("this link is not valid") from None
    if not isinstance(address, str) or "@" not in address:
        raise Forged("this link is not valid")
    return address


def url(config, address):
    return "%s/r/%s" % (config.WebBaseUrl.rstrip("/"), make(config, address))
