//! A download whose server goes silent mid-body fails after the idle timeout (its own test
//! binary: it sets the timeout through the environment before any thread starts) and keeps its
//! partial file, which the next attempt resumes.

use std::time::{Duration, Instant};

use bit_hub::{IDLE_TIMEOUT_ENV, RemoteFile};
use bit_testkit::{HttpServer, STALL_AFTER};

#[test]
fn a_stalled_transfer_times_out_keeps_its_part_and_resumes() {
    // SAFETY: the only test of this binary, before it starts any thread.
    unsafe { std::env::set_var(IDLE_TIMEOUT_ENV, "1") };
    let server = HttpServer::start();
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    server.put("file.bin", body.clone());
    let dir = bit_testkit::scratch_root("bit-hub-stall");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("file.bin");
    let remote = RemoteFile::new(format!("{}/file.bin", server.base_url()));

    server.stall_next(1);
    let started = Instant::now();
    let err = remote.fetch(&dest).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(30), "it hung");
    assert!(err.contains("no data for 1 s"), "{err}");
    assert!(!dest.exists());
    let part = dir.join("file.bin.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), STALL_AFTER as u64);

    remote.fetch(&dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.ranges(), vec![None, Some(STALL_AFTER as u64)]);
    std::fs::remove_dir_all(&dir).ok();
}
