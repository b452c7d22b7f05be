//! The written-out training step on a small synthetic problem: it learns, it is deterministic
//! in (seed, step), both contrastive phases run, and a non-finite loss stops it with the step and
//! the term named; the low-level branch trains its L1 and, with teacher features, its soft
//! contrastive term (equal to `soft_cont_loss` of the branch's features and the picked
//! teachers, the maps projector's only gradient).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use voxbridge_model::losses::LossWeights;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::{
    AdamW, Batch, ContrastivePhase, StepContext, StepReport, SubjectBatch, mindeye2_weight_decay, train_step,
};

type B = Autodiff<Flex>;

/// burn's random initialisation uses one process-wide RNG; tests that seed it must not interleave.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn config() -> MindEye2Config {
    MindEye2Config {
        voxels: vec![20, 15],
        hidden: 16,
        blocks: 1,
        clip_tokens: 2,
        clip_dim: 8,
        dropout: 0.0,
        backbone_mode: BackboneMode::Released,
        low_level: None,
        prior: Some(PriorConfig::mindeye2(8, 2, 1, 4)),
    }
}

/// Fixed data: targets are a fixed random linear map of each subject's voxels.
fn batch() -> Batch<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 5);
    let subjects = [(0usize, 20usize), (1, 15)]
        .into_iter()
        .map(|(subject, v)| {
            let voxels = Tensor::<B, 2>::random([6, v], Distribution::Normal(0.0, 1.0), &device);
            let map = Tensor::<B, 2>::random([v, 16], Distribution::Normal(0.0, 0.3), &device);
            SubjectBatch {
                subject,
                voxels: voxels.clone(),
                clip_target: voxels.matmul(map).reshape([6, 2, 8]),
                blur_target: None,
                teacher: None,
            }
        })
        .collect();
    Batch { subjects }
}

/// Step `step` of a run seeded `seed`: `phase`, learning rate `lr`, β1 0.9, MindEye2's decay.
fn context(weights: &LossWeights, phase: ContrastivePhase, lr: f64, (seed, step): (u64, u64)) -> StepContext<'_> {
    StepContext { seed, step, phase, loss_weights: weights, lr, beta1: 0.9, weight_decay: &mindeye2_weight_decay }
}

fn run(steps: u64, phase: ContrastivePhase) -> Vec<StepReport> {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 1);
    let mut model = MindEye2::<B>::init(&config(), &device);
    let mut optim = AdamW::default();
    let data = batch();
    let mut reports = Vec::new();
    for step in 0..steps {
        let (next, report) = train_step(
            model,
            &mut optim,
            data.clone(),
            &context(&LossWeights::default(), phase, 3e-3, (7, step)),
            &mut voxbridge_train::Alone,
        )
        .expect("finite losses");
        model = next;
        reports.push(report);
    }
    reports
}

#[test]
fn softclip_phase_learns_and_is_deterministic() {
    let reports = run(40, ContrastivePhase::SoftClip { temperature: 0.05 });
    let first = reports[..5].iter().map(|r| r.clip).sum::<f64>() / 5.0;
    let last = reports[35..].iter().map(|r| r.clip).sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "SoftCLIP loss did not fall: {first} → {last}");
    assert!(reports.iter().all(|r| r.prior.is_some_and(f64::is_finite)));
    assert_eq!(run(40, ContrastivePhase::SoftClip { temperature: 0.05 }), reports, "same seed, same losses");
}

#[test]
fn bimixco_phase_runs() {
    let reports = run(10, ContrastivePhase::BiMixCo { temperature: 0.05 });
    assert!(reports.iter().all(|r| r.total.is_finite() && r.clip > 0.0));
}

#[test]
fn a_non_finite_loss_names_the_step_and_term() {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let model = MindEye2::<B>::init(&config(), &device);
    let mut data = batch();
    data.subjects[0].voxels = data.subjects[0].voxels.clone() * f32::NAN;
    let err = train_step(
        model,
        &mut AdamW::default(),
        data,
        &context(&LossWeights::default(), ContrastivePhase::SoftClip { temperature: 0.05 }, 1e-3, (0, 17)),
        &mut voxbridge_train::Alone,
    )
    .unwrap_err();
    let voxbridge_train::StepError::NonFinite(err) = err else { panic!("{err}") };
    assert_eq!(err.step, 17);
    assert!(err.to_string().starts_with("step 17: loss `total` is NaN"), "{err}");
}

/// The low-level branch's L1 to fixed latents falls, in both phases (BiMixCo mixes the latents
/// like the voxels).
#[test]
fn low_level_l1_is_trained_in_both_phases() {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 3);
    let mut low = voxbridge_model::lowlevel::LowLevelConfig::mindeye2(16);
    low.latent_size = 7;
    low.block_out_channels = vec![32];
    low.projector_width = 32;
    let config = MindEye2Config { low_level: Some(low), prior: None, ..config() };
    let mut data = batch();
    for share in &mut data.subjects {
        let latent = Tensor::<B, 4>::random([6, 4, 7, 7], Distribution::Normal(0.0, 1.0), &device);
        share.blur_target = Some(latent);
    }
    for phase in [ContrastivePhase::BiMixCo { temperature: 0.05 }, ContrastivePhase::SoftClip { temperature: 0.05 }] {
        let mut model = MindEye2::<B>::init(&config, &device);
        let mut optim = AdamW::default();
        let mut blur = Vec::new();
        for step in 0..30 {
            let (next, report) = train_step(
                model,
                &mut optim,
                data.clone(),
                &context(&LossWeights::default(), phase, 3e-3, (1, step)),
                &mut voxbridge_train::Alone,
            )
            .expect("finite losses");
            model = next;
            assert_eq!(report.prior, None);
            assert_eq!(report.blur_cont, None, "no teacher features: the soft contrastive term is off");
            blur.push(report.blur.expect("the low-level loss is computed"));
        }
        let (first, last) = (blur[..3].iter().sum::<f64>() / 3.0, blur[27..].iter().sum::<f64>() / 3.0);
        assert!(last < 0.9 * first, "{phase:?}: low-level L1 did not fall: {first} → {last}");
    }
}

/// The small low-level branch of these tests: a 7×7 map of 64 channels → 4×7×7 latents, and
/// `[49, 32]` features; no dropout, so a forward outside the step sees what the step sees.
fn low_level_config() -> MindEye2Config {
    let mut low = voxbridge_model::lowlevel::LowLevelConfig::mindeye2(16);
    low.latent_size = 7;
    low.block_out_channels = vec![32];
    low.projector_width = 32;
    low.dropout = 0.0;
    MindEye2Config { low_level: Some(low), prior: None, ..config() }
}

/// [`batch`] with latents `[6, 4, 7, 7]` and teacher views `[6, 1 + 2, 49, 32]` per subject;
/// also the teacher values of the 12 rows, `[12, 3·49·32]`.
fn teacher_batch() -> (Batch<B>, Vec<f32>) {
    let device = Default::default();
    let mut data = batch();
    let mut host = Vec::new();
    for share in &mut data.subjects {
        share.blur_target = Some(Tensor::<B, 4>::random([6, 4, 7, 7], Distribution::Normal(0.0, 1.0), &device));
        let teacher = Tensor::<B, 4>::random([6, 3, 49, 32], Distribution::Normal(0.0, 1.0), &device);
        host.extend(teacher.clone().into_data().to_vec::<f32>().unwrap());
        share.teacher = Some(teacher);
    }
    (data, host)
}

fn one_step(model: &MindEye2<B>, data: &Batch<B>, phase: ContrastivePhase, step: u64) -> (MindEye2<B>, StepReport) {
    train_step(
        model.clone(),
        &mut AdamW::default(),
        data.clone(),
        &context(&LossWeights::default(), phase, 1e-3, (9, step)),
        &mut voxbridge_train::Alone,
    )
    .expect("finite losses")
}

/// The step's `blur_cont` is `soft_cont_loss(l2norm(b_aux rows), l2norm(clean teacher rows),
/// l2norm(picked augmented rows), 0.2)` over the batch's `[12·49, 32]` rows, in both phases:
/// during BiMixCo the branch sees the mixed voxels but the teachers stay each row's own image's
/// (Train.ipynb computes them from the unmixed images).
#[test]
fn blur_cont_is_soft_cont_loss_of_the_branch_features_and_the_picked_teachers() {
    use burn::tensor::TensorData;
    use rand::SeedableRng;
    use voxbridge_model::losses::{l2_normalize, mixco_voxels, soft_cont_loss};

    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 4);
    let model = MindEye2::<B>::init(&low_level_config(), &device);
    let (data, teacher) = teacher_batch();
    let (view, rows) = (49 * 32, 12);
    for (phase, step) in
        [(ContrastivePhase::SoftClip { temperature: 0.05 }, 3u64), (ContrastivePhase::BiMixCo { temperature: 0.05 }, 4)]
    {
        // The step's draws: BiMixCo's per-share draw comes first from the (seed, step) stream.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(voxbridge_seed::step_draws(9, step));
        let ridge_outs: Vec<Tensor<B, 2>> = data
            .subjects
            .iter()
            .map(|share| {
                let voxels = match phase {
                    ContrastivePhase::BiMixCo { .. } => {
                        mixco_voxels(share.voxels.clone(), &voxbridge_train::mixco_draw(6, &mut rng))
                    }
                    ContrastivePhase::SoftClip { .. } => share.voxels.clone(),
                };
                model.ridge.forward(share.subject, voxels)
            })
            .collect();
        let out = model.backbone.forward(Tensor::cat(ridge_outs, 0));
        let features = model.low_level.as_ref().unwrap().forward(out.mixer_out).blurry_features; // [12, 49, 32]
        let picks = voxbridge_train::teacher_pick(9, step, rows, 2);
        let (mut clean, mut aug) = (Vec::new(), Vec::new());
        for (i, pick) in picks.iter().enumerate() {
            let image = &teacher[i * 3 * view..(i + 1) * 3 * view];
            clean.extend_from_slice(&image[..view]);
            aug.extend_from_slice(&image[(1 + pick) * view..(2 + pick) * view]);
        }
        let rows_of =
            |v: Vec<f32>| l2_normalize(Tensor::<B, 2>::from_data(TensorData::new(v, [rows * 49, 32]), &device));
        let expected = soft_cont_loss(
            l2_normalize(features.reshape([rows * 49, 32])),
            rows_of(clean),
            rows_of(aug),
            voxbridge_train::BLUR_CONT_TEMPERATURE,
        )
        .into_scalar() as f64;

        let (_, report) = one_step(&model, &data, phase, step);
        let got = report.blur_cont.expect("teacher features turn the term on");
        assert!((got - expected).abs() <= 1e-5 * expected.abs(), "{phase:?}: {got} vs {expected}");
        // total = 1·clip + 0.5·(L1 + 0.1·cont) (no prior)
        let total = report.clip + 0.5 * (report.blur.unwrap() + 0.1 * got);
        assert!((report.total - total).abs() <= 1e-5 * total.abs(), "{} vs {total}", report.total);
    }
    assert_eq!(voxbridge_train::BLUR_CONT_TEMPERATURE, 0.2);
    // Every view is picked over steps, for every row.
    let picks: std::collections::HashSet<usize> =
        (0..20).flat_map(|s| voxbridge_train::teacher_pick(9, s, 12, 2)).collect();
    assert_eq!(picks.len(), 2);
    assert_ne!(voxbridge_train::teacher_pick(9, 0, 12, 2), voxbridge_train::teacher_pick(9, 1, 12, 2));
}

/// `b_maps_projector` feeds only the soft contrastive term: without teacher features one step
/// leaves it as it was (no gradient, no optimizer state); with them it moves, and training
/// lowers the term.
#[test]
fn the_maps_projector_learns_only_through_the_soft_contrastive_term() {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 6);
    let model = MindEye2::<B>::init(&low_level_config(), &device);
    let (with, _) = teacher_batch();
    let mut without = with.clone();
    without.subjects.iter_mut().for_each(|s| s.teacher = None);
    let projector = |m: &MindEye2<B>| {
        let p = &m.low_level.as_ref().unwrap().b_maps_projector;
        [p.conv0.weight.val(), p.conv3.weight.val(), p.conv6.weight.val()]
            .map(|w| w.into_data().to_vec::<f32>().unwrap())
    };
    let phase = ContrastivePhase::SoftClip { temperature: 0.05 };
    // Materialise the lazily initialised weights once, before the model is cloned.
    let _ = model.forward(0, with.subjects[0].voxels.clone());
    let before = projector(&model);
    let (plain, report) = one_step(&model, &without, phase, 1);
    assert_eq!(report.blur_cont, None);
    assert!(report.blur.is_some(), "the L1 still trains the rest of the branch");
    assert!(projector(&plain) == before, "the projector must get no gradient from the other losses");
    let (taught, report) = one_step(&model, &with, phase, 1);
    assert!(report.blur_cont.is_some());
    for (k, (after, was)) in projector(&taught).iter().zip(&before).enumerate() {
        assert!(after != was, "projector conv {k} did not move with the soft contrastive term");
    }

    let mut model = model;
    let mut optim = AdamW::default();
    let mut cont = Vec::new();
    for step in 0..25 {
        let (next, report) = train_step(
            model,
            &mut optim,
            with.clone(),
            &context(&LossWeights::default(), phase, 3e-3, (2, step)),
            &mut voxbridge_train::Alone,
        )
        .expect("finite losses");
        model = next;
        cont.push(report.blur_cont.unwrap());
    }
    let (first, last) = (cont[..3].iter().sum::<f64>() / 3.0, cont[22..].iter().sum::<f64>() / 3.0);
    assert!(last < first, "the soft contrastive term did not fall: {first} → {last}");
}

/// Teacher features of another size than the branch makes are an error naming both.
#[test]
fn teacher_features_that_do_not_fit_the_branch_are_an_error() {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let model = MindEye2::<B>::init(&low_level_config(), &device);
    let (mut data, _) = teacher_batch();
    for share in &mut data.subjects {
        share.teacher = Some(Tensor::<B, 4>::zeros([6, 3, 49, 16], &device));
    }
    let err = train_step(
        model,
        &mut AdamW::default(),
        data,
        &context(&LossWeights::default(), ContrastivePhase::SoftClip { temperature: 0.05 }, 1e-3, (0, 5)),
        &mut voxbridge_train::Alone,
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("step 5:") && err.contains("[49, 16]") && err.contains("[49, 32]"), "{err}");
}
