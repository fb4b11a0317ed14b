//! int8 convolutions for CPU inference ([`Precision::Int8`](crate::Precision::Int8)).
//!
//! A convolution `out[P, Cout] = col[P, K] @ w[K, Cout]` (see `conv`) computed on 8-bit
//! integers, with 32-bit accumulators:
//!
//! - the **kernel** is the standardized one, quantized once, symmetrically per output filter
//!   (`w ≈ scale[j] * q[k, j]`, `q` in `-127..=127`), and packed in panels of 32 filters whose
//!   bytes are grouped four consecutive `k` at a time, the operand layout of AVX-512 VNNI's
//!   `vpdpbusd` (u8 × i8, four products summed into each 32-bit lane);
//! - the **activations** entering the convolution are quantized asymmetrically to `u8`, per
//!   group: `x ≈ s * (a - z)` with `s = (max - min) / 255` over the group (`min` taken ≤ 0 and
//!   `max` ≥ 0, so that 0 is exact: the zero padding, and BiT's ReLU outputs, whose `z` is 0).
//!   A group is one position's channels for a pointwise convolution (its rows are those
//!   vectors), the whole image for a wider kernel (whose patches mix positions). Never the
//!   batch: an image's result does not depend on the others in its batch;
//! - then `out[p, j] = s_p * scale[j] * (Σ_k a[p, k] q[k, j] - z_p Σ_k q[k, j])`.
//!
//! With VNNI each instruction does 64 multiply-adds where an f32 FMA does 16, and the im2col
//! matrix is a quarter of f32's size. Without VNNI the same integer arithmetic runs in
//! portable code (bit-identical accumulators, much slower than f32).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::conv::{ConvGeometry, patch_row};
use super::gemm::with_buffer;
use super::standardize::standardize;

/// Rows (output positions) of one micro-tile.
const MR: usize = 8;
/// Columns (filters) of one packed panel and one micro-tile: two 16-lane vectors.
const NR: usize = 32;
/// Bytes of the activation matrix per block of positions: bounds the im2col buffer (16 MiB).
const BLOCK_BYTES: usize = 1 << 24;

/// Whether this CPU has the int8 dot-product instructions the fast kernel uses (AVX-512 VNNI).
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A standardized kernel quantized to int8 and packed for the GEMM (see the module docs).
/// Cheap to clone (shared).
#[derive(Clone)]
pub(crate) struct Int8Kernel(Arc<Packed>);

struct Packed {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    /// `kernel² · c_in` rounded up to a multiple of 4 (the padding `k` have zero weights).
    k_pad: usize,
    /// `[c_out / NR][k_pad / 4][NR][4]`, the last panel zero-filled past `c_out`.
    panels: Vec<i8>,
    /// Per filter: the scale of its int8 values.
    scales: Vec<f32>,
    /// Per filter: the sum of its int8 values (the zero-point correction).
    sums: Vec<i32>,
}

impl std::fmt::Debug for Int8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.0;
        write!(
            f,
            "Int8Kernel([{}, {}, {k}, {k}])",
            p.c_out,
            p.c_in,
            k = p.kernel
        )
    }
}

impl Int8Kernel {
    /// Standardizes the OIHW kernel `raw` (`[c_out, c_in, k, k]`, variance epsilon `eps`),
    /// quantizes each filter and packs the result.
    pub(crate) fn new(raw: &[f32], shape: [usize; 4], eps: f64) -> Self {
        let [c_out, c_in, kh, kw] = shape;
        assert_eq!(kh, kw, "int8 convolutions take square kernels");
        let (ohwi, _) = standardize(raw, shape, eps);
        let k_len = kh * kw * c_in;
        let k_pad = k_len.next_multiple_of(4);
        let panel_count = c_out.div_ceil(NR);
        let mut panels = vec![0i8; panel_count * k_pad * NR];
        let mut scales = Vec::with_capacity(c_out);
        let mut sums = Vec::with_capacity(c_out);
        for (j, filter) in ohwi.chunks_exact(k_len.max(1)).enumerate().take(c_out) {
            let peak = filter.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
            let (panel, lane) = (j / NR, j % NR);
            let base = panel * k_pad * NR;
            let mut sum = 0i32;
            for (k, &v) in filter.iter().enumerate() {
                let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                panels[base + (k / 4) * NR * 4 + lane * 4 + k % 4] = q;
                sum += i32::from(q);
            }
            scales.push(scale);
            sums.push(sum);
        }
        Self(Arc::new(Packed {
            c_in,
            c_out,
            kernel: kh,
            k_pad,
            panels,
            scales,
            sums,
        }))
    }

    /// The kernel's shape, `[c_out, c_in, k, k]`.
    pub(crate) fn shape(&self) -> [usize; 4] {
        let p = &self.0;
        [p.c_out, p.c_in, p.kernel, p.kernel]
    }

    /// `out[P, Cout] (+)= conv(x, w)` for the NHWC `x` of geometry `g` (`accumulate` adds
    /// into `out`, the residual).
    pub(crate) fn forward(&self, g: &ConvGeometry, x: &[f32], out: &mut [f32], accumulate: bool) {
        self.forward_with(g, x, out, accumulate, has_vnni());
    }

    fn forward_with(
        &self,
        g: &ConvGeometry,
        x: &[f32],
        out: &mut [f32],
        accumulate: bool,
        vnni: bool,
    ) {
        let p = &*self.0;
        debug_assert_eq!(g.c_in, p.c_in);
        debug_assert_eq!(x.len(), g.batch * g.height * g.width * g.c_in);
        debug_assert_eq!(out.len(), g.positions() * p.c_out);
        // A pointwise convolution multiplies each position's channels alone: they get their own
        // scale (finer than the image's), and the GEMM reads them in place (the tail makes the
        // last micro-tile whole). Patches of a wider kernel mix positions, which then share
        // their image's.
        let direct = g.is_pointwise() && p.k_pad == g.c_in;
        let group = if direct {
            g.c_in
        } else {
            g.height * g.width * g.c_in
        };
        let images = quantize(x, group.max(1), MR * p.k_pad);
        let rows_per_group = if direct {
            1
        } else {
            g.out_height() * g.out_width()
        };
        let block = (BLOCK_BYTES / p.k_pad).max(4 * MR) / MR * MR;
        let mut start = 0;
        while start < g.positions() {
            let end = (start + block).min(g.positions());
            let rows = (end - start).next_multiple_of(MR);
            let dst = &mut out[start * p.c_out..end * p.c_out];
            let row_quant = |row: usize| &images.params[(start + row) / rows_per_group];
            if direct {
                let col = &images.data[start * p.k_pad..(start + rows) * p.k_pad];
                gemm(p, col, end - start, dst, &row_quant, accumulate, vnni);
            } else {
                with_buffer(&COL, rows * p.k_pad, |col| {
                    im2col_u8(g, p.k_pad, &images, start, end, col);
                    gemm(p, col, end - start, dst, &row_quant, accumulate, vnni);
                });
            }
            start = end;
        }
    }
}

thread_local! {
    /// This thread's im2col buffer, kept between calls (its pages are faulted in once). Its
    /// contents need no clearing: the GEMM never reads the padding `k` of a row against a
    /// nonzero weight, and rows past the last position only make results that are dropped.
    static COL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The scale and zero point of a group of activations: an image, or one position's channels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ActQuant {
    scale: f32,
    zero: u8,
}

impl ActQuant {
    /// `dst = quantize(src)`, rounded half up by the truncating cast, which also saturates to
    /// 0..=255 (the build targets baseline x86-64, where `round` and `mul_add` are library
    /// calls).
    fn apply(&self, src: &[f32], dst: &mut [u8]) {
        let (inv, offset) = (1.0 / self.scale, f32::from(self.zero) + 0.5);
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v * inv + offset) as u8;
        }
    }

    /// The parameters covering `[min, max]` widened to include 0 (which stays exact).
    fn covering(min: f32, max: f32) -> Self {
        let (min, max) = (min.min(0.0), max.max(0.0));
        let range = max - min;
        if !(range > 0.0 && range.is_finite()) {
            return Self {
                scale: 1.0,
                zero: 0,
            };
        }
        let scale = range / 255.0;
        Self {
            scale,
            zero: (-min / scale).round().clamp(0.0, 255.0) as u8,
        }
    }
}

/// Activations as `u8`, group by group, with each group's parameters.
struct Quantized {
    data: Vec<u8>,
    params: Vec<ActQuant>,
}

/// Values per task when scanning or quantizing.
const CHUNK: usize = 1 << 14;

/// `x` quantized in groups of `group` values (whole images, or one position's channels), each
/// with its own parameters, followed by `tail` zero bytes.
fn quantize(x: &[f32], group: usize, tail: usize) -> Quantized {
    let mut data = vec![0u8; x.len() + tail];
    let params = if group >= CHUNK {
        // Whole images: each scanned and quantized in parallel chunks.
        let mut params = Vec::with_capacity(x.len() / group);
        for (dst, src) in data.chunks_mut(group).zip(x.chunks_exact(group)) {
            let (min, max) = src.par_chunks(CHUNK).map(min_max).reduce(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |a, b| (a.0.min(b.0), a.1.max(b.1)),
            );
            let q = ActQuant::covering(min, max);
            dst.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| q.apply(s, d));
            params.push(q);
        }
        params
    } else {
        // Small groups (one position's channels): many per task.
        let per_task = (CHUNK / group.max(1)).max(1) * group;
        data[..x.len()]
            .par_chunks_mut(per_task)
            .zip(x.par_chunks(per_task))
            .flat_map_iter(|(dst, src)| {
                dst.chunks_mut(group)
                    .zip(src.chunks(group))
                    .map(|(d, s)| {
                        let (min, max) = min_max(s);
                        let q = ActQuant::covering(min, max);
                        q.apply(s, d);
                        q
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    Quantized { data, params }
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Rows `start..end` of the `u8` im2col matrix (rows of `k_pad`, (kh, kw, cin) order as in
/// `conv`), in parallel over rows. The zero padding is each image's zero point; the `k` past
/// `kernel² · c_in` are left as they are (their weights are 0).
fn im2col_u8(
    g: &ConvGeometry,
    k_pad: usize,
    images: &Quantized,
    start: usize,
    end: usize,
    col: &mut [u8],
) {
    const ROWS: usize = 64;
    col[..(end - start) * k_pad]
        .par_chunks_mut(ROWS * k_pad)
        .enumerate()
        .for_each(|(task, rows)| {
            let first = start + task * ROWS;
            for (row, p) in rows.chunks_exact_mut(k_pad).zip(first..end) {
                im2col_row(g, images, p, row);
            }
        });
}

/// Row `p` of the `u8` im2col matrix: its image's patch, padded with the image's zero point.
fn im2col_row(g: &ConvGeometry, images: &Quantized, p: usize, row: &mut [u8]) {
    let n = p / (g.out_height() * g.out_width());
    let image_len = g.height * g.width * g.c_in;
    let image = &images.data[n * image_len..(n + 1) * image_len];
    patch_row(
        g,
        image,
        p,
        images.params[n].zero,
        &mut row[..g.patch_len()],
    );
}

/// Where [`gemm`]'s tasks write: each owns a rectangle of rows and columns of `dst`, which the
/// task split keeps disjoint.
struct Dst {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write through the pointer only at the disjoint offsets of their own rectangles
// (see `gemm`), while `gemm` holds the `&mut` the pointer came from.
unsafe impl Sync for Dst {}

impl Dst {
    /// Columns `cols` of row `row` (rows `c_out` apart).
    ///
    /// # Safety
    ///
    /// No other task reads or writes those elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_part(&self, row: usize, c_out: usize, cols: &Range<usize>) -> &mut [f32] {
        let start = row * c_out + cols.start;
        assert!(cols.end <= c_out && start + cols.len() <= self.len);
        // SAFETY: in bounds (above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), cols.len()) }
    }
}

/// `dst[r, j] (+)= s_r * scale[j] * (col[r] · q[:, j] - z_r * sums[j])` for the `rows` rows
/// of `col` (which has them rounded up to a multiple of [`MR`]), in parallel over rectangles
/// of rows and filters: whole rows when there are enough of them for every thread, narrower
/// ones when there are few positions (a small batch in the last stage).
fn gemm<'a>(
    p: &Packed,
    col: &[u8],
    rows: usize,
    dst: &mut [f32],
    row_quant: &(dyn Fn(usize) -> &'a ActQuant + Sync),
    accumulate: bool,
    vnni: bool,
) {
    const ROWS_PER_TASK: usize = 8 * MR;
    let c_out = p.c_out;
    assert!(dst.len() >= rows * c_out && col.len() >= rows.next_multiple_of(MR) * p.k_pad);
    let panels = c_out.div_ceil(NR);
    let row_tasks = rows.div_ceil(ROWS_PER_TASK);
    let wanted = 4 * rayon::current_num_threads();
    let panel_groups = wanted.div_ceil(row_tasks).clamp(1, panels);
    let panels_per_task = panels.div_ceil(panel_groups);
    let out = Dst {
        ptr: dst.as_mut_ptr(),
        len: dst.len(),
    };
    // Row by row when the packed kernel stays in cache (the output, and the residual it adds
    // to, then stream through in order), else panel by panel (each panel read once per task).
    let rows_first = p.panels.len() <= 1 << 20;
    (0..row_tasks * panel_groups)
        .into_par_iter()
        .for_each(|task| {
            let (row_task, group) = (task / panel_groups, task % panel_groups);
            let first_row = row_task * ROWS_PER_TASK;
            let rows = first_row..(first_row + ROWS_PER_TASK).min(rows);
            let first_panel = group * panels_per_task;
            let panels = first_panel..(first_panel + panels_per_task).min(panels);
            let tile = |r0: usize, panel: usize| {
                let b = &p.panels[panel * p.k_pad * NR..(panel + 1) * p.k_pad * NR];
                let mut acc = [[0i32; NR]; MR];
                tile_product(
                    &col[r0 * p.k_pad..(r0 + MR) * p.k_pad],
                    p.k_pad,
                    b,
                    &mut acc,
                    vnni,
                );
                let cols = panel * NR..((panel + 1) * NR).min(c_out);
                let (sums, scales) = (&p.sums[cols.clone()], &p.scales[cols.clone()]);
                for (r, acc) in (r0..(r0 + MR).min(rows.end)).zip(&acc) {
                    let q = row_quant(r);
                    let zero = i32::from(q.zero);
                    // SAFETY: (row r, filters `cols`) belongs to this task's rectangle only.
                    let dst = unsafe { out.row_part(r, c_out, &cols) };
                    let values = acc.iter().zip(sums).zip(scales);
                    if accumulate {
                        for (d, ((&a, &sum), &scale)) in dst.iter_mut().zip(values) {
                            *d += (a - zero * sum) as f32 * (q.scale * scale);
                        }
                    } else {
                        for (d, ((&a, &sum), &scale)) in dst.iter_mut().zip(values) {
                            *d = (a - zero * sum) as f32 * (q.scale * scale);
                        }
                    }
                }
            };
            if rows_first {
                for r0 in rows.clone().step_by(MR) {
                    panels.clone().for_each(|panel| tile(r0, panel));
                }
            } else {
                for panel in panels {
                    rows.clone().step_by(MR).for_each(|r0| tile(r0, panel));
                }
            }
        });
}

/// `acc[r][l] = Σ_k a[r, k] * b[k, l]` for one micro-tile: `a` is [`MR`] rows of `k_pad`
/// bytes, `b` one packed panel.
fn tile_product(a: &[u8], k_pad: usize, b: &[i8], acc: &mut [[i32; NR]; MR], vnni: bool) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        // SAFETY: `vnni` is only true when `has_vnni()` found AVX-512F and VNNI on this CPU.
        unsafe { tile_product_vnni(a, k_pad, b, acc) };
        return;
    }
    let _ = vnni;
    tile_product_portable(a, k_pad, b, acc);
}

fn tile_product_portable(a: &[u8], k_pad: usize, b: &[i8], acc: &mut [[i32; NR]; MR]) {
    for (r, acc) in acc.iter_mut().enumerate() {
        let row = &a[r * k_pad..(r + 1) * k_pad];
        *acc = [0; NR];
        for (quad, panel) in row.chunks_exact(4).zip(b.chunks_exact(4 * NR)) {
            for (acc, w) in acc.iter_mut().zip(panel.chunks_exact(4)) {
                *acc += quad
                    .iter()
                    .zip(w)
                    .map(|(&a, &w)| i32::from(a) * i32::from(w))
                    .sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn tile_product_vnni(a: &[u8], k_pad: usize, b: &[i8], acc: &mut [[i32; NR]; MR]) {
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };
    assert!(a.len() >= MR * k_pad && b.len() >= k_pad * NR && k_pad.is_multiple_of(4));
    let mut c: [[__m512i; 2]; MR] = [[_mm512_setzero_si512(); 2]; MR];
    for quad in 0..k_pad / 4 {
        // SAFETY: the assert above keeps `quad * 4 * NR + 64 + 64 <= b.len()` and
        // `r * k_pad + quad * 4 + 4 <= a.len()`; unaligned loads are allowed.
        unsafe {
            let w = b.as_ptr().add(quad * 4 * NR);
            let w0 = _mm512_loadu_si512(w.cast());
            let w1 = _mm512_loadu_si512(w.add(64).cast());
            for (r, c) in c.iter_mut().enumerate() {
                let bytes = a.as_ptr().add(r * k_pad + quad * 4).cast::<i32>();
                let quad_of_row = _mm512_set1_epi32(bytes.read_unaligned());
                c[0] = _mm512_dpbusd_epi32(c[0], quad_of_row, w0);
                c[1] = _mm512_dpbusd_epi32(c[1], quad_of_row, w1);
            }
        }
    }
    for (acc, c) in acc.iter_mut().zip(&c) {
        // SAFETY: each row of `acc` is 32 i32s, two 64-byte stores.
        unsafe {
            _mm512_storeu_si512(acc.as_mut_ptr().cast(), c[0]);
            _mm512_storeu_si512(acc.as_mut_ptr().add(16).cast(), c[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::flex::conv;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn geometry(kernel: usize, stride: usize, c_in: usize, c_out: usize) -> ConvGeometry {
        ConvGeometry {
            batch: 3,
            height: 9,
            width: 7,
            c_in,
            c_out,
            kernel,
            stride,
            padding: kernel / 2,
        }
    }

    /// The int8 result against the f32 convolution of the same standardized kernel.
    fn compare(g: ConvGeometry, relu: bool) -> (Vec<f32>, Vec<f32>) {
        let shape = [g.c_out, g.c_in, g.kernel, g.kernel];
        let raw = values(shape.iter().product(), 7);
        let mut x = values(g.batch * g.height * g.width * g.c_in, 11);
        if relu {
            x.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let kernel = Int8Kernel::new(&raw, shape, 1e-10);
        let mut int8 = vec![0.0; g.positions() * g.c_out];
        kernel.forward(&g, &x, &mut int8, false);
        let (ohwi, _) = standardize(&raw, shape, 1e-10);
        let hwio = super::super::standardize::transpose(&ohwi, g.c_out, g.patch_len());
        let mut f32_out = vec![0.0; int8.len()];
        conv::forward(&g, &x, &hwio, &mut f32_out, false);
        (int8, f32_out)
    }

    fn max_abs(v: &[f32]) -> f32 {
        v.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    #[test]
    fn int8_convolutions_stay_within_their_quantization_error() {
        for (kernel, stride, c_in, c_out, relu) in [
            (1, 1, 64, 96, true),
            (3, 1, 16, 40, true),
            (3, 2, 24, 64, false),
            (7, 2, 3, 33, false),
        ] {
            let (int8, f32_out) = compare(geometry(kernel, stride, c_in, c_out), relu);
            let err = int8
                .iter()
                .zip(&f32_out)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // Half a step of each operand per product, summed over the fan-in, is the bound
            // far from reached; a percent of the output's range is already a broken kernel.
            assert!(
                err < 0.01 * max_abs(&f32_out),
                "k{kernel} s{stride}: error {err} of range {}",
                max_abs(&f32_out)
            );
        }
    }

    #[test]
    fn the_vnni_kernel_gives_the_portable_kernels_accumulators() {
        if !has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let g = geometry(3, 1, 20, 70);
        let shape = [g.c_out, g.c_in, 3, 3];
        let kernel = Int8Kernel::new(&values(shape.iter().product(), 3), shape, 1e-10);
        let x = values(g.batch * g.height * g.width * g.c_in, 5);
        let mut fast = vec![0.0; g.positions() * g.c_out];
        let mut portable = fast.clone();
        kernel.forward_with(&g, &x, &mut fast, false, true);
        kernel.forward_with(&g, &x, &mut portable, false, false);
        assert_eq!(fast, portable);
    }

    #[test]
    fn each_image_is_quantized_alone_and_zero_stays_exact() {
        let q = ActQuant::covering(0.0, 2.55);
        assert_eq!(q.zero, 0);
        assert!((q.scale - 0.01).abs() < 1e-7);
        // A signed range: -1 sits `zero` steps below 0, within a step.
        let q = ActQuant::covering(-1.0, 1.0);
        assert!((f32::from(q.zero) * q.scale - 1.0).abs() <= q.scale);
        // A constant image has no range: any scale represents it, and 0 must stay 0.
        assert_eq!(ActQuant::covering(0.0, 0.0).zero, 0);
        // Batching never changes an image's result.
        let g = geometry(1, 1, 8, 16);
        let shape = [16, 8, 1, 1];
        let kernel = Int8Kernel::new(&values(128, 1), shape, 1e-10);
        let x = values(g.batch * g.height * g.width * 8, 2);
        let mut batch = vec![0.0; g.positions() * 16];
        kernel.forward(&g, &x, &mut batch, false);
        let one = ConvGeometry { batch: 1, ..g };
        let mut alone = vec![0.0; one.positions() * 16];
        let image = g.height * g.width * 8;
        kernel.forward(&one, &x[image..2 * image], &mut alone, false);
        assert_eq!(alone, batch[one.positions() * 16..2 * one.positions() * 16]);
    }
}
