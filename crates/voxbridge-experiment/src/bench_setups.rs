//! What `voxbridge bench` times, named on the command line: an anchor (`P1`, `P1-big`) or an
//! experiment file whose model and batch are timed on random data (the data's sizes read from
//! its manifest), and the CPU all-reduce of the collective crate.

use std::path::Path;

use anyhow::Context;
use voxbridge_config::load_experiment;
use voxbridge_data::Dataset;

use crate::bench::{BenchResult, BenchSetup, bench_train, bench_train_workers};

/// Parts of a multipart upload in flight at once (what bounds a checkpoint upload's memory).
pub use voxbridge_checkpoint::MAX_PARTS_IN_FLIGHT;

/// `P1`, `P1-big`, `released`, `pretrain`, or the path of an experiment file.
pub fn train_setup(name: &str) -> anyhow::Result<BenchSetup> {
    match BenchSetup::anchor(name).or_else(|| BenchSetup::released(name)) {
        Some(setup) => Ok(setup),
        None => experiment_setup(Path::new(name)),
    }
}

/// `P1` or `P1-big` (the checkpoint benchmark saves their models).
pub fn anchor_setup(name: &str) -> anyhow::Result<BenchSetup> {
    BenchSetup::anchor(name).with_context(|| format!("--config {name}: P1 or P1-big"))
}

/// An experiment's model and batch, with the data's sizes read from its manifest.
fn experiment_setup(path: &Path) -> anyhow::Result<BenchSetup> {
    if !path.exists() {
        anyhow::bail!(
            "--config {}: neither P1, P1-big, released, pretrain nor an existing experiment file",
            path.display()
        );
    }
    let config = load_experiment(path)?;
    let dataset = Dataset::open(&config.data.manifest)?;
    let m = dataset.manifest();
    let voxels = config
        .data
        .train_subjects
        .iter()
        .map(|s| m.subject(*s).map(|i| i.voxels).with_context(|| format!("subject {s} is not in the manifest")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let [tokens, dim] = m.targets.shapes.clip_tokens;
    let [c, h, w] = m.targets.shapes.lowlevel;
    let model = crate::architecture::mindeye2_config(&config.model, voxels, tokens, dim, Some([c, h, w]))?;
    let per_subject = (config.train.batch_size as usize / config.data.train_subjects.len()).max(1);
    Ok(BenchSetup { name: config.name, model, per_subject })
}

/// What `voxbridge bench train` asks for.
#[derive(Debug, Clone)]
pub struct BenchRequest<'a> {
    /// Setups by name (see [`train_setup`](crate::bench_setups::train_setup)).
    pub configs: &'a [String],
    pub warmup: usize,
    pub steps: usize,
    /// Also time data-parallel steps on this many ranks.
    pub workers: Option<usize>,
}

/// Times every setup of `request` on the backend of `device`.
pub fn bench_configs(
    device: voxbridge_config::DeviceSpec,
    precision: voxbridge_config::Precision,
    request: &BenchRequest<'_>,
) -> anyhow::Result<Vec<BenchResult>> {
    struct Task<'a, 'b>(&'a BenchRequest<'b>);
    impl crate::engine::BackendTask for Task<'_, '_> {
        type Output = Vec<BenchResult>;
        fn run<B: burn::tensor::backend::AutodiffBackend>(
            self,
            engine: crate::engine::Engine<B>,
        ) -> anyhow::Result<Vec<BenchResult>> {
            let r = self.0;
            let mut results = Vec::new();
            for name in r.configs {
                let setup = train_setup(name)?;
                results.push(bench_train(&engine, &setup, r.warmup, r.steps)?);
                if let Some(workers) = r.workers {
                    results.push(bench_train_workers(&engine, &setup, workers, r.warmup, r.steps)?);
                }
            }
            Ok(results)
        }
    }
    crate::engine::dispatch(device, precision, Task(request))
}

/// Median seconds of an all-reduce of `bytes` over `workers` ranks (threads on a loopback TCP
/// ring) and the algorithm bandwidth in GB/s, over `iters` timed calls after one warm-up.
pub fn all_reduce(workers: usize, bytes: usize, iters: usize) -> anyhow::Result<(f64, f64)> {
    Ok(voxbridge_collective::bench_all_reduce(workers, bytes, iters)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_missing_files_are_told_apart() {
        assert_eq!(train_setup("P1").unwrap().name, "P1");
        assert_eq!(anchor_setup("P1-big").unwrap().name, "P1-big");
        // The torch anchor's parameter counts (bench/torch_anchor.py EXPECTED_PARAMS), from the
        // architecture alone.
        for (name, params, batch) in [("released", 2_212_136_216, 24), ("pretrain", 2_560_103_704, 63)] {
            let setup = train_setup(name).unwrap();
            assert_eq!(setup.model.param_counts().total().0, params, "{name}");
            assert_eq!(setup.batch(), batch, "{name}");
        }
        assert!(anchor_setup("P2").unwrap_err().to_string().contains("P1 or P1-big"));
        let err = train_setup("/no/such/experiment.toml").unwrap_err().to_string();
        assert!(err.contains("neither P1, P1-big, released, pretrain nor an existing experiment file"), "{err}");
    }
}
