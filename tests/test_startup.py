"""Start-up cost of a multigrid run: the model check computes the shapes of
every multigrid input on the meta device, so it runs no forward of the model
on its own device, leaves the model as it was, still refuses a shape the
model cannot take with the model's own error, and checks on the real device
a model that the meta device cannot run."""
import os.path as osp

import pytest
import torch
from conftest import STOCK
from mmaction.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from probes import TINY_I3D
from torch import nn

import mmaction_multigrid  # noqa: F401  (registers the package)
from mmaction_multigrid.models.model_check import check_input_shapes

I3D = osp.join(
    STOCK, 'i3d', 'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_'
    'kinetics400-rgb.py')
SHAPES = [(8, (16, 16)), (16, (24, 24)), (32, (32, 32))]


def _tiny_i3d() -> nn.Module:
    init_default_scope('mmaction')
    cfg = Config.fromfile(I3D)
    cfg.merge_from_dict(TINY_I3D)
    cfg.model.backbone.update(pretrained=None, pretrained2d=False)
    return MODELS.build(cfg.model)


class ToyRecognizer(nn.Module):
    """A recogniser's ``forward`` signature around one 3D convolution, a
    head sized for one input shape (8 frames x 16x16) and, optionally, a
    value read back from the data or a tensor cached on the module."""

    def __init__(self, read_data: bool = False, cache: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * 4 * 8 * 8, 5)
        self.read_data, self.cache = read_data, cache
        self.cached = None

    def forward(self, inputs, data_samples=None, mode='tensor', stage=None):
        x = self.conv(inputs.flatten(0, 1))
        if self.read_data and x.abs().sum().item() < 0:  # no meta kernel
            raise AssertionError('unreachable')
        if self.cache:
            self.cached = torch.ones(x.shape[2:], device=x.device)
        return self.fc(x.flatten(1))


def _record_forwards(model: nn.Module) -> list:
    """``(module name, output device type)`` of each forward that runs
    (the hooks travel with copies of the model)."""
    calls = []
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, args, out, name=name: calls.
                                     append((name, out.device.type)))
    return calls


def test_check_runs_no_forward_of_the_model():
    model = _tiny_i3d()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _record_forwards(model)
    check_input_shapes(model, SHAPES)
    assert calls and {device for _, device in calls} == {'meta'}
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_shape_the_model_cannot_take_is_refused_with_its_error():
    model = ToyRecognizer()
    check_input_shapes(model, [(8, (16, 16))])
    with pytest.raises(
            ValueError,
            match=r'ToyRecognizer .*cannot take the multigrid input of 4 '
            r'frames x 16x16 \(RuntimeError: .*mat1 and mat2 shapes'):
        check_input_shapes(model, [(8, (16, 16)), (4, (16, 16))])
    assert model.training


def test_model_without_meta_kernels_is_checked_on_its_device():
    model = ToyRecognizer(read_data=True)
    calls = _record_forwards(model)
    check_input_shapes(model, [(8, (16, 16))])
    # The meta forward stops at the read-back; the CPU one runs through.
    assert calls == [('conv', 'meta'), ('conv', 'cpu'), ('fc', 'cpu'),
                     ('', 'cpu')]
    with pytest.raises(ValueError, match='4 frames x 16x16'):
        check_input_shapes(model, [(4, (16, 16))])


def test_what_the_forward_stores_stays_on_the_copy():
    model = ToyRecognizer(cache=True)
    check_input_shapes(model, [(8, (16, 16))])
    assert model.cached is None
    assert all(p.device.type == 'cpu' for p in model.parameters())
