//! Mixup as BiT's PyTorch trainer does it: one `λ ~ Beta(α, α)` per optimizer step (shared by
//! its micro-batches), each micro-batch paired with a random permutation of itself:
//! `x = λ x + (1 - λ) x[perm]`, `loss = λ CE(y) + (1 - λ) CE(y[perm])`.
//!
//! Every step's randomness is a function of `(seed, step)` alone, so a resumed run mixes
//! exactly as an uninterrupted one.

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution};

use crate::error::{DataError, Result};
use crate::rng::rng_for;

/// Stream id of mixup randomness, distinct from the loader's (1-3).
const MIXUP_STREAM: u64 = 4;

/// Mixup with `Beta(α, α)`.
///
/// ```
/// use bit_data::Mixup;
///
/// let mixup = Mixup::new(0.1, 0)?;
/// let lambda = mixup.step(17).lambda;
/// assert!((0.0..=1.0).contains(&lambda));
/// assert_eq!(mixup.step(17).lambda, lambda); // a function of (seed, step)
/// assert_eq!(Mixup::new(0.0, 0)?.step(17).lambda, 1.0); // α = 0: no mixing
/// # Ok::<(), bit_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mixup {
    beta: Option<Beta<f64>>,
    seed: u64,
}

impl Mixup {
    /// Mixup with `Beta(alpha, alpha)`; `alpha == 0` disables it.
    pub fn new(alpha: f64, seed: u64) -> Result<Self> {
        let beta = if alpha > 0.0 {
            Some(
                Beta::new(alpha, alpha)
                    .map_err(|e| DataError::InvalidArgument(format!("mixup alpha {alpha}: {e}")))?,
            )
        } else if alpha == 0.0 {
            None
        } else {
            return Err(DataError::InvalidArgument(format!(
                "mixup alpha {alpha} must not be negative"
            )));
        };
        Ok(Self { beta, seed })
    }

    /// Whether mixing happens at all.
    pub fn enabled(&self) -> bool {
        self.beta.is_some()
    }

    /// The mixing of optimizer step `step`: its λ (1 when disabled) and the pairings of its
    /// micro-batches.
    pub fn step(&self, step: u64) -> MixupStep {
        let mut rng = rng_for(self.seed, MIXUP_STREAM, step);
        let lambda = self
            .beta
            .as_ref()
            .map_or(1.0, |b| b.sample(&mut rng) as f32);
        MixupStep { lambda, rng }
    }
}

/// The mixing of one optimizer step.
#[derive(Debug, Clone)]
pub struct MixupStep {
    /// Weight of the original examples.
    pub lambda: f32,
    rng: Xoshiro256PlusPlus,
}

impl MixupStep {
    /// A random permutation of `0..n`: the partner of each example.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut self.rng);
        perm
    }

    /// Mixes a micro-batch: `λ x + (1 - λ) x[perm]`, and the partners' labels `y[perm]`.
    pub fn mix(
        &mut self,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let n = images.dims()[0];
        let perm = self.permutation(n);
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(perm.iter().map(|&i| i as i64).collect(), [n]),
            &images.device(),
        );
        let mixed =
            images.clone() * self.lambda + images.select(0, index.clone()) * (1.0 - self.lambda);
        (mixed, labels.select(0, index))
    }
}
