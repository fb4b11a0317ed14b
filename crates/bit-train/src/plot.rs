//! Pictures of runs: training loss, learning rate and validation accuracy over the steps, read
//! from each run's `metrics.jsonl` and drawn as one SVG (every run writes and refreshes its own
//! `curves.svg`; `bit plot` overlays several runs).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// The file each run keeps its picture in.
pub const CURVES_FILE: &str = "curves.svg";

/// The curves of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// The run's name (its directory's name).
    pub name: String,
    /// `(step, mean loss of the step's micro-batches)`.
    pub loss: Vec<(f64, f64)>,
    /// `(step, learning rate)`.
    pub lr: Vec<(f64, f64)>,
    /// `(step, validation top-1)`: the model's accuracy, or for a distillation without labels
    /// its top-1 agreement with the teacher.
    pub top1: Vec<(f64, f64)>,
    /// `(step, accuracy)` of the few-shot probe with the most shots (`--fewshot_every`), and
    /// that number of shots (0 without probes).
    pub fewshot: Vec<(f64, f64)>,
    /// Shots per class of the probe in [`fewshot`](Self::fewshot).
    pub fewshot_shots: usize,
}

impl Curves {
    /// Reads `{run_dir}/metrics.jsonl`. Lines that are not whole records (a crash's torn last
    /// line) are skipped.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join("bit_train_doc_curves");
    /// std::fs::create_dir_all(&dir)?;
    /// std::fs::write(dir.join("metrics.jsonl"), concat!(
    ///     r#"{"event":"train","step":0,"micro_batch":1,"loss":2.0,"lr":0.1}"#, "\n",
    ///     r#"{"event":"eval","step":"end","loss":1.5,"top1":0.5,"top5":0.9,"examples":10}"#, "\n",
    /// ))?;
    /// let curves = bit_train::Curves::read(&dir)?;
    /// assert_eq!((curves.loss, curves.top1), (vec![(0.0, 2.0)], vec![(1.0, 0.5)]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
        let name = run_dir.file_name().map_or_else(
            || run_dir.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let mut curves = Self {
            name,
            ..Self::default()
        };
        // Micro-batches of one step are averaged; an evaluation at `end` is after the last step.
        let mut step_losses: Vec<(f64, f64, usize)> = Vec::new();
        for record in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let number = |key: &str| record.get(key).and_then(Value::as_f64);
            match record.get("event").and_then(Value::as_str) {
                Some("train") => {
                    let (Some(step), Some(loss)) = (number("step"), number("loss")) else {
                        continue;
                    };
                    match step_losses.last_mut() {
                        Some((s, sum, n)) if *s == step => (*sum, *n) = (*sum + loss, *n + 1),
                        _ => {
                            step_losses.push((step, loss, 1));
                            if let Some(lr) = number("lr") {
                                curves.lr.push((step, lr));
                            }
                        }
                    }
                }
                Some("fewshot") => {
                    let step = event_step(&record, &step_losses);
                    let most = record
                        .get("shots")
                        .and_then(Value::as_object)
                        .and_then(|shots| {
                            shots
                                .iter()
                                .filter_map(|(k, v)| Some((k.parse::<usize>().ok()?, v.as_f64()?)))
                                .max_by_key(|(k, _)| *k)
                        });
                    if let Some((shots, accuracy)) = most {
                        curves.fewshot_shots = shots;
                        curves.fewshot.push((step, accuracy));
                    }
                }
                Some("eval") => {
                    let step = event_step(&record, &step_losses);
                    let top1 = number("top1")
                        .or_else(|| {
                            record
                                .pointer("/student_top1_top5/0")
                                .and_then(Value::as_f64)
                        })
                        .or_else(|| number("agree_top1"));
                    if let Some(top1) = top1 {
                        curves.top1.push((step, top1));
                    }
                }
                _ => {}
            }
        }
        curves.loss = step_losses
            .into_iter()
            .map(|(step, sum, n)| (step, sum / n as f64))
            .collect();
        Ok(curves)
    }
}

/// The step of an evaluation or probe record: a number, or `end` (after the last step).
fn event_step(record: &Value, step_losses: &[(f64, f64, usize)]) -> f64 {
    let last = step_losses.last().map_or(0.0, |(s, _, _)| s + 1.0);
    match record.get("step") {
        Some(Value::String(s)) => s.parse().unwrap_or(last),
        Some(v) => v.as_f64().unwrap_or(last),
        None => last,
    }
}

/// Draws `runs` into one SVG at `out` (written atomically): panels over the steps, training
/// loss, learning rate and validation top-1, and the few-shot probe's accuracy where a run
/// has one; one colour per run.
pub fn plot(runs: &[Curves], out: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 960)).into_drawing_area();
        draw(&root, runs).map_err(|e| TrainError::Io {
            path: out.to_path_buf(),
            source: e.to_string().into(),
        })?;
    }
    bit_hub::write_atomically(out, |file| std::io::Write::write_all(file, svg.as_bytes()))
        .map_err(TrainError::io(out))
}

/// `{run_dir}/curves.svg` of the run's own metrics.
pub(crate) fn refresh(run_dir: &Path) -> Result<PathBuf> {
    let out = run_dir.join(CURVES_FILE);
    plot(&[Curves::read(run_dir)?], &out)?;
    Ok(out)
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, runs: &[Curves]) -> DrawResult {
    root.fill(&WHITE)?;
    let probes = runs.iter().map(|r| r.fewshot_shots).max().unwrap_or(0);
    let panels = root.split_evenly((if probes > 0 { 4 } else { 3 }, 1));
    let steps = runs
        .iter()
        .flat_map(|r| r.loss.iter().chain(&r.top1).map(|p| p.0))
        .fold(1.0, f64::max);
    let panel = |i: usize, title: &str, pick: fn(&Curves) -> &[(f64, f64)], y: (f64, f64)| {
        draw_panel(&panels[i], title, runs, pick, steps, y)
    };
    let max = |pick: fn(&Curves) -> &[(f64, f64)]| {
        runs.iter()
            .flat_map(|r| pick(r).iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    };
    panel(
        0,
        "training loss",
        |r| &r.loss,
        (0.0, max(|r| &r.loss).max(1e-9) * 1.05),
    )?;
    panel(
        1,
        "learning rate",
        |r| &r.lr,
        (0.0, max(|r| &r.lr).max(1e-12) * 1.05),
    )?;
    panel(2, "validation top-1", |r| &r.top1, (0.0, 1.0))?;
    if probes > 0 {
        let title = format!("few-shot linear probe top-1 ({probes}-shot)");
        panel(3, &title, |r| &r.fewshot, (0.0, 1.0))?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    runs: &[Curves],
    pick: fn(&Curves) -> &[(f64, f64)],
    steps: f64,
    (low, high): (f64, f64),
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..steps, low..high)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = pick(run)
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        let series = if points.len() == 1 {
            // A single evaluation is a point, not a line.
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?
        } else {
            chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?
        };
        series
            .label(run.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_average_and_runs_overlay_into_one_svg() {
        let dir = std::env::temp_dir().join(format!("bit-train-plot-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        for (run, shift) in [(&a, 0.0), (&b, 0.5)] {
            std::fs::create_dir_all(run).unwrap();
            let mut lines = String::new();
            for step in 0..4 {
                for micro in 1..=2 {
                    let loss = 2.0 - step as f64 * 0.4 + shift + micro as f64 * 0.1;
                    lines += &format!(
                        "{{\"event\":\"train\",\"step\":{step},\"micro_batch\":{micro},\"loss\":{loss},\"lr\":0.1}}\n"
                    );
                }
            }
            lines += "{\"event\":\"eval\",\"step\":\"2\",\"top1\":0.25}\n";
            lines += "{\"event\":\"eval\",\"step\":\"end\",\"agree_top1\":0.75}\n";
            lines +=
                "{\"event\":\"fewshot\",\"step\":\"end\",\"shots\":{\"5\":0.5,\"10\":0.625}}\n";
            lines += "{\"event\":\"train\",\"ste"; // torn by a crash
            std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
        }
        let curves = Curves::read(&a).unwrap();
        assert_eq!(curves.name, "a");
        assert_eq!(curves.loss.len(), 4);
        assert!((curves.loss[1].1 - 1.75).abs() < 1e-12, "{:?}", curves.loss);
        assert_eq!(
            curves.lr,
            vec![(0.0, 0.1), (1.0, 0.1), (2.0, 0.1), (3.0, 0.1)]
        );
        assert_eq!(curves.top1, vec![(2.0, 0.25), (4.0, 0.75)]);
        assert_eq!(
            (curves.fewshot.clone(), curves.fewshot_shots),
            (vec![(4.0, 0.625)], 10)
        );

        let out = dir.join("both.svg");
        plot(&[curves, Curves::read(&b).unwrap()], &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "training loss",
            "learning rate",
            "validation top-1",
            "few-shot linear probe top-1 (10-shot)",
            ">\na\n<",
            ">\nb\n<",
        ] {
            assert!(svg.contains(text), "no `{text}` in the picture");
        }
        assert_eq!(refresh(&a).unwrap(), a.join(CURVES_FILE));
        assert!(a.join(CURVES_FILE).is_file());
        std::fs::remove_dir_all(&dir).ok();
    }
}
