//! Test fixtures shared by the big-transfer-rs crates.

use std::path::PathBuf;

mod http;
mod process;

pub use http::{HttpServer, STALL_AFTER};
pub use process::{
    KillOnDrop, ScratchDir, bit_serve, bit_serve_with, peak_resident_memory_of, scratch_root,
    success_stdout, total_memory,
};

/// The reference vectors (`shared/golden`): `$BIT_GOLDEN_DIR`, else `../shared/golden` beside
/// the checkout. Panics when they are absent, so numerical tests fail instead of skipping.
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("BIT_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
        });
    assert!(
        dir.join("README.md").is_file(),
        "golden vectors not found at {} (set BIT_GOLDEN_DIR); these tests must not be skipped",
        dir.display()
    );
    dir
}

/// A file of [`golden_dir`], which must exist.
pub fn golden_file(name: &str) -> PathBuf {
    let path = golden_dir().join(name);
    assert!(path.is_file(), "missing golden file {}", path.display());
    path
}

/// Array `key` of the golden `.npz` file `name`, as `(shape, float32 values)`.
pub fn golden_array(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let path = golden_file(name);
    let mut npz =
        npyz::npz::NpzArchive::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npz
        .by_name(key)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{} has no `{key}`", path.display()));
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

/// `max |a - b| / max |b|`: how far apart two sets of weights are, relative to their scale.
pub fn max_relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    gap / b.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// Asserts `|a - b| <= atol + rtol * |b|` element-wise, naming the worst element.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let worst = a
        .iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| (i, (x - y).abs() - rtol * y.abs()))
        .fold((0, f32::NEG_INFINITY), |w, e| if e.1 > w.1 { e } else { w });
    assert!(
        worst.1 <= atol,
        "{what}: element {} is {} vs {} (tolerance {atol} + {rtol}·|ref|)",
        worst.0,
        a[worst.0],
        b[worst.0]
    );
}

/// Every float parameter of `module`, in visiting order, flattened: for comparing two models
/// (with [`max_relative_gap`]).
pub fn parameter_values<M: burn::module::Module>(module: &M) -> Vec<f32> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0
                .extend(data.try_to_vec::<f32>().expect("converted to f32"));
        }
    }
    let mut all = Collect(Vec::new());
    module.visit(&mut all);
    all.0
}
