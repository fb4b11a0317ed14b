//! The catalog: every file of the BiT release by name, with its URL, architecture, head,
//! resolution and label set.

use std::fmt;

use bit_model::{Architecture, BIT_M_HEAD_SIZE, BIT_S_HEAD_SIZE, ResNetV2Config};

use crate::error::{Error, Result};

/// The official bucket of the BiT release.
pub const BIT_MODELS_URL: &str = "https://storage.googleapis.com/bit_models";
/// Environment variable that replaces [`BIT_MODELS_URL`] (a mirror, or a test server).
pub const BIT_MODELS_URL_ENV: &str = "BIT_MODELS_URL";

/// Which part of the release a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Pre-trained on ILSVRC-2012 (ImageNet-1k).
    BitS,
    /// Pre-trained on ImageNet-21k.
    BitM,
    /// BiT-M fine-tuned on ILSVRC-2012.
    Ilsvrc2012,
    /// BiT-M fine-tuned on one VTAB-1k task (1000 examples), three runs each.
    Vtab,
    /// R50x1 students distilled from a BiT-M R152x2 teacher on ImageNet-1k.
    Distilled,
    /// The BiT-M R152x2 teachers of the distillation paper.
    Teacher,
    /// BiT-M-R50x1 fine-tuned on CIFAR-10, from the official colabs.
    Colab,
}

impl Family {
    /// Every family, in catalog order.
    pub const ALL: [Family; 7] = [
        Self::BitS,
        Self::BitM,
        Self::Ilsvrc2012,
        Self::Vtab,
        Self::Distilled,
        Self::Teacher,
        Self::Colab,
    ];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BitS => "BiT-S",
            Self::BitM => "BiT-M",
            Self::Ilsvrc2012 => "ILSVRC-2012",
            Self::Vtab => "VTAB-1k",
            Self::Distilled => "distilled",
            Self::Teacher => "teacher",
            Self::Colab => "colab",
        })
    }
}

/// Where a catalog entry's head size and resolution come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provenance {
    /// Stated by the release (README, official configs).
    Release,
    /// Computed from the dataset (TFDS class counts, the HyperRule's resolution rule).
    Derived,
}

/// The class names a head predicts, when they are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelSet {
    /// ILSVRC-2012: 1000 WordNet lemma lines (`ilsvrc2012_wordnet_lemmas.txt`).
    Ilsvrc2012,
    /// ImageNet-21k: 21843 WordNet ids and lemmas (`imagenet21k_wordnet_{ids,lemmas}.txt`).
    Imagenet21k,
}

impl LabelSet {
    /// The label set of a head of this size, if it is an ImageNet head.
    ///
    /// ```
    /// use bit_zoo::LabelSet;
    ///
    /// assert_eq!(LabelSet::for_head_size(21843), Some(LabelSet::Imagenet21k));
    /// assert_eq!(LabelSet::for_head_size(1000).map(LabelSet::files), Some(&["ilsvrc2012_wordnet_lemmas.txt"][..]));
    /// assert_eq!(LabelSet::for_head_size(10), None);
    /// ```
    pub fn for_head_size(head_size: usize) -> Option<Self> {
        match head_size {
            BIT_S_HEAD_SIZE => Some(Self::Ilsvrc2012),
            BIT_M_HEAD_SIZE => Some(Self::Imagenet21k),
            _ => None,
        }
    }

    /// Number of classes.
    pub fn len(self) -> usize {
        match self {
            Self::Ilsvrc2012 => BIT_S_HEAD_SIZE,
            Self::Imagenet21k => BIT_M_HEAD_SIZE,
        }
    }

    /// Always false: a label set has classes.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The release's files, in the order their lines are joined.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Self::Ilsvrc2012 => &["ilsvrc2012_wordnet_lemmas.txt"],
            Self::Imagenet21k => &[
                "imagenet21k_wordnet_ids.txt",
                "imagenet21k_wordnet_lemmas.txt",
            ],
        }
    }
}

/// A released BiT checkpoint.
///
/// ```
/// use bit_zoo::Family;
///
/// let m = bit_zoo::find("BiT-M-R50x1")?;
/// assert_eq!((m.family, m.head_size, m.resolution), (Family::BitM, 21843, 224));
/// assert_eq!(m.url("https://storage.googleapis.com/bit_models"),
///            "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz");
/// let v = bit_zoo::find("vtab/BiT-M-R101x3-run2-dtd")?;
/// assert_eq!((v.head_size, v.resolution), (47, 480));
/// # Ok::<(), bit_zoo::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedModel {
    /// The name, which is also its path in the bucket without `.npz`
    /// (`BiT-M-R50x1`, `vtab/BiT-M-R50x1-run0-dtd`, `distill/R50x1_224`).
    pub name: String,
    /// Part of the release.
    pub family: Family,
    /// Network shape.
    pub architecture: Architecture,
    /// Classes of the head.
    pub head_size: usize,
    /// Side of the square input the model was trained or fine-tuned at.
    pub resolution: usize,
    /// Where `head_size` and `resolution` come from.
    pub provenance: Provenance,
    /// The published class names of the head, if any.
    pub labels: Option<LabelSet>,
    /// What it was trained on, in words.
    pub description: String,
}

impl PretrainedModel {
    /// The file name in the bucket and in the cache, `<name>.npz`.
    pub fn file(&self) -> String {
        format!("{}.npz", self.name)
    }

    /// The download URL under `base` (normally [`BIT_MODELS_URL`]).
    pub fn url(&self, base: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.file())
    }

    /// The model's configuration (as stated by the catalog).
    pub fn config(&self) -> ResNetV2Config {
        self.architecture.config(self.head_size)
    }

    /// The same weights on the Hugging Face hub, as `hf:` names (converted by timm, or by
    /// transformers for `google/bit-50`), loadable wherever a model is.
    ///
    /// ```
    /// let m = bit_zoo::find("BiT-M-R50x1-ILSVRC2012")?;
    /// assert_eq!(m.hub_names(), ["hf:timm/resnetv2_50x1_bit.goog_in21k_ft_in1k", "hf:google/bit-50"]);
    /// # Ok::<(), bit_zoo::Error>(())
    /// ```
    pub fn hub_names(&self) -> Vec<String> {
        HUB_ALIASES
            .iter()
            .filter(|(name, _)| *name == self.name)
            .map(|(_, repo)| format!("hf:{repo}"))
            .collect()
    }
}

/// Released models and the hub repositories holding them converted: timm's `goog_*` weights
/// (converted from these very files) and transformers' one BiT, `google/bit-50` (converted
/// from timm's BiT-M R50x1 ILSVRC-2012 fine-tune).
const HUB_ALIASES: [(&str, &str); 16] = [
    ("BiT-M-R50x1", "timm/resnetv2_50x1_bit.goog_in21k"),
    ("BiT-M-R50x3", "timm/resnetv2_50x3_bit.goog_in21k"),
    ("BiT-M-R101x1", "timm/resnetv2_101x1_bit.goog_in21k"),
    ("BiT-M-R101x3", "timm/resnetv2_101x3_bit.goog_in21k"),
    ("BiT-M-R152x2", "timm/resnetv2_152x2_bit.goog_in21k"),
    ("BiT-M-R152x4", "timm/resnetv2_152x4_bit.goog_in21k"),
    (
        "BiT-M-R50x1-ILSVRC2012",
        "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k",
    ),
    ("BiT-M-R50x1-ILSVRC2012", "google/bit-50"),
    (
        "BiT-M-R50x3-ILSVRC2012",
        "timm/resnetv2_50x3_bit.goog_in21k_ft_in1k",
    ),
    (
        "BiT-M-R101x1-ILSVRC2012",
        "timm/resnetv2_101x1_bit.goog_in21k_ft_in1k",
    ),
    (
        "BiT-M-R101x3-ILSVRC2012",
        "timm/resnetv2_101x3_bit.goog_in21k_ft_in1k",
    ),
    (
        "BiT-M-R152x2-ILSVRC2012",
        "timm/resnetv2_152x2_bit.goog_in21k_ft_in1k",
    ),
    (
        "BiT-M-R152x4-ILSVRC2012",
        "timm/resnetv2_152x4_bit.goog_in21k_ft_in1k",
    ),
    (
        "distill/R50x1_224",
        "timm/resnetv2_50x1_bit.goog_distilled_in1k",
    ),
    (
        "distill/R152x2_T_224",
        "timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k",
    ),
    (
        "distill/R152x2_T_384",
        "timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384",
    ),
];

/// The released model an `hf:` repository (`ORG/NAME[@REVISION]`) holds, if it is one.
///
/// ```
/// let m = bit_zoo::find_hub_alias("timm/resnetv2_50x1_bit.goog_in21k").unwrap();
/// assert_eq!(m.name, "BiT-M-R50x1");
/// assert!(bit_zoo::find_hub_alias("someone/else").is_none());
/// ```
pub fn find_hub_alias(repo: &str) -> Option<PretrainedModel> {
    let id = repo.split_once('@').map_or(repo, |(id, _)| id);
    HUB_ALIASES
        .iter()
        .find(|(_, alias)| alias.eq_ignore_ascii_case(id))
        .and_then(|(name, _)| find(name).ok())
}

/// A VTAB-1k task: BiT file suffix, classes, HyperRule resolution.
const VTAB_TASKS: [(&str, usize, usize); 19] = [
    ("caltech101", 102, 480),
    ("cifar100", 100, 128),
    ("dtd", 47, 480),
    ("oxford_flowers102", 102, 480),
    ("oxford_iiit_pet", 37, 480),
    ("sun397", 397, 480),
    ("svhn", 10, 128),
    ("patch_camelyon", 2, 480),
    ("eurosat", 10, 128),
    ("resisc45", 45, 480),
    ("diabetic_retinopathy", 5, 480),
    ("clevr-count", 8, 480),
    ("clevr-distance", 6, 480),
    ("dmlab", 6, 480),
    ("kitti-distance", 4, 480),
    ("dsprites-xpos", 16, 128),
    ("dsprites-orientation", 16, 128),
    ("smallnorb-azimuth", 18, 480),
    ("smallnorb-elevation", 9, 480),
];

/// The architectures with VTAB-1k fine-tunes (no R152x2).
const VTAB_ARCHITECTURES: [Architecture; 5] = [
    Architecture::R50x1,
    Architecture::R101x1,
    Architecture::R50x3,
    Architecture::R101x3,
    Architecture::R152x4,
];

/// Per-dataset 128 px teachers: name, classes, dataset.
const DATASET_TEACHERS: [(&str, usize, &str); 4] = [
    ("flowers", 102, "Oxford Flowers-102"),
    ("pet", 37, "Oxford-IIIT Pet"),
    ("food", 101, "Food-101"),
    ("sun", 397, "SUN397"),
];

/// Every released checkpoint: 6 BiT-S, 6 BiT-M, 6 ILSVRC-2012, 285 VTAB-1k, 2 distilled
/// students, 6 teachers and the colab's CIFAR-10 model.
///
/// ```
/// let all = bit_zoo::catalog();
/// assert_eq!(all.len(), 6 + 6 + 6 + 285 + 2 + 6 + 1);
/// ```
pub fn catalog() -> Vec<PretrainedModel> {
    let mut all = upstream();
    all.extend(vtab());
    all.extend(distillation());
    all.push(PretrainedModel {
        name: "BiT-M-R50x1-CIFAR10".into(),
        family: Family::Colab,
        architecture: Architecture::R50x1,
        head_size: 10,
        resolution: 128,
        provenance: Provenance::Release,
        labels: None,
        description: "BiT-M fine-tuned on CIFAR-10 (the official colabs)".into(),
    });
    all
}

/// BiT-S and BiT-M (upstream) and BiT-M fine-tuned on ILSVRC-2012.
fn upstream() -> Vec<PretrainedModel> {
    let mut all = Vec::new();
    for (family, kind, head, labels, data) in [
        (
            Family::BitS,
            "S",
            BIT_S_HEAD_SIZE,
            LabelSet::Ilsvrc2012,
            "pre-trained on ILSVRC-2012",
        ),
        (
            Family::BitM,
            "M",
            BIT_M_HEAD_SIZE,
            LabelSet::Imagenet21k,
            "pre-trained on ImageNet-21k",
        ),
    ] {
        for arch in Architecture::ALL {
            all.push(PretrainedModel {
                name: format!("BiT-{kind}-{arch}"),
                family,
                architecture: arch,
                head_size: head,
                resolution: 224,
                provenance: Provenance::Release,
                labels: Some(labels),
                description: data.to_string(),
            });
        }
    }
    for arch in Architecture::ALL {
        all.push(PretrainedModel {
            name: format!("BiT-M-{arch}-ILSVRC2012"),
            family: Family::Ilsvrc2012,
            architecture: arch,
            head_size: BIT_S_HEAD_SIZE,
            resolution: 480,
            provenance: Provenance::Release,
            labels: Some(LabelSet::Ilsvrc2012),
            description: "BiT-M fine-tuned on ILSVRC-2012".into(),
        });
    }
    all
}

/// The VTAB-1k fine-tunings: five architectures, three runs, nineteen tasks.
fn vtab() -> Vec<PretrainedModel> {
    let mut all = Vec::new();
    for arch in VTAB_ARCHITECTURES {
        for run in 0..3 {
            for (task, classes, resolution) in VTAB_TASKS {
                all.push(PretrainedModel {
                    name: format!("vtab/BiT-M-{arch}-run{run}-{task}"),
                    family: Family::Vtab,
                    architecture: arch,
                    head_size: classes,
                    resolution,
                    provenance: Provenance::Derived,
                    labels: None,
                    description: format!("BiT-M fine-tuned on VTAB-1k {task}, run {run}"),
                });
            }
        }
    }
    all
}

/// The distilled students and their teachers.
fn distillation() -> Vec<PretrainedModel> {
    let mut all = Vec::new();
    for (size, top1) in [(224, "82.8"), (160, "80.5")] {
        all.push(PretrainedModel {
            name: format!("distill/R50x1_{size}"),
            family: Family::Distilled,
            architecture: Architecture::R50x1,
            head_size: BIT_S_HEAD_SIZE,
            resolution: size,
            provenance: Provenance::Release,
            labels: Some(LabelSet::Ilsvrc2012),
            description: format!(
                "R50x1 distilled from BiT-M R152x2 on ILSVRC-2012 ({top1}% top-1)"
            ),
        });
    }
    for (size, top1) in [(224, "83.0"), (384, "84.3")] {
        all.push(PretrainedModel {
            name: format!("distill/R152x2_T_{size}"),
            family: Family::Teacher,
            architecture: Architecture::R152x2,
            head_size: BIT_S_HEAD_SIZE,
            resolution: size,
            provenance: Provenance::Release,
            labels: Some(LabelSet::Ilsvrc2012),
            description: format!("BiT-M R152x2 teacher on ILSVRC-2012 ({top1}% top-1)"),
        });
    }
    for (short, classes, data) in DATASET_TEACHERS {
        all.push(PretrainedModel {
            name: format!("distill/R152x2_T_{short}128"),
            family: Family::Teacher,
            architecture: Architecture::R152x2,
            head_size: classes,
            resolution: 128,
            provenance: Provenance::Derived,
            labels: None,
            description: format!("BiT-M R152x2 teacher on {data}"),
        });
    }
    all
}

/// The canonical spelling of a model name: no `.npz`, no bucket prefix or URL.
fn canonical(name: &str) -> &str {
    let name = name.trim();
    let name = name.strip_suffix(".npz").unwrap_or(name);
    let name = name
        .find("bit_models/")
        .map_or(name, |at| &name[at + "bit_models/".len()..]);
    name.trim_start_matches('/')
}

/// The released model called `name` (case-insensitive; a trailing `.npz` and a
/// `gs://bit_models/` or `https://…/bit_models/` prefix are accepted).
///
/// ```
/// let m = bit_zoo::find("gs://bit_models/distill/r50x1_160.npz")?;
/// assert_eq!((m.name.as_str(), m.resolution), ("distill/R50x1_160", 160));
/// assert!(bit_zoo::find("BiT-L-R50x1").is_err());
/// # Ok::<(), bit_zoo::Error>(())
/// ```
pub fn find(name: &str) -> Result<PretrainedModel> {
    let wanted = canonical(name);
    catalog()
        .into_iter()
        .find(|m| m.name.eq_ignore_ascii_case(wanted))
        .ok_or_else(|| Error::UnknownModel(name.to_string()))
}

/// The models whose name or description contains every whitespace-separated word of
/// `filter` (case-insensitive); all of them for an empty filter.
///
/// ```
/// let dtd = bit_zoo::search("vtab R50x1 dtd");
/// assert_eq!(dtd.len(), 3); // runs 0, 1, 2
/// ```
pub fn search(filter: &str) -> Vec<PretrainedModel> {
    let words: Vec<String> = filter.split_whitespace().map(str::to_lowercase).collect();
    catalog()
        .into_iter()
        .filter(|m| {
            let aliases = m.hub_names().join(" ");
            let text =
                format!("{} {} {} {aliases}", m.name, m.family, m.description).to_lowercase();
            words.iter().all(|w| text.contains(w))
        })
        .collect()
}
