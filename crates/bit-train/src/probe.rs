//! Few-shot linear probes during a run (`--fewshot_every`): the frozen features of the model
//! being trained, scored as `bit fewshot` scores a model (big_vision's ridge probe), so that a
//! fine-tuning or distillation run shows what happens to its representation.

use std::sync::Arc;

use bit_data::{ImageDataset, LoaderConfig, few_shot};
use bit_infer::{Feed, FewShotConfig};
use bit_model::ResNetV2;
use burn::tensor::Device;
use serde_json::json;

use crate::config::RunSettings;
use crate::data::TrainingData;
use crate::error::{Result, TrainError};
use crate::log::RunLog;

/// The probes of one run: the same draws (seed 0) at every step, so that the curve follows the
/// features, not the luck of a draw.
pub(crate) struct FewShotProbe {
    every: usize,
    train: Arc<dyn ImageDataset>,
    test: Arc<dyn ImageDataset>,
    config: FewShotConfig,
    feed: Feed,
}

impl FewShotProbe {
    /// The probes `settings` ask for, on `data` at `crop` px read with `loader`; `None` without
    /// `--fewshot_every`. A dataset without classes to probe, or with a class smaller than a
    /// draw, is refused now, not at the first probe.
    pub(crate) fn new(
        settings: &RunSettings,
        data: &TrainingData,
        crop: usize,
        loader: LoaderConfig,
    ) -> Result<Option<Self>> {
        let Some(every) = settings.fewshot_every else {
            return Ok(None);
        };
        if data.train.classes().len() < 2 {
            return Err(TrainError::InvalidConfig(format!(
                "--fewshot_every probes need labelled data with classes; {} has {}",
                settings.dataset,
                data.train.classes().len()
            )));
        }
        // Every draw is possible (each class has enough images), checked on the labels now
        // rather than at the first probe, after hours of training.
        for &shots in &settings.fewshot_shots {
            few_shot(data.train.clone(), shots, 0)?;
        }
        let config = FewShotConfig {
            shots: settings.fewshot_shots.clone(),
            seeds: 1,
            ..FewShotConfig::default()
        };
        let feed = Feed::new(crop).with_loader(loader);
        Ok(Some(Self {
            every,
            train: data.train.clone(),
            test: data.valid.clone(),
            config,
            feed,
        }))
    }

    /// Whether the probes run after `step`.
    pub(crate) fn due(&self, step: usize) -> bool {
        step.is_multiple_of(self.every)
    }

    /// Probes `model` and logs each number of shots' accuracy (`train.log`, and a
    /// `{"event": "fewshot", "step": at, "shots": {"5": 0.61, ...}}` line in `metrics.jsonl`).
    pub(crate) fn run(
        &self,
        model: &ResNetV2,
        device: &Device,
        at: &str,
        log: &mut RunLog,
    ) -> Result<()> {
        let scores = bit_infer::fewshot(
            model,
            self.train.clone(),
            self.test.clone(),
            &self.config,
            &self.feed,
            device,
        )?;
        let text: Vec<String> = scores
            .iter()
            .map(|s| format!("{}-shot {:.2}%", s.shots, 100.0 * s.mean()))
            .collect();
        log.info(&format!(
            "Few-shot linear probes@{at}: {} ({} test images)",
            text.join(", "),
            self.test.len()
        ));
        let shots: serde_json::Map<String, serde_json::Value> = scores
            .iter()
            .map(|s| (s.shots.to_string(), json!(s.mean())))
            .collect();
        log.metric(json!({"event": "fewshot", "step": at, "shots": shots}));
        Ok(())
    }
}
