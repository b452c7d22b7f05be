//! Mixed precision (`voxbridge_model::precision`) on the whole tiny MindEye2.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use common::tiny::{DIR, voxels};
use common::{load_safetensors, torch_randn};
use voxbridge_model::losses::{LossTerms, LossWeights, l1_loss, l2_normalize, soft_clip_loss, soft_cont_loss};
use voxbridge_model::precision::{Autocast, ComputeDtype};
use voxbridge_model::prior::CondKeep;
use voxbridge_model::tensors::HostTensor;
use voxbridge_model::{MindEye2, MindEye2Config};

type B = Autodiff<Flex>;
/// Named forward outputs.
type Outputs = Vec<(&'static str, HostTensor)>;
/// Each parameter's module path and gradient (dtype, values), if it has one.
type ParamGrads = Vec<(String, Option<(DType, HostTensor)>)>;

/// Every input of one training objective of the tiny model with prior and low-level branch.
struct Workload<B: Backend> {
    voxels: Tensor<B, 2>,
    clip_target: Tensor<B, 3>,
    noise: Tensor<B, 3>,
    t: Vec<usize>,
    latent_target: Tensor<B, 4>,
    teacher: Tensor<B, 2>,
    teacher_aug: Tensor<B, 2>,
}

fn tiny_model<B: Backend>(device: &B::Device) -> MindEye2<B> {
    let weights = load_safetensors("mindeye2-tiny-blurry", "model.safetensors");
    let config = MindEye2Config::infer(&weights).unwrap();
    assert!(config.low_level.is_some() && config.prior.is_some());
    MindEye2::from_tensors(&weights, &config, device).unwrap().without_dropout()
}

fn workload<B: Backend>(device: &B::Device) -> Workload<B> {
    let inputs = load_safetensors(DIR, "inputs.safetensors");
    let total = load_safetensors(DIR, "total_loss.safetensors");
    let prior = load_safetensors(DIR, "prior.safetensors");
    let randn =
        |seed: u64, shape: Vec<usize>| HostTensor::new(shape.clone(), torch_randn(seed, shape.iter().product()));
    let features = |seed| l2_normalize(randn(seed, vec![5 * 49, 512]).to_tensor::<B, 2>(device));
    Workload {
        voxels: voxels(&inputs, 0, device),
        clip_target: total.get("input.clip_target").unwrap().to_tensor(device),
        noise: prior.get("loss.noise").unwrap().to_tensor(device),
        t: prior.get("loss.t").unwrap().data.iter().map(|&v| v as usize).collect(),
        latent_target: randn(7, vec![5, 4, 28, 28]).to_tensor(device),
        teacher: features(8),
        teacher_aug: features(9),
    }
}

/// The forward outputs (named) and the Train.ipynb objective.
fn objective<B: Backend>(model: &MindEye2<B>, w: &Workload<B>) -> (Outputs, Tensor<B, 1>) {
    let out = model.forward(0, w.voxels.clone());
    let low = out.low_level.clone().unwrap();
    let prior = model.prior.as_ref().unwrap();
    let (pred, prior_loss) =
        prior.p_losses(w.clip_target.clone(), &w.t, out.backbone.clone(), w.noise.clone(), &CondKeep::all(5));
    let clip = soft_clip_loss(
        l2_normalize(out.clip_voxels.clone().flatten::<2>(1, 2)),
        l2_normalize(w.clip_target.clone().flatten::<2>(1, 2)),
        0.006,
    );
    let student = l2_normalize(low.blurry_features.clone().flatten::<2>(0, 1));
    let terms = LossTerms {
        prior: Some(prior_loss),
        clip,
        blur_l1: Some(l1_loss(low.blurry_latent.clone(), w.latent_target.clone())),
        blur_cont: Some(soft_cont_loss(student, w.teacher.clone(), w.teacher_aug.clone(), 0.2)),
    };
    let total = terms.total(&LossWeights::default());
    let host = |t| HostTensor::from_tensor(t);
    let outputs = vec![
        ("ridge_out", HostTensor::from_tensor(out.ridge_out)),
        ("backbone", HostTensor::from_tensor(out.backbone)),
        ("clip_voxels", HostTensor::from_tensor(out.clip_voxels)),
        ("blurry_latent", HostTensor::from_tensor(low.blurry_latent)),
        ("blurry_features", HostTensor::from_tensor(low.blurry_features)),
        ("prior_pred", HostTensor::from_tensor(pred)),
        ("loss_prior", host(terms.prior.clone().unwrap())),
        ("loss_clip", host(terms.clip.clone())),
        ("loss_blur_l1", host(terms.blur_l1.clone().unwrap())),
        ("loss_blur_cont", host(terms.blur_cont.clone().unwrap())),
        ("loss_total", host(total.clone())),
    ];
    (outputs, total)
}

/// Every parameter's gradient by module path, with its dtype.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    out: ParamGrads,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param.val().grad(self.grads).map(|g| (g.dtype(), HostTensor::from_tensor(g)));
        self.out.push((self.path.join("."), grad));
    }
}

fn gradients(model: &MindEye2<B>, total: Tensor<B, 1>) -> ParamGrads {
    let grads = total.backward();
    let mut visitor = Grads::<B> { grads: &grads, path: Vec::new(), out: Vec::new() };
    model.visit(&mut visitor);
    visitor.out
}

/// Forward outputs and gradients of the objective with `mode` entered (`None`: no scope).
fn run(mode: Option<ComputeDtype>) -> (Outputs, ParamGrads) {
    let device = Default::default();
    let model = tiny_model::<B>(&device);
    let work = workload(&device);
    let (outputs, total) = {
        let _guard = mode.map(Autocast::enter);
        objective(&model, &work)
    };
    (outputs, gradients(&model, total))
}

/// `max |got − want| / max |want|`.
fn rel_dev(got: &HostTensor, want: &HostTensor) -> f32 {
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if diff == 0.0 { 0.0 } else { diff / scale }
}

const BF16_ROUNDING: f32 = 1.0 / 256.0; // 2^-8, bf16's unit roundoff (8 significant bits)

#[test]
fn f32_mode_is_bit_identical_to_no_scope() {
    // The helpers call `Linear::forward`, `Tensor::matmul` and `Conv2d::forward` themselves in
    // F32 mode, so this is the computation from before mixed precision existed (the parity tests
    // against the PyTorch reference and the golden losses pin it too).
    let (plain, plain_grads) = run(None);
    let (f32_mode, f32_grads) = run(Some(ComputeDtype::F32));
    let bits = |t: &HostTensor| (t.shape.clone(), t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    for ((name, a), (_, b)) in plain.iter().zip(&f32_mode) {
        assert!(bits(a) == bits(b), "{name} differs");
    }
    for ((name, a), (_, b)) in plain_grads.iter().zip(&f32_grads) {
        let (a, b) = (a.as_ref().map(|(d, t)| (*d, bits(t))), b.as_ref().map(|(d, t)| (*d, bits(t))));
        assert!(a == b, "gradient of {name} differs");
    }
    assert!(plain_grads.iter().flat_map(|(_, g)| g).all(|(dtype, _)| *dtype == DType::F32));
}

/// Longest chain of matrix products from the input to each output (ridge → backbone_linear →
/// 3 × clip_proj; blin1 → 25 convolutions / attention products in the decoder; 3 convolutions in
/// the maps projector; the prior adds 2 layers × (to_q, q·kᵀ, attn·v, to_out, proj_in,
/// proj_out) + project_out to the backbone's 2).
const PRODUCTS: [(&str, f32); 6] = [
    ("ridge_out", 1.0),
    ("backbone", 2.0),
    ("clip_voxels", 5.0),
    ("blurry_latent", 25.0),
    ("blurry_features", 4.0),
    ("prior_pred", 15.0),
];

#[test]
fn bf16_forward_is_finite_and_within_bf16_rounding_of_f32() {
    let (want, _) = run(None);
    for mode in [ComputeDtype::Bf16, ComputeDtype::Bf16Emulated] {
        let (got, _) = run(Some(mode));
        assert_eq!(voxbridge_model::precision::current(), ComputeDtype::F32, "the scope ended");
        for ((name, got), (_, want)) in got.iter().zip(&want) {
            assert!(got.data.iter().all(|v| v.is_finite()), "{mode} {name} is not finite");
            let dev = rel_dev(got, want);
            // Each product rounds both operands and its result to bf16: ≤ 3·2⁻⁸ of the scale of
            // |a|·|b| summed over the reduction, whatever its length K (the rounding is relative
            // per term; random signs make it ~√K smaller than the worst case, not larger). Norms
            // keep the scale, so errors add along a chain of L products: 3·L·2⁻⁸. The losses are
            // means over all entries, in which the entry errors partly cancel: 2.5·2⁻⁸ (1e-2).
            let bound = match PRODUCTS.iter().find(|(n, _)| n == name) {
                Some((_, chain)) => 3.0 * chain * BF16_ROUNDING,
                None => 2.5 * BF16_ROUNDING,
            };
            println!("{mode:13} forward {name:15} max|Δ|/max|f32| = {dev:.2e} (bound {bound:.2e})");
            assert!(dev > 0.0, "{mode} {name}: bf16 rounding must show");
            assert!(dev <= bound, "{mode} {name}: relative deviation {dev:e} above {bound:e}");
        }
    }
}

#[test]
fn bf16_gradients_arrive_as_f32_for_every_parameter_and_close_to_f32() {
    let (_, want) = run(None);
    let held = want.iter().filter(|(_, g)| g.is_some()).count();
    assert!(held > 150, "{held} parameters with gradients");
    for mode in [ComputeDtype::Bf16, ComputeDtype::Bf16Emulated] {
        let (_, got) = run(Some(mode));
        let mut worst = (0f32, String::new());
        for ((name, got), (want_name, want)) in got.iter().zip(&want) {
            assert_eq!(name, want_name);
            let (Some((dtype, got)), Some((_, want))) = (got, want) else {
                assert_eq!(got.is_some(), want.is_some(), "{mode} {name}: a gradient appeared or vanished");
                continue;
            };
            assert_eq!(*dtype, DType::F32, "{mode} {name}: the f32 master weight gets an f32 gradient");
            assert!(got.data.iter().all(|v| v.is_finite()), "{mode} {name}");
            // Relative to the gradient's own scale, floored at 1e-6: the biases in front of a
            // GroupNorm with one channel per group and the VAE attention's key bias have zero
            // gradient in theory (f32 gives noise ≤ 1e-9, bf16 noise ≤ 1.1e-7).
            let scale = want.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let diff = got.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            if diff / scale > worst.0 {
                worst = (diff / scale, name.clone());
            }
            // Forward and backward products on the prior's 15-product chain: 6·15·2⁻⁸ = 0.35.
            // The gradient of an MSE is a difference (pred − x0), so the forward deviation of
            // prior_pred reappears relative to a smaller quantity.
            assert!(diff / scale <= 0.35, "{mode} {name}: gradient deviation {:e}", diff / scale);
        }
        println!("{mode:13} gradients: worst max|Δ|/max|f32| = {:.2e} ({})", worst.0, worst.1);
    }
}
