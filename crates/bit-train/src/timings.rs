//! Where a run's time goes: the mean seconds of each phase, like the reference's `chrono`.

use std::collections::BTreeMap;
use std::time::Instant;

/// Mean seconds per phase, like the reference's `chrono` report.
#[derive(Default)]
pub(crate) struct Timings(BTreeMap<&'static str, (f64, usize)>);

impl Timings {
    pub(crate) fn add(&mut self, name: &'static str, start: Instant) {
        let entry = self.0.entry(name).or_default();
        entry.0 += start.elapsed().as_secs_f64();
        entry.1 += 1;
    }

    pub(crate) fn total(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |(t, _)| *t)
    }

    pub(crate) fn report(&self) -> String {
        let mut means: Vec<(&str, f64)> = self
            .0
            .iter()
            .map(|(k, (t, n))| (*k, t / *n as f64))
            .collect();
        means.sort_by(|a, b| b.1.total_cmp(&a.1));
        means
            .iter()
            .map(|(k, t)| format!("{k}: {t:.5}s"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
