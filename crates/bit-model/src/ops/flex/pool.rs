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
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub(crate) fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
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

/// `a` replaces `best` when larger, or when NaN (which then stays).
fn beats(a: f32, best: f32) -> bool {
    a > best || (a.is_nan() && !best.is_nan())
}

pub(crate) fn forward(g: &PoolGeometry, x: &[f32], y: &mut [f32]) {
    let (c, ho, wo) = (g.channels, g.out_height(), g.out_width());
    let image = g.height * g.width * c;
    y.par_chunks_mut(ho * wo * c)
        .zip(x.par_chunks(image))
        .for_each(|(out, image)| {
            for (i, dst) in out.chunks_exact_mut(c).enumerate() {
                let (rows, cols, padded) = g.window(i / wo, i % wo);
                dst.fill(if padded { 0.0 } else { f32::NEG_INFINITY });
                for ih in rows {
                    for iw in cols.clone() {
                        let src = &image[(ih * g.width + iw) * c..][..c];
                        for (d, &v) in dst.iter_mut().zip(src) {
                            if beats(v, *d) {
                                *d = v;
                            }
                        }
                    }
                }
            }
        });
}

pub(crate) fn backward(g: &PoolGeometry, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (c, ho, wo, k) = (g.channels, g.out_height(), g.out_width(), g.kernel);
    let image = g.height * g.width * c;
    dx.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(dy.par_chunks(ho * wo * c))
        .for_each(|((dx, image), dy)| {
            dx.fill(0.0);
            let mut best = vec![0.0f32; c];
            // Input offset of each channel's winner; usize::MAX for the padding.
            let mut at = vec![usize::MAX; c];
            for (i, grad) in dy.chunks_exact(c).enumerate() {
                let (oh, ow) = (i / wo, i % wo);
                best.fill(f32::NEG_INFINITY);
                at.fill(usize::MAX);
                // Window order, padding included, so ties go to the first position as in
                // the composed pad + pool.
                for kh in 0..k {
                    for kw in 0..k {
                        let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                        let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                        let inside = ih >= 0
                            && iw >= 0
                            && (ih as usize) < g.height
                            && (iw as usize) < g.width;
                        if !inside {
                            for (b, a) in best.iter_mut().zip(&mut at) {
                                if beats(0.0, *b) {
                                    (*b, *a) = (0.0, usize::MAX);
                                }
                            }
                            continue;
                        }
                        let base = (ih as usize * g.width + iw as usize) * c;
                        for (ch, (b, a)) in best.iter_mut().zip(&mut at).enumerate() {
                            let v = image[base + ch];
                            if beats(v, *b) {
                                (*b, *a) = (v, base + ch);
                            }
                        }
                    }
                }
                for (&a, &gr) in at.iter().zip(grad) {
                    if a != usize::MAX {
                        dx[a] += gr;
                    }
                }
            }
        });
}
