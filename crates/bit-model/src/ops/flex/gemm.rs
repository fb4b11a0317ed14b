//! Row-major matrix views over raw buffers and one call into the `gemm` crate (the GEMM that
//! burn-flex itself uses), plus the per-thread scratch space the kernels reuse between calls.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A read-only strided matrix over a borrowed slice: element `(i, j)` is `data[i * rs + j * cs]`.
/// Its shape is the caller's to state; [`matmul`] checks that the slice holds it.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major matrix whose rows start every `row_stride` elements of `data`.
    pub(crate) fn rows(data: &'a [f32], row_stride: usize) -> Self {
        Self {
            data,
            rs: row_stride,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether the slice holds every element of a `rows x cols` matrix of this view.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// The row-major destination of a product over a borrowed slice: rows `row_stride` elements
/// apart.
pub(crate) struct Dst<'a> {
    data: &'a mut [f32],
    row_stride: usize,
}

impl<'a> Dst<'a> {
    /// Rows of `data` starting every `row_stride` elements.
    pub(crate) fn rows(data: &'a mut [f32], row_stride: usize) -> Self {
        Self { data, row_stride }
    }
}

/// `dst[m, n] = a[m, k] @ b[k, n]`, or `dst += a @ b` when `accumulate`, on the threads of the
/// current rayon pool (the `gemm` crate splits the work and packs each operand once). Callers
/// go block by block, one product at a time, so thread pools are never nested.
///
/// # Panics
///
/// If a view's slice is too short for its block, or `dst`'s rows (`n` wide) overlap.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: Dst<'_>,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= dst.row_stride && (m - 1) * dst.row_stride + n <= dst.data.len(),
        "matmul: a {m}x{n} destination with rows {} apart in {} elements",
        dst.row_stride,
        dst.data.len()
    );
    if k == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        a.holds(m, k) && b.holds(k, n),
        "matmul: operands of {} and {} elements for a {m}x{k} @ {k}x{n} product",
        a.data.len(),
        b.data.len()
    );
    // SAFETY: `gemm` reads `a`'s m x k and `b`'s k x n elements at the given strides and
    // writes `dst`'s m x n elements; the asserts above keep every one of those offsets inside
    // its slice, and the borrows (`&mut` for `dst`, `&` for the operands, alive for this call)
    // make the written memory distinct from the read memory. Strides fit `isize` because they
    // index allocations, which never exceed `isize::MAX` bytes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
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
    with_buffer(&SCRATCH, len, f)
}

/// Runs `f` on `slot`'s buffer (a thread-local kept between calls) of at least `len` elements,
/// contents unspecified.
pub(crate) fn with_buffer<T: Copy + Default, R>(
    slot: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        // Re-entered on the same thread (a task that waits inside rayon can run another one):
        // fall back to a private buffer.
        Err(_) => f(&mut vec![T::default(); len]),
    })
}
