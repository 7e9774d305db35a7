"""The quarantine in a browser: ``vxgate web``, an administrators' console and recipients' self-service.

A Flask application (``app.create_app``) served by cheroot (``server``; waitress has no TLS)
in its own process beside the daemon, on the same database and spool. Administrators
(``users``: a file of argon2 hashes) log in (``auth``) and list, search, show, release, export
and delete messages (``admin``) through the very functions ``vxgate quarantine`` uses
(salmon_app/quarantine/*), every action recorded in the message's history under their name.
Recipients reach their own quarantined mail through signed, expiring links (``links``) that a
digest (``digest``, sent by the daemon like its notices) carries; what they may do per verdict
is RecipientRelease, and their requests (``release_requests``) wait for an administrator.
``security`` sets the headers, the session cookie, CSRF protection and login rate limits.
"""
