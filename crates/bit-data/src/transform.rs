//! BiT's preprocessing (`bit_pytorch/train.py`): training resizes to the pre-crop square,
//! takes a random crop and flips horizontally with probability 0.5; evaluation resizes
//! straight to the crop square. Both scale pixels to `[-1, 1]` (`x / 127.5 - 1`) and write
//! CHW planes. Resizing is Pillow's bilinear, bit for bit (so torchvision's on PIL images). Distillation's
//! views use the inception-style crop instead ([`Preprocess::Inception`]).

use image::RgbImage;
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;

use crate::error::{DataError, Result};
use crate::resample;

/// The largest image side the pipeline accepts: BiT's largest is 512 (pre-crop) / 480; beyond
/// this, one batch of activations alone exceeds any machine's memory, and a clear error beats an
/// allocation failure.
pub const MAX_RESOLUTION: usize = 4096;
/// The smallest crop the pipeline accepts. BiT's root block has stride 4: at 8 px it leaves the
/// first stage a 2x2 map, below that a single pixel in zero padding, and the deeper stages
/// see nothing an image could teach them. 8 keeps the small crops that tests and quick
/// experiments use (16-32 px) while refusing the 1-7 px that only a typo produces.
pub const MIN_RESOLUTION: usize = 8;

/// Which preprocessing to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocess {
    /// Resize to `precrop`, random `crop` x `crop` crop, random horizontal flip (if `flip`).
    Train {
        /// Square size before cropping (160 or 512 under the HyperRule; `crop` for no random
        /// crop).
        precrop: usize,
        /// Crop size (128 or 480).
        crop: usize,
        /// Whether to flip half of the images.
        flip: bool,
    },
    /// Inception-style random crop, as big_vision's `inception_crop` (used by BiT
    /// distillation): a region of 5-100 % of the image's area with an aspect ratio between
    /// 3/4 and 4/3 (log-uniform), resized to `crop` x `crop`, then a random horizontal flip.
    Inception {
        /// Output size.
        crop: usize,
    },
    /// Resize to `crop` x `crop`.
    Eval {
        /// Output size.
        crop: usize,
    },
}

/// The random augmentations of fine-tuning: BiT's random crop and horizontal flip, each of
/// which a task whose label it would change (a count, a position, an orientation) turns off.
///
/// ```
/// use bit_data::{Augment, Preprocess};
///
/// assert_eq!(Augment::default().train(160, 128), Preprocess::Train { precrop: 160, crop: 128, flip: true });
/// // No random crop: the image is resized straight to the crop size.
/// let fixed = Augment { random_crop: false, flip: false };
/// assert_eq!(fixed.train(160, 128), Preprocess::Train { precrop: 128, crop: 128, flip: false });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Resize to the pre-crop size and crop at random (else resize to the crop size).
    pub random_crop: bool,
    /// Flip half of the images horizontally.
    pub flip: bool,
}

impl Default for Augment {
    /// Both, as BiT fine-tunes.
    fn default() -> Self {
        Self {
            random_crop: true,
            flip: true,
        }
    }
}

impl Augment {
    /// The training preprocessing at the HyperRule's `(precrop, crop)`.
    pub fn train(self, precrop: usize, crop: usize) -> Preprocess {
        Preprocess::Train {
            precrop: if self.random_crop { precrop } else { crop },
            crop,
            flip: self.flip,
        }
    }
}

impl Preprocess {
    /// The side of the output square.
    pub fn output_size(self) -> usize {
        match self {
            Self::Train { crop, .. } | Self::Inception { crop } | Self::Eval { crop } => crop,
        }
    }

    /// Checks the sizes make sense: a crop of at least [`MIN_RESOLUTION`] pixels and at most
    /// the pre-crop size, and no side above [`MAX_RESOLUTION`].
    ///
    /// ```
    /// use bit_data::Preprocess;
    ///
    /// assert!(Preprocess::Train { precrop: 160, crop: 128, flip: true }.validate().is_ok());
    /// assert!(Preprocess::Train { precrop: 128, crop: 160, flip: true }.validate().is_err());
    /// assert!(Preprocess::Eval { crop: 100_000 }.validate().is_err());
    /// assert!(Preprocess::Eval { crop: 7 }.validate().is_err());
    /// ```
    pub fn validate(self) -> Result<()> {
        let (precrop, crop) = match self {
            Self::Train { precrop, crop, .. } => (precrop, crop),
            Self::Inception { crop } | Self::Eval { crop } => (crop, crop),
        };
        if precrop > MAX_RESOLUTION {
            return Err(DataError::InvalidArgument(format!(
                "resolution {precrop} is above the maximum of {MAX_RESOLUTION} pixels"
            )));
        }
        if crop < MIN_RESOLUTION || crop > precrop {
            return Err(DataError::InvalidArgument(format!(
                "crop {crop} must be between {MIN_RESOLUTION} and the pre-crop size {precrop}"
            )));
        }
        Ok(())
    }

    /// Writes the processed image as CHW floats in `[-1, 1]` into `out`
    /// (`3 * output_size()^2` values); `rng` drives the crop and flip.
    pub fn apply(
        self,
        image: &RgbImage,
        rng: &mut Xoshiro256PlusPlus,
        out: &mut [f32],
    ) -> Result<()> {
        let size = self.output_size();
        assert_eq!(out.len(), 3 * size * size, "output buffer size");
        let (resized, x0, y0, flip) = match self {
            Self::Train {
                precrop,
                crop,
                flip,
            } => {
                let resized = resize(image, precrop)?;
                let x0 = rng.random_range(0..=precrop - crop);
                let y0 = rng.random_range(0..=precrop - crop);
                // Drawn either way: the crops do not depend on whether flips are on.
                (resized, x0, y0, rng.random_bool(0.5) && flip)
            }
            Self::Inception { crop } => {
                let region = inception_region(image.width(), image.height(), rng);
                (
                    resize_region(image, region, crop)?,
                    0,
                    0,
                    rng.random_bool(0.5),
                )
            }
            Self::Eval { crop } => (resize(image, crop)?, 0, 0, false),
        };
        let plane = size * size;
        let stride = resized.width() as usize * 3;
        let raw = resized.as_raw();
        for y in 0..size {
            let row = &raw[(y0 + y) * stride..];
            for x in 0..size {
                let sx = x0 + if flip { size - 1 - x } else { x };
                for c in 0..3 {
                    out[c * plane + y * size + x] = f32::from(row[sx * 3 + c]) / 127.5 - 1.0;
                }
            }
        }
        Ok(())
    }
}

/// `(left, top, width, height)` of an inception crop of a `width` x `height` image: up to ten
/// draws of an area fraction in `[0.05, 1]` and a log-uniform aspect ratio in `[3/4, 4/3]`
/// until the region fits, else the largest centred region of an allowed aspect ratio (as
/// TensorFlow's `sample_distorted_bounding_box` and torchvision's `RandomResizedCrop`).
fn inception_region(width: u32, height: u32, rng: &mut Xoshiro256PlusPlus) -> [f64; 4] {
    let (w, h) = (f64::from(width), f64::from(height));
    let (min_ratio, max_ratio) = (3.0f64 / 4.0, 4.0f64 / 3.0);
    for _ in 0..10 {
        let area = w * h * rng.random_range(0.05..=1.0);
        let ratio = rng.random_range(min_ratio.ln()..=max_ratio.ln()).exp();
        let (cw, ch) = ((area * ratio).sqrt().round(), (area / ratio).sqrt().round());
        if (1.0..=w).contains(&cw) && (1.0..=h).contains(&ch) {
            let left = rng.random_range(0.0..=w - cw).floor();
            let top = rng.random_range(0.0..=h - ch).floor();
            return [left, top, cw, ch];
        }
    }
    let ratio = (w / h).clamp(min_ratio, max_ratio);
    let (cw, ch) = if w / h > ratio {
        ((h * ratio).round(), h)
    } else {
        (w, (w / ratio).round())
    };
    [((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch]
}

/// The region `[left, top, width, height]` (whole pixels) of `image` cut out, then resized to
/// a `side` square: torchvision's `resized_crop` (`img.crop(box).resize(...)`).
fn resize_region(image: &RgbImage, region: [f64; 4], side: usize) -> Result<RgbImage> {
    let [left, top, width, height] = region.map(|v| v as u32);
    let cut = image::imageops::crop_imm(image, left, top, width, height).to_image();
    resize(&cut, side)
}

/// Bilinear resize to a `side` x `side` square (aspect ratio not kept, as in the reference),
/// exactly as Pillow does it ([`resample`](crate::resample)).
fn resize(image: &RgbImage, side: usize) -> Result<RgbImage> {
    if image.width() == 0 || image.height() == 0 {
        return Err(DataError::InvalidArgument(format!(
            "cannot resize a {}x{} image",
            image.width(),
            image.height()
        )));
    }
    Ok(resample::resize_bilinear(image, side as u32, side as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 128])
        })
    }

    #[test]
    fn eval_is_a_plain_resize_scaled_to_unit_range() {
        let img = RgbImage::from_pixel(32, 32, image::Rgb([0, 255, 51]));
        let mut out = vec![0.0; 3 * 16 * 16];
        Preprocess::Eval { crop: 16 }
            .apply(&img, &mut Xoshiro256PlusPlus::seed_from_u64(0), &mut out)
            .unwrap();
        assert!(out[..256].iter().all(|&v| v == -1.0));
        assert!(out[256..512].iter().all(|&v| v == 1.0));
        assert!(
            out[512..]
                .iter()
                .all(|&v| (v - (51.0 / 127.5 - 1.0)).abs() < 1e-6)
        );
    }

    #[test]
    fn train_crops_and_flips_about_half_the_time() {
        let img = gradient(40, 40);
        let flips = |augment: Augment| {
            let pre = augment.train(40, 32);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
            let (mut flips, mut offsets) = (0, std::collections::HashSet::new());
            for _ in 0..400 {
                let mut out = vec![0.0; 3 * 32 * 32];
                pre.apply(&img, &mut rng, &mut out).unwrap();
                // Red grows with x: a flipped crop has it decreasing along a row.
                if out[0] > out[31] {
                    flips += 1;
                }
                offsets.insert(out[32 * 32].to_bits()); // green at (0, 0): the crop's top
                assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
            }
            (flips, offsets.len())
        };
        let (n, tops) = flips(Augment::default());
        assert!(
            (150..250).contains(&n) && tops > 4,
            "{n} flips of 400, {tops} crop rows"
        );
        let fixed = flips(Augment {
            random_crop: false,
            flip: false,
        });
        assert_eq!(fixed, (0, 1));
    }

    #[test]
    fn inception_crops_vary_in_area_and_aspect_and_stay_inside() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let (mut small, mut large) = (0, 0);
        for (w, h) in [(64, 48), (48, 64), (300, 20), (1, 1)] {
            for _ in 0..200 {
                let [l, t, cw, ch] = inception_region(w, h, &mut rng);
                let (w, h) = (f64::from(w), f64::from(h));
                assert!(l >= 0.0 && t >= 0.0 && cw >= 1.0 && ch >= 1.0);
                assert!(l + cw <= w && t + ch <= h, "{l} {t} {cw} {ch} in {w}x{h}");
                let area = cw * ch / (w * h);
                small += usize::from(area < 0.3);
                large += usize::from(area > 0.7);
            }
        }
        assert!(small > 50 && large > 50, "{small} small, {large} large");
        // The whole pipeline: values in range, every pixel written.
        let img = gradient(64, 48);
        let mut out = vec![f32::NAN; 3 * 24 * 24];
        Preprocess::Inception { crop: 24 }
            .apply(&img, &mut rng, &mut out)
            .unwrap();
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(
            Preprocess::Train {
                precrop: 100,
                crop: 128,
                flip: true
            }
            .validate()
            .is_err()
        );
        assert!(Preprocess::Eval { crop: 0 }.validate().is_err());
        assert!(
            Preprocess::Train {
                precrop: 160,
                crop: 128,
                flip: true
            }
            .validate()
            .is_ok()
        );
    }
}
