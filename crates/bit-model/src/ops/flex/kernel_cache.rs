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

struct Entry {
    raw: Weak<Bytes>,
    offset: usize,
    strides: Vec<isize>,
    shape: [usize; 4],
    eps: u64,
    layout: KernelLayout,
    kernel: Arc<Vec<f32>>,
}

impl Entry {
    fn is_alive(&self) -> bool {
        self.raw.strong_count() > 0
    }
}

/// At most this many cached floats (1 GiB): every layer of R50x1, R101x1 and R50x3; a larger
/// model keeps its first layers cached and recomputes the rest, rather than doubling its
/// weight memory.
const BUDGET_FLOATS: usize = 1 << 28;

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The standardized kernel of the OIHW `weight`, in `layout`.
pub(super) fn standardized(weight: &FlexTensor, eps: f64, layout: KernelLayout) -> Arc<Vec<f32>> {
    let raw = weight.data_arc();
    let shape = dims4(weight);
    let storage = weight.layout();
    let key = |e: &Entry| {
        e.shape == shape
            && e.layout == layout
            && e.eps == eps.to_bits()
            && e.offset == storage.start_offset()
            && e.strides == storage.strides()
            && e.raw.upgrade().is_some_and(|live| Arc::ptr_eq(&live, &raw))
    };
    if let Some(hit) = lock().iter().find(|e| key(e)) {
        return hit.kernel.clone();
    }
    let kernel = Arc::new(standardize::standardize(
        &contiguous(weight),
        shape,
        eps,
        layout,
    ));
    let mut cache = lock();
    cache.retain(Entry::is_alive);
    let used: usize = cache.iter().map(|e| e.kernel.len()).sum();
    if used + kernel.len() <= BUDGET_FLOATS {
        cache.push(Entry {
            raw: Arc::downgrade(&raw),
            offset: storage.start_offset(),
            strides: storage.strides().to_vec(),
            shape,
            eps: eps.to_bits(),
            layout,
            kernel: kernel.clone(),
        });
    }
    kernel
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // The cache holds no invariant a panicking thread could break: use it even if poisoned.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}
