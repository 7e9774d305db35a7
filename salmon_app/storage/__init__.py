"""Storage: where an acknowledged message lives until it is finished.

The spool holds message files (``spool``); the database holds their records, history and the
verdict cache (``models``, on SQLite or PostgreSQL, with versioned ``migrations``); ``recovery``
resumes what a stopped process left, and ``durability`` keeps outcomes that could not be
recorded so nothing is relayed twice while storage fails.
"""
