"""Dr.Web vxCube for vxgate: ``client`` talks to the vxCube API v2.0 (look-up by SHA-256,
upload, analyses, licence) with per-thread sessions, timeouts and configurable retries;
``extract`` finds the attachments of a message and recognises their types by content;
``sim`` is an in-memory vxCube emulator with test markers and fault injection, used by the
demo, the tests and administrators without a licence (``vxgate vxcube-sim``).
"""
