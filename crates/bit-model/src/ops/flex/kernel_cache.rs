//! The standardized kernel, computed once per weight version.
//!
//! A kernel is a function of the raw weights only, yet every forward and backward call needs it.
//! Flex tensors share their storage through an `Arc` and never write to storage that anything
//! else references (copy-on-write, and `Arc::get_mut`/`make_mut` move or copy away from any
//! `Weak`), so the allocation of the raw weights identifies their contents: while a `Weak` to it
//! still upgrades to the same allocation, the weights have not changed. After an optimizer step
//! the weights live in a new allocation and the old entry dies with the old weights.

use std::sync::{Arc, Mutex, Weak};

use burn::tensor::Bytes;
use burn_flex::FlexTensor;

use super::standardize::{self, KernelLayout};
use super::{contiguous, dims4};

/// The standardized kernel of one weight version, in the layouts asked for so far.
struct Entry {
    raw: Weak<Bytes>,
    offset: usize,
    strides: Vec<isize>,
    shape: [usize; 4],
    eps: u64,
    ohwi: Option<Arc<Vec<f32>>>,
    hwio: Option<Arc<Vec<f32>>>,
}

impl Entry {
    fn is_alive(&self) -> bool {
        self.raw.strong_count() > 0
    }

    fn get(&self, layout: KernelLayout) -> Option<&Arc<Vec<f32>>> {
        match layout {
            KernelLayout::Ohwi => self.ohwi.as_ref(),
            KernelLayout::Hwio => self.hwio.as_ref(),
        }
    }

    fn floats(&self) -> usize {
        self.ohwi.iter().chain(&self.hwio).map(|k| k.len()).sum()
    }
}

/// At most this many cached floats (1 GiB): every layer of R50x1, R101x1 and R50x3 in one
/// layout (R50x1 and R101x1 in both, as training uses them); a larger model keeps its first
/// layers cached and recomputes the rest, rather than doubling its weight memory.
const BUDGET_FLOATS: usize = 1 << 28;

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The standardized kernel of the OIHW `weight`, in `layout`.
pub(super) fn standardized(weight: &FlexTensor, eps: f64, layout: KernelLayout) -> Arc<Vec<f32>> {
    let raw = weight.data_arc();
    let shape = dims4(weight);
    let storage = weight.layout();
    let is_this = |e: &Entry| {
        e.shape == shape
            && e.eps == eps.to_bits()
            && e.offset == storage.start_offset()
            && e.strides == storage.strides()
            && e.raw.upgrade().is_some_and(|live| Arc::ptr_eq(&live, &raw))
    };
    let (c_out, fan_in) = (shape[0], shape[1] * shape[2] * shape[3]);
    let (cached_rows, cached_columns) = {
        let cache = lock();
        let entry = cache.iter().find(|e| is_this(e));
        if let Some(kernel) = entry.and_then(|e| e.get(layout)) {
            return kernel.clone();
        }
        (
            entry.and_then(|e| e.ohwi.clone()),
            entry.and_then(|e| e.hwio.clone()),
        )
    };
    // The O-HWI rows, from the other layout of this version if it is cached (a transpose
    // instead of a standardization); HWIO is their transpose. Only the layout asked for is
    // kept: inference never needs the other one.
    let rows = match (cached_rows, cached_columns) {
        (Some(rows), _) => rows,
        (None, Some(columns)) => Arc::new(standardize::transpose(&columns, fan_in, c_out)),
        (None, None) => Arc::new(standardize::standardize(&contiguous(weight), shape, eps)),
    };
    let kernel = match layout {
        KernelLayout::Ohwi => rows,
        KernelLayout::Hwio => Arc::new(standardize::transpose(&rows, c_out, fan_in)),
    };

    let mut cache = lock();
    cache.retain(Entry::is_alive);
    if cache.iter().map(Entry::floats).sum::<usize>() + kernel.len() > BUDGET_FLOATS {
        return kernel;
    }
    let index = match cache.iter().position(is_this) {
        Some(i) => i,
        None => {
            cache.push(Entry {
                raw: Arc::downgrade(&raw),
                offset: storage.start_offset(),
                strides: storage.strides().to_vec(),
                shape,
                eps: eps.to_bits(),
                ohwi: None,
                hwio: None,
            });
            cache.len() - 1
        }
    };
    let slot = match layout {
        KernelLayout::Ohwi => &mut cache[index].ohwi,
        KernelLayout::Hwio => &mut cache[index].hwio,
    };
    *slot = Some(kernel.clone());
    kernel
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // The cache holds no invariant a panicking thread could break: use it even if poisoned.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    fn weight(values: Vec<f32>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, [2, 3, 1, 2]))
    }

    fn filter_values(seed: f32) -> Vec<f32> {
        (0..12).map(|i| (i as f32 * 0.7 + seed).sin()).collect()
    }

    #[test]
    fn one_standardization_per_weight_version() {
        let w = weight(filter_values(0.0));
        let first = standardized(&w, 1e-10, KernelLayout::Hwio);
        assert!(Arc::ptr_eq(
            &first,
            &standardized(&w, 1e-10, KernelLayout::Hwio)
        ));
        // The other layout is the transpose of the same kernel.
        let rows = standardized(&w, 1e-10, KernelLayout::Ohwi);
        assert_eq!(*first, standardize::transpose(&rows, 2, 6));
        // Another epsilon is another kernel.
        assert!(!Arc::ptr_eq(
            &first,
            &standardized(&w, 1e-3, KernelLayout::Hwio)
        ));
    }

    #[test]
    fn changed_weights_are_standardized_again() {
        // A copy-on-write change of shared weights (an optimizer step): new storage.
        let shared = weight(filter_values(1.0));
        let before = standardized(&shared, 1e-10, KernelLayout::Ohwi);
        let mut changed = shared.clone();
        changed.storage_mut::<f32>()[0] += 1.0;
        let after = standardized(&changed, 1e-10, KernelLayout::Ohwi);
        assert_ne!(*before, *after);
        assert_eq!(*before, *standardized(&shared, 1e-10, KernelLayout::Ohwi));

        // An in-place change of weights that nothing else holds: the cache's weak reference
        // makes the write move the storage, so the stale entry cannot be found again.
        let mut unique = weight(filter_values(2.0));
        let before = standardized(&unique, 1e-10, KernelLayout::Hwio);
        unique.storage_mut::<f32>()[3] = 9.0;
        let after = standardized(&unique, 1e-10, KernelLayout::Hwio);
        assert_ne!(*before, *after);
        let fresh = weight(unique.as_slice::<f32>().unwrap().to_vec());
        assert_eq!(*after, *standardized(&fresh, 1e-10, KernelLayout::Hwio));
    }
}
