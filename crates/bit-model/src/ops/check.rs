//! Shape and geometry checks that every backend's [`BitOps`](super::BitOps) entry point runs
//! first. The trait is public, so a caller can hand any tensors to any op; a wrong shape, a zero
//! stride or a window wider than the padded input panics here, naming the op and the shapes, as
//! Burn's own ops do, before a kernel (or the GEMM's single `unsafe` call) sees it.

use super::{GroupNormOptions, PoolOptions, StdConvOptions};

/// `[batch, height, width, channels]` of a channels-last activation, all at least 1.
fn nhwc(op: &str, what: &str, shape: &[usize]) -> [usize; 4] {
    let dims: [usize; 4] = shape.try_into().unwrap_or_else(|_| {
        panic!("{op}: {what} must be [batch, height, width, channels], got {shape:?}")
    });
    assert!(
        dims.iter().all(|&d| d > 0),
        "{op}: {what} {shape:?} has an empty dimension"
    );
    dims
}

/// Output side of a window of `kernel` sliding by `stride` over `size` values with `padding`
/// on both ends; panics unless the window fits the padded input and the stride is positive.
fn out_side(op: &str, size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    assert!(
        kernel > 0 && stride > 0,
        "{op}: kernel {kernel} and stride {stride} must be positive"
    );
    let padded = size.saturating_add(padding.saturating_mul(2));
    assert!(
        padded >= kernel && padded != usize::MAX,
        "{op}: a {kernel}-wide window does not fit {size} values padded by {padding}"
    );
    (padded - kernel) / stride + 1
}

/// The sizes of a standardized convolution, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conv {
    /// `[batch, height, width, c_in]` of the input.
    pub input: [usize; 4],
    /// `[c_out, c_in, k, k]` of the kernel.
    pub kernel: [usize; 4],
    /// `[batch, out_height, out_width, c_out]` of the output.
    pub output: [usize; 4],
}

/// Checks `x` `[n, h, w, c]` against a square `weight` `[o, c, k, k]` under `options`.
pub(crate) fn conv(op: &str, x: &[usize], weight: &[usize], options: &StdConvOptions) -> Conv {
    let input = nhwc(op, "the input", x);
    let kernel: [usize; 4] = weight
        .try_into()
        .unwrap_or_else(|_| panic!("{op}: the kernel must be [out, in, k, k], got {weight:?}"));
    let [c_out, c_in, kh, kw] = kernel;
    assert!(c_out > 0, "{op}: a kernel of no filters, {weight:?}");
    assert_eq!(
        c_in, input[3],
        "{op}: the input has {} channels, the kernel {weight:?} expects {c_in}",
        input[3]
    );
    assert_eq!(kh, kw, "{op}: square kernels only, got {weight:?}");
    let side = |size| out_side(op, size, kh, options.stride, options.padding);
    Conv {
        input,
        kernel,
        output: [input[0], side(input[1]), side(input[2]), c_out],
    }
}

/// Checks a tensor that must have the convolution's output shape (its gradient, a residual).
pub(crate) fn conv_output(op: &str, what: &str, conv: &Conv, shape: &[usize]) {
    assert_eq!(
        shape, conv.output,
        "{op}: {what} must have the output's shape {:?} (input {:?}, kernel {:?})",
        conv.output, conv.input, conv.kernel
    );
}

/// Checks `x` for a pool under `options`; the output's shape.
pub(crate) fn pool(op: &str, x: &[usize], options: &PoolOptions) -> [usize; 4] {
    let [n, h, w, c] = nhwc(op, "the input", x);
    let side = |size| out_side(op, size, options.kernel, options.stride, options.padding);
    [n, side(h), side(w), c]
}

/// Checks `x`, `gamma` and `beta` of a GroupNorm under `options`.
pub(crate) fn norm(
    op: &str,
    x: &[usize],
    gamma: &[usize],
    beta: &[usize],
    options: &GroupNormOptions,
) {
    let [_, _, _, channels] = nhwc(op, "the input", x);
    assert!(
        options.groups > 0 && channels.is_multiple_of(options.groups),
        "{op}: {channels} channels cannot form {} groups of equal size",
        options.groups
    );
    for (what, shape) in [("gamma", gamma), ("beta", beta)] {
        assert_eq!(
            shape,
            [channels],
            "{op}: {what} must be [{channels}], got {shape:?}"
        );
    }
}

/// Checks the statistics and the output gradient a GroupNorm backward gets with `x`.
pub(crate) fn norm_backward(
    op: &str,
    x: &[usize],
    (mean, rstd): (&[usize], &[usize]),
    output_grad: &[usize],
    options: &GroupNormOptions,
) {
    let stats = [x[0], options.groups];
    for (what, shape) in [("mean", mean), ("rstd", rstd)] {
        assert_eq!(
            shape, stats,
            "{op}: {what} must be [batch, groups] = {stats:?}, got {shape:?}"
        );
    }
    assert_eq!(
        output_grad, x,
        "{op}: the output gradient must have the input's shape"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONV: StdConvOptions = StdConvOptions {
        stride: 2,
        padding: 1,
        eps: 1e-10,
    };

    #[test]
    fn good_shapes_give_the_output_shape() {
        let c = conv("t", &[2, 9, 7, 8], &[16, 8, 3, 3], &CONV);
        assert_eq!(c.output, [2, 5, 4, 16]);
        let pool_options = PoolOptions {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        assert_eq!(pool("t", &[1, 4, 4, 2], &pool_options), [1, 2, 2, 2]);
    }

    fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).expect_err("should panic");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| payload.downcast_ref::<&str>().unwrap().to_string())
    }

    #[test]
    fn bad_shapes_and_geometry_panic_naming_the_op() {
        let zero_stride = StdConvOptions { stride: 0, ..CONV };
        let wide = StdConvOptions {
            padding: usize::MAX / 2 + 1,
            ..CONV
        };
        let cases: Vec<Box<dyn FnOnce() + std::panic::UnwindSafe>> = vec![
            Box::new(|| {
                conv("op", &[2, 9, 9], &[16, 8, 3, 3], &CONV);
            }),
            Box::new(|| {
                conv("op", &[2, 0, 9, 8], &[16, 8, 3, 3], &CONV);
            }),
            Box::new(|| {
                conv("op", &[2, 9, 9, 4], &[16, 8, 3, 3], &CONV);
            }),
            Box::new(|| {
                conv("op", &[2, 9, 9, 8], &[16, 8, 3, 1], &CONV);
            }),
            Box::new(move || {
                conv("op", &[2, 9, 9, 8], &[16, 8, 3, 3], &zero_stride);
            }),
            Box::new(move || {
                conv("op", &[2, 9, 9, 8], &[16, 8, 3, 3], &wide);
            }),
            Box::new(|| {
                let c = conv("op", &[2, 9, 9, 8], &[16, 8, 3, 3], &CONV);
                conv_output("op", "the output gradient", &c, &[2, 9, 9, 16]);
            }),
            Box::new(|| {
                let opts = PoolOptions {
                    kernel: 5,
                    stride: 1,
                    padding: 0,
                };
                pool("op", &[1, 3, 3, 2], &opts);
            }),
            Box::new(|| {
                let opts = GroupNormOptions {
                    groups: 0,
                    eps: 1e-5,
                };
                norm("op", &[1, 2, 2, 8], &[8], &[8], &opts);
            }),
            Box::new(|| {
                let opts = GroupNormOptions {
                    groups: 4,
                    eps: 1e-5,
                };
                norm("op", &[1, 2, 2, 8], &[8], &[4], &opts);
            }),
            Box::new(|| {
                let opts = GroupNormOptions {
                    groups: 4,
                    eps: 1e-5,
                };
                norm_backward(
                    "op",
                    &[1, 2, 2, 8],
                    (&[1, 4], &[1, 4]),
                    &[1, 2, 2, 4],
                    &opts,
                );
            }),
        ];
        for case in cases {
            let message = panics(case);
            assert!(message.contains("op: "), "{message}");
        }
    }
}
