//! Data parallelism trains the same model: 2 ranks (threads over a loopback TCP ring), each
//! holding one subject, against 1 process with the same global batch — per-step losses and the
//! final weights agree.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use voxbridge_collective::local_rings;
use voxbridge_model::prior::PriorConfig;
use voxbridge_model::{BackboneMode, MindEye2, MindEye2Config};
use voxbridge_train::distributed::{ShardComm, assign_subjects, share_subject_weights};
use voxbridge_train::{Alone, ClipTargets, StepRecord, SubjectSamples, TrainData, TrainObserver, TrainPlan, train};

type B = Autodiff<Flex>;

fn config() -> MindEye2Config {
    MindEye2Config {
        voxels: vec![20, 15],
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

/// Two subjects (30 and 24 trials) whose voxels are noisy linear images of 40 targets.
fn data() -> TrainData {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let targets: Vec<f32> = (0..40 * 16).map(|_| next()).collect();
    let subjects = [(0usize, 20usize, 30usize), (1, 15, 24)]
        .into_iter()
        .map(|(ridge, v, trials)| {
            let rows: Vec<usize> = (0..trials).map(|i| (i * 7 + ridge) % 40).collect();
            let voxels = rows
                .iter()
                .flat_map(|&r| (0..v).map(|j| targets[r * 16 + j % 16] + 0.3 * next()).collect::<Vec<_>>())
                .collect();
            SubjectSamples { ridge, subject: ridge as u8 + 2, voxel_count: v, voxels, target_rows: rows }
        })
        .collect();
    TrainData { subjects, targets: ClipTargets { tokens: 2, dim: 8, values: targets, lowlevel: None } }
}

#[derive(Default)]
struct Losses(Vec<[f64; 3]>);

impl<B: AutodiffBackend> TrainObserver<B> for Losses {
    fn on_step(&mut self, r: &StepRecord) {
        self.0.push([r.loss, r.clip_loss, r.prior_loss]);
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
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6)
}

#[test]
fn two_ranks_train_the_model_one_process_trains() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 11);
    let initial = MindEye2::<B>::init(&config(), &device);
    let _ = weights(&initial); // materialise every (lazily initialised) parameter once, here
    let data = data();
    // 2 subjects × 4 rows, 5 steps per epoch, 4 epochs: BiMixCo for the first, then SoftCLIP.
    let plan = TrainPlan::mindeye2(3, 4, 8, 2, 40, 1e-3, 0.25);
    assert_eq!(plan.total_steps(), 20);

    let mut single = Losses::default();
    let one = train(initial.clone(), &data, &plan, 0.01, None, &mut single, &mut Alone).unwrap();

    let assignment = assign_subjects(2, 2).unwrap();
    let shares = vec![plan.per_subject; 2];
    let (rings, _) = local_rings(2, std::time::Duration::from_secs(60)).unwrap();
    let results: Vec<(Vec<[f64; 3]>, MindEye2<B>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = rings
            .into_iter()
            .map(|mut ring| {
                let (model, plan, assignment, shares) = (initial.clone(), &plan, assignment.clone(), shares.clone());
                let mine = assignment[voxbridge_collective::Collective::rank(&ring)].clone();
                let local = TrainData { subjects: data.subjects[mine].to_vec(), targets: data.targets.clone() };
                scope.spawn(move || {
                    let mut comm = ShardComm::new(&mut ring, shares, assignment.clone());
                    let mut losses = Losses::default();
                    let trained = train(model, &local, plan, 0.01, None, &mut losses, &mut comm).unwrap();
                    let whole = share_subject_weights(trained, &mut ring, &assignment).unwrap();
                    (losses.0, whole)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (rank, (losses, _)) in results.iter().enumerate() {
        assert_eq!(losses.len(), 20);
        for (step, (got, want)) in losses.iter().zip(&single.0).enumerate() {
            for k in 0..3 {
                assert!(close(got[k], want[k], 1e-5), "rank {rank} step {step} column {k}: {} vs {}", got[k], want[k]);
            }
        }
    }
    // Shared weights agree on both ranks with the single process; each subject's ridge agrees
    // on the rank that trained it.
    let want = weights(&one);
    for (rank, (_, model)) in results.iter().enumerate() {
        for ((path, got), (_, expected)) in weights(model).iter().zip(&want) {
            let owner = path
                .strip_prefix("ridge.linears.")
                .and_then(|p| p.split('.').next())
                .map(|i| i.parse::<usize>().unwrap());
            if owner.is_some_and(|o| o != rank) {
                continue;
            }
            let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0f32, f32::max);
            assert!(worst <= 1e-4, "rank {rank} {path}: relative difference {worst}");
        }
    }
}
