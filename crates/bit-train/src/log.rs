//! The run's logs: `train.log` with the reference's lines (also on the terminal),
//! `metrics.jsonl` for machines, and a progress bar.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use indicatif::ProgressBar;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// Writes the run's human and machine logs.
pub struct RunLog {
    text: File,
    metrics: File,
    bar: ProgressBar,
    quiet: bool,
}

impl RunLog {
    /// Opens (appending) `train.log` and `metrics.jsonl` in `dir`; `quiet` keeps the terminal
    /// clean (tests, embedding programs). A last line torn by a crash (no newline) is dropped
    /// first, so the next record starts on a line of its own.
    pub(crate) fn open(dir: &Path, quiet: bool) -> Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(TrainError::io(&path))?;
            drop_torn_line(&file).map_err(TrainError::io(&path))?;
            Ok::<_, TrainError>(file)
        };
        Ok(Self {
            text: open("train.log")?,
            metrics: open("metrics.jsonl")?,
            bar: ProgressBar::hidden(),
            quiet,
        })
    }

    /// Starts the progress bar over `total` steps at `position`.
    pub(crate) fn start_progress(&mut self, position: usize, total: usize) {
        if self.quiet {
            return;
        }
        self.bar = ProgressBar::new(total as u64);
        self.bar.set_style(bit_hub::progress_style(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise}<{eta_precise} {msg}",
        ));
        self.bar.set_position(position as u64);
    }

    /// Advances the progress bar.
    pub(crate) fn progress(&self, position: usize, message: String) {
        self.bar.set_position(position as u64);
        self.bar.set_message(message);
    }

    /// Ends the progress bar.
    pub(crate) fn finish_progress(&self) {
        self.bar.finish_and_clear();
    }

    /// One line in the reference's format, `time [LEVEL] bit_common: message`.
    pub fn info(&mut self, message: &str) {
        self.line("INFO", message);
    }

    /// A warning line.
    pub fn warn(&mut self, message: &str) {
        self.line("WARNING", message);
    }

    fn line(&mut self, level: &str, message: &str) {
        let line = format_line(level, message);
        // A full disk must not kill a training run over a log line; the metrics say the rest.
        append_line(&mut self.text, &line).ok();
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    /// A handle that writes warnings to `train.log` from another thread (the device
    /// watchdog, whose last word it is); `None` if the file cannot be shared.
    pub(crate) fn warner(&self) -> Option<LogWarner> {
        let text = self.text.try_clone().ok()?;
        Some(LogWarner {
            text,
            quiet: self.quiet,
        })
    }

    /// One JSON object per line in `metrics.jsonl`.
    pub fn metric(&mut self, record: Value) {
        append_line(&mut self.metrics, &record.to_string()).ok();
    }
}

/// A line of `train.log`: time, level, the reference's logger name, the message.
fn format_line(level: &str, message: &str) -> String {
    let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
    format!("{stamp} [{level}] bit_common: {message}")
}

/// Writes warnings to a run's `train.log` (and the terminal, unless quiet) from another
/// thread: [`RunLog::warner`].
pub(crate) struct LogWarner {
    text: File,
    quiet: bool,
}

impl LogWarner {
    /// A warning line.
    pub(crate) fn warn(&mut self, message: &str) {
        let line = format_line("WARNING", message);
        append_line(&mut self.text, &line).ok();
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

/// Appends `line` and its newline with one `write` of the whole record, so a crash leaves either
/// the record or nothing of it, never a piece another record continues.
fn append_line(file: &mut File, line: &str) -> std::io::Result<()> {
    let mut record = String::with_capacity(line.len() + 1);
    record.push_str(line);
    record.push('\n');
    file.write_all(record.as_bytes())
}

/// Truncates `file` after its last newline if a crash cut its last line short.
fn drop_torn_line(file: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read backwards in blocks until the last newline.
    let mut reader = file;
    let mut end = len;
    let mut block = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return file.set_len(start + i as u64 + 1);
        }
        end = start;
    }
    file.set_len(0)
}

/// Formats like Python's `{:.1e}` (`3.0e-03`), which the reference log lines use.
pub fn python_exp(value: f64) -> String {
    let s = format!("{value:.1e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_torn_last_record_is_dropped_on_reopen() {
        let dir = std::env::temp_dir().join(format!("bit-train-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        let long = format!("{{\"event\":\"eval\",\"note\":\"{}\"}}\n", "x".repeat(5000));
        std::fs::write(&metrics, format!("{long}{{\"event\":\"train\",\"loss")).unwrap();
        std::fs::write(dir.join("train.log"), "complete line\n").unwrap();
        let mut log = super::RunLog::open(&dir, true).unwrap();
        log.metric(serde_json::json!({"event": "train", "step": 3}));
        log.info("resumed");
        let text = std::fs::read_to_string(&metrics).unwrap();
        assert_eq!(text, format!("{long}{{\"event\":\"train\",\"step\":3}}\n"));
        let lines: Vec<String> = std::fs::read_to_string(dir.join("train.log"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines[0], "complete line");
        assert!(
            lines[1].ends_with("[INFO] bit_common: resumed"),
            "{lines:?}"
        );
        // A file that is one torn line becomes empty.
        std::fs::write(&metrics, "{\"event").unwrap();
        drop(super::RunLog::open(&dir, true).unwrap());
        assert_eq!(std::fs::read_to_string(&metrics).unwrap(), "");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn python_style_exponents() {
        assert_eq!(super::python_exp(0.003), "3.0e-03");
        assert_eq!(super::python_exp(0.0), "0.0e+00");
        assert_eq!(super::python_exp(3e-6), "3.0e-06");
        assert_eq!(super::python_exp(12.0), "1.2e+01");
    }
}
