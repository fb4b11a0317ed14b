//! K examples per class, drawn with a seed: the same seed gives the same subset on every
//! machine and with any number of threads.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;

use crate::dataset::{ImageDataset, Subset};
use crate::error::{DataError, Result};

/// Picks `k` examples of every class (without replacement, classes in label order, like the
/// TF2/JAX reference's `np.random.choice` per class), then shuffles the picks; reads labels
/// only.
///
/// ```
/// use std::sync::Arc;
/// use bit_data::{InMemoryDataset, ImageDataset, few_shot};
///
/// let labels = vec![0, 1, 0, 1, 0, 1, 0];
/// let ds = InMemoryDataset::new(vec!["a".into(), "b".into()], [1, 1, 1], vec![0; 7], labels)?;
/// let subset = few_shot(Arc::new(ds), 2, 0)?;
/// assert_eq!(subset.len(), 4);
/// assert_eq!((0..4).filter(|&i| subset.label(i) == 1).count(), 2);
/// # Ok::<(), bit_data::DataError>(())
/// ```
pub fn few_shot(dataset: Arc<dyn ImageDataset>, k: usize, seed: u64) -> Result<Subset> {
    if k == 0 {
        return Err(DataError::InvalidArgument(
            "examples per class must be at least 1".into(),
        ));
    }
    let mut by_class = vec![Vec::new(); dataset.classes().len()];
    for i in 0..dataset.len() {
        by_class[dataset.label(i)].push(i);
    }
    // Every class is checked before anything is sized by `k`: a mistyped K (999999999) is
    // this error, not an allocation of K x classes indices that aborts the process.
    if let Some((class, indices)) = by_class.iter().enumerate().find(|(_, i)| i.len() < k) {
        return Err(DataError::NotEnoughExamples {
            class: dataset.classes()[class].clone(),
            available: indices.len(),
            requested: k,
        });
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut picked = Vec::with_capacity(k * by_class.len());
    for indices in &by_class {
        let mut chosen: Vec<usize> = rand::seq::index::sample(&mut rng, indices.len(), k)
            .into_iter()
            .map(|j| indices[j])
            .collect();
        chosen.sort_unstable();
        picked.extend(chosen);
    }
    picked.shuffle(&mut rng);
    Ok(Subset::new(dataset, picked))
}
