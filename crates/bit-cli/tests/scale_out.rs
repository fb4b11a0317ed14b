//! Training over `bit serve` worker processes on 127.0.0.1 (Burn Remote over WebSocket), as
//! users run it across machines: two workers train like one, a worker killed mid-run stops the
//! run with a clear error and the same command resumes from its checkpoint, and anything that
//! is not a worker is refused by name.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use bit_model::ResNetV2;
use bit_testkit::{KillOnDrop, ScratchDir, bit_serve, bit_serve_with, max_relative_gap};
use burn::tensor::Device;

fn bit() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_bit"))
}

/// `bit train` of the golden tiny model on Fashion-MNIST at 32 px for `steps` steps of 16
/// images (two micro-batches each), on `device`.
fn train(logdir: &Path, name: &str, device: &str, steps: usize) -> Command {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let mut cmd = Command::new(bit());
    cmd.args(["train", "--name", name, "--model"])
        .arg(bit_testkit::golden_file("tiny.weights.npz"))
        .arg("--logdir")
        .arg(logdir)
        .args(["--dataset", "fashion_mnist", "--resolution", "32,32"])
        .args(["--batch", "16", "--batch_split", "2", "--workers", "2"])
        .args(["--steps", &steps.to_string(), "--eval_every", "2"])
        .args(["--max_eval_examples", "32", "--device", device])
        .env_remove("BIT_REMOTE_TOKEN")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must fail saying `why`; what it printed on stderr.
fn refused(cmd: &mut Command, why: &str) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(why), "expected `{why}`: {stderr}");
    stderr
}

/// Two runs trained the same weights and losses, to `tolerance` relative.
fn assert_same_training(
    (w1, l1): &(Vec<f32>, Vec<f64>),
    (w2, l2): &(Vec<f32>, Vec<f64>),
    tolerance: f64,
) {
    let gap = max_relative_gap(w2, w1);
    assert!(f64::from(gap) <= tolerance, "weights {gap} apart");
    for (a, b) in l2.iter().zip(l1) {
        assert!(
            (a - b).abs() <= tolerance * b.abs(),
            "losses {l2:?} vs {l1:?}"
        );
    }
}

/// The trained weights of a finished run, and its training losses.
fn outcome(run: &Path) -> (Vec<f32>, Vec<f64>) {
    let model = ResNetV2::from_safetensors(run.join("model.safetensors"), &Device::flex()).unwrap();
    let mut weights = bit_model::backend::host_values(model.root.conv.weight.val());
    weights.extend(bit_model::backend::host_values(model.head.fc.weight.val()));
    let losses = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["event"] == "train")
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    (weights, losses)
}

#[test]
fn two_worker_processes_train_like_one() {
    let logs = ScratchDir::new("scale-out-same");
    let (_one, one) = bit_serve(bit(), None);
    let (_two, two) = bit_serve(bit(), None);
    run(&mut train(&logs, "one", &one, 3));
    run(&mut train(&logs, "two", &format!("{one},{two}"), 3));
    run(&mut train(&logs, "local", "cpu", 3));
    let one = outcome(&logs.join("one"));
    assert_eq!(one.1.len(), 6, "3 steps of 2 micro-batches");
    // Same ops on the same backend, gradients summed in another order: float32 noise.
    assert_same_training(&outcome(&logs.join("two")), &one, 1e-5);
    // The workers run Burn's composed ops, this process its own kernels: the same function.
    assert_same_training(
        &outcome(&logs.join("two")),
        &outcome(&logs.join("local")),
        1e-4,
    );
}

/// The step of the run's checkpoint, read as a resuming run reads it.
fn checkpoint_step(run: &Path) -> Option<usize> {
    let saved = bit_train::checkpoint::find(run).ok()??;
    Some(saved.state.step)
}

/// A run of `bit train` that would take 400 steps on the workers `kept` and `second`, once it
/// has written its first checkpoint.
fn run_until_checkpoint(logs: &Path, kept: &str, second: &str, extra: &[&str]) -> KillOnDrop {
    let mut child = KillOnDrop(
        train(logs, "r", &format!("{kept},{second}"), 400)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    while checkpoint_step(&logs.join("r")).is_none() {
        assert!(child.0.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The status and stderr of `child`, which must end within `limit` seconds with a device
/// failure (a hang fails the test saying `hangs`).
fn device_failure(mut child: KillOnDrop, limit: u64, hangs: &str) -> (ExitStatus, String) {
    let since = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(since.elapsed() < Duration::from_secs(limit), "{hangs}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let mut pipe = child.0.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("a device failed at step"), "{stderr}");
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    (status, stderr)
}

/// With a new worker in the failed one's place beside `kept`, the same command resumes at the
/// run's checkpoint and finishes two steps later.
fn resumes_with_a_new_worker(logs: &Path, kept: &str) {
    let run_dir = logs.join("r");
    let saved = checkpoint_step(&run_dir).unwrap();
    let (_new, replacement) = bit_serve(bit(), None);
    let devices = format!("{kept},{replacement}");
    let out = run(train(logs, "r", &devices, saved + 2).stderr(Stdio::piped()));
    let log = std::fs::read_to_string(run_dir.join("train.log")).unwrap();
    assert!(log.contains(&format!("Resumed at step {saved}")), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("after {} steps", saved + 2)));
}

#[test]
fn a_worker_killed_mid_run_is_a_clear_error_and_the_run_resumes() {
    let logs = ScratchDir::new("scale-out-dead");
    let (_kept, kept) = bit_serve(bit(), None);
    let (doomed, address) = bit_serve(bit(), None);
    let child = run_until_checkpoint(&logs, &kept, &address, &[]);
    drop(doomed); // SIGKILL the second worker mid-run
    device_failure(child, 30, "the run hangs on a dead worker");
    resumes_with_a_new_worker(&logs, &kept);
}

/// A worker that stops answering without its connection closing (SIGSTOP: as a machine that
/// loses power or its network) ends the run after `--device_timeout` as a device failure,
/// instead of blocking it forever; the checkpoint written before is intact and resumes.
#[test]
fn a_stopped_worker_ends_the_run_after_the_device_timeout_and_the_run_resumes() {
    let logs = ScratchDir::new("scale-out-stopped");
    let (_kept, kept) = bit_serve(bit(), None);
    let (stopped, address) = bit_serve(bit(), None);
    let child = run_until_checkpoint(&logs, &kept, &address, &["--device_timeout", "3"]);
    let pid = stopped.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, stderr) = device_failure(child, 60, "the run waits forever on a stopped worker");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    drop(stopped);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(--device_timeout)"), "{stderr}");
    let log = std::fs::read_to_string(logs.join("r").join("train.log")).unwrap();
    assert!(log.contains("(--device_timeout)"), "{log}");
    resumes_with_a_new_worker(&logs, &kept);
}

#[test]
fn anything_but_a_worker_is_refused_by_name() {
    let logs = ScratchDir::new("scale-out-refused");
    // A server that answers garbage.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage = format!("ws://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            // Whatever the client sent (its handshake), then not a WebSocket answer.
            let mut request = [0u8; 1024];
            let _request_length = stream.read(&mut request);
            stream.write_all(b"\x00\xffnot a websocket\r\n\r\n").ok();
        }
    });
    // A port nothing listens on.
    let nobody = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", l.local_addr().unwrap())
    };
    for (device, why) in [
        (garbage.as_str(), "cannot connect the remote device"),
        (nobody.as_str(), "cannot be reached"),
        ("ws://127.0.0.1", "expected ws://host:port"),
    ] {
        let started = Instant::now();
        let stderr = refused(&mut train(&logs, "g", device, 1), why);
        assert!(stderr.contains(&format!("`{device}`")), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{device}");
    }
    // Serving beyond this machine needs a token.
    refused(
        Command::new(bit())
            .args(["serve", "--port", "0", "--bind", "0.0.0.0"])
            .env_remove("BIT_REMOTE_TOKEN"),
        "BIT_REMOTE_TOKEN",
    );
}

#[test]
fn a_worker_with_a_token_turns_away_clients_without_it() {
    let logs = ScratchDir::new("scale-out-token");
    let (_worker, address) = bit_serve(bit(), Some("s3cret"));
    refused(
        train(&logs, "t", &address, 1).env("BIT_REMOTE_TOKEN", "wrong"),
        "rejected the credential",
    );
    run(train(&logs, "t", &address, 1).env("BIT_REMOTE_TOKEN", "s3cret"));
}

/// A UDP port free a moment ago.
fn free_udp_port() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port().to_string()
}

/// `bit serve --transport iroh` with the key in `key`, and the address it printed.
fn iroh_worker(key: &Path) -> (KillOnDrop, String) {
    let port = free_udp_port();
    let args = ["--transport", "iroh", "--bind", "0.0.0.0", "--port", &port];
    let key = key.to_str().unwrap();
    bit_serve_with(
        bit(),
        &[&args[..], &["--key", key]].concat(),
        Some("s3cret"),
    )
}

#[test]
fn an_iroh_worker_is_dialled_by_its_key_and_lets_in_only_its_token() {
    let logs = ScratchDir::new("scale-out-iroh");
    let (_worker, address) = iroh_worker(&logs.join("worker.key"));
    assert!(address.starts_with("iroh://"), "{address}");
    run(train(&logs, "iroh", &address, 1).env("BIT_REMOTE_TOKEN", "s3cret"));

    refused(
        train(&logs, "wrong-token", &address, 1).env("BIT_REMOTE_TOKEN", "wrong"),
        "rejected the credential",
    );

    // The key authenticates the server: another server's id at this address is not answered.
    let (_other, elsewhere) = iroh_worker(&logs.join("other.key"));
    let other_id = &elsewhere["iroh://".len()..elsewhere.find('@').unwrap()];
    let at = &address[address.find('@').unwrap()..];
    let impostor = format!("iroh://{other_id}{at}");
    refused(
        train(&logs, "impostor", &impostor, 1).env("BIT_REMOTE_TOKEN", "s3cret"),
        "cannot connect the remote device",
    );

    // Iroh binds every interface: only with --bind said, and never without a token.
    refused(
        Command::new(bit()).args(["serve", "--transport", "iroh", "--port", &free_udp_port()]),
        "--bind 0.0.0.0",
    );
}
