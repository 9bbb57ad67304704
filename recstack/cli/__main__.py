"""`python -m recstack.cli ...`: the same as the `recstack` console script."""

import sys

from recstack.cli import main

sys.exit(main())
