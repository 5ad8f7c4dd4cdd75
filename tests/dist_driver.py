"""One rank of a multi-process CPU training run: ``python dist_driver.py
CONFIG`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set, as ``torchrun`` sets them.

MMEngine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and uses the
config's backend (``nccl`` in stock configs), which cannot work on a CPU-only
machine. So the gloo process group is created here, before the Runner:
``Runner.setup_env`` then sees ``is_distributed()`` and skips ``init_dist``,
and the config keeps ``launcher='pytorch'`` (``runner.distributed`` is True).
"""
import datetime
import sys

import torch.distributed as dist


def main(config: str) -> None:
    dist.init_process_group(
        backend='gloo',
        init_method='env://',
        timeout=datetime.timedelta(seconds=60))
    from mmengine.config import Config
    from mmengine.runner import Runner

    import mmaction_multigrid  # noqa: F401  (installs the switch)
    runner = Runner.from_cfg(Config.fromfile(config))
    assert runner.distributed and runner.world_size == dist.get_world_size()
    runner.train()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
