//! Learning-rate schedules: what a run asks each step for its learning rate, and when it ends.

use bit_hyperrule::HyperRule;

/// A learning rate per optimizer step, and the number of steps.
///
/// A run trains while [`lr`](Self::lr) gives a rate; [`total_steps`](Self::total_steps) sizes
/// its progress bar.
pub trait Schedule {
    /// The learning rate of `step`, or `None` once the schedule is over.
    fn lr(&self, step: usize) -> Option<f64>;

    /// The number of steps in all.
    fn total_steps(&self) -> usize;
}

/// BiT-HyperRule's schedule: linear warmup, ÷10 decays, the end after the last step.
impl Schedule for HyperRule {
    fn lr(&self, step: usize) -> Option<f64> {
        HyperRule::lr(self, step)
    }

    fn total_steps(&self) -> usize {
        HyperRule::total_steps(self)
    }
}

/// Linear warmup from 0 to `lr` over `warmup` steps, then cosine decay to 0 at `total`.
///
/// ```
/// use bit_train::{Schedule, WarmupCosine};
///
/// let s = WarmupCosine { lr: 0.01, warmup: 10, total: 110 };
/// assert_eq!(s.lr(0), Some(0.0));
/// assert_eq!(s.lr(5), Some(0.005));
/// assert_eq!(s.lr(10), Some(0.01));
/// assert!((s.lr(60).unwrap() - 0.005).abs() < 1e-12);
/// assert_eq!((s.lr(110), s.total_steps()), (None, 110));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Steps in all.
    pub total: usize,
}

impl Schedule for WarmupCosine {
    fn lr(&self, step: usize) -> Option<f64> {
        if step >= self.total {
            return None;
        }
        if step < self.warmup {
            return Some(self.lr * step as f64 / self.warmup as f64);
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        Some(self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }

    fn total_steps(&self) -> usize {
        self.total
    }
}
