//! The written-out training step on a small synthetic problem: it learns, it is deterministic
//! in (seed, step), both contrastive phases run, and a non-finite loss stops it with the step and
//! the term named.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use voxbridge_model::losses::LossWeights;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::{AdamW, Batch, ContrastivePhase, StepReport, SubjectBatch, mindeye2_weight_decay, train_step};

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
            }
        })
        .collect();
    Batch { subjects }
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
            phase,
            &LossWeights::default(),
            (3e-3, 0.9),
            (7, step),
            &mindeye2_weight_decay,
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
        ContrastivePhase::SoftClip { temperature: 0.05 },
        &LossWeights::default(),
        (1e-3, 0.9),
        (0, 17),
        &mindeye2_weight_decay,
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
                phase,
                &LossWeights::default(),
                (3e-3, 0.9),
                (1, step),
                &mindeye2_weight_decay,
                &mut voxbridge_train::Alone,
            )
            .expect("finite losses");
            model = next;
            assert_eq!(report.prior, None);
            blur.push(report.blur.expect("the low-level loss is computed"));
        }
        let (first, last) = (blur[..3].iter().sum::<f64>() / 3.0, blur[27..].iter().sum::<f64>() / 3.0);
        assert!(last < 0.9 * first, "{phase:?}: low-level L1 did not fall: {first} → {last}");
    }
}
