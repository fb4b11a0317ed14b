//! Convolution forward and backward on channels-last (NHWC) data, as GEMMs.
//!
//! With the activations channels-last, a convolution over the whole batch is one matrix product:
//! `out[P, Cout] = col[P, K] @ w[K, Cout]`, where `P = n * ho * wo` output positions and `K =
//! kh * kw * cin`, ordered (kh, kw, cin) so that each im2col row is a few contiguous copies of
//! channel vectors, and a 1x1 stride-1 convolution needs no im2col at all (`col` is the input).
//! The gradients are the two other products of the same three matrices:
//!
//! - weight: `dw = col^T @ dy` (HWIO) or `dy^T @ col` (O-HWI, faster for few positions),
//!   accumulated over blocks of positions;
//! - input, stride 1: a convolution of `dy` with the flipped, transposed kernel (so it runs
//!   through the forward path, with no scatter);
//! - input, stride 2: `dcol = dy @ w^T`, then col2im (scatter-add), parallel over images.
//!
//! The kernel's layout is chosen per product so that `gemm` packs it (see [`KernelLayout`]).
//!
//! Each product is one GEMM call parallelised inside the `gemm` crate, which packs the kernel
//! once for both threads; im2col is parallel over rows.

use rayon::prelude::*;

use super::gemm::{Dst, Mat, matmul, with_scratch};
use super::standardize::KernelLayout;

/// Shape of one convolution: square kernel, the same stride and zero padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    pub(crate) fn out_height(&self) -> usize {
        super::out_size(self.height, self.kernel, self.stride, self.padding)
    }

    pub(crate) fn out_width(&self) -> usize {
        super::out_size(self.width, self.kernel, self.stride, self.padding)
    }

    /// Output positions of the whole batch.
    pub(crate) fn positions(&self) -> usize {
        self.batch * self.out_height() * self.out_width()
    }

    /// Length of one im2col row.
    pub(crate) fn patch_len(&self) -> usize {
        self.kernel * self.kernel * self.c_in
    }

    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// The geometry of the input gradient of a stride-1 convolution seen as a forward
    /// convolution of the output gradient with the flipped kernel.
    fn transposed(&self) -> Self {
        Self {
            height: self.out_height(),
            width: self.out_width(),
            c_in: self.c_out,
            c_out: self.c_in,
            padding: self.kernel - 1 - self.padding,
            ..*self
        }
    }
}

/// Floats of im2col per block of output positions: the whole batch at once for all but the
/// largest layers (one GEMM, with the kernel packed once), bounded so that the buffer stays a
/// few tens of MB at BiT's sizes.
const BLOCK_FLOATS: usize = 1 << 22;

/// Output positions per block.
fn block_rows(g: &ConvGeometry) -> usize {
    (BLOCK_FLOATS / g.patch_len().max(1)).max(64)
}

/// Runs `f(start, end)` over consecutive blocks of `0..total`.
fn for_blocks(total: usize, block: usize, mut f: impl FnMut(usize, usize)) {
    let mut start = 0;
    while start < total {
        let end = (start + block).min(total);
        f(start, end);
        start = end;
    }
}

/// Fills `col` (rows of `patch_len`) with the patches of output positions `start..end`, in
/// parallel over rows.
fn im2col(g: &ConvGeometry, x: &[f32], start: usize, end: usize, col: &mut [f32]) {
    const ROWS: usize = 64;
    let patch = g.patch_len();
    col.par_chunks_mut(ROWS * patch)
        .enumerate()
        .for_each(|(i, rows)| {
            let first = start + i * ROWS;
            im2col_rows(g, x, first, (first + ROWS).min(end), rows);
        });
}

fn im2col_rows(g: &ConvGeometry, x: &[f32], start: usize, end: usize, col: &mut [f32]) {
    let image_len = g.height * g.width * g.c_in;
    for (row, p) in col.chunks_exact_mut(g.patch_len()).zip(start..end) {
        let n = p / (g.out_height() * g.out_width());
        patch_row(g, &x[n * image_len..(n + 1) * image_len], p, 0.0, row);
    }
}

/// The im2col row of output position `p` (`kernel² · c_in` values, (kh, kw, cin) order) from
/// its NHWC `image`, `pad` where the window leaves the image: f32 zeros here, the image's zero
/// point in the int8 path.
pub(crate) fn patch_row<T: Copy>(g: &ConvGeometry, image: &[T], p: usize, pad: T, row: &mut [T]) {
    let (ho, wo) = (g.out_height(), g.out_width());
    let (h, w, c, k) = (g.height, g.width, g.c_in, g.kernel);
    let oh = (p / wo) % ho;
    let ow = p % wo;
    let iw0 = (ow * g.stride) as isize - g.padding as isize;
    for (kh, dst) in row.chunks_exact_mut(k * c).enumerate() {
        let ih = (oh * g.stride + kh) as isize - g.padding as isize;
        if ih < 0 || ih >= h as isize {
            dst.fill(pad);
            continue;
        }
        let line = &image[ih as usize * w * c..(ih as usize + 1) * w * c];
        if iw0 >= 0 && iw0 as usize + k <= w {
            // The whole kernel row is inside: (kw, cin) is one contiguous run.
            let iw0 = iw0 as usize;
            dst.copy_from_slice(&line[iw0 * c..(iw0 + k) * c]);
        } else {
            for (kw, d) in dst.chunks_exact_mut(c).enumerate() {
                let iw = iw0 + kw as isize;
                if iw < 0 || iw >= w as isize {
                    d.fill(pad);
                } else {
                    d.copy_from_slice(&line[iw as usize * c..(iw as usize + 1) * c]);
                }
            }
        }
    }
}

/// Adds the patches in `col` (positions `start..end`) back into the input gradient `dx`: the
/// adjoint of [`im2col`]. Parallel over images, which own disjoint parts of `dx`.
fn col2im_add(g: &ConvGeometry, col: &[f32], start: usize, end: usize, dx: &mut [f32]) {
    let per_image = g.out_height() * g.out_width();
    let image_len = g.height * g.width * g.c_in;
    let patch = g.patch_len();
    let (first, last) = (start / per_image, (end - 1) / per_image);
    dx[first * image_len..(last + 1) * image_len]
        .par_chunks_mut(image_len)
        .enumerate()
        .for_each(|(i, dx_image)| {
            let n = first + i;
            let (lo, hi) = ((n * per_image).max(start), ((n + 1) * per_image).min(end));
            let rows = &col[(lo - start) * patch..(hi - start) * patch];
            col2im_image(g, rows, lo, hi, dx_image);
        });
}

fn col2im_image(g: &ConvGeometry, col: &[f32], start: usize, end: usize, dx_image: &mut [f32]) {
    let (ho, wo) = (g.out_height(), g.out_width());
    let (h, w, c, k) = (g.height, g.width, g.c_in, g.kernel);
    for (row, p) in col.chunks_exact(g.patch_len()).zip(start..end) {
        let oh = (p / wo) % ho;
        let ow = p % wo;
        let iw0 = (ow * g.stride) as isize - g.padding as isize;
        for (kh, src) in row.chunks_exact(k * c).enumerate() {
            let ih = (oh * g.stride + kh) as isize - g.padding as isize;
            if ih < 0 || ih >= h as isize {
                continue;
            }
            let line = &mut dx_image[ih as usize * w * c..(ih as usize + 1) * w * c];
            for (kw, s) in src.chunks_exact(c).enumerate() {
                let iw = iw0 + kw as isize;
                if iw >= 0 && iw < w as isize {
                    let d = &mut line[iw as usize * c..(iw as usize + 1) * c];
                    for (d, s) in d.iter_mut().zip(s) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// The im2col matrix of positions `start..end` (the input itself for a 1x1 stride-1
/// convolution), passed to `f`.
fn with_patches<R>(
    g: &ConvGeometry,
    x: &[f32],
    start: usize,
    end: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let patch = g.patch_len();
    if g.is_pointwise() {
        f(&x[start * patch..end * patch])
    } else {
        with_scratch((end - start) * patch, |col| {
            im2col(g, x, start, end, col);
            f(col)
        })
    }
}

/// `out[P, Cout] = conv(x, w)` (or `out += conv(x, w)` when `accumulate`) with `x` NHWC and `w`
/// HWIO, `[K, Cout]`.
pub(crate) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], out: &mut [f32], accumulate: bool) {
    debug_assert_eq!(w.len(), g.patch_len() * g.c_out);
    forward_with(g, x, Mat::rows(w, g.c_out), out, accumulate);
}

/// [`forward`] with the kernel as any `[K, Cout]` view.
fn forward_with(g: &ConvGeometry, x: &[f32], kernel: Mat, out: &mut [f32], accumulate: bool) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    debug_assert_eq!(x.len(), g.batch * g.height * g.width * g.c_in);
    debug_assert_eq!(out.len(), g.positions() * c_out);
    for_blocks(g.positions(), block_rows(g), |start, end| {
        let dst = Dst::rows(&mut out[start * c_out..end * c_out], c_out);
        with_patches(g, x, start, end, |col| {
            let a = Mat::rows(col, patch);
            matmul(end - start, c_out, patch, dst, a, kernel, accumulate);
        });
    });
}

/// The gradient of the kernel, summed over every output position, and its layout.
pub(crate) fn backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> (Vec<f32>, KernelLayout) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    debug_assert_eq!(dy.len(), g.positions() * c_out);
    // Measured on the GEMMs of R50x1: the O-HWI product wins below ~1k positions, HWIO above.
    let layout = if g.positions() <= 1024 {
        KernelLayout::Ohwi
    } else {
        KernelLayout::Hwio
    };
    let mut dw = vec![0.0f32; patch * c_out];
    for_blocks(g.positions(), block_rows(g), |start, end| {
        let rows = end - start;
        let grad = Mat::rows(&dy[start * c_out..end * c_out], c_out);
        with_patches(g, x, start, end, |col| {
            let col = Mat::rows(col, patch);
            let accumulate = start > 0;
            match layout {
                KernelLayout::Ohwi => {
                    let dst = Dst::rows(&mut dw, patch);
                    matmul(c_out, patch, rows, dst, grad.t(), col, accumulate)
                }
                KernelLayout::Hwio => {
                    let dst = Dst::rows(&mut dw, c_out);
                    matmul(patch, c_out, rows, dst, col.t(), grad, accumulate)
                }
            }
        });
    });
    (dw, layout)
}

/// `dx` (NHWC, same shape as the input) from `dy` and the kernel `w` (O-HWI, `[Cout, K]`, whose
/// `[Cout, K]` rows `gemm` packs, and whose filter rows make the flipped kernel row copies).
pub(crate) fn backward_input(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    debug_assert_eq!(dx.len(), g.batch * g.height * g.width * g.c_in);
    let kernel = Mat::rows(w, patch);
    if g.is_pointwise() {
        // dx[P, Cin] = dy[P, Cout] @ w.
        let (a, dst) = (Mat::rows(dy, c_out), Dst::rows(dx, patch));
        matmul(g.positions(), patch, c_out, dst, a, kernel, false);
    } else if g.stride == 1 && g.padding < g.kernel {
        let flipped = flip(g, w);
        forward_with(&g.transposed(), dy, Mat::rows(&flipped, g.c_in), dx, false);
    } else {
        // Strided: dcol = dy @ w per block of positions, then col2im.
        dx.fill(0.0);
        for_blocks(g.positions(), block_rows(g), |start, end| {
            with_scratch((end - start) * patch, |col| {
                let a = Mat::rows(&dy[start * c_out..end * c_out], c_out);
                let dst = Dst::rows(col, patch);
                matmul(end - start, patch, c_out, dst, a, kernel, false);
                col2im_add(g, col, start, end, dx);
            });
        });
    }
}

/// The kernel of the input gradient of a stride-1 convolution, `[k * k * Cout, Cin]`:
/// `w'[kh', kw', co, ci] = w[co, k-1-kh', k-1-kw', ci]`, one contiguous row copy per
/// (tap, output channel).
fn flip(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let (k, ci, co) = (g.kernel, g.c_in, g.c_out);
    let taps = k * k;
    let mut out = vec![0.0f32; w.len()];
    out.par_chunks_mut(co * ci)
        .enumerate()
        .for_each(|(tap, dst)| {
            let flipped = taps - 1 - tap;
            for (c_out, row) in dst.chunks_exact_mut(ci).enumerate() {
                let start = c_out * taps * ci + flipped * ci;
                row.copy_from_slice(&w[start..start + ci]);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Direct definition, f64.
    fn naive_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (ho, wo) = (g.out_height(), g.out_width());
        let mut out = vec![0.0f64; g.positions() * g.c_out];
        for n in 0..g.batch {
            for oh in 0..ho {
                for ow in 0..wo {
                    for co in 0..g.c_out {
                        let mut acc = 0.0f64;
                        for kh in 0..g.kernel {
                            for kw in 0..g.kernel {
                                let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                                let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.height as isize
                                    || iw >= g.width as isize
                                {
                                    continue;
                                }
                                for ci in 0..g.c_in {
                                    let xv = x[((n * g.height + ih as usize) * g.width
                                        + iw as usize)
                                        * g.c_in
                                        + ci];
                                    let wv = w[((kh * g.kernel + kw) * g.c_in + ci) * g.c_out + co];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((n * ho + oh) * wo + ow) * g.c_out + co] = acc;
                    }
                }
            }
        }
        out
    }

    fn geometries() -> Vec<ConvGeometry> {
        let g = |batch, height, width, c_in, c_out, kernel, stride, padding| ConvGeometry {
            batch,
            height,
            width,
            c_in,
            c_out,
            kernel,
            stride,
            padding,
        };
        vec![
            g(2, 9, 7, 3, 5, 7, 2, 3),
            g(3, 5, 6, 6, 7, 3, 1, 1),
            g(1, 7, 7, 5, 4, 3, 2, 1),
            g(2, 4, 5, 9, 3, 1, 1, 0),
            g(3, 7, 5, 4, 6, 1, 2, 0),
            g(1, 3, 3, 2, 2, 3, 1, 0),
            // Enough positions for the HWIO weight gradient.
            g(2, 30, 30, 2, 3, 3, 1, 1),
        ]
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        for (i, g) in geometries().into_iter().enumerate() {
            let x = lcg(1 + i as u64, g.batch * g.height * g.width * g.c_in);
            let w = lcg(100 + i as u64, g.patch_len() * g.c_out);
            let dy = lcg(200 + i as u64, g.positions() * g.c_out);
            let mut out = vec![0.0; g.positions() * g.c_out];
            forward(&g, &x, &w, &mut out, false);
            let reference = naive_forward(&g, &x, &w);
            for (a, b) in out.iter().zip(&reference) {
                assert!((*a as f64 - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
            }
            // <dy, conv(x, w)> is bilinear: its gradients are the adjoints, checked through
            // finite differences of the exact (f64) definition.
            // `w` is HWIO; the input gradient takes it O-HWI.
            let (k, c) = (g.patch_len(), g.c_out);
            let transposed = |m: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                (0..rows * cols)
                    .map(|i| m[(i % rows) * cols + i / rows])
                    .collect()
            };
            let (dw, layout) = backward_weight(&g, &x, &dy);
            let dw = match layout {
                KernelLayout::Hwio => dw,
                KernelLayout::Ohwi => transposed(&dw, c, k),
            };
            let mut dx = vec![0.0; x.len()];
            backward_input(&g, &transposed(&w, k, c), &dy, &mut dx);
            let dot = |x: &[f32], w: &[f32]| -> f64 {
                naive_forward(&g, x, w)
                    .iter()
                    .zip(&dy)
                    .map(|(a, b)| a * *b as f64)
                    .sum()
            };
            let base = dot(&x, &w);
            for j in (0..w.len()).step_by(7) {
                let mut w1 = w.clone();
                w1[j] += 1.0;
                let expected = dot(&x, &w1) - base;
                assert!(
                    (dw[j] as f64 - expected).abs() < 1e-3,
                    "{g:?} dw[{j}]: {} vs {expected}",
                    dw[j]
                );
            }
            for j in (0..x.len()).step_by(5) {
                let mut x1 = x.clone();
                x1[j] += 1.0;
                let expected = dot(&x1, &w) - base;
                assert!(
                    (dx[j] as f64 - expected).abs() < 1e-3,
                    "{g:?} dx[{j}]: {} vs {expected}",
                    dx[j]
                );
            }
        }
    }
}
