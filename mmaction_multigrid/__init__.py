"""Multigrid training for MMAction2 1.x."""
from .version import __version__
