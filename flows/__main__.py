"""``python -m flows``: the same as the ``flows`` command."""

import sys

from .cli import main

sys.exit(main())
