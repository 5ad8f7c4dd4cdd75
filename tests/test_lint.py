"""The code passes the repository's flake8, isort and yapf settings
(setup.cfg), as OpenMMLab projects require."""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PATHS = ['mmaction_multigrid', 'tests', 'benchmarks', 'configs', 'setup.py']


@pytest.mark.parametrize(
    'command', [
        ['flake8'],
        ['isort', '--check-only', '--diff'],
        ['yapf', '--diff', '--recursive'],
    ],
    ids=['flake8', 'isort', 'yapf'])
def test_lint(command):
    result = subprocess.run([sys.executable, '-m', *command, *PATHS],
                            cwd=ROOT,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
