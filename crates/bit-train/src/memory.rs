//! How many micro-batches a batch is split into: `--batch_split N`, or `auto`, which measures
//! what a micro-batch costs in memory on this machine and picks the smallest split that fits
//! the memory free, with a margin. Splitting only accumulates gradients, so every split gives
//! the same update (up to float summation order).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cgroup;
use crate::error::{Result, TrainError};

/// `--batch_split`: how many micro-batches each batch is split into (gradients accumulated).
///
/// ```
/// use bit_train::BatchSplit;
///
/// assert_eq!("auto".parse::<BatchSplit>().unwrap(), BatchSplit::Auto);
/// assert_eq!("4".parse::<BatchSplit>().unwrap(), BatchSplit::Fixed(4));
/// assert!("0".parse::<BatchSplit>().is_err());
/// assert_eq!(BatchSplit::default().to_string(), "auto");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSplit {
    /// The smallest split whose micro-batch fits the memory free when the run starts,
    /// measured on two small probe micro-batches (host memory; devices whose memory Burn
    /// cannot report train unsplit). A resumed run keeps its checkpoint's split.
    #[default]
    Auto,
    /// Exactly this many micro-batches.
    Fixed(usize),
}

impl From<usize> for BatchSplit {
    fn from(n: usize) -> Self {
        Self::Fixed(n)
    }
}

impl FromStr for BatchSplit {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Fixed(n)),
                _ => Err(format!("`{s}`: expected `auto` or a positive number")),
            },
        }
    }
}

impl fmt::Display for BatchSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A number, or the string `auto`, as on the command line.
impl Serialize for BatchSplit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSplit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(usize),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(n) => Ok(Self::Fixed(n)),
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Share of the free memory a run plans to use: the rest covers what the probes do not see
/// (the loader's prefetched batches, evaluation, allocator fragmentation, other processes).
pub const MEMORY_MARGIN: f64 = 0.8;

/// What a micro-batch of `m` images costs beyond what the process held before it:
/// `fixed + per_image * m` bytes, fitted on two probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroBatchMemory {
    /// Bytes whatever the size (gradients, workspaces).
    pub fixed: f64,
    /// Bytes per image (activations kept for the backward).
    pub per_image: f64,
}

impl MicroBatchMemory {
    /// The line through two probes `(images, bytes)`; a slope that the measurement noise made
    /// negative is read as the second probe's mean per image, which over-estimates (safe).
    ///
    /// ```
    /// use bit_train::MicroBatchMemory;
    ///
    /// let m = MicroBatchMemory::fit((2, 300.0), (4, 500.0));
    /// assert_eq!((m.fixed, m.per_image), (100.0, 100.0));
    /// assert_eq!(m.bytes(8), 900.0);
    /// ```
    pub fn fit((m1, b1): (usize, f64), (m2, b2): (usize, f64)) -> Self {
        let slope = (b2 - b1) / (m2 as f64 - m1 as f64);
        if slope.is_finite() && slope > 0.0 {
            Self {
                fixed: (b1 - slope * m1 as f64).max(0.0),
                per_image: slope,
            }
        } else {
            Self {
                fixed: 0.0,
                per_image: b2.max(b1) / m2.max(1) as f64,
            }
        }
    }

    /// Predicted bytes of a micro-batch of `images` images.
    pub fn bytes(&self, images: usize) -> f64 {
        self.fixed + self.per_image * images as f64
    }

    /// The smallest split of `batch` (into equal micro-batches) whose micro-batch needs at
    /// most `budget` bytes, or `None` if not even one image per micro-batch does.
    ///
    /// ```
    /// use bit_train::MicroBatchMemory;
    ///
    /// let m = MicroBatchMemory { fixed: 0.0, per_image: 50.0 };
    /// assert_eq!(m.smallest_split(512, 30_000.0), Some(1));
    /// assert_eq!(m.smallest_split(512, 20_000.0), Some(2));
    /// assert_eq!(m.smallest_split(512, 40.0), None);
    /// ```
    pub fn smallest_split(&self, batch: usize, budget: f64) -> Option<usize> {
        (1..=batch)
            .filter(|s| batch.is_multiple_of(*s))
            .find(|s| self.bytes(batch / s) <= budget)
    }
}

/// Bytes this process can still allocate: the kernel's `MemAvailable`, or less where its
/// cgroups (a container, a SLURM job, a systemd slice) leave it less. `None` where this cannot
/// be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = kib_field(&meminfo, "MemAvailable:")?;
    Some(
        match cgroup::headroom_of_this_process(Path::new(cgroup::CGROUP_ROOT)) {
            Some(headroom) => available.min(headroom),
            None => available,
        },
    )
}

/// This process's resident memory in bytes (`VmRSS`).
pub fn resident_memory() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// The peak of this process's resident memory in bytes (`VmHWM`).
pub fn peak_resident_memory() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// The most resident memory this process used while `work` ran, in bytes above what it held
/// before: the kernel's peak (reset first) where it can be reset, else sampled every 2 ms.
pub fn peak_while<T>(work: impl FnOnce() -> T) -> (T, Option<u64>) {
    let before = resident_memory();
    let (out, peak) = peak_resident_while(work);
    (
        out,
        peak.zip(before)
            .map(|(peak, before)| peak.saturating_sub(before)),
    )
}

/// The most resident memory this process used while `work` ran, in bytes.
fn peak_resident_while<T>(work: impl FnOnce() -> T) -> (T, Option<u64>) {
    let Some(before) = resident_memory() else {
        return (work(), None);
    };
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let sampled = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sampled, done) = (sampled.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = resident_memory() {
                    sampled.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let out = work();
    done.store(true, Ordering::Relaxed);
    sampler.join().ok();
    let mut peak = sampled.load(Ordering::Relaxed);
    if reset && let Some(hwm) = peak_resident_memory() {
        peak = peak.max(hwm);
    }
    (out, Some(peak))
}

/// The split a run uses: an explicit number, the checkpoint's when resuming with `auto`, else
/// (on host devices) the smallest whose micro-batch fits [`MEMORY_MARGIN`] of the free memory
/// less `reserve` (what the run allocates later: optimizer state), measured by running
/// `probe(images)` (a forward and backward of a micro-batch of that many images; see
/// [`fit_probes`]). Returns the split and what to log about it.
pub(crate) fn resolve_split(
    setting: BatchSplit,
    (batch, devices): (usize, usize),
    (resumed, reserve): (Option<usize>, u64),
    on_host: bool,
    probe: impl FnMut(usize) -> Result<()>,
) -> Result<(usize, String)> {
    let (split, memory, free) = match (setting, resumed) {
        (BatchSplit::Fixed(n), Some(saved)) if n != saved => {
            return Err(TrainError::InvalidConfig(format!(
                "--batch_split {n}: the checkpoint being resumed was trained with {saved} \
                 (the data stream depends on it); pass --batch_split {saved} or auto"
            )));
        }
        (BatchSplit::Fixed(n), _) => return Ok((n, format!("--batch_split {n}"))),
        (BatchSplit::Auto, Some(saved)) => {
            return Ok((
                saved,
                format!("--batch_split auto: {saved}, as the checkpoint"),
            ));
        }
        (BatchSplit::Auto, None) if !on_host => {
            return Ok((
                1,
                "--batch_split auto: 1 (Burn cannot report these devices' memory; pass a \
                 number if a batch does not fit)"
                    .into(),
            ));
        }
        (BatchSplit::Auto, None) => {
            // Gradients and momentum alone: if they cannot fit, say so instead of letting the
            // warm-up meet the OOM killer.
            if let Some(free) = available_memory()
                && reserve > free
            {
                return Err(TrainError::InvalidConfig(format!(
                    "the model's gradients and optimizer state alone need {} and {} is free: \
                     use a smaller model or fewer replicas on this machine",
                    gib(reserve as f64),
                    gib(free as f64)
                )));
            }
            let Some((memory, free)) = probe_memory(batch, devices, probe)? else {
                return Ok((1, "--batch_split auto: 1 (free memory unknown)".into()));
            };
            let budget = free.saturating_sub(reserve) as f64 * MEMORY_MARGIN;
            let split = memory.smallest_split(batch, budget).ok_or_else(|| {
                TrainError::InvalidConfig(format!(
                    "--batch {batch} does not fit in memory even one image at a time: a \
                     micro-batch of 1 needs {} of the {} free; lower the resolution or use \
                     a smaller model",
                    gib(memory.bytes(1)),
                    gib(free as f64)
                ))
            })?;
            (split, memory, free)
        }
    };
    let micro = batch / split;
    Ok((
        split,
        format!(
            "--batch_split auto: {split} (micro-batch {micro}: ~{} measured as {} + {} per \
             image; {} free, using at most {:.0}%)",
            gib(memory.bytes(micro)),
            gib(memory.fixed),
            mib(memory.per_image),
            gib(free as f64),
            MEMORY_MARGIN * 100.0
        ),
    ))
}

/// What micro-batches cost, from `probe(images)` runs (see [`fit_probes`]), and the memory free
/// after the first; `None` where free memory is unknown. The first micro-batch also allocates
/// what stays for the run (gradient buffers, kernel caches, thread pools): a warm-up, kept out
/// of the fit. Every probe is then measured from the one baseline after it: memory the
/// allocator keeps from an earlier probe counts against a later one (an over-estimate, the
/// safe side), where a baseline per probe would hide it and under-estimate the slope.
fn probe_memory(
    batch: usize,
    devices: usize,
    mut probe: impl FnMut(usize) -> Result<()>,
) -> Result<Option<(MicroBatchMemory, u64)>> {
    peak_resident_while(|| probe(devices.min(batch))).0?;
    let baseline = resident_memory();
    let Some(free) = available_memory() else {
        return Ok(None);
    };
    let mut measure = |images: usize| -> Result<f64> {
        let (done, peak) = peak_resident_while(|| probe(images));
        done?;
        let above = peak.zip(baseline).map(|(p, b)| p.saturating_sub(b));
        Ok(above.unwrap_or(0) as f64)
    };
    let memory = fit_probes(&mut measure, batch, devices, free as f64)?;
    Ok(Some((memory, free)))
}

/// [`MicroBatchMemory`] of micro-batches from `measure(images)` (bytes above what the process
/// held before), on `devices`, 2·`devices`, 4·`devices`, ... images (at most the batch and 32
/// per device), fitted on the last two. Doubling stops once a probe takes a twentieth of `free`:
/// small models are probed up to sizes where the slope stands well above the allocator's noise
/// (a few images give a slope 20% off), big ones stop before a probe could exhaust memory.
fn fit_probes(
    measure: &mut impl FnMut(usize) -> Result<f64>,
    batch: usize,
    devices: usize,
    free: f64,
) -> Result<MicroBatchMemory> {
    let cap = batch.min(32 * devices);
    let mut size = devices.min(batch);
    let mut probes = Vec::new();
    loop {
        let bytes = measure(size)?;
        probes.push((size, bytes));
        if size >= cap || (probes.len() >= 2 && bytes > free / 20.0) {
            break;
        }
        size = (2 * size).min(cap);
    }
    let last = probes[probes.len() - 1];
    let before = probes[probes.len().saturating_sub(2)];
    Ok(MicroBatchMemory::fit(before, last))
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
}

/// A `Name:   123 kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_numbers_round_trip_through_json() {
        for split in [BatchSplit::Auto, BatchSplit::Fixed(8)] {
            let json = serde_json::to_string(&split).unwrap();
            assert_eq!(serde_json::from_str::<BatchSplit>(&json).unwrap(), split);
        }
        assert_eq!(serde_json::to_string(&BatchSplit::Fixed(8)).unwrap(), "8");
        assert!(serde_json::from_str::<BatchSplit>("\"many\"").is_err());
    }

    #[test]
    fn a_noisy_slope_over_estimates_instead_of_under() {
        let m = MicroBatchMemory::fit((2, 500.0), (4, 400.0));
        assert_eq!((m.fixed, m.per_image), (0.0, 125.0));
        // Only divisors of the batch are splits: 12 images at 125 = 1500 > 1000, 6 fit.
        assert_eq!(m.smallest_split(12, 1000.0), Some(2));
        assert_eq!(m.smallest_split(7, 800.0), Some(7));
    }

    #[test]
    fn probes_double_until_a_probe_is_big_enough_and_fit_the_last_two() {
        // 1 MiB fixed + 10 MiB per image, with the allocator's noise at small sizes.
        let mib = (1u64 << 20) as f64;
        let mut seen = Vec::new();
        let mut measure = |m: usize| -> Result<f64> {
            seen.push(m);
            Ok((1.0 + 10.0 * m as f64) * mib + if m < 4 { 3.0 * mib } else { 0.0 })
        };
        let fit = fit_probes(&mut measure, 512, 2, 1e12).unwrap();
        assert_eq!(seen, [2, 4, 8, 16, 32, 64], "up to 32 per device");
        assert!((fit.per_image / mib - 10.0).abs() < 1e-9, "{fit:?}");
        // Little free memory: stops after the second probe that exceeds a twentieth of it.
        let mut seen = Vec::new();
        let mut measure = |m: usize| -> Result<f64> {
            seen.push(m);
            Ok(10.0 * m as f64 * mib)
        };
        fit_probes(&mut measure, 512, 1, 400.0 * mib).unwrap();
        assert_eq!(seen, [1, 2, 4]);
    }

    #[test]
    fn an_explicit_split_wins_and_a_checkpoints_split_is_kept() {
        let never = |_: usize| -> Result<()> { panic!("no probe needed") };
        let fixed = resolve_split(BatchSplit::Fixed(4), (512, 1), (None, 0), true, never).unwrap();
        assert_eq!(fixed.0, 4);
        let kept = resolve_split(BatchSplit::Auto, (512, 1), (Some(8), 0), true, never).unwrap();
        assert_eq!(kept.0, 8);
        let err = resolve_split(BatchSplit::Fixed(4), (512, 1), (Some(8), 0), true, never);
        assert!(err.unwrap_err().to_string().contains("trained with 8"));
        let gpu = resolve_split(BatchSplit::Auto, (512, 2), (None, 0), false, never).unwrap();
        assert_eq!(gpu.0, 1);
    }

    /// Tests that measure this process's memory run one at a time: the peak is process-wide,
    /// and one test resetting it (or allocating) would falsify another's measurement.
    static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn measuring() -> std::sync::MutexGuard<'static, ()> {
        MEASURING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Small allocations (below glibc's mmap threshold) that the allocator keeps after a probe
    /// (here pinned by the last chunk of each probe) are reused by the next one: measured from
    /// a baseline of its own, each probe would see only its growth over the last, half the
    /// true cost per image.
    #[test]
    fn probes_of_small_allocations_are_measured_from_one_baseline() {
        let _alone = measuring();
        const PER_IMAGE: usize = 8 << 20;
        const CHUNK: usize = 64 << 10;
        let mut pinned = Vec::new();
        let probe = |images: usize| -> Result<()> {
            let mut chunks: Vec<Vec<u8>> = (0..images * PER_IMAGE / CHUNK)
                .map(|i| vec![i as u8 | 1; CHUNK])
                .collect();
            std::hint::black_box(&chunks);
            pinned.push(chunks.pop());
            Ok(())
        };
        let (memory, _) = probe_memory(64, 1, probe).unwrap().unwrap();
        assert!(
            memory.per_image >= 0.9 * PER_IMAGE as f64,
            "{:.1} MiB per image measured, {} allocated",
            memory.per_image / (1u64 << 20) as f64,
            PER_IMAGE >> 20
        );
    }

    #[test]
    fn a_model_whose_optimizer_state_cannot_fit_is_refused_before_any_probe() {
        let never = |_: usize| -> Result<()> { panic!("no probe can fit") };
        let reserve = available_memory().unwrap() + (1 << 30);
        let err = resolve_split(BatchSplit::Auto, (512, 1), (None, reserve), true, never)
            .unwrap_err()
            .to_string();
        assert!(err.contains("optimizer state alone need"), "{err}");
    }

    #[test]
    fn auto_fits_what_the_probes_measure_into_free_memory() {
        let _alone = measuring();
        // Each probe holds 16 MiB per image until it returns: 32 GiB for the whole batch of
        // 2048, more than this machine has free, so the batch must be split.
        let per_image = 16.0 * (1u64 << 20) as f64;
        let probe = |images: usize| -> Result<()> {
            let held = vec![1u8; images << 24];
            std::hint::black_box(&held);
            Ok(())
        };
        let (split, note) =
            resolve_split(BatchSplit::Auto, (2048, 1), (None, 0), true, probe).unwrap();
        let free = available_memory().unwrap() as f64 * MEMORY_MARGIN;
        let micro = (2048 / split) as f64;
        // Fits (10% for the measurement's noise)...
        assert!(micro * per_image <= free * 1.1, "{note}");
        // ...and is the smallest split that does: twice the micro-batch would not fit.
        assert!(2.0 * micro * per_image > free * 0.9, "{note}");
        assert!(note.contains("per image"), "{note}");
    }
}
