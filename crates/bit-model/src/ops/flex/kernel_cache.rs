//! The standardized kernel, computed once per weight version.
//!
//! A kernel is a function of the raw weights only, yet every forward and backward call needs it.
//! Flex tensors share their storage through an `Arc` and never write to storage that anything
//! else references (copy-on-write, and `Arc::get_mut`/`make_mut` move or copy away from any
//! `Weak`), so the allocation of the raw weights identifies their contents: while a `Weak` to it
//! still upgrades to the same allocation, the weights have not changed. After an optimizer step
//! the weights live in a new allocation and the old entry dies with the old weights.
//!
//! An entry holds the filters' moments and the kernel in each layout asked for, and only those:
//! a training step asks for both (HWIO in the forward, O-HWI for the input gradient, made from
//! the cached HWIO by a transpose), inference only for HWIO, so `bit predict` holds one copy.
//! Entries whose weights are gone are dropped before anything is budgeted, on every call;
//! [`clear`] drops the rest (a model that is done with, a frozen teacher that filled the
//! budget).

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use burn::tensor::Bytes;
use burn_flex::FlexTensor;

use super::standardize::{self, KernelLayout};
use super::{contiguous, dims4};

/// Per-filter `(mean, 1 / sqrt(var + eps))`.
pub(super) type Moments = Arc<Vec<(f32, f32)>>;

struct Entry {
    raw: Weak<Bytes>,
    offset: usize,
    strides: Vec<isize>,
    shape: [usize; 4],
    eps: u64,
    moments: Option<Moments>,
    ohwi: Option<Arc<Vec<f32>>>,
    hwio: Option<Arc<Vec<f32>>>,
}

impl Entry {
    fn is_alive(&self) -> bool {
        self.raw.strong_count() > 0
    }

    fn slot(&mut self, layout: KernelLayout) -> &mut Option<Arc<Vec<f32>>> {
        match layout {
            KernelLayout::Ohwi => &mut self.ohwi,
            KernelLayout::Hwio => &mut self.hwio,
        }
    }

    fn floats(&self) -> usize {
        let moments = self.moments.as_ref().map_or(0, |m| 2 * m.len());
        self.ohwi
            .iter()
            .chain(&self.hwio)
            .map(|k| k.len())
            .sum::<usize>()
            + moments
    }
}

/// At most this many cached floats (1 GiB): both layouts of every layer of R50x1 and R101x1,
/// one of R50x3; a larger model keeps its first layers cached and recomputes the rest, rather
/// than doubling its weight memory.
const BUDGET_FLOATS: usize = 1 << 28;

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<Entry>> {
    // The cache holds no invariant a panicking thread could break: use it even if poisoned.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache key of one weight version.
struct Key {
    raw: Arc<Bytes>,
    offset: usize,
    strides: Vec<isize>,
    shape: [usize; 4],
    eps: u64,
}

impl Key {
    fn of(weight: &FlexTensor, eps: f64) -> Self {
        Self {
            raw: weight.data_arc(),
            offset: weight.layout().start_offset(),
            strides: weight.layout().strides().to_vec(),
            shape: dims4(weight),
            eps: eps.to_bits(),
        }
    }

    fn matches(&self, e: &Entry) -> bool {
        e.shape == self.shape
            && e.eps == self.eps
            && e.offset == self.offset
            && e.strides == self.strides
            && e.raw
                .upgrade()
                .is_some_and(|live| Arc::ptr_eq(&live, &self.raw))
    }

    fn fan_in(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }
}

/// Forgets every cached kernel (they are recomputed when next asked for).
pub(in crate::ops) fn clear() {
    lock().clear();
}

/// The entry of `key`, created empty if there is none; entries of dropped weights are cleared
/// out first, so they never count against the budget.
fn entry<'a>(cache: &'a mut Vec<Entry>, key: &Key) -> &'a mut Entry {
    cache.retain(Entry::is_alive);
    if let Some(i) = cache.iter().position(|e| key.matches(e)) {
        return &mut cache[i];
    }
    cache.push(Entry {
        raw: Arc::downgrade(&key.raw),
        offset: key.offset,
        strides: key.strides.clone(),
        shape: key.shape,
        eps: key.eps,
        moments: None,
        ohwi: None,
        hwio: None,
    });
    cache.last_mut().expect("just pushed")
}

/// The per-filter moments of the OIHW `weight`.
pub(super) fn moments(weight: &FlexTensor, eps: f64) -> Moments {
    let key = Key::of(weight, eps);
    if let Some(moments) = entry(&mut lock(), &key).moments.clone() {
        return moments;
    }
    let moments = Arc::new(standardize::filter_moments(
        &contiguous(weight),
        key.fan_in(),
        eps,
    ));
    entry(&mut lock(), &key).moments = Some(moments.clone());
    moments
}

/// The standardized kernel of the OIHW `weight`, in `layout`.
pub(super) fn standardized(weight: &FlexTensor, eps: f64, layout: KernelLayout) -> Arc<Vec<f32>> {
    let key = Key::of(weight, eps);
    let (c_out, fan_in) = (key.shape[0], key.fan_in());
    let (rows, columns) = {
        let mut cache = lock();
        let e = entry(&mut cache, &key);
        if let Some(kernel) = e.slot(layout) {
            return kernel.clone();
        }
        (e.ohwi.clone(), e.hwio.clone())
    };
    // The O-HWI rows, from the other layout if it is cached (a transpose instead of a
    // standardization); HWIO is their transpose.
    let mut moments = None;
    let rows = match (rows, columns) {
        (Some(rows), _) => rows,
        (None, Some(columns)) => Arc::new(standardize::transpose(&columns, fan_in, c_out)),
        (None, None) => {
            let (rows, m) = standardize::standardize(&contiguous(weight), key.shape, eps);
            moments = Some(Arc::new(m));
            Arc::new(rows)
        }
    };
    let kernel = match layout {
        KernelLayout::Ohwi => rows.clone(),
        KernelLayout::Hwio => Arc::new(standardize::transpose(&rows, c_out, fan_in)),
    };
    let mut cache = lock();
    cache.retain(Entry::is_alive);
    let budget = BUDGET_FLOATS.saturating_sub(cache.iter().map(Entry::floats).sum());
    if let Some(e) = cache.iter_mut().find(|e| key.matches(e)) {
        if e.moments.is_none() {
            e.moments = moments;
        }
        let slot = e.slot(layout);
        if slot.is_none() && kernel.len() <= budget {
            *slot = Some(kernel.clone());
        }
    }
    kernel
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    /// The tests that look at the shared cache's state (one of them clears it) run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(values: Vec<f32>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, [2, 3, 1, 2]))
    }

    fn filter_values(seed: f32) -> Vec<f32> {
        (0..12).map(|i| (i as f32 * 0.7 + seed).sin()).collect()
    }

    #[test]
    fn one_standardization_per_weight_version() {
        let _serial = serial();
        let w = weight(filter_values(0.0));
        let first = standardized(&w, 1e-10, KernelLayout::Hwio);
        assert!(Arc::ptr_eq(
            &first,
            &standardized(&w, 1e-10, KernelLayout::Hwio)
        ));
        // The other layout is the transpose of the same kernel.
        let rows = standardized(&w, 1e-10, KernelLayout::Ohwi);
        assert_eq!(*first, standardize::transpose(&rows, 2, 6));
        assert!(Arc::ptr_eq(&moments(&w, 1e-10), &moments(&w, 1e-10)));
        // Another epsilon is another kernel.
        assert!(!Arc::ptr_eq(
            &first,
            &standardized(&w, 1e-3, KernelLayout::Hwio)
        ));
    }

    /// The cached floats of entries of this `shape` (unique to a test: tests share the cache).
    fn cached(shape: [usize; 4]) -> Option<(bool, bool)> {
        lock()
            .iter()
            .find(|e| e.shape == shape)
            .map(|e| (e.hwio.is_some(), e.ohwi.is_some()))
    }

    #[test]
    fn only_the_layout_asked_for_is_kept_and_dead_entries_go_first() {
        let _serial = serial();
        let shape = [7, 5, 1, 3];
        let values: Vec<f32> = (0..105).map(|i| (i as f32 * 0.3).cos()).collect();
        let w = FlexTensor::from_data(TensorData::new(values.clone(), shape));
        standardized(&w, 1e-10, KernelLayout::Hwio);
        // Inference asks for HWIO only: no O-HWI copy is held for a backward that never comes.
        assert_eq!(cached(shape), Some((true, false)));
        standardized(&w, 1e-10, KernelLayout::Ohwi);
        assert_eq!(cached(shape), Some((true, true)));
        // Weights that are gone leave the cache at the next call, before any budgeting.
        drop(w);
        standardized(&weight(filter_values(3.0)), 1e-10, KernelLayout::Hwio);
        assert_eq!(cached(shape), None);
        // And `clear` empties it.
        let w = FlexTensor::from_data(TensorData::new(values, shape));
        standardized(&w, 1e-10, KernelLayout::Hwio);
        assert!(cached(shape).is_some());
        clear();
        assert_eq!(cached(shape), None);
    }

    #[test]
    fn changed_weights_are_standardized_again() {
        let _serial = serial();
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
        let stale_moments = moments(&unique, 1e-10);
        unique.storage_mut::<f32>()[3] = 9.0;
        let after = standardized(&unique, 1e-10, KernelLayout::Hwio);
        assert_ne!(*before, *after);
        assert_ne!(*stale_moments, *moments(&unique, 1e-10));
        let fresh = weight(unique.as_slice::<f32>().unwrap().to_vec());
        assert_eq!(*after, *standardized(&fresh, 1e-10, KernelLayout::Hwio));
    }
}
