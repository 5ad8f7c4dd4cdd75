"""Each test starts without the MMEngine instances of the previous one
(``conftest.forget_mmengine_instances``): two Runners started in the same
second in one process would otherwise share a logger and a visualizer
(MMEngine 0.10.7 names them after the start time)."""
from mmengine.logging import MMLogger
from mmengine.visualization import Visualizer

NAME = 'isolation-probe'


def test_a_test_creates_instances(tmp_path):
    logger = MMLogger.get_instance(NAME, log_file=str(tmp_path / 'a.log'))
    Visualizer.get_instance(NAME, save_dir=str(tmp_path))
    logger.info('written')
    assert (tmp_path / 'a.log').read_text().strip().endswith('written')


def test_the_next_test_gets_fresh_ones(tmp_path):
    assert NAME not in MMLogger._instance_dict
    assert NAME not in Visualizer._instance_dict
    logger = MMLogger.get_instance(NAME, log_file=str(tmp_path / 'b.log'))
    logger.info('here')
    assert (tmp_path / 'b.log').read_text().strip().endswith('here')
