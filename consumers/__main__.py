"""``python -m consumers`` is the ``stream-logreg`` command (see :mod:`consumers.cli`)."""

import sys

from consumers.cli import main

sys.exit(main())
