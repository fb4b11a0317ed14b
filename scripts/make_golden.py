#!/usr/bin/env python3
"""Regenerate golden vectors in the format of shared/golden (its README describes every key).

    python scripts/make_golden.py OUT_DIR [CASE ...]      CASE: tiny | r50x1 (default: both)

Needs torch, timm and numpy: `bash ../shared/tools/ref_setup.sh` makes such a venv, then run this
script with its python. The reference is timm's ResNetV2 with a fixed 7x7 stem, weight
standardisation at eps 1e-10 and 32-group GroupNorm (the numerics of the official
`bit_pytorch/models.py`); the weights are loaded from the written BiT-format `.npz` through timm's
own BiT loader, so the file layout is checked by an independent reader too.

For each case this writes `<name>.weights.npz` (random weights with realistic statistics, in the
release's key names and HWIO layout) and `<name>.case.npz` (input, labels, logits, pooled
features, and one SGD step: loss before/after, head and root kernels after, their gradients,
the head bias after), plus a README.md copied from shared/golden when one is beside the
checkout, so `BIT_GOLDEN_DIR=OUT_DIR cargo test --release --workspace` runs the parity tests on
them.
"""
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2, _load_weights

# name: (block units, width factor, head, input NCHW, weight seed, input seed), as shared/golden.
CASES = {
    "tiny": ([1, 1, 1, 1], 1, 10, (2, 3, 64, 64), 11, 12),
    "r50x1": ([3, 4, 6, 3], 1, 10, (2, 3, 128, 128), 21, 22),
}
LR, MOMENTUM = 0.003, 0.9


def bit_weights(units, wf, head, rng):
    """Every array BiT's `load_from` reads, with the golden README's initialisation."""
    w = {}

    def conv(key, kh, kw, cin, cout):
        std = np.sqrt(2.0 / (kh * kw * cin))
        kernel = rng.normal(0, std, (kh, kw, cin, cout)) + rng.normal(0, 0.5 * std, (1, 1, 1, cout))
        w[key] = kernel.astype(np.float32)

    def norm(prefix, c):
        w[f"{prefix}/gamma"] = rng.normal(1, 0.1, c).astype(np.float32)
        w[f"{prefix}/beta"] = rng.normal(0, 0.1, c).astype(np.float32)

    conv("resnet/root_block/standardized_conv2d/kernel", 7, 7, 3, 64 * wf)
    cin = 64 * wf
    for b, n in enumerate(units, start=1):
        cmid = 64 * 2 ** (b - 1) * wf
        cout = 4 * cmid
        for u in range(1, n + 1):
            p = f"resnet/block{b}/unit{u:02d}"
            norm(f"{p}/a/group_norm", cin)
            conv(f"{p}/a/standardized_conv2d/kernel", 1, 1, cin, cmid)
            if u == 1:
                conv(f"{p}/a/proj/standardized_conv2d/kernel", 1, 1, cin, cout)
            norm(f"{p}/b/group_norm", cmid)
            conv(f"{p}/b/standardized_conv2d/kernel", 3, 3, cmid, cmid)
            norm(f"{p}/c/group_norm", cmid)
            conv(f"{p}/c/standardized_conv2d/kernel", 1, 1, cmid, cout)
            cin = cout
    norm("resnet/group_norm", cin)
    w["resnet/head/conv2d/kernel"] = rng.normal(0, 0.01, (1, 1, cin, head)).astype(np.float32)
    w["resnet/head/conv2d/bias"] = rng.normal(0, 0.1, head).astype(np.float32)
    return w


def hwio(t):
    """OIHW tensor -> HWIO array."""
    return t.detach().numpy().transpose(2, 3, 1, 0).copy()


def make_case(name, out):
    units, wf, head, shape, wseed, iseed = CASES[name]
    weights_path = out / f"{name}.weights.npz"
    np.savez(weights_path, **bit_weights(units, wf, head, np.random.default_rng(wseed)))

    model = ResNetV2(layers=units, width_factor=wf, num_classes=head, stem_type="fixed",
                     conv_layer=partial(StdConv2d, eps=1e-10))
    with torch.no_grad():
        _load_weights(model, str(weights_path))
    irng = np.random.default_rng(iseed)
    x = torch.from_numpy(irng.uniform(-1, 1, shape).astype(np.float32))
    y = torch.from_numpy(irng.integers(0, head, shape[0]).astype(np.int64))

    model.eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_before = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss_before.backward()
    head_w, root_w = model.head.fc.weight, model.stem.conv.weight
    head_grad, root_grad = hwio(head_w.grad), hwio(root_w.grad)
    opt.step()
    with torch.no_grad():
        loss_after = F.cross_entropy(model(x), y)

    meta = json.dumps({
        "case": name, "block_units": units, "width_factor": wf, "head": head,
        "input_shape": list(shape), "weight_seed": wseed, "input_seed": iseed,
        "reference": "timm ResNetV2(stem_type='fixed', StdConv2d eps 1e-10) via _load_weights",
        "optimizer": {"sgd_lr": LR, "momentum": MOMENTUM, "steps": 1},
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__},
        "threads": torch.get_num_threads(),
    }).encode("ascii")
    np.savez(
        out / f"{name}.case.npz",
        input=x.numpy(), labels=y.numpy(),
        logits=logits.numpy(), features=features.numpy(),
        loss_before=np.float32(loss_before.item()), loss_after=np.float32(loss_after.item()),
        head_kernel_after=hwio(head_w), root_kernel_after=hwio(root_w),
        head_bias_after=model.head.fc.bias.detach().numpy().copy(),
        head_kernel_grad=head_grad, root_kernel_grad=root_grad,
        meta=np.array(meta), meta_u8=np.frombuffer(meta, dtype=np.uint8),
    )
    print(f"{name}: logits {tuple(logits.shape)}, loss {loss_before.item():.6f} -> "
          f"{loss_after.item():.6f}")


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name in argv[1:] or list(CASES):
        if name not in CASES:
            sys.exit(f"unknown case {name!r}; expected one of {', '.join(CASES)}")
        make_case(name, out)
    readme = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "README.md"
    if readme.is_file() and not (out / "README.md").exists():
        shutil.copy(readme, out / "README.md")


if __name__ == "__main__":
    main(sys.argv[1:])
