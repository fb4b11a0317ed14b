"""timm and Hugging Face transformers checkpoints of the golden BiT weights, made by those
libraries, and the check that what `bit export --format timm|hf` writes loads in them.

    # 1. make: the golden tiny network in both layouts (safetensors + pytorch_model.bin +
    #    config.json), written by timm 1.0.31 and transformers 5.x themselves, plus a manifest
    #    (key names, shapes, configs, each library's logits on the golden input) that
    #    crates/bit-model/tests/hub_layouts.rs compares our writer with, and a small PyTorch
    #    state dict (f32/f16/bf16, a strided view, a wrapper dict) for the `.bin` reader's tests:
    python scripts/hub_layouts.py make ../shared/golden /tmp/hub_layouts \
        crates/bit-model/tests/data

    # 2. check: load directories written by `bit export --format timm` / `--format hf` in timm and
    #    transformers as users do (`create_model('local-dir:DIR', pretrained=True)`,
    #    `BitForImageClassification.from_pretrained(DIR)`) and print their logits' largest difference from `expected.npy`:
    python scripts/hub_layouts.py check TIMM_DIR HF_DIR INPUT.npy EXPECTED.npy

timm's BiT models standardize kernels with eps 1e-8, transformers' too; BiT's own is 1e-10. The
golden logits came from BiT's code, so each library's logits here differ from them by that
epsilon's effect (recorded in the manifest, ~1e-6). Needs torch, timm, transformers and
safetensors (../shared/tools/ref_setup.sh, then `pip install transformers`).
"""
import functools
import json
import os
import sys

import numpy as np
import safetensors.torch
import timm
import torch
import transformers
from timm.layers import StdConv2d

from timm.models._hub import save_for_hf
from timm.models.resnetv2 import _create_resnetv2, _load_weights
from transformers import BitConfig, BitForImageClassification

CLASSES = ['class%d' % i for i in range(10)]


def timm_tiny(num_classes=10):
    """BiT's tiny network as timm builds its BiT models (resnetv2_50x1_bit with one unit per
    stage): 'fixed' stem, StdConv2d eps 1e-8."""
    return _create_resnetv2(
        'resnetv2_50x1_bit', pretrained=False, layers=[1, 1, 1, 1], stem_type='fixed',
        conv_layer=functools.partial(StdConv2d, eps=1e-8), num_classes=num_classes).eval()


def timm_to_transformers(state):
    """timm's ResNetV2 keys -> transformers' BitForImageClassification keys, as transformers'
    own convert_bit_to_pytorch.py renames them (the head's 1x1 conv becomes a Linear)."""
    out = {}
    for key, value in state.items():
        if key.startswith('head.fc.'):
            out['classifier.1.' + key[len('head.fc.'):]] = value.flatten(1) if value.ndim == 4 else value
            continue
        key = key.replace('stem.conv', 'embedder.convolution').replace('blocks', 'layers')
        key = key.replace('stages', 'encoder.stages')
        out['bit.' + key] = value
    return out


def make(golden, out, data):
    torch.set_num_threads(2)
    case = np.load(f'{golden}/tiny.case.npz')
    x = torch.from_numpy(case['input'])
    manifest = dict(torch=torch.__version__, timm=timm.__version__,
                    transformers=transformers.__version__)

    model = timm_tiny()
    _load_weights(model, f'{golden}/tiny.weights.npz')
    timm_dir = os.path.join(out, 'timm')
    save_for_hf(model, timm_dir, safe_serialization='both',
                model_config=dict(label_names=CLASSES),
                data_config=dict(input_size=(3, 64, 64), crop_pct=1.0))
    with torch.no_grad():
        timm_logits = model(x).numpy()
    manifest['timm'] = dict(
        keys={k: list(v.shape) for k, v in model.state_dict().items()},
        config=json.load(open(os.path.join(timm_dir, 'config.json'))),
        logits_vs_golden=float(np.abs(timm_logits - case['logits']).max()))

    config = BitConfig(depths=[1, 1, 1, 1], num_labels=10,
                       id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    hf = BitForImageClassification(config).eval()
    hf.load_state_dict(timm_to_transformers(model.state_dict()), strict=True)
    hf_dir = os.path.join(out, 'hf')
    hf.save_pretrained(hf_dir)
    torch.save(hf.state_dict(), os.path.join(hf_dir, 'pytorch_model.bin'))
    transformers.BitImageProcessor(size={'shortest_edge': 64}, crop_size={'height': 64, 'width': 64},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(hf_dir)
    with torch.no_grad():
        hf_logits = hf(x).logits.numpy()
    manifest['transformers'] = dict(
        keys={k: list(v.shape) for k, v in hf.state_dict().items()},
        config=json.load(open(os.path.join(hf_dir, 'config.json'))),
        logits_vs_golden=float(np.abs(hf_logits - case['logits']).max()))
    with open(os.path.join(data, 'hub_layouts_tiny.json'), 'w') as f:
        json.dump(manifest, f, indent=1, sort_keys=True)

    # What the `.bin` reader must handle, small: a `state_dict` wrapper (as training scripts
    # save), every float dtype the hubs publish, and a transposed (strided) view.
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
    torch.save({'state_dict': {'f32': base, 'f16': base.half(), 'bf16': base.bfloat16(),
                               'strided': base.t(), 'step': torch.tensor(7)}},
               os.path.join(data, 'state_dict_dtypes.bin'))
    print(json.dumps({k: v.get('logits_vs_golden') for k, v in manifest.items() if isinstance(v, dict)}))


def check(timm_dir, hf_dir, input_npy, expected_npy):
    torch.set_num_threads(2)
    x = torch.from_numpy(np.load(input_npy))
    expected = np.load(expected_npy)
    # timm reads config.json (architecture, model_args, pretrained_cfg) and model.safetensors.
    model = timm.create_model('local-dir:' + os.path.abspath(timm_dir), pretrained=True).eval()
    with torch.no_grad():
        got = model(x).numpy()
    print('timm', model.default_cfg.get('architecture'), 'max |logits - expected| =',
          float(np.abs(got - expected).max()))
    hf = BitForImageClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        got = hf(x).logits.numpy()
    print('transformers max |logits - expected| =', float(np.abs(got - expected).max()))


if __name__ == '__main__':
    {'make': make, 'check': check}[sys.argv[1]](*sys.argv[2:])
