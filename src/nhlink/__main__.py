"""``python -m nhlink`` runs the ``nhlink`` command."""

import sys

from nhlink.cli import main

sys.exit(main())
