//! Pillow's bilinear resize of 8-bit RGB images, bit for bit (`Image.resize(size,
//! Image.BILINEAR)`, `libImaging/Resample.c`): what torchvision's `Resize` does to the PIL
//! images of BiT's reference input pipeline, and what a user's own Python preprocessing does
//! before feeding an exported model. Same arithmetic, so the same bytes:
//!
//! - a triangle filter stretched by the scale factor when shrinking (antialiased), its
//!   weights computed in f64 per output pixel, normalized to sum 1, then rounded to signed
//!   fixed point with 22 fractional bits;
//! - a horizontal pass over only the rows the vertical pass reads, rounded and clamped to
//!   `u8`, then a vertical pass over that, rounded and clamped again.

use image::RgbImage;

/// Fractional bits of the fixed-point weights (Pillow's `PRECISION_BITS`, `32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// The weights of one axis: for output pixel `i`, input pixels `first[i]..first[i] + len[i]`
/// with `weights[i * stride..]`.
struct Axis {
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size` pixels to `out_size`.
fn axis(in_size: usize, out_size: usize) -> Axis {
    // The box is (0, in_size) as float32 in Pillow; exact for any image size.
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support, 1, stretched
    let stride = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * stride];
    let mut k = vec![0f64; stride];
    for (i, fixed) in weights.chunks_exact_mut(stride).enumerate() {
        let center = (i as f64 + 0.5) * scale;
        // Pillow multiplies by the reciprocal (and the last bit matters).
        let inv_scale = 1.0 / filter_scale;
        // C's `(int)` truncates toward zero, as `as` does.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(n) {
            let t = ((x + lo) as f64 - center + 0.5) * inv_scale;
            *w = (1.0 - t.abs()).max(0.0);
            total += *w;
        }
        for (w, f) in k.iter().take(n).zip(fixed.iter_mut()) {
            let w = if total != 0.0 { w / total } else { *w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *f = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        first.push(lo);
        len.push(n);
    }
    Axis {
        first,
        len,
        weights,
        stride,
    }
}

/// A fixed-point sum back to a byte: Pillow's `clip8` (255 from `1 << 30` up, 0 at or below
/// 0, else the integer part), written as a clamp so that it vectorizes.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `image` resized to `width` x `height` as Pillow's `Image.resize(..., Image.BILINEAR)`
/// resizes it.
pub(crate) fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return image.clone();
    }
    let src = image.as_raw();
    let vertical = axis(in_h, out_h);

    // Horizontal pass, over the rows the vertical pass reads.
    let (rows, row_offset, horizontal_out): (std::borrow::Cow<'_, [u8]>, usize, usize) =
        if out_w != in_w {
            let horizontal = axis(in_w, out_w);
            let first_row = vertical.first[0];
            let last_row = vertical.first[out_h - 1] + vertical.len[out_h - 1];
            // The horizontal pass is the vertical one on the transposed rows (same sums, but
            // over contiguous memory).
            let used = &src[first_row * in_w * 3..last_row * in_w * 3];
            let columns = transpose_pixels(used, in_w, last_row - first_row);
            let width = (last_row - first_row) * 3;
            let mut resized_columns = vec![0u8; out_w * width];
            vertical_pass(&horizontal, 0, &columns, width, width, &mut resized_columns);
            let tmp = transpose_pixels(&resized_columns, last_row - first_row, out_w);
            (tmp.into(), first_row, out_w)
        } else {
            (src.as_slice().into(), 0, in_w)
        };
    if out_h == in_h {
        return RgbImage::from_raw(width, height, rows.into_owned()).expect("a whole image");
    }

    // Vertical pass.
    let mut out = vec![0u8; out_h * out_w * 3];
    vertical_pass(
        &vertical,
        row_offset,
        &rows,
        horizontal_out * 3,
        out_w * 3,
        &mut out,
    );
    RgbImage::from_raw(width, height, out).expect("a whole image")
}

/// The `h` x `w` image of the `w` x `h` RGB image `src` (rows of `w` pixels): pixel `(x, y)`
/// moves to `(y, x)`. In tiles, so that reads and writes both stay in cache.
fn transpose_pixels(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    const TILE: usize = 16;
    let mut out = vec![0u8; src.len()];
    for y0 in (0..h).step_by(TILE) {
        for x0 in (0..w).step_by(TILE) {
            for y in y0..(y0 + TILE).min(h) {
                for x in x0..(x0 + TILE).min(w) {
                    let (from, to) = ((y * w + x) * 3, (x * h + y) * 3);
                    out[to..to + 3].copy_from_slice(&src[from..from + 3]);
                }
            }
        }
    }
    out
}

/// Output row `y` = Σ_j weight_j · input row `first[y] - row_offset + j`, for every row of
/// `out` (rows of `width` bytes; input rows `stride` apart). Tap by tap over whole rows, so the
/// inner loop is contiguous and vectorizes (with AVX2 where the CPU has it: the build targets
/// baseline x86-64). Integer sums, so the order does not change a bit.
fn vertical_pass(
    vertical: &Axis,
    row_offset: usize,
    rows: &[u8],
    stride: usize,
    width: usize,
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { vertical_pass_avx2(vertical, row_offset, rows, stride, width, out) };
        return;
    }
    vertical_pass_body(vertical, row_offset, rows, stride, width, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn vertical_pass_avx2(
    vertical: &Axis,
    row_offset: usize,
    rows: &[u8],
    stride: usize,
    width: usize,
    out: &mut [u8],
) {
    vertical_pass_body(vertical, row_offset, rows, stride, width, out);
}

#[inline(always)]
fn vertical_pass_body(
    vertical: &Axis,
    row_offset: usize,
    rows: &[u8],
    stride: usize,
    width: usize,
    out: &mut [u8],
) {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut sum = vec![0i32; width];
    for (y, dst) in out.chunks_exact_mut(width).enumerate() {
        let (lo, n) = (vertical.first[y] - row_offset, vertical.len[y]);
        sum.fill(half);
        for (j, &w) in vertical.weights[y * vertical.stride..][..n]
            .iter()
            .enumerate()
        {
            let row = &rows[(lo + j) * stride..][..width];
            for (s, &p) in sum.iter_mut().zip(row) {
                *s += i32::from(p) * w;
            }
        }
        for (d, &s) in dst.iter_mut().zip(&sum) {
            *d = clip8(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deterministic test image of `scripts/pillow_resize.py`.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = |c: u32| ((x * 37 + y * 91 + c * 53 + (x * y) % 29 + (x ^ y) * 7) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        })
    }

    fn md5(bytes: &[u8]) -> String {
        use md5::Digest;
        format!("{:x}", md5::Md5::digest(bytes))
    }

    /// MD5 of Pillow 13's `Image.resize((W, H), Image.BILINEAR)` of `pattern(w, h)`, from
    /// `scripts/pillow_resize.py`: upscaling (Fashion-MNIST's 28 -> 32), downscaling by
    /// integer and fractional factors (antialiased), one axis only, thin images.
    #[test]
    fn resizes_exactly_as_pillow() {
        // (input width x height, output width x height, MD5 of Pillow's output)
        type Case = ((u32, u32), (u32, u32), &'static str);
        let cases: &[Case] = &[
            ((28, 28), (32, 32), "b35c9a5fdeeffc8ca7a18465ca56e278"),
            ((100, 75), (32, 32), "e8d3add02f2e363bd07e834e41d6fda5"),
            ((500, 375), (224, 224), "86f6273413b69a4be54a5f9b7867f287"),
            ((64, 64), (21, 21), "090c929cdd7f75e25695382c27047972"),
            ((7, 9), (64, 48), "e55547f1bba3b3d713e8f47e40c14578"),
            ((40, 30), (40, 17), "a29586431ecf52c664f60e8f480d1c25"),
            ((33, 50), (12, 50), "b5d9fc76f95e91c840f574abbf222414"),
            ((1, 1), (5, 3), "f5debb7212b34dadad2b6e6b817bdcf1"),
        ];
        for &((w, h), (ow, oh), want) in cases {
            let got = resize_bilinear(&pattern(w, h), ow, oh);
            assert_eq!(
                md5(got.as_raw()),
                want,
                "{w}x{h} -> {ow}x{oh}: first bytes {:?}",
                &got.as_raw()[..12.min(got.as_raw().len())]
            );
        }
    }
}
