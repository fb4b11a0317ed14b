//! Max pooling over a zero-padded input, channels-last: BiT's root pools `pad(x, 0)` with a
//! 3x3/2 window, so the padding takes part in the max (a window at the border never returns
//! less than 0). One pass, vectorised over the channels, with no padded copy; the backward
//! recomputes each window's argmax (the first maximum in window order, NaN winning, as
//! PyTorch) and routes the gradient there, dropping what lands on the padding.

use rayon::prelude::*;

/// Shape of one pooling: `[batch, height, width, channels]` in, square window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl PoolGeometry {
    pub(crate) fn out_height(&self) -> usize {
        super::out_size(self.height, self.kernel, self.stride, self.padding)
    }

    pub(crate) fn out_width(&self) -> usize {
        super::out_size(self.width, self.kernel, self.stride, self.padding)
    }

    /// The input rows and columns of output `(oh, ow)`'s window, and whether it covers padding.
    fn window(
        &self,
        oh: usize,
        ow: usize,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>, bool) {
        let span = |o: usize, size: usize| {
            let start = (o * self.stride) as isize - self.padding as isize;
            let end = start + self.kernel as isize;
            let clipped = start.max(0) as usize..end.min(size as isize) as usize;
            let padded = start < 0 || end > size as isize;
            (clipped, padded)
        };
        let (rows, pad_rows) = span(oh, self.height);
        let (cols, pad_cols) = span(ow, self.width);
        (rows, cols, pad_rows || pad_cols)
    }
}

/// `a` replaces `best` when larger, or when NaN (which then stays): the first maximum in
/// window order wins, as PyTorch's `max_pool2d`. Branch-free, so the channel loops vectorise.
#[inline(always)]
fn beats(a: f32, best: f32) -> bool {
    (a > best) | (a.is_nan() & !best.is_nan())
}

/// The maximum of each channel over the window of output `(oh, ow)`.
fn window_max(g: &PoolGeometry, image: &[f32], oh: usize, ow: usize, max: &mut [f32]) {
    let c = g.channels;
    let (rows, cols, padded) = g.window(oh, ow);
    max.fill(if padded { 0.0 } else { f32::NEG_INFINITY });
    for ih in rows {
        for iw in cols.clone() {
            let src = &image[(ih * g.width + iw) * c..][..c];
            for (m, &v) in max.iter_mut().zip(src) {
                *m = if beats(v, *m) { v } else { *m };
            }
        }
    }
}

pub(crate) fn forward(g: &PoolGeometry, x: &[f32], y: &mut [f32]) {
    let (c, ho, wo) = (g.channels, g.out_height(), g.out_width());
    let image = g.height * g.width * c;
    y.par_chunks_mut(ho * wo * c)
        .zip(x.par_chunks(image))
        .for_each(|(out, image)| {
            for (i, dst) in out.chunks_exact_mut(c).enumerate() {
                window_max(g, image, i / wo, i % wo, dst);
            }
        });
}

/// The gradient goes to the first position of each window (padding included, in window order)
/// that holds the window's maximum; what lands on the padding is dropped.
pub(crate) fn backward(g: &PoolGeometry, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (c, ho, wo, k) = (g.channels, g.out_height(), g.out_width(), g.kernel);
    let image = g.height * g.width * c;
    dx.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(dy.par_chunks(ho * wo * c))
        .for_each(|((dx, image), dy)| {
            dx.fill(0.0);
            let mut max = vec![0.0f32; c];
            let mut open = vec![true; c];
            for (i, grad) in dy.chunks_exact(c).enumerate() {
                let (oh, ow) = (i / wo, i % wo);
                window_max(g, image, oh, ow, &mut max);
                open.fill(true);
                for kh in 0..k {
                    for kw in 0..k {
                        let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                        let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                        let inside = ih >= 0
                            && iw >= 0
                            && (ih as usize) < g.height
                            && (iw as usize) < g.width;
                        if !inside {
                            // A zero of the padding holding the maximum takes it (and its
                            // gradient goes nowhere).
                            for (o, &m) in open.iter_mut().zip(&max) {
                                *o &= m != 0.0;
                            }
                            continue;
                        }
                        let at = (ih as usize * g.width + iw as usize) * c;
                        let (src, dst) = (&image[at..at + c], &mut dx[at..at + c]);
                        for ((((d, &v), &m), &gr), o) in dst
                            .iter_mut()
                            .zip(src)
                            .zip(&max)
                            .zip(grad)
                            .zip(open.iter_mut())
                        {
                            let hit = *o & ((v == m) | (v.is_nan() & m.is_nan()));
                            *d += if hit { gr } else { 0.0 };
                            *o &= !hit;
                        }
                    }
                }
            }
        });
}
