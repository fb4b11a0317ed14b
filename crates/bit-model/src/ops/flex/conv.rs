//! Convolution forward and backward on channels-last (NHWC) data, as GEMMs.
//!
//! With the activations channels-last, a convolution over the whole batch is one matrix product:
//! `out[P, Cout] = col[P, K] @ w[K, Cout]`, where `P = n * ho * wo` output positions and `K =
//! kh * kw * cin`, ordered (kh, kw, cin) so that each im2col row is a few contiguous copies of
//! channel vectors, and a 1x1 stride-1 convolution needs no im2col at all (`col` is the input).
//! The gradients are the two other products of the same three matrices:
//!
//! - weight: `dw[K, Cout] = col^T @ dy`, accumulated over blocks of positions, one partial sum
//!   per thread;
//! - input, stride 1: a convolution of `dy` with the flipped, transposed kernel (so it runs
//!   through the forward path, parallel over positions, with no scatter);
//! - input, stride 2: `dcol = dy @ w^T`, then col2im (scatter-add), parallel over images.

use rayon::prelude::*;

use super::gemm::{Dst, Mat, SendPtr, matmul, with_scratch};

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
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub(crate) fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output positions of the whole batch.
    pub(crate) fn positions(&self) -> usize {
        self.batch * self.out_height() * self.out_width()
    }

    /// Length of one im2col row.
    pub(crate) fn patch_len(&self) -> usize {
        self.kernel * self.kernel * self.c_in
    }

    fn is_pointwise(&self) -> bool {
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

/// Rows of im2col per block: enough to amortise packing the kernel inside the GEMM, small enough
/// that a block stays in the last-level cache.
fn block_rows(g: &ConvGeometry) -> usize {
    const BLOCK_FLOATS: usize = 1 << 19;
    (BLOCK_FLOATS / g.patch_len().max(1)).clamp(32, 2048)
}

/// Splits `0..total` into contiguous ranges of about `block` items, at least one per thread when
/// there is enough work, and runs `f` on each range in parallel.
fn par_ranges(total: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    let block = block.min(total.div_ceil(threads)).max(1);
    let tasks = total.div_ceil(block);
    (0..tasks).into_par_iter().for_each(|t| {
        let start = t * block;
        f(start, (start + block).min(total));
    });
}

/// Fills `col` (rows of `patch_len`) with the patches of output positions `start..end`.
fn im2col(g: &ConvGeometry, x: &[f32], start: usize, end: usize, col: &mut [f32]) {
    let (ho, wo) = (g.out_height(), g.out_width());
    let (h, w, c, k) = (g.height, g.width, g.c_in, g.kernel);
    let patch = g.patch_len();
    for (row, p) in col.chunks_exact_mut(patch).zip(start..end) {
        let n = p / (ho * wo);
        let oh = (p / wo) % ho;
        let ow = p % wo;
        let iw0 = (ow * g.stride) as isize - g.padding as isize;
        let image = &x[n * h * w * c..(n + 1) * h * w * c];
        for (kh, dst) in row.chunks_exact_mut(k * c).enumerate() {
            let ih = (oh * g.stride + kh) as isize - g.padding as isize;
            if ih < 0 || ih >= h as isize {
                dst.fill(0.0);
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
                        d.fill(0.0);
                    } else {
                        d.copy_from_slice(&line[iw as usize * c..(iw as usize + 1) * c]);
                    }
                }
            }
        }
    }
}

/// Adds the patches in `col` (positions `start..end`, all of image `n`) back into the image
/// gradient `dx_image`: the adjoint of [`im2col`].
fn col2im_add(g: &ConvGeometry, col: &[f32], start: usize, end: usize, dx_image: &mut [f32]) {
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

/// `out[P, Cout] = conv(x, w)` (or `out += conv(x, w)` when `accumulate`) with `x` NHWC and `w`
/// as `[K, Cout]` (HWIO).
pub(crate) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], out: &mut [f32], accumulate: bool) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    debug_assert_eq!(x.len(), g.batch * g.height * g.width * g.c_in);
    debug_assert_eq!(w.len(), patch * c_out);
    debug_assert_eq!(out.len(), g.positions() * c_out);
    let dst = SendPtr::new(out);
    let kernel = Mat::rows(w, c_out);
    par_ranges(g.positions(), block_rows(g), |start, end| {
        let rows = end - start;
        let dst = unsafe { dst.slice(start * c_out, rows * c_out) };
        if g.is_pointwise() {
            let a = Mat::rows(&x[start * patch..end * patch], patch);
            unsafe {
                matmul(
                    rows,
                    c_out,
                    patch,
                    Dst::rows(dst, c_out),
                    a,
                    kernel,
                    accumulate,
                )
            };
        } else {
            with_scratch(rows * patch, |col| {
                im2col(g, x, start, end, col);
                let a = Mat::rows(col, patch);
                unsafe {
                    matmul(
                        rows,
                        c_out,
                        patch,
                        Dst::rows(dst, c_out),
                        a,
                        kernel,
                        accumulate,
                    )
                };
            });
        }
    });
}

/// `dw[K, Cout] = col(x)^T @ dy`, summed over every output position.
pub(crate) fn backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (patch, c_out, positions) = (g.patch_len(), g.c_out, g.positions());
    debug_assert_eq!(dy.len(), positions * c_out);
    if positions == 0 {
        return vec![0.0; patch * c_out];
    }
    let threads = rayon::current_num_threads().max(1);
    let share = positions.div_ceil(threads).max(1);
    let block = block_rows(g);
    // One partial sum per thread over a contiguous share of the positions, then one reduction.
    let mut partials: Vec<Vec<f32>> = (0..positions.div_ceil(share))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0.0f32; patch * c_out];
            let (first, last) = (t * share, ((t + 1) * share).min(positions));
            let mut start = first;
            while start < last {
                let end = (start + block).min(last);
                let rows = end - start;
                let grad = Mat::rows(&dy[start * c_out..end * c_out], c_out);
                let accumulate = start > first;
                if g.is_pointwise() {
                    let a = Mat::rows(&x[start * patch..end * patch], patch).t();
                    unsafe {
                        matmul(
                            patch,
                            c_out,
                            rows,
                            Dst::rows(&mut acc, c_out),
                            a,
                            grad,
                            accumulate,
                        )
                    };
                } else {
                    with_scratch(rows * patch, |col| {
                        im2col(g, x, start, end, col);
                        let a = Mat::rows(col, patch).t();
                        unsafe {
                            matmul(
                                patch,
                                c_out,
                                rows,
                                Dst::rows(&mut acc, c_out),
                                a,
                                grad,
                                accumulate,
                            )
                        };
                    });
                }
                start = end;
            }
            acc
        })
        .collect();
    let mut dw = partials.swap_remove(0);
    add_all(&mut dw, &partials);
    dw
}

/// `acc += sum of partials`, in parallel over the elements.
fn add_all(acc: &mut [f32], partials: &[Vec<f32>]) {
    const CHUNK: usize = 1 << 14;
    acc.par_chunks_mut(CHUNK).enumerate().for_each(|(i, d)| {
        let range = i * CHUNK..i * CHUNK + d.len();
        for p in partials {
            for (d, s) in d.iter_mut().zip(&p[range.clone()]) {
                *d += s;
            }
        }
    });
}

/// `dx` (NHWC, same shape as the input) from `dy` and the kernel `w` (`[K, Cout]`, HWIO).
pub(crate) fn backward_input(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    debug_assert_eq!(dx.len(), g.batch * g.height * g.width * g.c_in);
    if g.is_pointwise() {
        // dx[P, Cin] = dy[P, Cout] @ w^T.
        let kernel_t = Mat::rows(w, c_out).t();
        let dst = SendPtr::new(dx);
        par_ranges(g.positions(), 2048, |start, end| {
            let rows = end - start;
            let dst = unsafe { dst.slice(start * patch, rows * patch) };
            let a = Mat::rows(&dy[start * c_out..end * c_out], c_out);
            unsafe {
                matmul(
                    rows,
                    patch,
                    c_out,
                    Dst::rows(dst, patch),
                    a,
                    kernel_t,
                    false,
                )
            };
        });
    } else if g.stride == 1 && g.padding < g.kernel {
        forward(&g.transposed(), dy, &flip_transpose(g, w), dx, false);
    } else {
        backward_input_scatter(g, w, dy, dx);
    }
}

/// The kernel of the input gradient of a stride-1 convolution: `w'[kh', kw', co, ci] =
/// w[k-1-kh', k-1-kw', ci, co]`, as `[k * k * Cout, Cin]`.
fn flip_transpose(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let (k, ci, co) = (g.kernel, g.c_in, g.c_out);
    let mut out = vec![0.0f32; w.len()];
    out.par_chunks_mut(co * ci)
        .enumerate()
        .for_each(|(tap, dst)| {
            let (kh, kw) = (tap / k, tap % k);
            let src_tap = (k - 1 - kh) * k + (k - 1 - kw);
            let src = &w[src_tap * ci * co..(src_tap + 1) * ci * co];
            for (c_out, row) in dst.chunks_exact_mut(ci).enumerate() {
                for (c_in, d) in row.iter_mut().enumerate() {
                    *d = src[c_in * co + c_out];
                }
            }
        });
    out
}

/// Input gradient of a strided convolution: `dcol = dy @ w^T` per block of positions, then
/// col2im. Each task owns whole images, so the scatter-adds never race.
fn backward_input_scatter(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (patch, c_out) = (g.patch_len(), g.c_out);
    let per_image_out = g.out_height() * g.out_width();
    let per_image_in = g.height * g.width * g.c_in;
    let kernel_t = Mat::rows(w, c_out).t();
    let block = block_rows(g);
    dx.par_chunks_mut(per_image_in)
        .enumerate()
        .for_each(|(n, dx_image)| {
            dx_image.fill(0.0);
            let (first, last) = (n * per_image_out, (n + 1) * per_image_out);
            let mut start = first;
            while start < last {
                let end = (start + block).min(last);
                let rows = end - start;
                with_scratch(rows * patch, |col| {
                    let a = Mat::rows(&dy[start * c_out..end * c_out], c_out);
                    unsafe {
                        matmul(
                            rows,
                            patch,
                            c_out,
                            Dst::rows(col, patch),
                            a,
                            kernel_t,
                            false,
                        )
                    };
                    col2im_add(g, col, start, end, dx_image);
                });
                start = end;
            }
        });
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
            let dw = backward_weight(&g, &x, &dy);
            let mut dx = vec![0.0; x.len()];
            backward_input(&g, &w, &dy, &mut dx);
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
