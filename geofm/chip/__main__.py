"""``python -m geofm.chip``."""

import sys

from geofm.chip.stage import main

sys.exit(main())
