//! The README's main job, exactly as written there (BiT-M-R50x1 on CIFAR-10 at the reference's
//! batch 512), starts and trains on this machine without any flag: `--batch_split auto`
//! measures what a micro-batch costs and splits the batch to fit the free memory. CIFAR-10 is a
//! local copy in the release's binary format (full size, 50000 + 10000 records) and the
//! weights are the golden R50x1 checkpoint placed as `BiT-M-R50x1.npz`, since neither can be
//! downloaded here.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bit_data::{Cifar, Split};
use bit_testkit::{KillOnDrop, ScratchDir, peak_resident_memory_of, total_memory};

/// The extracted CIFAR-10 release in `datadir`, full size (10000 records per file).
fn cifar10(datadir: &Path) {
    let cifar = Cifar::Cifar10;
    let dir = datadir.join(cifar.dir_name());
    std::fs::create_dir_all(&dir).unwrap();
    let files = [cifar.files(Split::Train), cifar.files(Split::Valid)].concat();
    for (f, file) in files.iter().enumerate() {
        let mut data = Vec::with_capacity(10_000 * 3073);
        for r in 0..10_000usize {
            let label = (r % 10) as u8;
            data.push(label);
            // A different smooth picture per class: learnable, and quick to write.
            data.extend((0..3072).map(|p| (p / 32 * (label as usize + 1) + f * 7 + r % 13) as u8));
        }
        std::fs::write(dir.join(file), data).unwrap();
    }
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    std::fs::write(dir.join(cifar.names_file()), names).unwrap();
}

#[test]
fn the_readme_main_job_starts_within_memory_without_flags() {
    let scratch = ScratchDir::new("main-job");
    let (logdir, datadir, models) = (
        scratch.join("bit_logs"),
        scratch.join("cifar10"),
        scratch.join("bit_models"),
    );
    cifar10(&datadir);
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(
        bit_testkit::golden_file("r50x1.weights.npz"),
        models.join("BiT-M-R50x1.npz"),
    )
    .unwrap();

    // README: bit train --name cifar10_run --model BiT-M-R50x1 --logdir /tmp/bit_logs
    //     --dataset cifar10 --datadir /tmp/cifar10 --bit_pretrained_dir ~/bit_models
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bit"))
            .args(["train", "--name", "cifar10_run", "--model", "BiT-M-R50x1"])
            .arg("--logdir")
            .arg(&logdir)
            .args(["--dataset", "cifar10", "--datadir"])
            .arg(&datadir)
            .arg("--bit_pretrained_dir")
            .arg(&models)
            .env("BIT_HOME", scratch.join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its log on stderr, line by line, until the second optimizer step starts (the first has
    // then run all its micro-batches and updated the weights).
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let started = Instant::now();
    let mut log = Vec::new();
    let mut peak = 0;
    for line in stderr.lines().map_while(Result::ok) {
        peak = peak.max(peak_resident_memory_of(child.0.id()).unwrap_or(0));
        log.push(line);
        let last = log.last().unwrap();
        if last.contains("[step 1") {
            break;
        }
        assert!(
            !last.starts_with("error") && started.elapsed() < Duration::from_secs(1800),
            "{}",
            log.join("\n")
        );
    }
    peak = peak.max(peak_resident_memory_of(child.0.id()).unwrap_or(0));
    drop(child);
    let log = log.join("\n");
    assert!(
        log.contains("[step 1"),
        "the run ended before its second step:\n{log}"
    );
    let choice = log
        .lines()
        .find(|l| l.contains("--batch_split auto:"))
        .unwrap_or_else(|| panic!("no split logged:\n{log}"));
    let total = total_memory().expect("/proc/meminfo");
    assert!(peak < total, "peak {peak} of {total} bytes ({choice})");
    // The prediction held: the whole process (model, momentum, loader and the micro-batch the
    // split allows) stayed within it, give or take what the probes do not see.
    let predicted: f64 = choice
        .split("~")
        .nth(1)
        .and_then(|rest| rest.split(" GiB").next())
        .and_then(|gib| gib.parse().ok())
        .unwrap_or_else(|| panic!("no prediction in `{choice}`"));
    let gib = peak as f64 / (1u64 << 30) as f64;
    assert!(
        gib <= 1.3 * predicted + 1.0,
        "peak {gib:.2} GiB, predicted {predicted} ({choice})"
    );
    eprintln!(
        "{choice}\npeak RSS {:.2} GiB of {:.2} GiB",
        peak as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64
    );
}
