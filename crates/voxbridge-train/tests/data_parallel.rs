//! Data parallelism trains the same model: ranks (threads over a loopback TCP ring) against 1
//! process with the same global batch — per-step losses and the final weights agree, whether
//! each rank holds whole subjects or a subject's share is split over several ranks (more ranks
//! than subjects; one subject fine-tuned on several workers).

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use voxbridge_collective::local_rings;
use voxbridge_model::lowlevel::LowLevelConfig;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::distributed::{Placement, ShardComm, gather_model};
use voxbridge_train::{
    Alone, ClipTargets, StepRecord, SubjectSamples, TeacherTargets, TrainData, TrainObserver, TrainPlan, train,
};

type B = Autodiff<Flex>;

fn config(voxels: &[usize]) -> MindEye2Config {
    MindEye2Config {
        voxels: voxels.to_vec(),
        hidden: 16,
        blocks: 1,
        clip_tokens: 2,
        clip_dim: 8,
        // Dropout masks are drawn per rank's rows, so they cannot equal one process's masks.
        dropout: 0.0,
        backbone_mode: BackboneMode::Released,
        low_level: None,
        prior: Some(PriorConfig::mindeye2(8, 2, 1, 4)),
    }
}

/// A small low-level branch: 2×2 maps of 8 channels upsampled to 2×4×4 latents.
fn with_low_level(mut config: MindEye2Config) -> MindEye2Config {
    config.low_level = Some(LowLevelConfig {
        hidden: 16,
        map_channels: 8,
        map_size: 2,
        latent_channels: 2,
        latent_size: 4,
        block_out_channels: vec![8, 8],
        layers_per_block: 1,
        norm_num_groups: 4,
        projector_width: 8,
        dropout: 0.0,
        norm_eps: 1e-5,
        decoder_norm_eps: 1e-6,
    });
    config
}

/// Subjects (`(voxels, trials)` each) whose voxels are noisy linear images of 40 targets; with
/// 2×4×4 latents and teacher features (`[4, 8]`, the small branch's 2×2 positions × 8, plus 2
/// augmented views) per target when `latents`.
fn data(subjects: &[(usize, usize)], latents: bool) -> TrainData {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let targets: Vec<f32> = (0..40 * 16).map(|_| next()).collect();
    let lowlevel = latents.then(|| ([2, 4, 4], (0..40 * 32).map(|_| next()).collect::<Vec<f32>>()));
    let teacher = latents.then(|| TeacherTargets {
        positions: 4,
        width: 8,
        augs: 2,
        clean: (0..40 * 32).map(|_| next()).collect(),
        aug: (0..40 * 64).map(|_| next()).collect(),
    });
    let subjects = subjects
        .iter()
        .enumerate()
        .map(|(ridge, &(v, trials))| {
            let rows: Vec<usize> = (0..trials).map(|i| (i * 7 + ridge) % 40).collect();
            let voxels = rows
                .iter()
                .flat_map(|&r| (0..v).map(|j| targets[r * 16 + j % 16] + 0.3 * next()).collect::<Vec<_>>())
                .collect();
            SubjectSamples { ridge, subject: ridge as u8 + 2, voxel_count: v, voxels, target_rows: rows }
        })
        .collect();
    TrainData { subjects, targets: ClipTargets { tokens: 2, dim: 8, values: targets, lowlevel, teacher } }
}

#[derive(Default)]
struct Losses(Vec<[f64; 5]>);

impl<B: AutodiffBackend> TrainObserver<B> for Losses {
    fn on_step(&mut self, r: &StepRecord) {
        self.0.push([r.loss, r.clip_loss, r.prior_loss, r.blur_loss, r.blur_cont]);
    }
    fn on_epoch_end(&mut self, _: usize, _: &MindEye2<B>) {}
}

/// Every float parameter by module path.
fn weights(model: &MindEye2<B>) -> Vec<(String, Vec<f32>)> {
    struct Collect(Vec<String>, Vec<(String, Vec<f32>)>);
    impl ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap();
            self.1.push((self.0.join("."), values));
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    model.visit(&mut c);
    c.1
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6)
}

/// A rank's per-step losses, the subjects whose ridges it held, and the gathered model (rank 0).
type RankOutcome = (Vec<[f64; 5]>, Vec<usize>, Option<MindEye2<B>>);

/// Trains `plan` on one process and on `world` ranks from the same initial weights; checks that
/// every rank reports the single process's per-step losses, that each rank holds exactly its
/// own subjects' ridges, and that the model gathered on rank 0 equals the single process's.
/// Returns the single process's per-step losses.
fn same_as_one_process(config: MindEye2Config, data: &TrainData, plan: &TrainPlan, world: usize) -> Vec<[f64; 5]> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 11);
    let initial = MindEye2::<B>::init(&config, &device);
    let _ = weights(&initial); // materialise every (lazily initialised) parameter once, here

    let mut single = Losses::default();
    let one = train(initial.clone(), data, plan, 0.01, None, &mut single, &mut Alone).unwrap();

    let placement = Placement::new(data.subjects.len(), world, plan.per_subject).unwrap();
    let (rings, _) = local_rings(world, std::time::Duration::from_secs(60)).unwrap();
    let results: Vec<RankOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .map(|mut ring| {
                let placement = placement.clone();
                let held = placement.subjects_of(voxbridge_collective::Collective::rank(&ring));
                let model = MindEye2 { ridge: initial.ridge.clone().keep_only(&held), ..initial.clone() };
                let local = TrainData {
                    subjects: held.iter().map(|&s| data.subjects[s].clone()).collect(),
                    targets: data.targets.clone(),
                };
                scope.spawn(move || {
                    let mut comm = ShardComm::new(&mut ring, placement.clone()).unwrap();
                    let mut losses = Losses::default();
                    let trained = train(model, &local, plan, 0.01, None, &mut losses, &mut comm).unwrap();
                    drop(comm);
                    let held = trained.ridge.held();
                    let whole = gather_model(&trained, &mut ring, &placement).unwrap();
                    (losses.0, held, whole)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (rank, (losses, held, whole)) in results.iter().enumerate() {
        assert_eq!(losses.len() as u64, plan.total_steps());
        for (step, (got, want)) in losses.iter().zip(&single.0).enumerate() {
            for k in 0..5 {
                assert!(close(got[k], want[k], 1e-5), "rank {rank} step {step} column {k}: {} vs {}", got[k], want[k]);
            }
        }
        assert_eq!(held, &placement.subjects_of(rank), "rank {rank} holds other ridges than its own");
        assert_eq!(whole.is_some(), rank == 0);
    }
    let gathered = weights(results[0].2.as_ref().unwrap());
    let want = weights(&one);
    assert_eq!(gathered.len(), want.len());
    for ((path, got), (want_path, expected)) in gathered.iter().zip(&want) {
        assert_eq!(path, want_path);
        if path.ends_with("attention.to_k.bias") {
            // A key bias shifts every score of a query equally: softmax ignores it, so its
            // gradient is zero in exact arithmetic and AdamW turns rounding noise (which
            // depends on the summation order over ranks) into steps.
            continue;
        }
        let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{path}: relative difference {worst}");
    }
    single.0
}

#[test]
fn two_ranks_of_one_subject_each_train_the_model_one_process_trains() {
    // 2 subjects × 4 rows, 5 steps per epoch, 4 epochs: BiMixCo for the first, then SoftCLIP.
    let plan = TrainPlan::mindeye2(3, 4, 8, 2, 40, 1e-3, 0.25);
    assert_eq!(plan.total_steps(), 20);
    same_as_one_process(config(&[20, 15]), &data(&[(20, 30), (15, 24)], false), &plan, 2);
}

/// Three ranks for two subjects: subject 0's share is split over ranks 0 and 1 (its ridge
/// gradients summed over those two only), subject 1 is rank 2's. With the low-level branch,
/// whose BiMixCo latents are mixed across shares, and its soft contrastive term over the
/// gathered features of the whole batch.
#[test]
fn three_ranks_for_two_subjects_split_a_share_and_train_the_same_model() {
    let plan = TrainPlan::mindeye2(5, 4, 8, 2, 40, 1e-3, 0.25);
    let data = data(&[(20, 30), (15, 24)], true);
    let losses = same_as_one_process(with_low_level(config(&[20, 15])), &data, &plan, 3);
    assert!(losses.iter().all(|l| l[3].is_finite() && l[4].is_finite() && l[4] > 0.0), "{losses:?}");
    // Without the teacher the term is off (NaN in every rank's records, as in one process).
    let plain = TrainData { targets: ClipTargets { teacher: None, ..data.targets.clone() }, ..data.clone() };
    let losses = same_as_one_process(with_low_level(config(&[20, 15])), &plain, &plan, 2);
    assert!(losses.iter().all(|l| l[3].is_finite() && l[4].is_nan()), "{losses:?}");
}

/// Fine-tuning one subject on two workers: each holds half of every batch and a copy of the
/// one ridge.
#[test]
fn one_subject_on_two_ranks_trains_the_model_one_process_trains() {
    let plan = TrainPlan::mindeye2(7, 3, 6, 1, 30, 1e-3, 0.34);
    assert_eq!(plan.total_steps(), 15);
    same_as_one_process(config(&[20]), &data(&[(20, 30)], false), &plan, 2);
}
