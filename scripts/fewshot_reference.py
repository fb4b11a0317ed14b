#!/usr/bin/env python3
"""big_vision's few-shot linear probe (`evaluators/fewshot_lsr.py`), in NumPy: the reference
`bit_infer::RidgeProbe` is tested against (crates/bit-infer/tests/fewshot_numpy.rs).

    python3 scripts/fewshot_reference.py DIR CLASSES L2 [L2 ...]

DIR holds train_x.npy / train_y.npy (the draw) and test_x.npy / test_y.npy (features as
`bit embed` writes them, labels int64). Prints a JSON list of test accuracies, one per L2.
The formula is big_vision's line for line (`_precompute_cache`, `_eig_fewshot_acc_fn`), in
float64 (big_vision computes in float32 on its accelerator).
"""
import json
import sys

import numpy as np

BIAS_CONSTANT = 100.0


def precompute_cache(x, y, num_classes):
    mean = np.mean(x, axis=0, keepdims=True)
    std = np.std(x, axis=0, keepdims=True) + 1e-5
    x = (x - mean) / std
    x = np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    y = 2.0 * np.eye(num_classes)[y] - 1.0
    num_points, dim = x.shape
    if num_points >= dim:
        eigs, q = np.linalg.eigh(x.T @ x)
        rhs = q.T @ (x.T @ y)
        lhs = q
    else:
        eigs, q = np.linalg.eigh(x @ x.T)
        rhs = q.T @ y
        lhs = x.T @ q
    return {"eigs": eigs, "rhs": rhs, "lhs": lhs, "mean": mean, "std": std}


def fewshot_accuracy(cache, x_test, y_test, l2_reg):
    x_test = (x_test - cache["mean"]) / cache["std"]
    x_test = np.pad(x_test, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    scaling = (1.0 / (cache["eigs"] + l2_reg * np.ones_like(cache["eigs"]))).reshape((1, -1))
    w = (cache["lhs"] * scaling) @ cache["rhs"]
    preds = np.argmax(x_test @ w, axis=1)
    return float(np.mean(preds == y_test))


def main():
    directory, classes, l2s = sys.argv[1], int(sys.argv[2]), [float(v) for v in sys.argv[3:]]
    load = lambda name: np.load(f"{directory}/{name}.npy")
    cache = precompute_cache(load("train_x").astype(np.float64), load("train_y"), classes)
    x_test, y_test = load("test_x").astype(np.float64), load("test_y")
    print(json.dumps([fewshot_accuracy(cache, x_test, y_test, l2) for l2 in l2s]))


if __name__ == "__main__":
    main()
