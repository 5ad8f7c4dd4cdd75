# The stock MMAction2 config plus the two multigrid lines below. MMAction2's
# projects/ write this as `_base_ = 'mmaction::recognition/i3d/<file>'`,
# but MMEngine 0.10.7 cannot resolve `mmaction::` with MMAction2 1.1.0: it
# reads every metafile of mmaction/.mim/model-index.yml, and BSN's gives a list
# as `Config` (AttributeError: 'list' object has no attribute 'partition';
# open-mmlab/mmaction2#2590, after 1.1.0). So _base_ is the path that
# `mmaction::` resolves to, found without importing mmaction (MMEngine
# evaluates _base_ as an expression).
_base_ = __import__('os').path.join(
    __import__('importlib.util').util.find_spec(
        'mmaction').submodule_search_locations[0],
    '.mim/configs/recognition/i3d/i3d_'
    'imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')

custom_imports = dict(
    imports=['mmaction_multigrid'], allow_failed_imports=False)
multi_grid = dict(
    long_cycle=True,
    short_cycle=True,
    long_cycle_factors=((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1)),
    short_cycle_factors=(0.5, 0.5**0.5),
    epoch_factor=1.5,
    default_s=(224, 224))
