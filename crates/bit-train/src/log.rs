//! The run's logs: `train.log` with the reference's lines (also on the terminal),
//! `metrics.jsonl` for machines, and a progress bar.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
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
    /// clean (tests, embedding programs).
    pub fn open(dir: &Path, quiet: bool) -> Result<Self> {
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(TrainError::io(path))
        };
        Ok(Self {
            text: open("train.log")?,
            metrics: open("metrics.jsonl")?,
            bar: ProgressBar::hidden(),
            quiet,
        })
    }

    /// Starts the progress bar over `total` steps at `position`.
    pub fn start_progress(&mut self, position: usize, total: usize) {
        if self.quiet {
            return;
        }
        self.bar = ProgressBar::new(total as u64);
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise}<{eta_precise} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        self.bar.set_position(position as u64);
    }

    /// Advances the progress bar.
    pub fn progress(&self, position: usize, message: String) {
        self.bar.set_position(position as u64);
        self.bar.set_message(message);
    }

    /// Ends the progress bar.
    pub fn finish_progress(&self) {
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
        let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        let line = format!("{stamp} [{level}] bit_common: {message}");
        // A full disk must not kill a training run over a log line; the metrics say the rest.
        writeln!(self.text, "{line}").ok();
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    /// One JSON object per line in `metrics.jsonl`.
    pub fn metric(&mut self, record: Value) {
        writeln!(self.metrics, "{record}").ok();
    }
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
    fn python_style_exponents() {
        assert_eq!(super::python_exp(0.003), "3.0e-03");
        assert_eq!(super::python_exp(0.0), "0.0e+00");
        assert_eq!(super::python_exp(3e-6), "3.0e-06");
        assert_eq!(super::python_exp(12.0), "1.2e+01");
    }
}
