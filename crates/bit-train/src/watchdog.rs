//! The device watchdog. A device served by another process (`bit serve`) that stops answering
//! without its connection closing (a stopped process, a machine that lost power or its network
//! without a reset reaching us) leaves Burn Remote's client waiting on a read with no timeout,
//! and a hung GPU driver does the same: nothing inside the run can unblock it. So a thread
//! watches the training steps, and when one micro-batch (or the update after them) has waited
//! longer than `--device_timeout`, it writes the device failure to `train.log` and the terminal
//! and ends the process with status 1, as the error would. The checkpoints written before are
//! intact (each is complete before it is named) and the same command resumes from the last.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::TrainError;
use crate::log::LogWarner;

/// What the training loop and the watchdog thread share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Since when the loop has been waiting on the devices, and at which step.
    waiting: Option<(Instant, usize)>,
    /// The run is over: the thread ends.
    finished: bool,
}

/// Ends the process when a training step waits on its devices for longer than a timeout.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching; `log` gets the last word.
    pub(crate) fn start(timeout: Duration, mut log: LogWarner) -> Self {
        let shared = Arc::new(Shared::default());
        let watched = shared.clone();
        let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let thread = std::thread::spawn(move || {
            let mut state = watched.state.lock().unwrap_or_else(PoisonError::into_inner);
            while !state.finished {
                if let Some((since, step)) = state.waiting
                    && since.elapsed() > timeout
                {
                    let failure = TrainError::DeviceFailed {
                        step,
                        reason: format!(
                            "no answer from the devices for {} s (--device_timeout)",
                            timeout.as_secs()
                        ),
                    };
                    log.warn(&format!("[step {step}]: device failure: {failure}"));
                    eprintln!("error: {failure}");
                    std::process::exit(1);
                }
                state = watched
                    .wake
                    .wait_timeout(state, tick)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        });
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// The loop starts waiting on the devices for step `step` (a micro-batch, the update).
    pub(crate) fn waiting(&self, step: usize) {
        self.set(|state| state.waiting = Some((Instant::now(), step)));
    }

    /// The loop is not waiting on the devices (evaluating, checkpointing, between steps).
    pub(crate) fn idle(&self) {
        self.set(|state| state.waiting = None);
    }

    fn set(&self, change: impl FnOnce(&mut State)) {
        change(
            &mut self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.set(|state| state.finished = true);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}
