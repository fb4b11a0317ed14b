//! `RidgeProbe` against a NumPy transcription of big_vision's few-shot evaluator
//! (`scripts/fewshot_reference.py`) on features this test writes: the same accuracy to 1e-4
//! (below one test example in 2000, so the same predictions), with more draws than feature
//! dimensions and fewer (the two Gram matrices), over a range of L2.

use std::path::Path;
use std::process::Command;

use bit_infer::{Embeddings, RidgeProbe};
use bit_testkit::ScratchDir;

/// Features of `n` examples of `classes` noisy, overlapping clusters `separation` apart (a hard
/// problem, so that the accuracy is far from chance and from 1, and the L2 changes it).
fn clusters(n: usize, dim: usize, classes: usize, separation: f32, seed: u64) -> Embeddings {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let labels: Vec<usize> = (0..n).map(|i| (i * 7 + seed as usize) % classes).collect();
    let features = labels
        .iter()
        .flat_map(|&label| {
            // The class shifts every `classes`-th feature, by `separation` in all (Euclidean);
            // the noise is uniform in [-2, 2] on every feature.
            let shift = separation / ((dim / classes) as f32).sqrt();
            (0..dim)
                .map(|j| 4.0 * (uniform() - 0.5) + if j % classes == label { shift } else { 0.0 })
                .collect::<Vec<f32>>()
        })
        .collect();
    Embeddings {
        features,
        dim,
        labels,
    }
}

fn numpy_accuracies(dir: &Path, classes: usize, l2s: &[f64]) -> Vec<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fewshot_reference.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(classes.to_string())
        .args(l2s.iter().map(f64::to_string))
        .output()
        .expect("python3 runs (the reference needs NumPy: pip install numpy)");
    assert!(
        output.status.success(),
        "the NumPy reference failed (pip install numpy?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_probe_matches_big_visions_formula_in_numpy() {
    let l2s = [1e-3, 1.0, 32.0, 1024.0, 1e5];
    // (draw size, feature width, classes, separation): more draws than features (XᵀX), then
    // fewer (XXᵀ), up to BiT-R50's 2048 features; separations that NumPy scores 60-95 %.
    for (n, dim, classes, separation) in [(300, 24, 6, 2.5), (40, 96, 8, 4.0), (25, 2048, 5, 8.0)] {
        let dir = ScratchDir::new(&format!("fewshot-numpy-{n}-{dim}"));
        let train = clusters(n, dim, classes, separation, n as u64);
        let test = clusters(2000, dim, classes, separation, 7);
        train.save_features(&dir.join("train_x.npy")).unwrap();
        train.save_labels(&dir.join("train_y.npy")).unwrap();
        test.save_features(&dir.join("test_x.npy")).unwrap();
        test.save_labels(&dir.join("test_y.npy")).unwrap();
        let reference = numpy_accuracies(&dir, classes, &l2s);
        let probe = RidgeProbe::fit(&train, classes).unwrap();
        let ours: Vec<f64> = l2s
            .iter()
            .map(|&l2| probe.accuracy(&test, l2).unwrap())
            .collect();
        for ((l2, a), b) in l2s.iter().zip(&ours).zip(&reference) {
            assert!(
                (a - b).abs() <= 1e-4,
                "n {n}, dim {dim}, l2 {l2}: {a} here, {b} in NumPy (all: {ours:?} vs {reference:?})"
            );
        }
        // Not a degenerate problem: neither chance nor perfect, and the L2 matters.
        let (lo, hi) = ours
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), &a| (lo.min(a), hi.max(a)));
        assert!(
            hi < 0.99 && hi > 1.5 / classes as f64 && hi > lo,
            "{ours:?}"
        );
    }
}
