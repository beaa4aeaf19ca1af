"""``python -m scratchlm ...`` runs the ``scratchlm`` command (see :mod:`scratchlm.cli`)."""

import sys

from .cli import main

sys.exit(main())
