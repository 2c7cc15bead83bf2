"""``python -m opzo ...``: the command line (``torchrun ... -m opzo train`` starts it so)."""

import sys

from .cli import main

sys.exit(main())
