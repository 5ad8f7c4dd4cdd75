"""``python -m mmaction_multigrid``: see
:mod:`mmaction_multigrid.tools.cli`."""
import sys

from .tools.cli import main

sys.exit(main())
