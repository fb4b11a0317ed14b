//! Knowledge distillation by function matching (Beyer et al. 2022, "Knowledge distillation: A
//! good teacher is patient and consistent"), on the loop fine-tuning uses.
//!
//! - **Consistent:** teacher and student see the same augmented view of each image, made on the
//!   fly: an inception-style crop and flip, then mixup (λ ~ Beta(1, 1), with probability 1)
//!   between two images of the micro-batch. The teacher runs in inference mode on that very
//!   tensor.
//! - **Function matching:** the loss is `T² · KL(softmax(t/T) ‖ softmax(s/T))`, averaged over the
//!   batch (big_vision's `kl` distance); labels are never used for training.
//! - **Optimizer:** Adam with decoupled weight decay (big_vision's convention: each step shrinks
//!   the weights by `wd · lr_t / lr`, i.e. `wd` times the schedule, not times the learning
//!   rate), the gradient clipped to global norm 1, linear warmup then cosine decay to zero.
//! - **Patient:** long schedules resume exactly from checkpoints, with the logs, metrics,
//!   progress bar and Ctrl-C behaviour of `bit train`.

use bit_data::{Batch, BatchStream, DatasetName, Mixup, Preprocess};
use bit_infer::{InferenceModel, LoadOptions, rank};
use bit_model::backend::host_values;
use bit_model::{Architecture, ResNetV2};
use bit_zoo::ModelHub;
use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use serde::Serialize;
use serde_json::json;

use crate::config::DistillConfig;
use crate::error::{Result, TrainError};
use crate::log::RunLog;
use crate::loss::TeacherTargets;
use crate::objective::{EvalData, Export, Objective};
use crate::parallel::DataParallel;
use crate::run::{Outcome, Run, TrainOptions};
use crate::views::Views;

/// What a distillation evaluation measured on the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DistillEval {
    /// Examples evaluated.
    pub examples: usize,
    /// Mean `T² · KL(teacher ‖ student)`: the objective.
    pub kl: f64,
    /// Fraction where the student's top class is the teacher's.
    pub agree_top1: f64,
    /// Fraction where the teacher's top class is among the student's five highest.
    pub agree_top5: f64,
    /// The student's top-1 / top-5 on the labels, when the labels index the teacher's head.
    pub student_top: Option<(f64, f64)>,
    /// The teacher's top-1 / top-5 on the same examples.
    pub teacher_top: Option<(f64, f64)>,
}

/// What a finished (or stopped) distillation produced: the student in `model`.
pub type DistillOutcome = Outcome<DistillEval>;

/// Distills `config.teacher` into `config.student` on `config.dataset`, resuming the run's last
/// checkpoint if there is one. The student is written to `{run}/model.safetensors`.
pub fn distill(config: &DistillConfig, options: &TrainOptions) -> Result<DistillOutcome> {
    let (dataset, _) = config.validate()?;
    let mut run = Run::open(&config.run, options, config)?;
    let main = run.main_device();
    let hub = config.run.hub()?;
    let mut teacher = load_teacher(&hub, &config.teacher, &main, run.log())?;
    teacher.model = teacher.model.with_precision(config.run.compute.precision());
    let head = teacher.model.config().head_size;
    let crop = config.resolution.unwrap_or(teacher.resolution);
    let data = run.load_data(None)?;
    let start = run.start(&data, config.optimizer(), |device, log| {
        load_student(&hub, config, head, device, log)
    })?;
    let schedule = config.schedule();
    run.log().info(&format!(
        "Distilling at {crop}px, T={}, {} steps ({} warmup), lr {}, wd {}",
        config.temperature, schedule.total, schedule.warmup, config.lr, config.wd
    ));
    let labelled = reports_accuracy(dataset, data.classes().len(), head, run.log());
    let mut objective = Distill {
        views: Views::new(Mixup::new(1.0, config.run.seed)?, main),
        temperature: config.temperature,
        sides: Sides::new(crop, config.teacher_resolution.unwrap_or(crop)),
        labelled,
        teacher_valid: None,
        export: Export {
            resolution: crop,
            classes: teacher.class_names.clone(),
        },
        teacher: teacher.model,
    };
    let clip = (config.clip_norm > 0.0).then_some(config.clip_norm);
    run.fit(start, &mut objective, data, &schedule, clip)
}

/// Whether evaluations can score accuracy: the data has labels and they index the teacher's
/// head (`classes` classes against `head`); says so in the log when not.
fn reports_accuracy(dataset: DatasetName, classes: usize, head: usize, log: &mut RunLog) -> bool {
    if dataset == DatasetName::Images {
        log.info("Unlabelled images: evaluations report agreement with the teacher");
        return false;
    }
    if classes != head {
        log.warn(&format!(
            "{classes} classes in the data, {head} in the teacher's head: accuracy is not reported"
        ));
    }
    classes == head
}

/// The teacher, in inference mode (no autodiff) on the main device's backend.
fn load_teacher(
    hub: &ModelHub,
    teacher: &str,
    main: &Device,
    log: &mut RunLog,
) -> Result<InferenceModel> {
    let device = main.clone().without_autodiff();
    let loaded =
        InferenceModel::load(hub, teacher, &LoadOptions::default(), &device).map_err(|source| {
            TrainError::Teacher {
                teacher: teacher.to_string(),
                source: Box::new(source),
            }
        })?;
    log.info(&format!(
        "Teacher {} ({}-way head, {}px) from {}",
        teacher,
        loaded.model.config().head_size,
        loaded.resolution,
        loaded.path.display()
    ));
    Ok(loaded)
}

/// The student at step 0: random weights (`scratch:ARCH`) or a checkpoint, with a zero head of
/// the teacher's size unless its own head is kept.
fn load_student(
    hub: &ModelHub,
    config: &DistillConfig,
    head: usize,
    device: &Device,
    log: &mut RunLog,
) -> Result<ResNetV2> {
    if let Some(arch) = config.student.strip_prefix("scratch:") {
        let arch: Architecture = arch.parse()?;
        log.info(&format!("Student {arch} from scratch, {head}-way head"));
        return Ok(arch.config(head).with_zero_head(true).init(device));
    }
    let loaded = InferenceModel::load(hub, &config.student, &LoadOptions::default(), device)
        .map_err(|source| TrainError::Student {
            student: config.student.clone(),
            source: Box::new(source),
        })?;
    let own = loaded.model.config().head_size;
    log.info(&format!(
        "Student from {} ({}-way head)",
        loaded.path.display(),
        own
    ));
    if config.keep_student_head {
        if own != head {
            return Err(TrainError::HeadMismatch {
                student: config.student.clone(),
                student_head: own,
                teacher_head: head,
            });
        }
        return Ok(loaded.model);
    }
    log.info(&format!("New zero-initialised {head}-way head"));
    Ok(loaded.model.with_zero_head(head))
}

/// The sides of the views: made at the larger of the two models' sides, resized for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sides {
    /// The side the loader makes the views at.
    view: usize,
    /// The student's side, when it is not the view's.
    student: Option<usize>,
    /// The teacher's side, when it is not the view's.
    teacher: Option<usize>,
}

impl Sides {
    fn new(student: usize, teacher: usize) -> Self {
        let view = student.max(teacher);
        Self {
            view,
            student: (student != view).then_some(student),
            teacher: (teacher != view).then_some(teacher),
        }
    }
}

/// `images` resized (bilinear, half-pixel centres) to a `side` square, if one is given.
fn resized(images: Tensor<4>, side: Option<usize>) -> Tensor<4> {
    match side {
        Some(side) => interpolate(
            images,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([side, side]),
        ),
        None => images,
    }
}

/// Distillation's objective: the student matches the teacher's function on the same view.
struct Distill {
    /// In inference mode, on the main device's backend.
    teacher: ResNetV2,
    views: Views,
    temperature: f32,
    /// The views' side and each model's.
    sides: Sides,
    /// Whether the labels index the teacher's head (accuracy is then reported).
    labelled: bool,
    /// The teacher's validation logits, computed once (the teacher never changes).
    teacher_valid: Option<Vec<f32>>,
    /// The student's side and the teacher's class names.
    export: Export,
}

impl Distill {
    /// The student's input for `batch` at `step`, and the teacher's logits for exactly that
    /// view (at its own side).
    fn view(&mut self, batch: &Batch, step: usize) -> (Tensor<4>, TeacherTargets) {
        let (x, _) = self.views.of(batch, step);
        let logits = self.teacher_logits(x.clone().without_autodiff()).autodiff();
        // Autodiff tensors meeting in one op must share the view's checkpointing strategy.
        let logits = match x.gradient_checkpointing_strategy() {
            Some(strategy) => logits.with_gradient_checkpointing_strategy(strategy),
            None => logits,
        };
        let targets = TeacherTargets {
            logits,
            temperature: self.temperature,
        };
        (resized(x, self.sides.student), targets)
    }

    /// The teacher's logits for views `images` (without autodiff).
    fn teacher_logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.teacher.forward(resized(images, self.sides.teacher))
    }

    /// Host logits of `forward` over every batch of `stream`, and the labels.
    fn logits(
        forward: impl Fn(Tensor<4>) -> Tensor<2>,
        stream: BatchStream,
        device: &Device,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (mut all, mut labels) = (Vec::new(), Vec::new());
        for batch in stream {
            let batch = batch?;
            let (x, _) = batch.to_tensors(device);
            all.extend(host_values(forward(x)));
            labels.extend(&batch.labels);
        }
        Ok((all, labels))
    }
}

impl Objective for Distill {
    type Eval = DistillEval;

    fn preprocess(&self) -> Preprocess {
        Preprocess::Inception {
            crop: self.sides.view,
        }
    }

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32> {
        let (x, targets) = self.view(batch, step);
        Ok(parallel.backward(x, &targets, scale))
    }

    fn evaluate(&mut self, model: &ResNetV2, valid: &EvalData) -> Result<DistillEval> {
        let device = self.views.device().without_autodiff();
        if self.teacher_valid.is_none() {
            let teacher = |x| self.teacher_logits(x);
            let (logits, _) = Self::logits(teacher, valid.stream()?, &device)?;
            self.teacher_valid = Some(logits);
        }
        let student = model.clone().valid();
        let side = self.sides.student;
        let (student, labels) = Self::logits(
            |x| student.forward(resized(x, side)),
            valid.stream()?,
            &device,
        )?;
        let teacher = self.teacher_valid.as_deref().expect("computed above");
        Ok(compare(
            teacher,
            &student,
            &labels,
            self.teacher.config().head_size,
            self.temperature,
            self.labelled,
        ))
    }

    fn eval_loss(eval: &DistillEval) -> f64 {
        eval.kl
    }

    fn log_eval(e: &DistillEval, at: &str, log: &mut RunLog) {
        let pct = |t: Option<(f64, f64)>| {
            t.map_or("n/a".to_string(), |(a, b)| {
                format!("top1 {:.2}%, top5 {:.2}%", 100.0 * a, 100.0 * b)
            })
        };
        log.info(&format!(
            "Validation@{at} KL {:.5}, agreement top1 {:.2}%, top5 {:.2}%; student {}; teacher {}",
            e.kl,
            100.0 * e.agree_top1,
            100.0 * e.agree_top5,
            pct(e.student_top),
            pct(e.teacher_top)
        ));
        let top = |t: Option<(f64, f64)>| t.map(|(a, b)| json!([a, b]));
        log.metric(json!({"event": "eval", "step": at, "kl": e.kl, "agree_top1": e.agree_top1, "agree_top5": e.agree_top5, "student_top1_top5": top(e.student_top), "teacher_top1_top5": top(e.teacher_top), "examples": e.examples}));
    }

    fn export(&self) -> Export {
        self.export.clone()
    }
}

/// Teacher–student agreement and (when `labelled`) both models' accuracy, from row-major
/// logits of `classes` columns.
fn compare(
    teacher: &[f32],
    student: &[f32],
    labels: &[usize],
    classes: usize,
    temperature: f32,
    labelled: bool,
) -> DistillEval {
    let (mut kl, mut agree1, mut agree5) = (0.0f64, 0usize, 0usize);
    let (mut s_top, mut t_top) = ([0usize; 2], [0usize; 2]);
    let t = f64::from(temperature);
    for ((t_row, s_row), &label) in teacher
        .chunks_exact(classes)
        .zip(student.chunks_exact(classes))
        .zip(labels)
    {
        let log_p = bit_infer::log_softmax(t_row, t);
        let log_q = bit_infer::log_softmax(s_row, t);
        kl += t
            * t
            * log_p
                .iter()
                .zip(&log_q)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
        let teacher_class = argmax(t_row);
        let r = rank(s_row, teacher_class);
        agree1 += usize::from(r == 0);
        agree5 += usize::from(r < 5);
        if labelled {
            for (row, top) in [(s_row, &mut s_top), (t_row, &mut t_top)] {
                let r = rank(row, label);
                top[0] += usize::from(r == 0);
                top[1] += usize::from(r < 5);
            }
        }
    }
    let n = labels.len().max(1) as f64;
    let frac = |top: [usize; 2]| labelled.then(|| (top[0] as f64 / n, top[1] as f64 / n));
    DistillEval {
        examples: labels.len(),
        kl: kl / n,
        agree_top1: agree1 as f64 / n,
        agree_top5: agree5 as f64 / n,
        student_top: frac(s_top),
        teacher_top: frac(t_top),
    }
}

/// The first index of the largest value (NaN never wins).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use bit_model::ResNetV2Config;

    use super::*;
    use crate::loss::distillation_loss;

    use bit_model::backend::host_values as host;

    fn batch(n: usize, size: usize) -> Batch {
        Batch {
            images: (0..n * 3 * size * size)
                .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
                .collect(),
            labels: (0..n).map(|i| i % 3).collect(),
            size,
        }
    }

    #[test]
    fn teacher_and_student_see_the_same_mixed_view() {
        let device = Device::flex();
        let teacher = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
        let student = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device.clone().autodiff());
        let devices = crate::Devices::new(vec![device.clone()]).unwrap();
        let main = devices.main().clone();
        let mut parallel = DataParallel::new(devices, student.clone(), crate::bit_optimizer());
        let objective = |sides| Distill {
            teacher: teacher.clone(),
            views: Views::new(Mixup::new(1.0, 5).unwrap(), main.clone()),
            temperature: 2.0,
            sides,
            labelled: true,
            teacher_valid: None,
            export: Export {
                resolution: 8,
                classes: None,
            },
        };
        let b = batch(4, 8);
        let same = Sides::new(8, 8);
        assert_eq!(
            same,
            Sides {
                view: 8,
                student: None,
                teacher: None
            }
        );
        let (x, targets) = objective(same).view(&b, 3);
        // The view is mixed (not the raw batch) and is exactly what an independent pass of the
        // same views makes for this step: a function of (seed, step) only.
        let raw = host(b.to_tensors(&device).0);
        let seen = host(x.clone());
        assert_ne!(seen, raw);
        let (again, _) = Views::new(Mixup::new(1.0, 5).unwrap(), main.clone()).of(&b, 3);
        assert_eq!(host(again), seen);
        // The teacher's targets are its logits for that very tensor.
        let direct = host(teacher.forward(x.clone().without_autodiff()));
        assert_eq!(host(targets.logits.clone()), direct);
        // Training on the micro-batch: the student's loss is the loss of that same view.
        let loss = objective(same).backward(&mut parallel, &b, 3, 1.0).unwrap();
        let want = distillation_loss(student.forward(x.clone()), targets.logits, 2.0);
        assert_eq!(loss, host(want)[0]);
        // Only where asked, the models see that view at different sides: here the view is
        // made at the student's 8 px and the teacher sees it resized to 16 px...
        let sides = Sides::new(8, 16);
        assert_eq!(
            (sides.view, sides.student, sides.teacher),
            (16, Some(8), None)
        );
        let sides = Sides::new(16, 8);
        assert_eq!(
            (sides.view, sides.student, sides.teacher),
            (16, None, Some(8))
        );
        let (input, targets) = objective(Sides {
            view: 8,
            student: None,
            teacher: Some(16),
        })
        .view(&b, 3);
        assert_eq!(host(input), seen);
        let big = resized(x.clone().without_autodiff(), Some(16));
        assert_eq!(big.dims(), [4, 3, 16, 16]);
        assert_eq!(host(targets.logits), host(teacher.forward(big)));
        // ...and the other way round, the student gets the view resized, the teacher the view.
        let (input, targets) = objective(Sides {
            view: 8,
            student: Some(4),
            teacher: None,
        })
        .view(&b, 3);
        assert_eq!(input.dims(), [4, 3, 4, 4]);
        assert_eq!(host(input), host(resized(x.clone(), Some(4))));
        assert_eq!(host(targets.logits), direct);
    }

    #[test]
    fn agreement_and_accuracy_count_strictly() {
        // Two examples, three classes. Teacher: class 2, then class 0. Student: 2, then 1.
        let teacher = [0.0, 1.0, 5.0, 4.0, 1.0, 0.0];
        let student = [0.0, 1.0, 3.0, 1.0, 2.0, 0.0];
        let e = compare(&teacher, &student, &[2, 1], 3, 1.0, true);
        assert_eq!((e.examples, e.agree_top1, e.agree_top5), (2, 0.5, 1.0));
        assert_eq!(e.student_top, Some((1.0, 1.0)));
        assert_eq!(e.teacher_top, Some((0.5, 1.0)));
        assert!(e.kl > 0.0);
        // Identical functions: no divergence, full agreement.
        let e = compare(&teacher, &teacher, &[2, 0], 3, 2.0, false);
        assert!(e.kl.abs() < 1e-12 && e.agree_top1 == 1.0);
        assert_eq!(e.student_top, None);
    }
}
