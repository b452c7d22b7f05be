//! `voxbridge params` and `voxbridge predict`: MindEye2 architectures and checkpoints.

use std::path::Path;

use anyhow::{Context, bail};
use burn::backend::Flex;
use burn::tensor::Tensor;
use voxbridge_model::prior::DiffusionPrior;
use voxbridge_model::tensors::{HostTensor, TensorMap};
use voxbridge_model::{MindEye2, MindEye2Config};

use crate::args::{ParamsArgs, PredictArgs};

type B = Flex;

/// A model file: a `MindEye2Config` in TOML, unknown keys rejected with line and column.
pub fn load_model_config(path: &Path) -> anyhow::Result<MindEye2Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: MindEye2Config =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let problems = config.problems();
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(config)
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn params(args: &ParamsArgs) -> anyhow::Result<()> {
    let config = load_model_config(&args.model)?;
    print!("{}", params_report(&config));
    Ok(())
}

/// The parameter table of `params`, from the config alone (no weights are allocated).
pub fn params_report(config: &MindEye2Config) -> String {
    use std::fmt::Write;
    let counts = config.param_counts();
    let mut out = String::new();
    let mut line = |name: &str, n: u64| writeln!(out, "{name:<44} {:>15}", group(n)).expect("string write");
    for (s, &n) in counts.ridge.iter().enumerate() {
        line(&format!("ridge.linears.{s} ({} voxels)", config.voxels[s]), n);
    }
    for (name, n) in &counts.backbone {
        line(name, *n);
    }
    line("backbone (total)", counts.backbone_total());
    if let Some(prior) = &config.prior {
        for (name, n) in prior.param_counts() {
            if name.starts_with("layer.") {
                line(&format!("diffusion_prior.{name} (each layer)"), n);
            } else if !name.starts_with("total") {
                line(&format!("diffusion_prior.{name}"), n);
            }
        }
        line("diffusion_prior (total)", prior.num_params());
    }
    let mut totals = String::new();
    let mut total = |label: String, (all, trainable): (u64, u64)| {
        writeln!(totals, "{label:<44} {:>15}  ({} trainable)", group(all), group(trainable)).expect("string write")
    };
    total(format!("TOTAL, all {} subjects", counts.ridge.len()), counts.total());
    for s in 0..counts.ridge.len() {
        total(format!("one-subject model, subject index {s}"), counts.total_for([s]));
    }
    if counts.ridge.len() > 2 {
        for s in 0..counts.ridge.len() {
            let others = (0..counts.ridge.len()).filter(|&o| o != s);
            total(format!("pretraining model without subject index {s}"), counts.total_for(others));
        }
    }
    out + &totals
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

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let run_checkpoint = {
        let p = Path::new(&args.checkpoint);
        p.join("model.json").is_file() || p.join(voxbridge_experiment::checkpoint::CHECKPOINT_DIR).is_dir()
    };
    let (model, config, subjects) = if run_checkpoint {
        let (model, card) = voxbridge_experiment::checkpoint::load::<B>(Path::new(&args.checkpoint), &device)?;
        (model, card.architecture, Some(card.subjects))
    } else {
        let weights = read_checkpoint(&args.checkpoint)?;
        let config = match &args.model {
            Some(path) => load_model_config(path)?,
            None => {
                let config = MindEye2Config::infer(&weights)?;
                eprintln!("inferred from {}:\n{}", args.checkpoint, describe(&config));
                config
            }
        };
        (MindEye2::<B>::from_tensors(&weights, &config, &device)?, config, None)
    };
    let (subject, voxels, image_ids) = match (&args.voxels, &args.data) {
        (Some(path), _) => (args.subject, read_npy_2d(path)?, None),
        (None, Some(manifest)) => {
            let nsd = args.nsd_subject.context("--data needs --nsd-subject")?;
            let subjects = subjects.context("--data needs a run checkpoint (it knows which subject each ridge is)")?;
            let ridge = subjects
                .iter()
                .position(|&s| s == nsd)
                .with_context(|| format!("--nsd-subject {nsd}: the model's subjects are {subjects:?}"))?;
            let (voxels, ids) = chosen_trials(manifest, nsd, &args.trials, args.images.as_deref())?;
            (ridge, voxels, Some(ids))
        }
        (None, None) => bail!("give --voxels or --data"),
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
    match (args.prior_steps, &model.prior) {
        (Some(steps), Some(prior)) => {
            let samples = sample_prior(prior, out.backbone, steps, args.seed);
            tensors.push(("prior_samples".into(), HostTensor::from_tensor(samples)));
        }
        (Some(_), None) => bail!("--prior-steps: this model has no diffusion prior"),
        (None, _) => {}
    }
    let ids: Option<(String, Vec<u32>)> = image_ids.map(|ids| ("image_id".to_string(), ids));
    if args.out.extension().is_some_and(|e| e == "safetensors") {
        let bytes = write_safetensors(&tensors, ids.as_ref())?;
        std::fs::write(&args.out, bytes).with_context(|| format!("writing {}", args.out.display()))?;
    } else {
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        for (name, t) in &tensors {
            let path = args.out.join(format!("{name}.npy"));
            std::fs::write(&path, voxbridge_arrays::npy::write_f32(&t.shape, &t.data))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some((name, ids)) = &ids {
            let path = args.out.join(format!("{name}.npy"));
            std::fs::write(
                &path,
                voxbridge_arrays::npy::write(
                    &[ids.len()],
                    "<u4",
                    &ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                ),
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    eprintln!(
        "wrote {} ({}{})",
        args.out.display(),
        tensors.iter().map(|(k, t)| format!("{k} {:?}", t.shape)).collect::<Vec<_>>().join(", "),
        ids.as_ref().map_or(String::new(), |(_, v)| format!(", image_id [{}]", v.len()))
    );
    Ok(())
}

/// Single trials of `subject` from a dataset: `test`, or `train:N` (first N sessions), optionally
/// only of `images`. Returns `[trials, voxels]` and each trial's image id.
fn chosen_trials(
    manifest: &str,
    subject: u8,
    which: &str,
    images: Option<&[u32]>,
) -> anyhow::Result<(HostTensor, Vec<u32>)> {
    let dataset = voxbridge_data::Dataset::open(manifest)?;
    let (sessions, test) = match which.split_once(':') {
        None if which == "test" => (voxbridge_data::Sessions::First(1), true),
        Some(("train", n)) => {
            let n: u16 = n.parse().with_context(|| format!("--trials {which}: N must be a number of sessions"))?;
            (voxbridge_data::Sessions::First(n), false)
        }
        _ => bail!("--trials {which}: expected `test` or `train:N`"),
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
fn sample_prior(prior: &DiffusionPrior<B>, brain: Tensor<B, 3>, steps: usize, seed: u64) -> Tensor<B, 3> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let device = brain.device();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |shape: [usize; 3]| {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        HostTensor::new(shape.to_vec(), values).to_tensor::<B, 3>(&device)
    };
    prior.sample_ddim(brain, steps, 1.0, 1.0, &mut draw)
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

/// One paragraph describing an architecture (printed when it was inferred).
pub fn describe(config: &MindEye2Config) -> String {
    let mut s = format!(
        "  subjects {} with voxels {:?}\n  hidden {}, {} mixer blocks ({:?})\n  CLIP tokens {} × {}\n",
        config.voxels.len(),
        config.voxels,
        config.hidden,
        config.blocks,
        config.backbone_mode,
        config.clip_tokens,
        config.clip_dim
    );
    match &config.low_level {
        Some(l) => {
            s += &format!("  low-level branch: on ({}×{}×{} latent)\n", l.latent_channels, l.latent_size, l.latent_size)
        }
        None => s += "  low-level branch: off\n",
    }
    match &config.prior {
        Some(p) => {
            s += &format!(
                "  diffusion prior: depth {}, {} heads of size {}, T = {}\n",
                p.depth, p.heads, p.dim_head, p.timesteps
            )
        }
        None => s += "  diffusion prior: off\n",
    }
    s
}
