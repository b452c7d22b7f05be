//! `voxbridge params` and `voxbridge predict`: architectures and checkpoints of every family, through
//! voxbridge-experiment's `families`, `model_file` and `predict`.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use voxbridge_experiment::families::{ModelFile, family_params_report};
use voxbridge_experiment::model_file::{ComputeDtype, MemoryRequest, memory_report};
use voxbridge_experiment::predict::{PredictInput, PredictRequest, predict as run_prediction};
use voxbridge_experiment::retrieve::{IndexParams, RetrieveRequest, retrieve as run_retrieval, write_hits};

use crate::args::{ParamsArgs, PredictArgs, RetrieveArgs};

/// `params` prints the parameter table, or with `--memory` the per-GPU memory estimate (FITS or
/// DOES NOT FIT is a result, not a failure: the exit status is 0 either way).
pub fn params(args: &ParamsArgs) -> anyhow::Result<()> {
    let file = ModelFile::load(&args.model)?;
    match (args.memory, args.batch, &file) {
        (true, Some(batch), ModelFile::MindEye2(config)) => {
            let request = MemoryRequest {
                batch: batch as usize,
                compute: args.precision,
                gpus: args.gpus as usize,
                subjects: args.subjects.clone(),
                capacity_bytes: (args.capacity_gb * 1e9).round() as u64,
            };
            print!("{}", memory_report(config, &request)?);
        }
        (true, _, other) => {
            anyhow::bail!("--memory estimates MindEye2 models; {} is a {} model", args.model.display(), other.family())
        }
        _ => print!("{}", family_params_report(&file)),
    }
    Ok(())
}

/// `--precision`: `bf16` or `fp32` (clap lists them on a wrong value).
pub fn precision_parser() -> impl TypedValueParser<Value = ComputeDtype> {
    PossibleValuesParser::new(["bf16", "fp32"])
        .map(|name| name.parse::<ComputeDtype>().expect("both possible values are precisions"))
}

/// `--capacity-gb`: a positive number of GB (10^9 bytes).
pub fn parse_capacity_gb(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(gb) if gb.is_finite() && gb > 0.0 && gb < 1e9 => Ok(gb),
        _ => Err(format!("`{text}` is not a positive number of GB")),
    }
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let input = match (&args.voxels, &args.data) {
        (Some(path), _) => PredictInput::Voxels { path: path.clone(), subject: args.subject },
        (None, Some(manifest)) => PredictInput::Data {
            manifest: manifest.clone(),
            nsd_subject: args.nsd_subject,
            trials: args.trials,
            images: args.images.clone(),
        },
        (None, None) => anyhow::bail!("give --voxels or --data"),
    };
    let request = PredictRequest {
        checkpoint: args.checkpoint.clone(),
        model: args.model.clone(),
        input,
        out: args.out.clone(),
        prior_steps: args.prior_steps,
        seed: args.seed,
        device: args.compute.device.unwrap_or_default(),
    };
    let prediction = run_prediction(&request, &mut |notice| eprintln!("{notice}"))?;
    eprintln!("wrote {} ({})", args.out.display(), prediction.describe());
    Ok(())
}

pub fn retrieve(args: &RetrieveArgs) -> anyhow::Result<()> {
    let request = RetrieveRequest {
        predict: PredictRequest {
            checkpoint: args.checkpoint.clone(),
            model: args.model.clone(),
            input: PredictInput::Voxels { path: args.voxels.clone(), subject: args.subject },
            out: std::path::PathBuf::new(),
            prior_steps: None,
            seed: 0,
            device: args.compute.device.unwrap_or_default(),
        },
        pool: args.pool.clone(),
        index: args.index.clone(),
        k: args.k as usize,
        params: IndexParams {
            connections: args.connections as usize,
            ef_construction: args.ef_construction as usize,
            ef_search: args.ef as usize,
        },
        exact: args.exact,
    };
    let found = run_retrieval(&request, &mut |notice| eprintln!("{notice}"))?;
    let meta = &found.index;
    let how = if found.built { format!("built in {:.1} s", meta.build_seconds) } else { "reused".to_string() };
    eprintln!(
        "index {} ({how}): {} embeddings of width {}, M {}, efConstruction {}",
        found.index_dir.display(),
        meta.len,
        meta.dim,
        meta.params.connections,
        meta.params.ef_construction
    );
    eprintln!(
        "{} queries ({}), k {}: read the index in {:.0} ms, searched in {:.1} ms ({:.1} ms per 1,000 queries)",
        found.hits.len(),
        found.embedding,
        found.k,
        found.times.load_seconds * 1e3,
        found.times.search_seconds * 1e3,
        found.ms_per_1000()
    );
    if let (Some(recall), Some(seconds)) = (found.recall, found.exact_seconds) {
        eprintln!("recall@{} against exact search: {recall:.4} (exact search {:.1} ms)", found.k, seconds * 1e3);
    }
    for (q, hits) in found.hits.iter().enumerate() {
        let row: Vec<String> = hits.iter().map(|h| format!("{}:{:.4}", h.index, h.score)).collect();
        println!("query {q}: {}", row.join(" "));
    }
    if let Some(out) = &args.out {
        write_hits(out, &found)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
