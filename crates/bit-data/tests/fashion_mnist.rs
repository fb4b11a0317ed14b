//! The real Fashion-MNIST files of Debian's `dataset-fashion-mnist` (installed by `.ci/run`):
//! loading, few-shot sampling and deterministic, resumable batch streams.

use std::path::Path;
use std::sync::Arc;

use bit_data::{
    BatchStream, DEBIAN_FASHION_MNIST_DIR, DataError, FASHION_MNIST_CLASSES, ImageDataset,
    InMemoryDataset, LoaderConfig, Mixup, Preprocess, Split, few_shot, load_idx,
};
use burn::tensor::{Device, Tensor};

fn fashion(split: Split) -> InMemoryDataset {
    let dir = Path::new(DEBIAN_FASHION_MNIST_DIR);
    assert!(
        dir.is_dir(),
        "{} is missing: apt-get install dataset-fashion-mnist",
        dir.display()
    );
    load_idx(dir, split, Some(&FASHION_MNIST_CLASSES)).unwrap()
}

#[test]
fn loads_both_splits_with_balanced_classes() {
    let train = fashion(Split::Train);
    let test = fashion(Split::Valid);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.classes()[9], "Ankle boot");
    let mut counts = [0usize; 10];
    (0..train.len()).for_each(|i| counts[train.label(i)] += 1);
    assert_eq!(counts, [6000; 10]);
    let img = train.image(0).unwrap();
    assert_eq!(img.dimensions(), (28, 28));
    assert!(
        img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
        "grey expanded to RGB"
    );
    assert_eq!(train.image_size(), Some((28, 28)));
}

#[test]
fn few_shot_is_seeded_and_balanced() {
    let train: Arc<dyn ImageDataset> = Arc::new(fashion(Split::Train));
    let a = few_shot(train.clone(), 5, 42).unwrap();
    let b = few_shot(train.clone(), 5, 42).unwrap();
    let c = few_shot(train.clone(), 5, 43).unwrap();
    assert_eq!(a.indices(), b.indices());
    assert_ne!(a.indices(), c.indices());
    assert_eq!(a.len(), 50);
    for class in 0..10 {
        assert_eq!((0..50).filter(|&i| a.label(i) == class).count(), 5);
    }
    // Pinned: the draw must not change between machines or releases.
    assert_eq!(&a.indices()[..5], [25466, 47643, 38671, 39578, 50954]);
}

#[test]
fn k_larger_than_a_class_names_the_class() {
    let small = InMemoryDataset::new(
        vec!["many".into(), "few".into()],
        [1, 1, 1],
        vec![0; 6],
        vec![0, 0, 0, 0, 1, 1],
    )
    .unwrap();
    match few_shot(Arc::new(small), 3, 0).unwrap_err() {
        DataError::NotEnoughExamples {
            class,
            available,
            requested,
        } => assert_eq!((class.as_str(), available, requested), ("few", 2, 3)),
        other => panic!("expected NotEnoughExamples, got {other:?}"),
    }
}

#[test]
fn an_absurd_k_is_refused_before_anything_is_sized_by_it() {
    // K x classes indices would be 80 GB (and K = usize::MAX / 2 overflows the product): the
    // process used to abort on the allocation before the class sizes were looked at.
    let test: Arc<dyn ImageDataset> = Arc::new(fashion(Split::Valid));
    for k in [999_999_999, usize::MAX / 2] {
        match few_shot(test.clone(), k, 0).unwrap_err() {
            DataError::NotEnoughExamples {
                class,
                available,
                requested,
            } => assert_eq!(
                (class.as_str(), available, requested),
                ("T-shirt/top", 1000, k)
            ),
            other => panic!("expected NotEnoughExamples, got {other:?}"),
        }
    }
}

fn first_batches(
    ds: Arc<dyn ImageDataset>,
    workers: usize,
    first: u64,
    n: usize,
) -> Vec<bit_data::Batch> {
    let pre = Preprocess::Train {
        precrop: 40,
        crop: 32,
        flip: true,
    };
    let config = LoaderConfig::new(16).with_workers(workers).with_seed(7);
    BatchStream::train(ds, pre, config, first)
        .unwrap()
        .take(n)
        .map(|b| b.unwrap())
        .collect()
}

#[test]
fn batches_are_deterministic_across_worker_counts_and_resumable() {
    let train: Arc<dyn ImageDataset> =
        Arc::new(few_shot(Arc::new(fashion(Split::Train)), 5, 0).unwrap());
    // 50 examples in batches of 16: 4 batches an epoch, the last short.
    let one = first_batches(train.clone(), 1, 0, 9);
    let three = first_batches(train.clone(), 3, 0, 9);
    assert_eq!(one, three);
    assert_eq!(
        one.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [16, 16, 16, 2, 16, 16, 16, 2, 16]
    );
    // Each epoch sees every example once, reshuffled.
    let epoch = |e: usize| {
        let mut labels: Vec<usize> = one[e * 4..e * 4 + 4]
            .iter()
            .flat_map(|b| b.labels.clone())
            .collect();
        labels.sort();
        labels
    };
    assert_eq!(epoch(0), epoch(1));
    assert_ne!(one[0].labels, one[4].labels);
    // Resuming at batch 6 continues the same stream.
    assert_eq!(first_batches(train.clone(), 2, 6, 3), one[6..9].to_vec());
    // A set smaller than the batch is sampled with replacement.
    let tiny: Arc<dyn ImageDataset> = Arc::new(few_shot(train, 1, 0).unwrap());
    assert_eq!(
        first_batches(tiny, 2, 0, 2)
            .iter()
            .map(|b| b.len())
            .collect::<Vec<_>>(),
        [16, 16]
    );
}

#[test]
fn eval_stream_covers_the_split_once_in_order() {
    let test = Arc::new(fashion(Split::Valid));
    let stream =
        BatchStream::eval(test.clone(), 28, LoaderConfig::new(3000).with_workers(2)).unwrap();
    assert_eq!(stream.num_batches(), Some(4));
    let batches: Vec<_> = stream.map(|b| b.unwrap()).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [3000, 3000, 3000, 1000]
    );
    assert_eq!(batches[3].labels[999], test.label(9999));
    // Resizing 28 -> 28 is the identity: pixel values survive exactly.
    let raw = test.image(0).unwrap();
    assert_eq!(
        batches[0].images[28 + 5],
        f32::from(raw.get_pixel(5, 1).0[0]) / 127.5 - 1.0
    );
}

#[test]
fn mixup_pairs_examples_within_a_batch() {
    let device = Device::flex();
    let batch = first_batches(
        Arc::new(few_shot(Arc::new(fashion(Split::Train)), 2, 0).unwrap()),
        1,
        0,
        1,
    )
    .remove(0);
    let (x, y) = batch.to_tensors(&device);
    let mixup = Mixup::new(0.1, 3).unwrap();
    let mut step = mixup.step(0);
    let lambda = step.lambda;
    let (mixed, partner) = step.mix(x.clone(), y.clone());
    assert_eq!(mixed.dims(), x.dims());
    // Mixing is a convex combination: the per-batch mean is preserved exactly in expectation
    // and pixel values stay in range.
    let scalar = |t: Tensor<1>| t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0];
    let mean = |t: Tensor<4>| scalar(t.mean());
    assert!((mean(mixed.clone()) - mean(x)).abs() < 1e-4);
    assert!(scalar(mixed.clone().max()) <= 1.0 && scalar(mixed.min()) >= -1.0);
    let mut a: Vec<i64> = y.into_data().convert::<i64>().try_to_vec().unwrap();
    let mut b: Vec<i64> = partner.into_data().convert::<i64>().try_to_vec().unwrap();
    a.sort();
    b.sort();
    assert_eq!(a, b, "partner labels are a permutation");
    assert!((0.0..=1.0).contains(&lambda));
}
