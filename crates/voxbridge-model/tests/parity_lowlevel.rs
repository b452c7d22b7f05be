//! Parity of the low-level (blurry) branch with the original MindEye2 code
//! (`tests/reference/mindeye2-tiny-blurry`, inputs = `mindeye2-tiny` `subj{s}.mixer_out`).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, backend::Backend};
use common::{assert_close, load_json, load_safetensors, reference_dir};
use voxbridge_model::lowlevel::{LowLevel, LowLevelConfig};
use voxbridge_model::tensors::{HostTensor, LoadError, TensorMap};

type B = Flex;
type AD = Autodiff<Flex>;

const BLURRY: &str = "mindeye2-tiny-blurry";
const TINY: &str = "mindeye2-tiny";
const PREFIX: &str = "backbone.";
const RTOL: f32 = 1e-5;
const SUBJECTS: usize = 3;

fn weights() -> TensorMap {
    load_safetensors(BLURRY, "model.safetensors")
}

/// `last.pth` through [`TensorMap::from_pytorch`] (the bytes API).
fn last_pth() -> Result<TensorMap, LoadError> {
    let path = reference_dir(BLURRY).join("last.pth");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TensorMap::from_pytorch(&bytes, Some("model_state_dict"), &path.display().to_string())
}

/// `last.pth` through [`TensorMap::from_pytorch_file`] (the path API).
fn last_pth_from_path() -> TensorMap {
    TensorMap::from_pytorch_file(&reference_dir(BLURRY).join("last.pth"), Some("model_state_dict")).unwrap()
}

fn tiny_config() -> LowLevelConfig {
    LowLevelConfig::mindeye2(32)
}

/// max|a − b| / max|b|.
fn rel_err(actual: &HostTensor, expected: &HostTensor) -> f32 {
    let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = actual.data.iter().zip(&expected.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

/// Runs every subject through `model` and checks the four reference tensors; returns the worst
/// relative error per tensor name.
fn check_all_subjects<Bk: Backend>(model: &LowLevel<Bk>, device: &Bk::Device, label: &str) -> Vec<(String, f32)> {
    let inputs = load_safetensors(TINY, "outputs.safetensors");
    let reference = load_safetensors(BLURRY, "outputs_blurry.safetensors");
    let names = ["blin1_out", "bnorm_out", "blurry_latent", "b_aux"];
    let mut worst = vec![0f32; names.len()];
    for s in 0..SUBJECTS {
        let x: Tensor<Bk, 2> = inputs.get(&format!("subj{s}.mixer_out")).unwrap().to_tensor(device);
        let out = model.forward(x);
        let got = [
            HostTensor::from_tensor(out.blin1_out),
            HostTensor::from_tensor(out.bnorm_out),
            HostTensor::from_tensor(out.blurry_latent),
            HostTensor::from_tensor(out.blurry_features),
        ];
        for (i, (name, actual)) in names.iter().zip(&got).enumerate() {
            let key = format!("subj{s}.{name}");
            let expected = reference.get(&key).unwrap();
            let err = rel_err(actual, expected);
            println!("{label} {key}: max rel err {err:.3e}");
            worst[i] = worst[i].max(err);
            assert_close(&format!("{label} {key}"), actual, expected, RTOL);
        }
    }
    names.iter().map(|n| n.to_string()).zip(worst).collect()
}

#[test]
fn infer_reads_the_tiny_blurry_config() {
    let config = LowLevelConfig::infer(&weights(), PREFIX).unwrap();
    assert_eq!(config, Some(tiny_config()));
    // The public tiny model is saved with blurry_recon=False: no branch.
    assert_eq!(LowLevelConfig::infer(&load_safetensors(TINY, "model.safetensors"), PREFIX).unwrap(), None);
}

#[test]
fn forward_matches_reference_from_safetensors() {
    let device = Default::default();
    let model = LowLevel::<B>::from_tensors(&weights(), PREFIX, &tiny_config(), &device).unwrap();
    let worst = check_all_subjects(&model, &device, "safetensors");
    println!("worst relative error per tensor (model.safetensors): {worst:?}");
}

fn check_last_pth(map: &TensorMap) {
    // Same values as model.safetensors for every branch tensor.
    let st = weights();
    for (name, _) in tiny_config().param_shapes() {
        let key = format!("{PREFIX}{name}");
        assert_eq!(map.get(&key).unwrap(), st.get(&key).unwrap(), "{key}");
    }
    let device = Default::default();
    let config = LowLevelConfig::infer(map, PREFIX).unwrap().expect("blurry branch in last.pth");
    assert_eq!(config, tiny_config());
    let model = LowLevel::<B>::from_tensors(map, PREFIX, &config, &device).unwrap();
    let worst = check_all_subjects(&model, &device, "last.pth");
    println!("worst relative error per tensor (last.pth): {worst:?}");
}

#[test]
fn forward_matches_reference_from_last_pth_file() {
    check_last_pth(&last_pth_from_path());
}

#[test]
fn forward_matches_reference_from_last_pth_bytes() {
    check_last_pth(&last_pth().unwrap());
}

#[test]
fn param_counts_match_released_json() {
    let json = load_json(TINY, "param_counts_full.json");
    let full = &json["full_h4096_blurry_subj1"];
    let counts = LowLevelConfig::mindeye2(4096).param_counts();
    assert_eq!(counts.len(), 4);
    for (name, count) in &counts {
        let expected = full[name.as_str()][0].as_u64().unwrap_or_else(|| panic!("{name} not in the JSON"));
        assert_eq!(*count, expected, "{name}");
    }
}

#[test]
fn tiny_param_counts_match_checkpoint_tensors() {
    let map = weights();
    for (name, count) in tiny_config().param_counts() {
        let prefix = format!("{name}.");
        let actual: u64 = map.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, t)| t.data.len() as u64).sum();
        assert_eq!(count, actual, "{name}");
    }
    // And the module built from the checkpoint holds exactly that many parameters.
    let model = LowLevel::<B>::from_tensors(&map, PREFIX, &tiny_config(), &Default::default()).unwrap();
    assert_eq!(model.num_params() as u64, tiny_config().num_params());
}

fn key_of(err: &LoadError) -> Option<&str> {
    match err {
        LoadError::Missing { key, .. } | LoadError::Shape { key, .. } | LoadError::Tensor { key, .. } => Some(key),
        _ => None,
    }
}

#[test]
fn bad_checkpoints_are_errors_naming_the_key() {
    let good = weights();
    let device = Default::default();

    // blin1 output width that is not 64 square maps.
    let mut map = good.clone();
    map.insert("backbone.blin1.weight", HostTensor::new(vec![3000, 32], vec![0.0; 3000 * 32]));
    let err = LowLevelConfig::infer(&map, PREFIX).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.blin1.weight"), "{err}");

    // Wrong rank.
    let mut map = good.clone();
    map.insert("backbone.bnorm.weight", HostTensor::new(vec![8, 8], vec![0.0; 64]));
    let err = LowLevelConfig::infer(&map, PREFIX).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bnorm.weight"), "{err}");

    // A decoder tensor with a wrong shape.
    let mut map = good.clone();
    map.insert(
        "backbone.bupsampler.mid_block.attentions.0.to_q.weight",
        HostTensor::new(vec![128, 64], vec![0.0; 8192]),
    );
    let err = LowLevelConfig::infer(&map, PREFIX).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bupsampler.mid_block.attentions.0.to_q.weight"), "{err}");
    let err = LowLevel::<B>::from_tensors(&map, PREFIX, &tiny_config(), &device).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bupsampler.mid_block.attentions.0.to_q.weight"), "{err}");

    // A stray tensor inside the branch.
    let mut map = good.clone();
    map.insert("backbone.bupsampler.mid_block.attentions.1.to_q.weight", HostTensor::new(vec![1], vec![0.0]));
    let err = LowLevelConfig::infer(&map, PREFIX).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bupsampler.mid_block.attentions.1.to_q.weight"), "{err}");

    // A missing tensor.
    let mut map = TensorMap::new("partial");
    for (k, t) in good.iter().filter(|(k, _)| *k != "backbone.bupsampler.conv_norm_out.bias") {
        map.insert(k, t.clone());
    }
    let err = LowLevelConfig::infer(&map, PREFIX).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bupsampler.conv_norm_out.bias"), "{err}");
    let err = LowLevel::<B>::from_tensors(&map, PREFIX, &tiny_config(), &device).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.bupsampler.conv_norm_out.bias"), "{err}");

    // A config whose hidden width does not fit the checkpoint.
    let err = LowLevel::<B>::from_tensors(&good, PREFIX, &LowLevelConfig::mindeye2(16), &device).unwrap_err();
    assert_eq!(key_of(&err), Some("backbone.blin1.weight"), "{err}");

    // An invalid config is an architecture error, not a panic.
    let mut config = tiny_config();
    config.latent_size = 30;
    let err = LowLevel::<B>::from_tensors(&good, PREFIX, &config, &device).unwrap_err();
    assert!(matches!(err, LoadError::Architecture { .. }), "{err}");
}

/// Checks that every float parameter received a finite gradient.
struct GradCheck<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    path: Vec<String>,
    seen: usize,
    problems: Vec<String>,
}

impl ModuleVisitor<AD> for GradCheck<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        self.seen += 1;
        let name = self.path.join(".");
        match param.val().grad(self.grads) {
            None => self.problems.push(format!("{name}: no gradient")),
            Some(g) => {
                let values = g.into_data().to_vec::<f32>().unwrap();
                if values.iter().any(|v| !v.is_finite()) {
                    self.problems.push(format!("{name}: non-finite gradient"));
                } else if values.iter().all(|v| *v == 0.0) {
                    self.problems.push(format!("{name}: all-zero gradient"));
                }
            }
        }
    }
}

#[test]
fn l1_loss_gives_finite_gradients_for_every_parameter() {
    let device = Default::default();
    let config = tiny_config();
    let model = LowLevel::<AD>::from_tensors(&weights(), PREFIX, &config, &device).unwrap();
    let inputs = load_safetensors(TINY, "outputs.safetensors");
    let reference = load_safetensors(BLURRY, "outputs_blurry.safetensors");
    let x: Tensor<AD, 2> = inputs.get("subj0.mixer_out").unwrap().to_tensor(&device);
    let latent_target: Tensor<AD, 4> = reference.get("subj1.blurry_latent").unwrap().to_tensor(&device);
    let features_target: Tensor<AD, 3> = reference.get("subj1.b_aux").unwrap().to_tensor(&device);

    let out = model.forward(x);
    // Dropout is active on the autodiff backend: the map differs from the eval-mode reference.
    let eval_map = reference.get("subj0.bnorm_out").unwrap();
    assert!(rel_err(&HostTensor::from_tensor(out.bnorm_out.clone().inner()), eval_map) > 1e-3);

    let loss = (out.blurry_latent - latent_target).abs().mean() + (out.blurry_features - features_target).abs().mean();
    let grads = loss.backward();
    let mut check = GradCheck { grads: &grads, path: Vec::new(), seen: 0, problems: Vec::new() };
    model.visit(&mut check);
    assert_eq!(check.seen, config.param_shapes().len(), "parameter tensors visited");
    assert!(check.problems.is_empty(), "{:#?}", check.problems);
}
