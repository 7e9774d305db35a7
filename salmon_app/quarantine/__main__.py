"""``python -m salmon_app.quarantine``: the same as ``vxgate quarantine`` (see ``cli``)."""
import sys

from salmon_app.quarantine.cli import main

sys.exit(main())
