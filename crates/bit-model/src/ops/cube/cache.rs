//! The standardized kernel on a CubeCL device, computed once per weight version.
//!
//! A CubeCL backend writes an operation's result into its input's buffer when nothing else
//! holds that buffer (`CubeTensor::can_mut`), so a buffer alone does not identify contents.
//! An entry therefore holds the raw weights it was computed from: while it does, no operation
//! can write to them in place, and the buffer does identify the weights. When the entry is the
//! only holder left (the optimizer replaced the weights and the model dropped the old ones),
//! the weights are gone and the entry with them, at the next lookup.

use std::sync::{Mutex, MutexGuard};

use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use super::{elem_type, empty_like, filters, kernels, units};

/// A standardized kernel and what its gradient needs of the filters' moments.
#[derive(Clone)]
pub(in crate::ops) struct Standardized {
    /// `(w - mean) * rstd`, the shape of the raw kernel.
    pub w_hat: CubeTensor,
    /// Per-filter `1 / sqrt(var + eps)`, `[out]`.
    pub rstd: CubeTensor,
}

struct Entry {
    raw: CubeTensor,
    eps: u64,
    value: Standardized,
}

impl Entry {
    /// Whether `weight` is the tensor this entry was computed from: the same buffer, the same
    /// view of it.
    fn holds(&self, weight: &CubeTensor, eps: u64) -> bool {
        let (a, b) = (&self.raw.handle, &weight.handle);
        std::ptr::eq(a.memory.descriptor(), b.memory.descriptor())
            && (a.offset_start, a.offset_end) == (b.offset_start, b.offset_end)
            && self.raw.meta.shape() == weight.meta.shape()
            && self.raw.meta.strides() == weight.meta.strides()
            && self.raw.dtype == weight.dtype
            && self.eps == eps
    }

    /// Whether only this entry (and the memory pool) still holds the raw weights.
    fn is_dead(&self) -> bool {
        self.raw.can_mut()
    }

    fn elements(&self) -> usize {
        self.raw.shape().num_elements()
    }
}

/// At most this many cached weights (256 Mi elements, 1 GiB in f32): every layer of R50x1 to
/// R101x3; a larger model caches its first layers and standardizes the rest at each call
/// rather than doubling its weight memory on the device.
const BUDGET_ELEMENTS: usize = 1 << 28;

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<Entry>> {
    // The cache holds no invariant a panicking thread could break: use it even if poisoned.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets every cached kernel (they are recomputed when next asked for).
pub(in crate::ops) fn clear() {
    lock().clear();
}

/// The standardized `weight` (`[out, in, kh, kw]`), from the cache or computed now.
pub(in crate::ops) fn standardized(weight: CubeTensor, eps: f64) -> Standardized {
    let key = eps.to_bits();
    {
        let mut cache = lock();
        cache.retain(|e| !e.is_dead());
        if let Some(entry) = cache.iter().find(|e| e.holds(&weight, key)) {
            return entry.value.clone();
        }
    }
    let value = compute(weight.clone(), eps);
    let mut cache = lock();
    let used: usize = cache.iter().map(Entry::elements).sum();
    if used + weight.shape().num_elements() <= BUDGET_ELEMENTS {
        cache.push(Entry {
            raw: weight,
            eps: key,
            value: value.clone(),
        });
    }
    value
}

fn compute(weight: CubeTensor, eps: f64) -> Standardized {
    let shape = weight.shape();
    let weight = into_contiguous(weight);
    let (filters, fan_in) = filters(&shape);
    let w_hat = empty_like(&weight, shape);
    let rstd = empty_like(&weight, Shape::new([filters]));
    let units = units(&weight);
    let dtype = elem_type(weight.dtype);
    kernels::standardize::launch(
        &weight.client.clone(),
        CubeCount::Static(filters as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        weight.into_tensor_arg(),
        w_hat.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        fan_in as u32,
        eps as f32,
        units,
        dtype,
    );
    Standardized { w_hat, rstd }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use crate::ops::{StdConvOptions, std_conv2d};

    /// Entries of the cache that still hold raw weights with another owner.
    fn live_entries() -> usize {
        let mut cache = super::lock();
        cache.retain(|e| !e.is_dead());
        cache.len()
    }

    /// One entry per live weight version: reused while the weights live, gone with them.
    #[test]
    fn an_entry_lives_exactly_as_long_as_its_weights() {
        let device = crate::backend::GpuBackend::Wgpu
            .best_device()
            .expect("no wgpu adapter: install a GPU driver, or mesa-vulkan-drivers");
        let options = StdConvOptions {
            stride: 1,
            padding: 1,
            eps: 1e-10,
        };
        let x = Tensor::<4>::random([1, 5, 5, 4], Distribution::Default, &device);
        let before = live_entries();
        let weight = Tensor::<4>::random([6, 4, 3, 3], Distribution::Default, &device);
        let first = std_conv2d(x.clone(), weight.clone(), options);
        assert_eq!(live_entries(), before + 1);
        let second = std_conv2d(x.clone(), weight.clone(), options);
        assert_eq!(
            live_entries(),
            before + 1,
            "the same weights made a second entry"
        );
        first.into_data().assert_eq(&second.into_data(), true);
        // An update writes new weights; the old ones die with their last owner.
        let updated = weight.clone() * 0.5;
        drop(weight);
        let _ = std_conv2d(x, updated.clone(), options).into_data();
        assert_eq!(live_entries(), before + 1, "a dead version kept its entry");
        drop(updated);
        assert_eq!(live_entries(), before);
    }
}
