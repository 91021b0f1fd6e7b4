"""``python -m geofm`` runs the command line."""

import sys

from geofm.cli import main

sys.exit(main())
