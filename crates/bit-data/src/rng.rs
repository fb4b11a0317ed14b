//! Independent, reproducible random streams: every random choice of the pipeline (shuffling,
//! augmentation, mixup) is a function of the seed and its position, never of thread timing.

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

/// An independent, reproducible random stream for `(seed, stream, index)`.
pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix(splitmix(seed ^ stream.rotate_left(17)) ^ index))
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
