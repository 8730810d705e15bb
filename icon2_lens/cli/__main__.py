"""``python -m icon2_lens.cli`` is ``icon2-lens``."""

import sys

from . import main

sys.exit(main())
