//! Scratch directories and child processes that clean up after a test, whatever its outcome.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory under the system's temporary directory, removed with everything in it
/// when dropped, so that a passing or failing test leaves nothing behind.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `{tmp}/bit-scratch-{pid}/{name}`, emptied first (see [`scratch_root`]).
    pub fn new(name: &str) -> Self {
        let dir = scratch_root("bit-scratch").join(name);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// `{tmp}/{prefix}-{pid}`: this test process's own directory for `prefix`, created. The test
/// harness runs no destructors at exit, so what a test binary writes outlives it; the first call
/// in a process therefore removes the `{prefix}-{pid}...` entries of processes that have exited,
/// so that repeated test runs do not fill the disk.
pub fn scratch_root(prefix: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if !swept.iter().any(|p| p == prefix) {
        swept.push(prefix.to_string());
        let stale = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let Some(rest) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(&format!("{prefix}-")))
                else {
                    return false;
                };
                let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let next = rest[pid.len()..].chars().next();
                !pid.is_empty()
                    && next.is_none_or(|c| c == '-')
                    && !Path::new(&format!("/proc/{pid}")).exists()
            });
        for entry in stale {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
    let dir = tmp.join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `bit serve --port 0` started as a child (the `bit` binary at `bit`) with `token` as its
/// `$BIT_REMOTE_TOKEN` (none if `None`, whatever the test's environment says): the process and
/// the `ws://` address it printed. Panics if it does not print one within a minute.
pub fn bit_serve(bit: &Path, token: Option<&str>) -> (KillOnDrop, String) {
    bit_serve_with(bit, &["--port", "0"], token)
}

/// [`bit_serve`] with other arguments: the process and the address it printed (`ws://...` or
/// `iroh://...`, an unspecified host replaced by 127.0.0.1).
pub fn bit_serve_with(bit: &Path, args: &[&str], token: Option<&str>) -> (KillOnDrop, String) {
    let mut command = Command::new(bit);
    command.arg("serve").args(args);
    match token {
        Some(token) => command.env("BIT_REMOTE_TOKEN", token),
        None => command.env_remove("BIT_REMOTE_TOKEN"),
    };
    let mut child = KillOnDrop(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("ws://").or_else(|| line.find("iroh://")) {
                let address = line[at..].split_whitespace().next().unwrap();
                let address = address.trim_end_matches([';', ',', '.']);
                tx.send(address.replace("0.0.0.0", "127.0.0.1")).ok();
            }
        }
    });
    let started = Instant::now();
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("bit serve printed no address in {:?}", started.elapsed()));
    (child, address)
}

/// The peak resident memory of process `pid` in bytes (`VmHWM` of `/proc/{pid}/status`): what
/// a `bit` child process held at most. `None` once it has exited, or off Linux.
pub fn peak_resident_memory_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmHWM:")
}

/// The memory this machine has in bytes (`MemTotal` of `/proc/meminfo`), `None` off Linux.
pub fn total_memory() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// The `kB` value of `field` (such as `VmHWM:`) in a `/proc` status-style text, in bytes.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The standard output of a finished command, which must have succeeded: otherwise the test
/// fails showing `what` ran and both of its outputs.
pub fn success_stdout(
    what: &str,
    output: impl std::borrow::Borrow<std::process::Output>,
) -> String {
    let output = output.borrow();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
