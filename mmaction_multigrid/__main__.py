"""``python -m mmaction_multigrid``: see :mod:`mmaction_multigrid.cli`."""
import sys

from .cli import main

sys.exit(main())
