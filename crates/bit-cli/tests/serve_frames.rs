//! `bit serve` against hostile peers on its WebSocket routes: a frame header claiming 2^62
//! bytes, random bytes where a message should be, a 64 MiB frame of garbage. Each is a refused
//! connection (one line on stderr, no crash report), the server keeps accepting, and the
//! memory the frames took goes back to the system.
#![cfg(feature = "remote")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bit_testkit::KillOnDrop;

/// A WebSocket connection to `path` of the server at `port`, after the 101 of the handshake.
fn connect(port: u16, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply,
        b"HTTP/1.1 101",
        "{}",
        String::from_utf8_lossy(&reply)
    );
    stream
}

/// A masked binary frame header announcing `len` payload bytes (mask 0: the bytes go as is).
fn frame_header(len: u64) -> Vec<u8> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hostile_frames_are_refused_connections_not_crashes_and_their_memory_is_returned() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bit"))
            .args(["serve", "--port", &port.to_string()])
            .env_remove("BIT_REMOTE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bit serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = server.0.id();
    let before = resident_kib(pid);
    for path in ["/data", "/session"] {
        // A frame claiming 2^62 bytes.
        connect(port, path)
            .write_all(&frame_header(1 << 62))
            .unwrap();
        // A small frame of random bytes.
        let mut stream = connect(port, path);
        let body = random_bytes(1000, 7);
        stream.write_all(&frame_header(body.len() as u64)).unwrap();
        stream.write_all(&body).unwrap();
        // 64 MiB of garbage.
        let mut stream = connect(port, path);
        let body = random_bytes(64 << 20, 11);
        stream.write_all(&frame_header(body.len() as u64)).unwrap();
        stream.write_all(&body).ok();
        std::thread::sleep(Duration::from_millis(500));
    }
    // Still serving, and the refused frames' memory handed back (a trim runs within ~2 s).
    std::thread::sleep(Duration::from_secs(3));
    assert!(server.0.try_wait().unwrap().is_none(), "bit serve died");
    drop(connect(port, "/session"));
    let after = resident_kib(pid);
    assert!(
        after < before + 100 * 1024,
        "resident memory grew from {before} kB to {after} kB"
    );
    server.0.kill().ok();
    let mut stderr = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(
        stderr.contains("bit serve: refused a connection"),
        "{stderr}"
    );
}
