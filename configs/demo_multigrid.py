# The demo config lives inside the package, so that
# `python -m mmaction_multigrid demo` finds it after a pip install too.
_base_ = ['../mmaction_multigrid/configs/demo_multigrid.py']
