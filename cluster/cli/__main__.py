"""``python -m cluster.cli`` runs the ``ric`` command line."""

import sys

from cluster.cli.main import main

sys.exit(main())
