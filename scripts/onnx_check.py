"""Run an ONNX file written by `bit export --format onnx` in onnxruntime, as a deployment would:
the ONNX checker, the metadata, and top-1 on the Fashion-MNIST test set (Debian's
dataset-fashion-mnist) preprocessed the way `bit eval` feeds images (grey to RGB, a plain
bilinear resize to the model's resolution, x / 127.5 - 1).

    python scripts/onnx_check.py model.onnx [/usr/share/datasets/fashion-mnist] [--logits LOGITS.npy INPUT.npy]

Compare the printed top-1 with `bit eval --model <the same run> --dataset fashion_mnist`;
`--logits` also compares onnxruntime's logits on INPUT.npy (NCHW) with LOGITS.npy.
Needs numpy, pillow, onnx and onnxruntime.
"""
import gzip
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def idx(path):
    with gzip.open(path) if path.endswith('.gz') else open(path, 'rb') as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(root, stem):
    for name in os.listdir(root):
        if name.startswith(stem):
            return os.path.join(root, name)
    raise FileNotFoundError(f'{stem}* in {root}')


def main(path, root='/usr/share/datasets/fashion-mnist', *rest):
    onnx.checker.check_model(onnx.load(path))
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    meta = session.get_modelmeta().custom_metadata_map
    side = int(meta['bit.resolution'])
    print('metadata:', {k: (v if len(v) < 80 else v[:77] + '...') for k, v in meta.items()})
    if rest[:1] == ('--logits',):
        expected, x = np.load(rest[1]), np.load(rest[2])
        got = session.run(None, {'images': x})[0]
        print('max |onnxruntime - expected| =', float(np.abs(got - expected).max()))
    images = idx(find(root, 't10k-images'))
    labels = idx(find(root, 't10k-labels')).astype(np.int64)
    classes = json.loads(meta['bit.classes']) if 'bit.classes' in meta else None
    correct = 0
    for start in range(0, len(images), 256):
        batch = np.stack([
            np.asarray(Image.fromarray(im).convert('RGB').resize((side, side), Image.BILINEAR),
                       np.float32) / 127.5 - 1.0
            for im in images[start:start + 256]
        ]).transpose(0, 3, 1, 2)
        logits = session.run(None, {'images': np.ascontiguousarray(batch)})[0]
        correct += int((logits.argmax(1) == labels[start:start + 256]).sum())
    print(f'onnxruntime {ort.__version__}: top-1 {100 * correct / len(images):.2f}% on '
          f'{len(images)} images at {side} px' + (f' ({len(classes)} named classes)' if classes else ''))


if __name__ == '__main__':
    main(*sys.argv[1:])
