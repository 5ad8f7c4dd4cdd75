"""Result files that say how they were made: every benchmark writes its
JSON through :func:`write_result`, which adds the command, the date, the
host, the hardware, the versions and the git commit to the figures."""
import datetime
import json
import os
import os.path as osp
import platform
import shlex
import subprocess
import sys
from typing import Any, Dict


def git_commit() -> str:
    """The checkout's commit (``GIT_COMMIT`` where there is no ``.git``,
    as on a machine that received a copy of the working tree)."""
    if os.environ.get('GIT_COMMIT'):
        return os.environ['GIT_COMMIT']
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'],
                              cwd=osp.dirname(osp.abspath(__file__)),
                              capture_output=True,
                              text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def provenance() -> Dict[str, Any]:
    """Command, date, host, hardware, versions and commit of this run."""
    import torch
    versions = {
        'python': platform.python_version(),
        'torch': torch.__version__
    }
    for name in ('mmengine', 'mmaction', 'numpy', 'decord'):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    gpu = (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    return dict(
        command=' '.join(
            shlex.quote(a) for a in [
                'python',
                osp.relpath(sys.argv[0],
                            osp.dirname(osp.dirname(osp.abspath(__file__))))
            ] + sys.argv[1:]),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        host=platform.node(),
        hardware=dict(cpu_cores=os.cpu_count(), gpu=gpu),
        versions=versions,
        git_commit=git_commit())


def write_result(path: str, figures: Dict[str, Any]) -> None:
    """Write ``figures`` with :func:`provenance` as JSON to ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(provenance(), **figures), f, indent=1)
        f.write('\n')
