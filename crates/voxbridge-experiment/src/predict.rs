//! `voxbridge predict`: a checkpoint (a run directory, an original `last.pth` / `model.pth`, or
//! `.safetensors` with the original key names; MindEye2, MindEye1, MindEye1's low-level model or
//! Mind Reader, recognised by its keys) run in evaluation mode on one subject's voxels
//! — from a `.npy` file or a dataset's trials — and its outputs written as one `.safetensors`
//! file or one `.npy` per tensor.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::Tensor;
use voxbridge_config::RunDir;
use voxbridge_model::MindEye2;
use voxbridge_model::prior::DiffusionPrior;
use voxbridge_model::tensors::{HostTensor, TensorMap};

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::engine::{BackendTask, Engine};
use crate::families::{ModelFile, describe_family, predict_family};

/// Which trials of a dataset to predict on: `--trials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialSelection {
    /// Every shared-test trial.
    Test,
    /// The training trials of the first N sessions.
    Train(u16),
}

impl std::fmt::Display for TrialSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrialSelection::Test => write!(f, "test"),
            TrialSelection::Train(n) => write!(f, "train:{n}"),
        }
    }
}

/// `test` or `train:N`.
pub fn parse_trials(text: &str) -> Result<TrialSelection, String> {
    match text.split_once(':') {
        None if text == "test" => Ok(TrialSelection::Test),
        Some(("train", n)) => {
            n.parse().map(TrialSelection::Train).map_err(|_| format!("`{text}`: N must be a number of sessions"))
        }
        _ => Err(format!("`{text}`: expected `test` or `train:N`")),
    }
}

/// The voxels to predict on.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictInput {
    /// A `[batch, voxels]` float32/float64 `.npy`, for the ridge at `subject` (0-based).
    Voxels { path: PathBuf, subject: usize },
    /// Trials of NSD subject `nsd_subject` from a dataset (run checkpoints only: they know
    /// which subject each ridge is), optionally only of `images`.
    Data { manifest: String, nsd_subject: Option<u8>, trials: TrialSelection, images: Option<Vec<u32>> },
}

/// One prediction to make.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    pub checkpoint: String,
    /// The architecture; inferred from the checkpoint without it.
    pub model: Option<PathBuf>,
    pub input: PredictInput,
    /// `.safetensors` file, or a directory for one `.npy` per tensor.
    pub out: PathBuf,
    /// DDIM steps of prior samples, if any.
    pub prior_steps: Option<usize>,
    /// Seed of the prior's Gaussian draws.
    pub seed: u64,
    /// Where to compute (`--device`).
    pub device: voxbridge_config::DeviceSpec,
}

/// What was written: each tensor's name and shape, and the image ids' count (with `--data`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub tensors: Vec<(String, Vec<usize>)>,
    pub image_ids: Option<usize>,
}

impl Prediction {
    /// `backbone [2, 4, 8], clip_voxels […][, image_id [n]]`.
    pub fn describe(&self) -> String {
        let tensors = self.tensors.iter().map(|(k, shape)| format!("{k} {shape:?}")).collect::<Vec<_>>().join(", ");
        tensors + &self.image_ids.map_or(String::new(), |n| format!(", image_id [{n}]"))
    }
}

/// Runs the checkpoint on the request's voxels and writes its outputs to `request.out`;
/// `notice` hears the inferred architecture when there is no model file.
pub fn predict(request: &PredictRequest, notice: &mut dyn FnMut(String)) -> anyhow::Result<Prediction> {
    let outputs = predict_tensors(request, notice)?;
    write_outputs(&request.out, &outputs.tensors, outputs.image_ids.as_ref())?;
    Ok(Prediction {
        tensors: outputs.tensors.into_iter().map(|(k, t)| (k, t.shape)).collect(),
        image_ids: outputs.image_ids.map(|(_, v)| v.len()),
    })
}

/// A checkpoint's outputs in memory, named as `predict` writes them.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub tensors: Vec<(String, HostTensor)>,
    /// `("image_id", ids)` with `--data`.
    pub image_ids: Option<(String, Vec<u32>)>,
}

/// [`predict`] without writing: the outputs in memory (`request.out` is not used).
pub fn predict_tensors(request: &PredictRequest, notice: &mut dyn FnMut(String)) -> anyhow::Result<Outputs> {
    struct Task<'a, 'n>(&'a PredictRequest, &'a mut (dyn FnMut(String) + 'n));
    impl BackendTask for Task<'_, '_> {
        type Output = Outputs;
        fn run<A: AutodiffBackend>(self, engine: Engine<A>) -> anyhow::Result<Outputs> {
            predict_on::<A::InnerBackend>(self.0, self.1, &engine.device)
        }
    }
    crate::engine::dispatch(request.device, Default::default(), Task(request, notice))
}

/// [`predict`] on the backend `B` (inference: no autodiff).
fn predict_on<B: Backend>(
    request: &PredictRequest,
    notice: &mut dyn FnMut(String),
    device: &B::Device,
) -> anyhow::Result<Outputs> {
    let device = device.clone();
    // A run directory (its `checkpoint/`), or that folder itself.
    let location = RunDir::new(&request.checkpoint);
    let run_checkpoint = location.path().join(RunDir::MODEL_CARD_FILE).is_file() || location.model_dir().is_dir();
    let (model, config, subjects) = if run_checkpoint {
        let (model, card) = crate::checkpoint::load_saved::<B>(Path::new(&request.checkpoint), &device)?;
        (model, card.architecture, Some(card.subjects))
    } else {
        let weights = read_checkpoint(&request.checkpoint)?;
        let file = match &request.model {
            Some(path) => ModelFile::load(path)?,
            None => {
                let file = ModelFile::infer(&weights)?;
                notice(format!(
                    "inferred from {} ({}):\n{}",
                    request.checkpoint,
                    file.family(),
                    describe_family(&file)
                ));
                file
            }
        };
        let config = match file {
            ModelFile::MindEye2(config) => config,
            other => return predict_single_subject::<B>(request, &weights, &other, &device),
        };
        (MindEye2::<B>::from_tensors(&weights, &config, &device)?, config, None)
    };
    let (subject, voxels, image_ids) = match &request.input {
        PredictInput::Voxels { path, subject } => (*subject, read_npy_2d(path)?, None),
        PredictInput::Data { manifest, nsd_subject, trials, images } => {
            let nsd = nsd_subject.context("--data needs --nsd-subject")?;
            let subjects = subjects.context("--data needs a run checkpoint (it knows which subject each ridge is)")?;
            let ridge = subjects
                .iter()
                .position(|&s| s == nsd)
                .with_context(|| format!("--nsd-subject {nsd}: the model's subjects are {subjects:?}"))?;
            let (voxels, ids) = chosen_trials(manifest, nsd, *trials, images.as_deref())?;
            (ridge, voxels, Some(ids))
        }
    };
    let n_subjects = config.voxels.len();
    if subject >= n_subjects {
        bail!("--subject {}: the model has subject indices 0..{} only", subject, n_subjects);
    }
    let want = config.voxels[subject];
    if voxels.shape[1] != want {
        bail!("{} voxels per row, but subject index {subject} has {want}", voxels.shape[1]);
    }
    let out = model.forward(subject, voxels.to_tensor::<B, 2>(&device));
    let mut tensors: Vec<(String, HostTensor)> = vec![
        ("backbone".into(), HostTensor::from_tensor(out.backbone.clone())),
        ("clip_voxels".into(), HostTensor::from_tensor(out.clip_voxels)),
    ];
    if let Some(low) = out.low_level {
        tensors.push(("blurry_latent".into(), HostTensor::from_tensor(low.blurry_latent)));
        tensors.push(("blurry_features".into(), HostTensor::from_tensor(low.blurry_features)));
    }
    match (request.prior_steps, &model.prior) {
        (Some(steps), Some(prior)) => {
            let samples = sample_prior(prior, out.backbone, steps, request.seed);
            tensors.push(("prior_samples".into(), HostTensor::from_tensor(samples)));
        }
        (Some(_), None) => bail!("--prior-steps: this model has no diffusion prior"),
        (None, _) => {}
    }
    Ok(Outputs { tensors, image_ids: image_ids.map(|ids| ("image_id".to_string(), ids)) })
}

/// A MindEye1, MindEye1 low-level or Mind Reader checkpoint on `--voxels` (these families have
/// one subject, so there is no subject to choose).
fn predict_single_subject<B: Backend>(
    request: &PredictRequest,
    weights: &voxbridge_model::TensorMap,
    file: &ModelFile,
    device: &B::Device,
) -> anyhow::Result<Outputs> {
    let PredictInput::Voxels { path, .. } = &request.input else {
        bail!("a {} checkpoint predicts from --voxels (a [batch, voxels] .npy)", file.family());
    };
    let voxels = read_npy_2d(path)?;
    let mut tensors =
        predict_family::<B>(weights, file, &voxels, device).with_context(|| path.display().to_string())?;
    if let Some(steps) = request.prior_steps {
        tensors.push((
            "prior_samples".into(),
            sample_mindeye1_prior::<B>(weights, file, &tensors, steps, request.seed, device)?,
        ));
    }
    Ok(Outputs { tensors, image_ids: None })
}

/// Reads a checkpoint from a path or object-store URL: `.safetensors`, or PyTorch (`last.pth`
/// with `model_state_dict`, or a bare state dict).
pub fn read_checkpoint(location: &str) -> anyhow::Result<TensorMap> {
    let is_safetensors = location.ends_with(".safetensors");
    let local = match location.strip_prefix("file://") {
        Some(p) => Some(p.to_string()),
        None if !location.contains("://") => Some(location.to_string()),
        None => None,
    };
    if let (Some(path), false) = (&local, is_safetensors) {
        let path = Path::new(path);
        if !path.exists() {
            bail!("{}: no such checkpoint", path.display());
        }
        return TensorMap::from_pytorch_file(path, Some("model_state_dict"))
            .or_else(|_| TensorMap::from_pytorch_file(path, None))
            .map_err(Into::into);
    }
    let bytes = match &local {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => {
            let (parent, name) = location.rsplit_once('/').context("a checkpoint URL needs a file name")?;
            voxbridge_data::Storage::open(parent)?.get(name)?.to_vec()
        }
    };
    if is_safetensors {
        return Ok(TensorMap::from_safetensors(&bytes, location)?);
    }
    TensorMap::from_pytorch(&bytes, Some("model_state_dict"), location)
        .or_else(|_| TensorMap::from_pytorch(&bytes, None, location))
        .map_err(Into::into)
}

/// A `[batch, voxels]` float32/float64 `.npy` file.
pub fn read_npy_2d(path: &Path) -> anyhow::Result<HostTensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let tensor = HostTensor::from_npy(&bytes, &path.display().to_string())?;
    if tensor.shape.len() != 2 {
        bail!("{}: expected a [batch, voxels] array, got shape {:?}", path.display(), tensor.shape);
    }
    Ok(tensor)
}

/// Single trials of `subject` from a dataset, optionally only of `images`. Returns
/// `[trials, voxels]` and each trial's image id.
fn chosen_trials(
    manifest: &str,
    subject: u8,
    which: TrialSelection,
    images: Option<&[u32]>,
) -> anyhow::Result<(HostTensor, Vec<u32>)> {
    let dataset = voxbridge_data::Dataset::open(manifest)?;
    let (sessions, test) = match which {
        TrialSelection::Test => (voxbridge_data::Sessions::First(1), true),
        TrialSelection::Train(n) => (voxbridge_data::Sessions::First(n), false),
    };
    let trials = dataset.load_subject(subject, sessions)?;
    let rows = if test { &trials.test } else { &trials.train };
    let v = rows.voxel_count;
    let mut data = Vec::new();
    let mut ids = Vec::new();
    for r in 0..rows.len() {
        let id = rows.image_id[r];
        if images.is_none_or(|keep| keep.contains(&id)) {
            data.extend_from_slice(rows.voxels_of(r));
            ids.push(id);
        }
    }
    if ids.is_empty() {
        bail!("no {which} trials of subject {subject} match --images");
    }
    Ok((HostTensor::new(vec![ids.len(), v], data), ids))
}

/// DDIM (eta 1, no guidance) from the backbone tokens, with Gaussian draws from `seed`.
fn sample_prior<B: Backend>(prior: &DiffusionPrior<B>, brain: Tensor<B, 3>, steps: usize, seed: u64) -> Tensor<B, 3> {
    let mut draw = seeded_normals::<B>(seed, brain.device());
    prior.sample_ddim(brain, steps, 1.0, 1.0, &mut draw)
}

/// Standard-normal draws of any shape from a ChaCha8 stream seeded by `seed` (`--seed`), drawn
/// on the host so that a seed gives the same samples on every device.
fn seeded_normals<B: Backend>(seed: u64, device: B::Device) -> impl FnMut([usize; 3]) -> Tensor<B, 3> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    move |shape| {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| StandardNormal.sample(&mut rng)).collect();
        HostTensor::new(shape.to_vec(), values).to_tensor::<B, 3>(&device)
    }
}

/// MindEye1's reconstruction path: full ancestral DDPM over every step of its prior, from the
/// predicted `clip_voxels`, seeded by `seed`; the samples are divided by `image_embed_scale`.
fn sample_mindeye1_prior<B: Backend>(
    weights: &voxbridge_model::TensorMap,
    file: &ModelFile,
    outputs: &[(String, HostTensor)],
    steps: usize,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<HostTensor> {
    let ModelFile::MindEye1(config) = file else {
        bail!("--prior-steps: a {} model has no diffusion prior", file.family());
    };
    let Some(prior_config) = &config.prior else {
        bail!("--prior-steps: this MindEye1 checkpoint has no prior (net.*)")
    };
    if steps != prior_config.timesteps {
        bail!(
            "--prior-steps {steps}: MindEye1 samples its prior with full DDPM, --prior-steps {}",
            prior_config.timesteps
        );
    }
    let prior = DiffusionPrior::<B>::from_tensors(weights, "", prior_config, device)?;
    let clip = outputs.iter().find(|(k, _)| k == "clip_voxels").map(|(_, t)| t).context("clip_voxels")?;
    let n = clip.shape[0];
    let brain =
        HostTensor::new(vec![n, config.clip_tokens, config.clip_dim], clip.data.clone()).to_tensor::<B, 3>(device);
    let mut draw = seeded_normals::<B>(seed, device.clone());
    Ok(HostTensor::from_tensor(prior.sample_ddpm(brain, 1.0, config.image_embed_scale(), &mut draw)))
}

/// `out.safetensors`, or `out/` with one `.npy` per tensor.
fn write_outputs(out: &Path, tensors: &[(String, HostTensor)], ids: Option<&(String, Vec<u32>)>) -> anyhow::Result<()> {
    if out.extension().is_some_and(|e| e == "safetensors") {
        let bytes = write_safetensors(tensors, ids)?;
        return std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, t) in tensors {
        let path = out.join(format!("{name}.npy"));
        std::fs::write(&path, voxbridge_arrays::npy::write_f32(&t.shape, &t.data))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((name, ids)) = ids {
        let path = out.join(format!("{name}.npy"));
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, voxbridge_arrays::npy::write(&[ids.len()], "<u4", &bytes))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_safetensors(tensors: &[(String, HostTensor)], ids: Option<&(String, Vec<u32>)>) -> anyhow::Result<Vec<u8>> {
    use safetensors::Dtype;
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Dtype::F32, t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    if let Some((name, ids)) = ids {
        bytes.push((name.clone(), Dtype::U32, vec![ids.len()], ids.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views = bytes
        .iter()
        .map(|(k, dtype, shape, data)| {
            Ok((k.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::tensor::serialize(views, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_are_test_or_the_training_trials_of_the_first_sessions() {
        assert_eq!(parse_trials("test"), Ok(TrialSelection::Test));
        assert_eq!(parse_trials("train:2"), Ok(TrialSelection::Train(2)));
        assert_eq!(TrialSelection::Train(2).to_string(), "train:2");
        assert!(parse_trials("train:x").unwrap_err().contains("number of sessions"));
        for bad in ["tests", "val:1", "train"] {
            assert!(parse_trials(bad).unwrap_err().contains("expected `test` or `train:N`"), "{bad}");
        }
    }

    #[test]
    fn predictions_describe_their_tensors() {
        let p = Prediction { tensors: vec![("backbone".into(), vec![2, 3])], image_ids: Some(2) };
        assert_eq!(p.describe(), "backbone [2, 3], image_id [2]");
    }
}
