"""Tests for sub-batch BatchNorm (mmaction_multigrid.models.sub_batch_bn)."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn

from mmaction_multigrid.models.sub_batch_bn import (SubBatchNorm3d,
                                                    SubBatchSyncBatchNorm,
                                                    convert_sub_batch_bn,
                                                    set_splits)

C = 4


def _inputs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Different mean/scale per sample so that groups differ.
    shift = torch.randn(n, 1, 1, 1, 1, generator=g) * 2
    scale = torch.rand(n, 1, 1, 1, 1, generator=g) + 0.5
    return torch.randn(n, C, 2, 3, 3, generator=g) * scale + shift


def _affine(bn: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g))


def _aggregate(bns):
    means = torch.stack([b.running_mean for b in bns])
    variances = torch.stack([b.running_var for b in bns])
    return means.mean(0), variances.mean(0) + means.var(0, unbiased=False)


def _group_index(n, base):
    """Sample indices of each group, as this package groups them:
    G = ceil(n / base) groups, sample i in group i % G (PySlowFast's
    interleaving, with a fixed group size rather than its fixed count)."""
    groups = -(-n // base)
    return [torch.arange(g, n, groups) for g in range(groups)]


def _apply_per_group(bns, x, base):
    """``bns[g]`` applied to group g of ``x``, in sample order."""
    out = torch.empty_like(x)
    for bn, index in zip(bns, _group_index(len(x), base)):
        out[index] = bn(x[index])
    return out


def _per_group(x, base, momentum=0.1, weight=None, bias=None):
    bns = []
    for _ in _group_index(len(x), base):
        bn = nn.BatchNorm3d(C, momentum=momentum).to(x.device)
        if weight is not None:
            with torch.no_grad():
                bn.weight.copy_(weight)
                bn.bias.copy_(bias)
        bns.append(bn)
    return _apply_per_group(bns, x, base), bns


@pytest.mark.parametrize('n', [16, 24, 20, 9])
def test_train_output_equals_per_group_bn(n):
    bn = SubBatchNorm3d(C, base_size=8)
    _affine(bn)
    x = _inputs(n)
    out = bn(x)
    expected, _ = _per_group(x, 8, weight=bn.weight, bias=bn.bias)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_gradients_match_per_group_bn():
    bn = SubBatchNorm3d(C, base_size=8)
    _affine(bn)
    ref = [nn.BatchNorm3d(C) for _ in range(3)]
    for r in ref:
        r.load_state_dict(bn.state_dict())
    x = _inputs(20).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    target = torch.randn_like(x)
    (bn(x) * target).sum().backward()
    (_apply_per_group(ref, x_ref, 8) * target).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        bn.weight.grad, sum(r.weight.grad for r in ref), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('n, base', [(7, 3), (8, 2), (5, 1)])
def test_gradcheck_float64(n, base):
    """The hand-written backward against finite differences (float64),
    including a smaller last group and single-clip groups."""
    bn = SubBatchNorm3d(C, base_size=base).double()
    _affine(bn)
    x = _inputs(n).double().requires_grad_()

    def run(x, weight, bias):
        return torch.func.functional_call(bn, {
            'weight': weight,
            'bias': bias
        }, (x, ))

    assert torch.autograd.gradcheck(
        run, (x, bn.weight.detach().clone().requires_grad_(),
              bn.bias.detach().clone().requires_grad_()))


def test_channels_last_and_non_contiguous_inputs():
    bn = SubBatchNorm3d(C, base_size=4)
    _affine(bn)
    x = _inputs(12)
    target = torch.randn_like(x)
    results = []
    for inp in (x, x.to(memory_format=torch.channels_last_3d),
                x.transpose(3, 4).contiguous().transpose(3, 4)):
        inp = inp.detach().requires_grad_()
        out = bn(inp)
        (out * target).sum().backward()
        results.append((out, inp.grad, bn.weight.grad.clone()))
        bn.weight.grad = bn.bias.grad = None
    for out, grad, weight_grad in results[1:]:
        torch.testing.assert_close(out, results[0][0])
        torch.testing.assert_close(grad, results[0][1])
        torch.testing.assert_close(weight_grad, results[0][2])


def test_without_affine():
    bn = SubBatchNorm3d(C, affine=False, base_size=8)
    x = _inputs(20).requires_grad_()
    out = bn(x)
    expected = _apply_per_group(
        [nn.BatchNorm3d(C, affine=False) for _ in range(3)], x, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bfloat16_model():
    """A model cast to bfloat16 (parameters and statistics in bfloat16)."""
    bn = SubBatchNorm3d(C, base_size=8)
    _affine(bn)
    bn = bn.to(torch.bfloat16)
    x = _inputs(16).to(torch.bfloat16).requires_grad_()
    out = bn(x)
    expected, _ = _per_group(
        x.detach().float(), 8, weight=bn.weight.float(), bias=bn.bias.float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    out.float().sum().backward()
    assert bn.weight.grad.dtype == torch.bfloat16
    assert bn.running_mean.dtype == torch.bfloat16


@pytest.mark.parametrize('momentum', [0.1, None])
def test_running_stats_are_aggregated_split_stats(momentum):
    bn = SubBatchNorm3d(C, momentum=momentum, base_size=8)
    refs = [nn.BatchNorm3d(C, momentum=momentum) for _ in range(3)]
    for step in range(5):
        x = _inputs(24, seed=step)
        bn(x)
        _apply_per_group(refs, x, 8)
    mean, var = _aggregate(refs)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 5
    assert bn.split_stats()[0].shape == (3, C)

    # Eval uses the aggregated statistics, like a plain BatchNorm3d.
    plain = nn.BatchNorm3d(C, momentum=momentum)
    plain.load_state_dict(bn.state_dict())
    bn.eval()
    plain.eval()
    x = _inputs(24, seed=99)
    torch.testing.assert_close(bn(x), plain(x), atol=1e-6, rtol=1e-6)
    reference = nn.BatchNorm3d(C).eval()
    reference.running_mean.copy_(mean)
    reference.running_var.copy_(var)
    torch.testing.assert_close(bn(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('momentum', [0.1, None])
def test_small_batch_is_plain_batchnorm(momentum):
    bn = SubBatchNorm3d(C, momentum=momentum, base_size=8)
    plain = nn.BatchNorm3d(C, momentum=momentum)
    _affine(bn)
    plain.load_state_dict(bn.state_dict())
    for step, n in enumerate([8, 5, 8, 2]):
        x = _inputs(n, seed=step)
        torch.testing.assert_close(bn(x), plain(x), atol=0, rtol=0)
    for key, value in plain.state_dict().items():
        assert torch.equal(bn.state_dict()[key], value), key


def test_state_dict_equals_batchnorm3d():
    bn = SubBatchNorm3d(C, base_size=8)
    bn(_inputs(24))  # slots exist, but stay out of the state_dict
    plain = nn.BatchNorm3d(C)
    sd, ref = bn.state_dict(), plain.state_dict()
    assert list(sd) == list(ref)
    assert all(sd[k].shape == ref[k].shape for k in ref)
    plain.load_state_dict(sd, strict=True)
    bn.load_state_dict(ref, strict=True)
    assert bn.split_stats() is None  # loading resets the group statistics

    sync = SubBatchSyncBatchNorm(C, base_size=8)
    assert list(sync.state_dict()) == list(nn.SyncBatchNorm(C).state_dict())


def test_sync_variant_sub_batch_path():
    sync = SubBatchSyncBatchNorm(C, base_size=8)
    bn = SubBatchNorm3d(C, base_size=8)
    _affine(sync)
    bn.load_state_dict(sync.state_dict())
    for step in range(3):
        x = _inputs(20, seed=step)
        torch.testing.assert_close(sync(x), bn(x), atol=0, rtol=0)
    torch.testing.assert_close(sync.running_mean, bn.running_mean)
    torch.testing.assert_close(sync.running_var, bn.running_var)


def test_varying_batch_sizes():
    bn = SubBatchNorm3d(C, base_size=8)
    for step, n in enumerate([32, 16, 16, 32, 8, 24]):
        out = bn(_inputs(n, seed=step))
        assert out.shape[0] == n
        assert torch.isfinite(bn.running_mean).all()
        assert torch.isfinite(bn.running_var).all()
        assert (bn.running_var > 0).all()
        groups = -(-n // 8)
        if groups == 1:
            assert bn.split_stats() is None
        else:
            assert bn.split_stats()[0].shape == (groups, C)
    assert int(bn.num_batches_tracked) == 6


def test_new_slots_start_from_running_stats():
    bn = SubBatchNorm3d(C, momentum=0.1, base_size=8)
    x = _inputs(16)
    bn(_inputs(8, seed=5))  # plain step: running stats move, no slots
    start_mean = bn.running_mean.clone()
    start_var = bn.running_var.clone()
    bn(x)
    refs = [nn.BatchNorm3d(C, momentum=0.1) for _ in range(2)]
    for ref in refs:
        ref.running_mean.copy_(start_mean)
        ref.running_var.copy_(start_var)
    _apply_per_group(refs, x, 8)
    mean, var = _aggregate(refs)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


def test_bfloat16_autocast():
    bn = SubBatchNorm3d(C, base_size=8)
    plain = nn.BatchNorm3d(C)
    conv = nn.Conv3d(C, C, 1)
    x = _inputs(16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for inp in (x, conv(x)):  # float32 and bfloat16 inputs
            out = bn(inp)
            ref = plain(inp)
            assert out.dtype == ref.dtype
            assert torch.isfinite(out.float()).all()
    assert bn.running_mean.dtype == torch.float32


def test_invalid_base_size():
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match='multi_grid.bn_base_size'):
            SubBatchNorm3d(C, base_size=bad)
    with pytest.raises(ValueError, match='multi_grid.bn_base_size'):
        convert_sub_batch_bn(nn.BatchNorm3d(C), 0)


def _resnet():
    from mmaction.models.backbones import ResNet3d
    torch.manual_seed(0)
    model = ResNet3d(
        depth=18,
        pretrained=None,
        pretrained2d=False,
        base_channels=8,
        conv1_kernel=(1, 3, 3),
        inflate=(0, 0, 0, 0))
    model.init_weights()
    return model


def test_convert_resnet3d_keeps_parameters_and_state_dict():
    model = _resnet()
    plain = copy.deepcopy(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = {name: p for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    num_bn = sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())

    converted = convert_sub_batch_bn(model, base_size=2)
    assert converted is model
    sub = [m for m in model.modules() if isinstance(m, SubBatchNorm3d)]
    assert len(sub) == num_bn > 0
    assert all(m.training and m.base_size == 2 for m in sub)
    for name, p in model.named_parameters():
        assert p is params[name], name
    for name, b in model.named_buffers():
        assert b is buffers[name], name
    # Converting again changes nothing.
    assert convert_sub_batch_bn(model, base_size=4) is model
    assert all(m.base_size == 2 for m in model.modules()
               if isinstance(m, SubBatchNorm3d))

    # State dicts are interchangeable, both ways, strictly.
    model.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(model.state_dict(), strict=True)

    # The optimizer built before the conversion still trains the model.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 3, 2, 32, 32)
    model(x).mean().backward()
    optimizer.step()
    changed = [
        n for n, p in model.named_parameters()
        if not torch.equal(p, before[n])
    ]
    assert any('bn' in n for n in changed)
    assert any('conv' in n for n in changed)
    # Running stats were updated through the shared buffers.
    assert int(sub[0].num_batches_tracked) == 1


def test_convert_root_and_sync_bn():
    bn = nn.BatchNorm3d(C, momentum=None, affine=False).eval()
    new = convert_sub_batch_bn(bn, 8)
    assert type(new) is SubBatchNorm3d and not new.training
    assert new.momentum is None and not new.affine
    assert new.running_mean is bn.running_mean

    shared = nn.SyncBatchNorm(C)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    convert_sub_batch_bn(seq, 8)
    assert type(seq[0]) is SubBatchSyncBatchNorm and seq[0] is seq[2]
    assert seq[0].weight is shared.weight


def test_registry_and_build_norm_layer():
    from mmaction.registry import MODELS
    from mmcv.cnn import build_norm_layer
    from mmengine.registry import init_default_scope

    # registers the layers
    import mmaction_multigrid.models.sub_batch_bn  # noqa: F401

    layer = MODELS.build(
        dict(type='SubBatchBN3d', num_features=C, base_size=8))
    assert isinstance(layer, SubBatchNorm3d) and layer.base_size == 8
    layer = MODELS.build(
        dict(type='SubBatchSyncBN', num_features=C, base_size=8))
    assert isinstance(layer, SubBatchSyncBatchNorm)

    init_default_scope('mmaction')
    name, layer = build_norm_layer(
        dict(type='SubBatchBN3d', base_size=8, requires_grad=False), C, 1)
    assert name == 'bn1'
    assert isinstance(layer, SubBatchNorm3d)
    assert not layer.weight.requires_grad


def test_single_value_groups_give_the_bias_and_keep_running_stats():
    """1-clip groups of 1x1x1 features (stock batch 1 at small shapes):
    nn.BatchNorm3d would raise; the layer outputs the bias instead."""
    bn = SubBatchNorm3d(3, base_size=1)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, 1, 1, 1, requires_grad=True)
    out = bn(x)
    assert torch.equal(out, bn.bias.view(1, 3, 1, 1, 1).expand(4, 3, 1, 1, 1))
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


@CUDA
@pytest.mark.parametrize('n, base', [(20, 8), (16, 4), (5, 1)])
def test_cuda_matches_per_group_bn(n, base):
    """On a GPU (native CUDA kernels per group): outputs, input and weight
    gradients and running statistics equal per-group nn.BatchNorm3d."""
    bn = SubBatchNorm3d(C, base_size=base)
    _affine(bn)
    bn.cuda()
    refs = [nn.BatchNorm3d(C).cuda() for _ in range(-(-n // base))]
    for ref in refs:
        ref.load_state_dict(bn.state_dict())
    for step in range(3):
        x = _inputs(n, seed=step).cuda().requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        target = torch.randn_like(x)
        out = bn(x)
        expected = _apply_per_group(refs, x_ref, base)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        (out * target).sum().backward()
        (expected * target).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        bn.weight.grad, sum(r.weight.grad for r in refs), atol=1e-4, rtol=1e-5)
    mean, var = _aggregate(refs)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-5)


@CUDA
def test_cuda_float16_autocast():
    """What --amp runs on a GPU: float16 convolutions feeding the layer."""
    torch.manual_seed(0)
    conv = nn.Conv3d(C, C, 1).cuda()
    bn = SubBatchNorm3d(C, base_size=4).cuda()
    plain = nn.BatchNorm3d(C).cuda()
    x = _inputs(16).cuda()
    with torch.autocast('cuda', dtype=torch.float16):
        h = conv(x)
        out, ref = bn(h), plain(h)
    assert out.dtype == ref.dtype
    expected, _ = _per_group(h.float().cpu(), 4)
    torch.testing.assert_close(
        out.float().cpu(), expected, atol=1e-2, rtol=1e-2)
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    assert bn.running_mean.dtype == torch.float32


def test_equals_the_reference_definition():
    """PySlowFast's SubBatchNorm3d: the batch viewed as (N / G, G * C, ...)
    through one BatchNorm3d of G * C channels, whose running statistics are
    aggregated as mean of means and mean of variances plus the variance of
    the means."""
    groups = 4
    bn = SubBatchNorm3d(C, base_size=3)
    _affine(bn)
    split = nn.BatchNorm3d(groups * C)
    with torch.no_grad():
        split.weight.copy_(bn.weight.repeat(groups))
        split.bias.copy_(bn.bias.repeat(groups))
    for step in range(3):
        x = _inputs(12, seed=step)
        expected = split(x.view(12 // groups, groups * C, *x.shape[2:]))
        torch.testing.assert_close(bn(x), expected.view_as(x))
    means = split.running_mean.view(groups, C)
    variances = split.running_var.view(groups, C)
    mean = means.sum(0) / groups
    var = variances.sum(0) / groups + ((means - mean)**2).sum(0) / groups
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


@pytest.mark.parametrize('n', [8, 16, 32])
def test_splits_fix_the_number_of_groups(n):
    """``bn_grouping='splits'`` (PySlowFast's NUM_SPLITS): every batch, of
    any size, goes through the reference's view as 4 groups, so the groups
    grow with the batch; ``splits=1`` is plain BN and None restores groups
    of ``base_size``."""
    groups = 4
    model = nn.Sequential(SubBatchNorm3d(C, base_size=2))
    bn = model[0]
    _affine(bn)
    set_splits(model, groups)
    split = nn.BatchNorm3d(groups * C)
    with torch.no_grad():
        split.weight.copy_(bn.weight.repeat(groups))
        split.bias.copy_(bn.bias.repeat(groups))
    x = _inputs(n)
    expected = split(x.view(n // groups, groups * C, *x.shape[2:]))
    torch.testing.assert_close(bn(x), expected.view_as(x))
    set_splits(model, 1)
    plain = nn.BatchNorm3d(C)
    with torch.no_grad():
        plain.weight.copy_(bn.weight)
        plain.bias.copy_(bn.bias)
    torch.testing.assert_close(model(x), plain(x))
    set_splits(model, None)
    out = model(x)
    want, _ = _per_group(x, 2, weight=bn.weight, bias=bn.bias)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='splits'):
        set_splits(model, 0)


# --------------------------------------------------------------------------
# BatchNorm2d over the frames of clips (C2D), unconverted layers, and BN
# after the Runner's wrap_model.
# --------------------------------------------------------------------------
def _frames(clips: int, frames: int, seed: int = 0) -> torch.Tensor:
    """(clips*frames, C, H, W), the frames of each clip contiguous, with a
    different mean and scale per clip."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(clips, 1, 1, 1, 1, generator=g) * 2
    scale = torch.rand(clips, 1, 1, 1, 1, generator=g) + 0.5
    x = torch.randn(clips, frames, C, 3, 3, generator=g) * scale + shift
    return x.reshape(clips * frames, C, 3, 3)


def _per_clip_group_bn2d(x, clips, base, weight, bias):
    """Plain BatchNorm2d on the frames of each group of whole clips (clip
    i in group i % G), in row order."""
    frames = len(x) // clips
    out = torch.empty_like(x)
    bns = []
    for index in _group_index(clips, base):
        rows = torch.cat([
            torch.arange(i * frames, (i + 1) * frames) for i in index.tolist()
        ])
        bn = nn.BatchNorm2d(x.shape[1])
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
        out[rows] = bn(x[rows])
        bns.append(bn)
    return out, bns


@pytest.mark.parametrize('clips,frames,base', [(8, 4, 2), (6, 3, 4),
                                               (4, 1, 1)])
def test_bn2d_groups_whole_clips(clips, frames, base):
    from mmaction_multigrid.models.sub_batch_bn import (ClipCount,
                                                        SubBatchNorm2d)
    x = _frames(clips, frames)
    count = ClipCount()
    count(None, (torch.zeros(clips, C, frames, 3, 3), ))
    bn = SubBatchNorm2d(C, base_size=base, clip_count=count)
    _affine(bn)
    want, bns = _per_clip_group_bn2d(x, clips, base, bn.weight, bn.bias)
    torch.testing.assert_close(bn(x), want)
    torch.testing.assert_close(bn.running_mean, _aggregate(bns)[0])
    torch.testing.assert_close(bn.running_var, _aggregate(bns)[1])


def test_bn2d_without_clip_count_is_batchnorm2d():
    from mmaction_multigrid.models.sub_batch_bn import SubBatchNorm2d
    x = _frames(8, 2)
    bn = SubBatchNorm2d(C, base_size=2)
    plain = nn.BatchNorm2d(C)
    torch.testing.assert_close(bn(x), plain(x))
    torch.testing.assert_close(bn.running_var, plain.running_var)


def test_c2d_backbone_bn_is_grouped_by_clips():
    """In MMAction2's C2D (a 2D ResNet over (N*T) frames, temporal pooling
    inside), every BN layer normalises groups of whole clips."""
    from mmaction.registry import MODELS

    from mmaction_multigrid.models.sub_batch_bn import SubBatchNorm2d
    backbone = MODELS.build(
        dict(type='C2D', depth=18, pretrained=None, norm_eval=False))
    convert_sub_batch_bn(backbone, 2)
    bns = {
        n: m
        for n, m in backbone.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    assert bns and all(isinstance(m, SubBatchNorm2d) for m in bns.values())
    seen = {}
    for name in ('conv1.bn', 'layer1.0.conv1.bn', 'layer4.1.conv2.bn'):
        layer = bns[name]
        # Clones: ConvModule's ReLU then runs in place on the output.
        layer.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(
                name, (args[0].detach().clone(), out.detach().clone())))
    backbone.train()
    clips = 4
    backbone(torch.randn(clips, 3, 4, 32, 32))
    frames = {name: len(x) // clips for name, (x, _) in seen.items()}
    assert frames == {
        'conv1.bn': 4,
        'layer1.0.conv1.bn': 4,
        'layer4.1.conv2.bn': 2
    }
    for name, (x, out) in seen.items():
        want, _ = _per_clip_group_bn2d(x, clips, 2, bns[name].weight,
                                       bns[name].bias)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


class _Frozen(nn.Module):
    """A BN kept in eval mode by ``train()`` (as ``norm_eval`` does), a
    BatchNorm1d, a BatchNorm3d and two per-sample norms."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.BatchNorm3d(C)
        self.bn3d = nn.BatchNorm3d(C)
        self.bn1d = nn.BatchNorm1d(C)
        self.ln = nn.LayerNorm(C)
        self.gn = nn.GroupNorm(2, C)

    def train(self, mode: bool = True) -> '_Frozen':
        super().train(mode)
        self.frozen.eval()
        return self


def test_plain_bn_layers_and_their_reasons():
    from mmaction_multigrid.models.sub_batch_bn import (is_sub_batch_bn,
                                                        plain_bn_layers)
    model = convert_sub_batch_bn(_Frozen(), 2)
    assert is_sub_batch_bn(model.bn3d)
    assert type(model.frozen) is nn.BatchNorm3d
    assert model.frozen.training  # the mode probe is undone
    plain, per_sample = plain_bn_layers(model)
    reasons = dict(plain)
    assert sorted(reasons) == ['bn1d', 'frozen']
    assert 'eval mode' in reasons['frozen']
    assert 'BatchNorm1d' in reasons['bn1d']
    assert per_sample == {'GroupNorm': 1, 'LayerNorm': 1}


R2PLUS1D = 'r2plus1d/r2plus1d_r34_8xb8-8x8x1-180e_kinetics400-rgb.py'
CSN_FROZEN = ('csn/ircsn_ig65m-pretrained-r50-bnfrozen_8xb12-32x2x1-58e_'
              'kinetics400-rgb.py')


def _bn_layers(model):
    from mmengine.model import is_model_wrapper
    model = model.module if is_model_wrapper(model) else model
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def test_r2plus1d_keeps_sub_batch_bn_after_wrap_model(videos, tmp_path):
    """R(2+1)D's stock model uses SyncBN, which MMEngine's wrap_model
    reverts to plain BN on one process: the Runner converts again."""
    from conftest import toy_config
    from mmengine.runner import Runner

    from mmaction_multigrid.models.sub_batch_bn import (SubBatchNormXd,
                                                        is_sub_batch_bn)
    cfg = toy_config(
        R2PLUS1D,
        videos,
        clip_len=8,
        interval=1,
        work_dir=str(tmp_path),
        multi_grid={})
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
    runner = Runner.from_cfg(cfg)
    bns = _bn_layers(runner.model)
    assert all(is_sub_batch_bn(m) for m in bns.values())
    # The SyncBN layers (the spatial convs' ``bn_s`` are BatchNorm3d).
    xd = [n for n, m in bns.items() if type(m) is SubBatchNormXd]
    assert xd and set(xd) == {n for n in bns if not n.endswith('.bn_s')}
    assert {m.base_size for m in bns.values()} == {1}
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'left plain' not in log


class _CpuWrapper(nn.Module):
    """A model wrapper (registered, so ``is_model_wrapper`` knows it) that
    only holds the module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_sync_bn_keeps_sub_batch_bn(videos, tmp_path, monkeypatch):
    """With ``sync_bn`` (distributed), wrap_model makes every BN a
    SyncBatchNorm: they become sub-batch SyncBN layers again."""
    import socket

    import torch.distributed as dist
    from conftest import toy_config
    from mmengine.runner import Runner
    from probes import TINY_I3D
    I3D = 'i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py'
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    from mmengine.registry import MODEL_WRAPPERS
    MODEL_WRAPPERS.register_module(module=_CpuWrapper, force=True)
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        cfg = toy_config(
            I3D,
            videos,
            work_dir=str(tmp_path),
            multi_grid=dict(bn_base_size=2),
            options=TINY_I3D)
        cfg.launcher = 'pytorch'
        cfg.sync_bn = 'torch'
        # torch's DDP refuses SyncBatchNorm in a CPU module: a CPU stand-in.
        cfg.model_wrapper_cfg = dict(type='_CpuWrapper')
        runner = Runner.from_cfg(cfg)
        bns = _bn_layers(runner.model)
        assert bns and all(
            type(m) is SubBatchSyncBatchNorm for m in bns.values())
        assert {m.base_size for m in bns.values()} == {2}
    finally:
        dist.destroy_process_group()


def test_plain_bn_layers_are_logged(videos, tmp_path):
    """CSN with frozen BN: every backbone BN layer is logged as left
    plain, with the reason, by name."""
    from conftest import toy_config
    from mmengine.runner import Runner
    cfg = toy_config(CSN_FROZEN, videos, work_dir=str(tmp_path), multi_grid={})
    runner = Runner.from_cfg(cfg)
    bns = _bn_layers(runner.model)
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    lines = [line for line in log.splitlines() if 'left plain' in line]
    assert len(lines) == len(bns) > 0
    for name in bns:
        assert any(f'BN layer {name} left plain: stays in eval mode' in line
                   for line in lines), name
