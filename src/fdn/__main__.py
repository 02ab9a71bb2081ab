"""``python -m fdn``: the same as the ``fdn`` command."""

import sys

from fdn.cli import main

sys.exit(main())
