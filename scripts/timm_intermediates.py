"""timm's ResNetV2 feature maps on the golden tiny weights: the reference that
crates/bit-model/tests/intermediates.rs checks ResNetV2::forward_intermediates against.

timm builds BiT's architecture (pre-activation bottlenecks, StdConv2d, GroupNorm(32), the
'fixed' stem: 7x7/2 conv, constant zero pad, 3x3/2 max pool) and loads the official .npz
layout with its own `_load_weights`. Its standardization epsilon is set to BiT's 1e-10 (timm's
BiT models use 1e-8) so the two computations are the same function.

timm's own `forward_intermediates` reports the stem *before* its pool (stride 2); BiT-rs's
`Stage::Stem` is after it (stride 4, the input of the first block), so the stem map here is
`model.stem(x)` whole. stage1..4 are the stages' outputs; `final` is stage 4 through the
pre-head GroupNorm + ReLU (`norm=True` on the last index).

Needs torch and timm (../shared/tools/ref_setup.sh makes such a venv). Input: the first image of
the golden tiny case, its centre 32x32 crop (small maps keep the file ~150 KB).

    python scripts/timm_intermediates.py ../shared/golden crates/bit-model/tests/data/timm_intermediates_tiny.npz
"""
import functools
import json
import sys

import numpy as np
import timm
import torch
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2, _load_weights


def main(golden_dir: str, out: str) -> None:
    torch.set_num_threads(2)
    model = ResNetV2(
        layers=[1, 1, 1, 1],
        num_classes=10,
        stem_type='fixed',
        conv_layer=functools.partial(StdConv2d, eps=1e-10),
    ).eval()
    _load_weights(model, f'{golden_dir}/tiny.weights.npz')
    x = np.load(f'{golden_dir}/tiny.case.npz')['input'][:1, :, 16:48, 16:48].copy()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        stages = model.forward_intermediates(xt, indices=[1, 2, 3, 4], intermediates_only=True)
        final = model.forward_intermediates(xt, indices=[4], norm=True, intermediates_only=True)[0]
        stem = model.stem(xt)
    maps = {'stem': stem, 'stage1': stages[0], 'stage2': stages[1], 'stage3': stages[2],
            'stage4': stages[3], 'final': final}
    meta = dict(torch=torch.__version__, timm=timm.__version__, crop='[:1, :, 16:48, 16:48]',
                std_conv_eps=1e-10)
    np.savez(out, input=x, meta=np.bytes_(json.dumps(meta)),
             **{k: v.numpy().astype(np.float32) for k, v in maps.items()})
    for k, v in maps.items():
        print(k, tuple(v.shape))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
