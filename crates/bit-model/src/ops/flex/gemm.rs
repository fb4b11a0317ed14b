//! Row-major matrix views over raw buffers and one call into the `gemm` crate (the GEMM that
//! burn-flex itself uses), plus the per-thread scratch space the kernels reuse between calls.

use std::cell::RefCell;

/// A read-only strided matrix: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// The kernels only read through a `Mat` while the slice it was made from is borrowed.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The row-major matrix whose rows start every `row_stride` elements of `data`.
    pub(crate) fn rows(data: &[f32], row_stride: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: row_stride as isize,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The row-major destination of a product: rows `row_stride` elements apart.
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    pub ptr: *mut f32,
    pub row_stride: usize,
}

impl Dst {
    pub(crate) fn rows(data: &mut [f32], row_stride: usize) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            row_stride,
        }
    }
}

/// `dst[m, n] = a[m, k] @ b[k, n]`, or `dst += a @ b` when `accumulate`, on every rayon thread
/// (the `gemm` crate splits the work and packs each operand once). Single-threaded: callers parallelise over independent blocks, which keeps
/// both cores busy on every shape BiT has without nesting thread pools.
///
/// # Safety
/// `dst` must be valid for writes of the `m x n` block and not aliased by `a` or `b`; `a` and `b`
/// must be valid for reads of their `m x k` and `k x n` blocks.
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: Dst,
    a: Mat,
    b: Mat,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.row_stride), n) }
                    .fill(0.0);
            }
        }
        return;
    }
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            dst.row_stride as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of at least `len` elements (contents unspecified).
/// Rayon's workers live for the whole process, so the im2col buffers are allocated (and their
/// pages faulted in) once instead of on every convolution.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on the same thread (a task that waits inside rayon can run another one):
        // fall back to a private buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}
