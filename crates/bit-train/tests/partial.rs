//! Partial fine-tuning (`--train`, [`ResNetV2::with_trainable`]) on the golden tiny model:
//! frozen parameters never move and get no gradient or optimizer state; the trained part takes
//! exactly the update full fine-tuning gives it.

use bit_device::devices_from_spec;
use bit_model::{ResNetV2, Trainable};
use bit_testkit::parameter_values;
use bit_train::{DataParallel, Devices, Targets, bit_optimizer};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

fn golden() -> ResNetV2 {
    let weights = bit_testkit::golden_file("tiny.weights.npz");
    ResNetV2::from_npz(weights, &Device::flex().autodiff()).unwrap()
}

/// One SGD step (momentum 0.9, lr 0.003) on a fixed batch of 4: the model, how many
/// parameters got a gradient, and how many tensors the optimizer keeps.
fn one_step(model: ResNetV2) -> (ResNetV2, usize, usize) {
    let devices = Devices::new(devices_from_spec("cpu").unwrap()).unwrap();
    let main = devices.main().clone();
    main.seed(7);
    let x = Tensor::<4>::random([4, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &main);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 3, 5, 7], [4]), &main);
    let mut parallel = DataParallel::new(devices, model, bit_optimizer());
    parallel.backward(
        x,
        &Targets {
            labels,
            mixed: None,
        },
        1.0,
    );
    let grads = parallel.all_reduce();
    let graded = grads.len();
    parallel.step(0.003, grads);
    let (_, model, optim) = parallel.into_parts();
    (model, graded, optim.to_record().len())
}

/// The parameters of each part, from the stem to the classifier: root, stages 1-4, pre-head
/// norm, classifier.
fn parts(model: &ResNetV2) -> Vec<Vec<f32>> {
    let mut parts = vec![parameter_values(&model.root)];
    parts.extend(model.body.iter().map(parameter_values));
    parts.push(parameter_values(&model.head.gn));
    parts.push(parameter_values(&model.head.fc));
    parts
}

#[test]
fn frozen_parts_never_move_and_the_trained_part_steps_as_in_full_fine_tuning() {
    let before = parts(&golden());
    let (full, all_graded, all_state) = one_step(golden());
    let full = parts(&full);
    // Every part of full fine-tuning moves (so the comparisons below can fail).
    for (i, (a, b)) in full.iter().zip(&before).enumerate() {
        assert_ne!(a, b, "part {i} of full fine-tuning did not move");
    }
    // One gradient and one momentum buffer per parameter tensor: the stem kernel, 10 per stage
    // (3 norms of 2, 3 kernels, the projection), the pre-head norm's 2 and the classifier's 2.
    assert_eq!((all_graded, all_state), (45, 45));

    // (trainable, index of the first trained part, parameter tensors trained)
    let cases = [
        (Trainable::Head, 6, 2),
        (Trainable::Stage4, 4, 10 + 4),
        (Trainable::Stage1, 1, 44),
    ];
    for (trainable, first, tensors) in cases {
        let (partial, graded, state) = one_step(golden().with_trainable(trainable));
        assert_eq!(graded, tensors, "{trainable}: parameters with a gradient");
        assert_eq!(state, tensors, "{trainable}: optimizer state tensors");
        for (i, values) in parts(&partial).iter().enumerate() {
            if i < first {
                assert_eq!(values, &before[i], "{trainable}: frozen part {i} moved");
            } else {
                // The same forward and the same backward down to this part: the same numbers.
                assert_eq!(
                    values, &full[i],
                    "{trainable}: part {i} differs from full fine-tuning"
                );
            }
        }
    }
}

#[test]
fn all_makes_a_frozen_model_trainable_again() {
    let before = parts(&golden());
    let model = golden()
        .with_trainable(Trainable::Head)
        .with_trainable(Trainable::All);
    let (model, graded, _) = one_step(model);
    let (_, full_graded, _) = one_step(golden());
    assert_eq!(graded, full_graded);
    assert_ne!(parts(&model)[0], before[0], "the stem trains again");
}
