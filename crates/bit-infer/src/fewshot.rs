//! BiT's few-shot linear evaluation of a frozen representation: the linear-probe evaluator of
//! big_vision (`evaluators/fewshot_lsr.py`), exactly.
//!
//! For each number of shots K and each seed, K training images per class are drawn, their
//! pooled pre-logits are whitened with the draw's own mean and standard deviation (+1e-5), a
//! constant feature of 100 is appended (the bias, large so that it is barely regularized), and
//! a ridge regression onto the one-hot targets rescaled to ±1 is solved in closed form through
//! an eigendecomposition of `XᵀX` or `XXᵀ`, whichever is smaller. The score is the accuracy of
//! the argmax on the test images. Features are computed once: every image of every draw, and
//! the test set.
//!
//! big_vision computes in float32 on its accelerator; this computes in float64 (faer's
//! eigensolver), which only changes rounding.

use std::collections::HashMap;
use std::sync::Arc;

use bit_data::{ImageDataset, Subset, few_shot};
use bit_model::{ResNetV2, Stage};
use burn::tensor::Device;
use faer::{Mat, Side};

use crate::error::{InferError, Result};
use crate::feed::{Embeddings, Feed, embed};

/// big_vision's default L2 regularization, `2^10`.
pub const DEFAULT_L2: f64 = 1024.0;

/// The constant appended to every feature vector: the bias's feature (big_vision's value).
pub const BIAS_FEATURE: f64 = 100.0;

/// What whitening adds to each feature's standard deviation (big_vision's value).
pub const STD_EPS: f64 = 1e-5;

/// A ridge-regression probe fitted on one draw, for any L2: the eigendecomposition is done
/// once, each L2 is then a diagonal rescaling.
///
/// ```
/// use bit_infer::{Embeddings, RidgeProbe};
///
/// // Two classes on either side of the first feature.
/// let train = Embeddings {
///     features: vec![-2.0, 0.1, -1.0, 0.3, 1.0, 0.2, 2.0, 0.0],
///     dim: 2,
///     labels: vec![0, 0, 1, 1],
/// };
/// let probe = RidgeProbe::fit(&train, 2)?;
/// let test = Embeddings { features: vec![-3.0, 0.0, 3.0, 0.0], dim: 2, labels: vec![0, 1] };
/// assert_eq!(probe.accuracy(&test, 1.0)?, 1.0);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RidgeProbe {
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Eigenvalues of the smaller Gram matrix.
    eigs: Vec<f64>,
    /// `w(l2) = lhs · diag(1 / (eigs + l2)) · rhs`.
    lhs: Mat<f64>,
    rhs: Mat<f64>,
    classes: usize,
}

impl RidgeProbe {
    /// Whitens `train`, appends the bias feature and decomposes the Gram matrix.
    pub fn fit(train: &Embeddings, classes: usize) -> Result<Self> {
        let (n, dim) = (train.len(), train.dim);
        if n == 0 || dim == 0 || train.features.len() != n * dim {
            return Err(InferError::InvalidArgument(format!(
                "a linear probe needs features: {n} rows of {dim} with {} values",
                train.features.len()
            )));
        }
        if let Some(&label) = train.labels.iter().find(|&&l| l >= classes) {
            return Err(InferError::InvalidArgument(format!(
                "label {label} in the probe's training draw, with {classes} classes"
            )));
        }
        let row = |i: usize| &train.features[i * dim..(i + 1) * dim];
        let mean: Vec<f64> = (0..dim)
            .map(|j| (0..n).map(|i| row(i)[j] as f64).sum::<f64>() / n as f64)
            .collect();
        // Population standard deviation, as `jnp.std`.
        let std: Vec<f64> = (0..dim)
            .map(|j| {
                let var = (0..n)
                    .map(|i| (row(i)[j] as f64 - mean[j]).powi(2))
                    .sum::<f64>()
                    / n as f64;
                var.sqrt() + STD_EPS
            })
            .collect();
        let x = design(&train.features, dim, &mean, &std);
        let y = Mat::from_fn(n, classes, |i, c| match train.labels[i] == c {
            true => 1.0,
            false => -1.0,
        });
        let solve = |gram: Mat<f64>| {
            gram.self_adjoint_eigen(Side::Lower).map_err(|e| {
                InferError::InvalidArgument(format!("the probe's eigendecomposition failed: {e:?}"))
            })
        };
        // The design matrix has the bias column too: `dim + 1` columns.
        let columns = dim + 1;
        let (eigen, lhs, rhs) = if n >= columns {
            let eigen = solve(x.transpose() * &x)?;
            let q = eigen.U().to_owned();
            let rhs = q.transpose() * (x.transpose() * &y);
            (eigen, q, rhs)
        } else {
            let eigen = solve(&x * x.transpose())?;
            let q = eigen.U().to_owned();
            let rhs = q.transpose() * &y;
            (eigen, x.transpose() * &q, rhs)
        };
        let eigs = eigen.S().column_vector().iter().copied().collect();
        Ok(Self {
            mean,
            std,
            eigs,
            lhs,
            rhs,
            classes,
        })
    }

    /// The regression weights for `l2`, `[dim + 1, classes]` (the last row is the bias's).
    pub fn weights(&self, l2: f64) -> Mat<f64> {
        let mut scaled = self.lhs.clone();
        for (j, &e) in self.eigs.iter().enumerate() {
            let s = 1.0 / (e + l2);
            for i in 0..scaled.nrows() {
                scaled[(i, j)] *= s;
            }
        }
        scaled * &self.rhs
    }

    /// The predicted class of each row of `test` (the first of equal scores).
    pub fn predict(&self, test: &Embeddings, l2: f64) -> Result<Vec<usize>> {
        let dim = self.mean.len();
        if test.dim != dim || test.features.len() != test.len() * dim {
            return Err(InferError::InvalidArgument(format!(
                "test features of {} dims for a probe fitted on {dim}",
                test.dim
            )));
        }
        check_l2(l2)?;
        let scores = design(&test.features, dim, &self.mean, &self.std) * self.weights(l2);
        Ok((0..scores.nrows())
            .map(|i| {
                (0..self.classes).fold(0, |best, c| match scores[(i, c)] > scores[(i, best)] {
                    true => c,
                    false => best,
                })
            })
            .collect())
    }

    /// The share of `test` predicted right.
    pub fn accuracy(&self, test: &Embeddings, l2: f64) -> Result<f64> {
        if test.is_empty() {
            return Err(InferError::InvalidArgument(
                "no test examples to score the probe on".into(),
            ));
        }
        let predicted = self.predict(test, l2)?;
        let right = predicted
            .iter()
            .zip(&test.labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(right as f64 / test.len() as f64)
    }
}

/// An L2 the solve can use.
fn check_l2(l2: f64) -> Result<()> {
    match l2 >= 0.0 && l2.is_finite() {
        true => Ok(()),
        false => Err(InferError::InvalidArgument(format!(
            "the L2 regularization must be finite and non-negative, not {l2}"
        ))),
    }
}

/// Rows of `features` whitened with `mean` / `std`, the bias feature appended.
fn design(features: &[f32], dim: usize, mean: &[f64], std: &[f64]) -> Mat<f64> {
    let rows = features.len() / dim;
    Mat::from_fn(rows, dim + 1, |i, j| match j < dim {
        true => (features[i * dim + j] as f64 - mean[j]) / std[j],
        false => BIAS_FEATURE,
    })
}

/// Which draws to score: shots per class, seeds per shot count, the L2, and the features.
///
/// ```
/// let config = bit_infer::FewShotConfig::default();
/// assert_eq!((config.shots, config.seeds, config.l2), (vec![1, 5, 10, 25], 3, 1024.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct FewShotConfig {
    /// Training examples per class of each probe (BiT reports 1, 5, 10 and 25).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', default_value = "1,5,10,25")
    )]
    pub shots: Vec<usize>,
    /// Draws per number of shots (seeds 0, 1, ...), reported as mean ± std.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub seeds: usize,
    /// L2 regularization of the ridge regression (big_vision's default, 2^10).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = DEFAULT_L2, allow_negative_numbers = true)
    )]
    pub l2: f64,
    /// The features probed: the global average of a stage's activations (stem, stage1 ...
    /// stage4), or `final`, the pooled pre-logits BiT probes.
    #[cfg_attr(feature = "cli", arg(long, default_value = "final"))]
    pub representation: Stage,
}

impl Default for FewShotConfig {
    fn default() -> Self {
        Self {
            shots: vec![1, 5, 10, 25],
            seeds: 3,
            l2: DEFAULT_L2,
            representation: Stage::Final,
        }
    }
}

/// The accuracies of one number of shots, one per seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FewShotScore {
    /// Training examples per class.
    pub shots: usize,
    /// Test accuracy of each seed's draw, in seed order.
    pub accuracies: Vec<f64>,
}

impl FewShotScore {
    /// Mean accuracy over the seeds.
    pub fn mean(&self) -> f64 {
        self.accuracies.iter().sum::<f64>() / self.accuracies.len() as f64
    }

    /// Standard deviation over the seeds (population, 0 for one seed).
    pub fn std(&self) -> f64 {
        let mean = self.mean();
        let var = self
            .accuracies
            .iter()
            .map(|a| (a - mean).powi(2))
            .sum::<f64>()
            / self.accuracies.len() as f64;
        var.sqrt()
    }
}

/// Scores `model`'s pooled features (at `config.representation`) with linear probes: for each
/// number of shots and seed, a [`RidgeProbe`] fitted on a draw of `train` ([`few_shot`]: the
/// seed is the draw's), scored on `test`. Every image is embedded once, whatever the number of draws it is in.
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::{FewShotConfig, Feed};
/// use bit_model::ResNetV2Config;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 2).init(&device);
/// // Dark images are class 0, bright ones class 1.
/// let pixels = |v: u8| vec![v; 8 * 8 * 3];
/// let images = |n: usize| -> Vec<u8> {
///     (0..n).flat_map(|i| pixels(if i % 2 == 0 { 10 } else { 240 })).collect()
/// };
/// let labels = |n: usize| (0..n).map(|i| i % 2).collect::<Vec<_>>();
/// let classes = vec!["dark".to_string(), "bright".to_string()];
/// let train = InMemoryDataset::new(classes.clone(), [8, 8, 3], images(8), labels(8))?;
/// let test = InMemoryDataset::new(classes, [8, 8, 3], images(4), labels(4))?;
/// let config = FewShotConfig { shots: vec![1, 2], seeds: 2, ..Default::default() };
/// let scores = bit_infer::fewshot(
///     &model, Arc::new(train), Arc::new(test), &config, &Feed::new(32), &device,
/// )?;
/// assert_eq!(scores[1].shots, 2);
/// assert_eq!(scores[1].mean(), 1.0);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn fewshot(
    model: &ResNetV2,
    train: Arc<dyn ImageDataset>,
    test: Arc<dyn ImageDataset>,
    config: &FewShotConfig,
    feed: &Feed,
    device: &Device,
) -> Result<Vec<FewShotScore>> {
    if train.classes() != test.classes() {
        return Err(InferError::InvalidArgument(format!(
            "the training and test sets have different classes ({} and {})",
            train.classes().len(),
            test.classes().len()
        )));
    }
    if config.shots.is_empty() || config.seeds == 0 {
        return Err(InferError::InvalidArgument(
            "few-shot evaluation needs at least one number of shots and one seed".into(),
        ));
    }
    check_l2(config.l2)?;
    let classes = train.classes().len();
    let mut draws = Vec::new();
    for &shots in &config.shots {
        for seed in 0..config.seeds {
            draws.push((shots, few_shot(train.clone(), shots, seed as u64)?));
        }
    }
    // Every drawn image once, in the parent's order.
    let mut union: Vec<usize> = draws
        .iter()
        .flat_map(|(_, d)| d.indices().iter().copied())
        .collect();
    union.sort_unstable();
    union.dedup();
    let row_of: HashMap<usize, usize> = union.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    let feed = feed.with_representation(config.representation);
    let drawn = embed(model, Arc::new(Subset::new(train, union)), &feed, device)?;
    let test = embed(model, test, &feed, device)?;
    let dim = drawn.dim;
    let mut scores: Vec<FewShotScore> = Vec::new();
    for (shots, draw) in draws {
        let rows: Vec<usize> = draw.indices().iter().map(|i| row_of[i]).collect();
        let subset = Embeddings {
            features: rows
                .iter()
                .flat_map(|&r| drawn.features[r * dim..(r + 1) * dim].iter().copied())
                .collect(),
            dim,
            labels: rows.iter().map(|&r| drawn.labels[r]).collect(),
        };
        let accuracy = RidgeProbe::fit(&subset, classes)?.accuracy(&test, config.l2)?;
        match scores.last_mut() {
            Some(score) if score.shots == shots => score.accuracies.push(accuracy),
            _ => scores.push(FewShotScore {
                shots,
                accuracies: vec![accuracy],
            }),
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// big_vision's formula written directly: `w = (XᵀX + l2 I)⁻¹ Xᵀ Y` by Gaussian
    /// elimination, on whitened features with the bias column.
    fn direct_weights(train: &Embeddings, classes: usize, l2: f64) -> Vec<Vec<f64>> {
        let probe = RidgeProbe::fit(train, classes).unwrap();
        let x = design(&train.features, train.dim, &probe.mean, &probe.std);
        let (n, d) = (x.nrows(), x.ncols());
        // [A | B] with A = XᵀX + l2 I, B = XᵀY.
        let mut m = vec![vec![0.0; d + classes]; d];
        for a in 0..d {
            for b in 0..d {
                m[a][b] = (0..n).map(|i| x[(i, a)] * x[(i, b)]).sum::<f64>();
            }
            m[a][a] += l2;
            for c in 0..classes {
                m[a][d + c] = (0..n)
                    .map(|i| x[(i, a)] * if train.labels[i] == c { 1.0 } else { -1.0 })
                    .sum::<f64>();
            }
        }
        for p in 0..d {
            let pivot = (p..d)
                .max_by(|&a, &b| m[a][p].abs().total_cmp(&m[b][p].abs()))
                .unwrap();
            m.swap(p, pivot);
            let pivot_row = m[p].clone();
            for (r, row) in m.iter_mut().enumerate() {
                if r != p {
                    let f = row[p] / pivot_row[p];
                    for (v, &q) in row.iter_mut().zip(&pivot_row).skip(p) {
                        *v -= f * q;
                    }
                }
            }
        }
        (0..d)
            .map(|r| (0..classes).map(|c| m[r][d + c] / m[r][r]).collect())
            .collect()
    }

    fn pseudo_random(n: usize, dim: usize, classes: usize, seed: u64) -> Embeddings {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let features = labels
            .iter()
            .flat_map(|&l| {
                (0..dim)
                    .map(|j| next() + if j == l { 1.0 } else { 0.0 })
                    .collect::<Vec<_>>()
            })
            .collect();
        Embeddings {
            features,
            dim,
            labels,
        }
    }

    #[test]
    fn both_gram_matrices_give_the_direct_solution() {
        // More points than dimensions (XᵀX), then fewer (XXᵀ).
        for (n, dim) in [(40, 6), (5, 12)] {
            let train = pseudo_random(n, dim, 3, n as u64);
            let probe = RidgeProbe::fit(&train, 3).unwrap();
            for l2 in [1e-3, 1.0, 1024.0] {
                let w = probe.weights(l2);
                let direct = direct_weights(&train, 3, l2);
                for (r, row) in direct.iter().enumerate() {
                    for (c, &want) in row.iter().enumerate() {
                        let got = w[(r, c)];
                        assert!(
                            (got - want).abs() <= 1e-8 * (1.0 + want.abs()),
                            "n {n} dim {dim} l2 {l2} w[{r},{c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn separable_classes_are_probed_right_and_bad_input_is_refused() {
        let train = pseudo_random(60, 8, 4, 1);
        let test = pseudo_random(40, 8, 4, 2);
        let probe = RidgeProbe::fit(&train, 4).unwrap();
        assert_eq!(probe.accuracy(&test, 1.0).unwrap(), 1.0);
        // No regularization at all: plain least squares (more points than dimensions).
        assert_eq!(probe.accuracy(&test, 0.0).unwrap(), 1.0);
        assert!(probe.accuracy(&test, -1.0).is_err());
        assert!(probe.accuracy(&test, f64::NAN).is_err());
        let narrow = pseudo_random(4, 3, 4, 3);
        assert!(probe.accuracy(&narrow, 1.0).is_err());
        assert!(
            RidgeProbe::fit(&train, 3).is_err(),
            "label 3 with 3 classes"
        );
        let empty = Embeddings {
            features: vec![],
            dim: 8,
            labels: vec![],
        };
        assert!(RidgeProbe::fit(&empty, 4).is_err());
    }

    #[test]
    fn seeds_summarize_as_mean_and_population_std() {
        let s = FewShotScore {
            shots: 5,
            accuracies: vec![0.5, 0.7],
        };
        assert!((s.mean() - 0.6).abs() < 1e-12 && (s.std() - 0.1).abs() < 1e-12);
    }
}
