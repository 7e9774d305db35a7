"""Quarantine administration: the ``vxgate quarantine`` commands and automatic expiry.

Every message vxgate owns is a file in the spool plus a record (``Message``, its
``Recipient`` and ``Event`` rows, its ``FileCheck`` verdicts) in the SQLite database; that
pair is the quarantine. These modules let an administrator look at it and act on it while the
daemon runs: ``query`` (filters and listing), ``history`` (everything about one message),
``release`` (re-send the original bytes without re-checking), ``export`` (the original .eml),
``remove`` (records and file together), ``expire`` (purge by age and the daemon's automatic
retention), ``check`` (consistency check and repair), ``stats`` (counts over a period) and
``cli`` (the argparse sub-commands). ``store`` opens the database and spool from a
configuration; ``render`` formats for people. Writes use ``models.writing()`` in short
transactions, so nothing here holds the database long enough to stall the daemon.
"""
