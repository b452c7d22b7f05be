//! MindEye2 architectures (`voxbridge params`, and `predict`'s inferred architecture): a
//! [`MindEye2Config`]'s parameters per submodule, the per-GPU memory of a training step
//! (`--memory`), and a paragraph describing it. Nothing is allocated. Model files of every
//! family are read by the `families` module.

use anyhow::bail;

pub use voxbridge_model::MindEye2Config;
pub use voxbridge_model::budget::ComputeDtype;
use voxbridge_model::budget::{GIB, MemoryEstimate, MemoryPlan, PriorOps, estimate_memory, group};
use voxbridge_train::distributed::Placement;

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

/// What `voxbridge params --memory` estimates: one training step of the model file's `subjects`
/// at a global batch of `batch` rows on `gpus` data-parallel GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRequest {
    /// Global batch, split evenly over the subjects (MindEye2's equal shares).
    pub batch: usize,
    pub compute: ComputeDtype,
    pub gpus: usize,
    /// The model file's ridges to train, by 1-based position (the released file lists NSD
    /// subjects 1–8 in order, so these are NSD subject numbers there); `None`: all of them.
    pub subjects: Option<Vec<u8>>,
    /// Device memory to compare with, bytes.
    pub capacity_bytes: u64,
}

/// The per-GPU memory table of `voxbridge params --memory`: which GPU is the fullest under
/// voxbridge's placement (whole subjects per GPU, or a subject's share split when there are
/// more GPUs than subjects), its estimate line by line, FITS / DOES NOT FIT, and when it does not
/// fit, what would: more GPUs, a smaller batch, or recomputing the prior's layers in backward.
pub fn memory_report(config: &MindEye2Config, request: &MemoryRequest) -> anyhow::Result<String> {
    use std::fmt::Write;
    let positions: Vec<usize> = match &request.subjects {
        Some(list) => list.iter().map(|&s| usize::from(s)).collect(),
        None => (1..=config.voxels.len()).collect(),
    };
    let n = config.voxels.len();
    if let Some(bad) = positions.iter().find(|&&p| p == 0 || p > n) {
        bail!("--subjects {bad}: the model file has {n} ridges (subjects 1–{n})");
    }
    if let Some((i, _)) = positions.iter().enumerate().find(|(i, p)| positions[..*i].contains(p)) {
        bail!("--subjects lists subject {} twice", positions[i]);
    }
    let model = MindEye2Config { voxels: positions.iter().map(|&p| config.voxels[p - 1]).collect(), ..config.clone() };
    let subjects = positions.len();
    let per_subject = (request.batch / subjects).max(1);
    let (worst, rank) = fullest_gpu(&model, per_subject, request.gpus, request.compute, PriorOps::Fused)?;

    let mut out = String::new();
    let list = |idx: &[usize]| idx.iter().map(|&i| positions[i].to_string()).collect::<Vec<_>>().join(", ");
    writeln!(out, "Memory of one training step per GPU (an estimate; 1 GiB = 2^30 bytes, 1 GB = 10^9 bytes)")?;
    writeln!(out, "  model: {}", summary(&model))?;
    let global = per_subject * subjects;
    let rounded = if global == request.batch { String::new() } else { format!(" (--batch {} rounded)", request.batch) };
    writeln!(
        out,
        "  batch: {global} rows = {per_subject} per subject × {subjects} subjects ({}){rounded}",
        list(&(0..subjects).collect::<Vec<_>>())
    )?;
    writeln!(
        out,
        "  {} GPU(s), shared weights on each; the fullest is rank {rank}: ridges of subjects {}, {} rows",
        request.gpus,
        list(&worst.plan.subjects_per_gpu),
        worst.plan.batch_per_gpu
    )?;
    writeln!(
        out,
        "  precision: {} matmuls and convolutions; weights, gradients, AdamW, softmax, norms, losses in f32",
        request.compute
    )?;
    out += &worst.report(request.capacity_bytes);
    if model.prior.is_some() {
        // What the fused prior ops buy: the same step with burn's autodiff over composed ops.
        let (composed, _) = fullest_gpu(&model, per_subject, request.gpus, request.compute, PriorOps::Composed)?;
        writeln!(
            out,
            "  (the prior's attention, SwiGLU and LayerNorm run as fused ops that keep only their inputs; \
             composed from burn's ops, autodiff would keep their intermediates: {:.2} GiB, {})",
            composed.total() as f64 / GIB,
            if composed.fits(request.capacity_bytes) { "fits" } else { "does not fit" }
        )?;
    }
    if !worst.fits(request.capacity_bytes) {
        writeln!(out, "What would fit {:.0} GB:", request.capacity_bytes as f64 / 1e9)?;
        let fits = |e: &MemoryEstimate| e.fits(request.capacity_bytes);
        let more = (request.gpus + 1..=64).find_map(|g| {
            fullest_gpu(&model, per_subject, g, request.compute, PriorOps::Fused)
                .ok()
                .filter(|(e, _)| fits(e))
                .map(|(e, _)| (g, e))
        });
        match more {
            Some((g, e)) => writeln!(
                out,
                "  {g} GPUs with the subjects sharded: the fullest holds {} rows and needs {:.2} GiB",
                e.plan.batch_per_gpu,
                e.total() as f64 / GIB
            )?,
            None => writeln!(out, "  no GPU count up to 64 at this batch")?,
        }
        let smaller = (1..per_subject).rev().find_map(|k| {
            fullest_gpu(&model, k, request.gpus, request.compute, PriorOps::Fused)
                .ok()
                .filter(|(e, _)| fits(e))
                .map(|(e, _)| (k, e))
        });
        match smaller {
            Some((k, e)) => writeln!(
                out,
                "  on {} GPU(s), a global batch of {} ({k} per subject): {:.2} GiB",
                request.gpus,
                k * subjects,
                e.total() as f64 / GIB
            )?,
            None => writeln!(out, "  on {} GPU(s), no smaller batch", request.gpus)?,
        }
    }
    Ok(out)
}

/// The estimate of the GPU needing the most memory under voxbridge's placement, and its rank.
fn fullest_gpu(
    model: &MindEye2Config,
    per_subject: usize,
    gpus: usize,
    compute: ComputeDtype,
    prior_ops: PriorOps,
) -> anyhow::Result<(MemoryEstimate, usize)> {
    let subjects = model.voxels.len();
    let placement = Placement::new(subjects, gpus, per_subject).map_err(|e| anyhow::anyhow!("--gpus {gpus}: {e}"))?;
    (0..gpus)
        .map(|rank| {
            let plan = MemoryPlan {
                subjects_per_gpu: placement.subjects_of(rank),
                batch_per_gpu: placement.rows_of(rank),
                global_batch: per_subject * subjects,
                gpus,
                compute,
                prior_ops,
            };
            (estimate_memory(model, &plan), rank)
        })
        .max_by_key(|(e, rank)| (e.total(), std::cmp::Reverse(*rank)))
        .ok_or_else(|| anyhow::anyhow!("no GPU to place the batch on"))
}

/// `7 ridges, hidden 4096, 4 blocks, 256 × 1664 tokens, low-level on, prior depth 6`.
fn summary(config: &MindEye2Config) -> String {
    let low = if config.low_level.is_some() { "on" } else { "off" };
    let prior = config.prior.as_ref().map_or("off".to_string(), |p| format!("depth {}, {} heads", p.depth, p.heads));
    format!(
        "{} ridges, hidden {}, {} blocks ({:?}), {} × {} tokens, low-level {low}, prior {prior}",
        config.voxels.len(),
        config.hidden,
        config.blocks,
        config.backbone_mode,
        config.clip_tokens,
        config.clip_dim
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn released() -> MindEye2Config {
        MindEye2Config::released(voxbridge_model::NSD_VOXELS.to_vec())
    }

    fn request(batch: usize, subjects: Option<Vec<u8>>) -> MemoryRequest {
        MemoryRequest { batch, compute: ComputeDtype::Bf16, gpus: 1, subjects, capacity_bytes: 80_000_000_000 }
    }

    #[test]
    fn the_released_model_at_batch_24_fits_one_80_gb_gpu() {
        let report = memory_report(&released(), &request(24, None)).unwrap();
        assert!(report.contains("batch: 24 rows = 3 per subject × 8 subjects (1, 2, 3, 4, 5, 6, 7, 8)"), "{report}");
        assert!(
            report.contains("the fullest is rank 0: ridges of subjects 1, 2, 3, 4, 5, 6, 7, 8, 24 rows"),
            "{report}"
        );
        assert!(report.contains(": FITS (headroom"), "{report}");
        assert!(!report.contains("What would fit"), "{report}");
    }

    #[test]
    fn pretraining_at_batch_63_fits_one_gpu_thanks_to_the_fused_prior_ops() {
        let report = memory_report(&released(), &request(63, Some(vec![2, 3, 4, 5, 6, 7, 8]))).unwrap();
        assert!(report.contains("batch: 63 rows = 9 per subject × 7 subjects (2, 3, 4, 5, 6, 7, 8)"), "{report}");
        assert!(report.contains(": FITS (headroom"), "{report}");
        assert!(report.contains("saved: prior, 6 layers over [63, 513, 1664], fused ops"), "{report}");
        // The report says what makes it fit: composed, the same step does not.
        assert!(report.contains("composed from burn's ops") && report.contains("GiB, does not fit)"), "{report}");
        assert!(!report.contains("What would fit"), "{report}");
    }

    #[test]
    fn a_batch_too_large_for_one_gpu_says_what_would_fit() {
        // Twice the paper's batch: 18 rows per subject.
        let report = memory_report(&released(), &request(126, Some(vec![2, 3, 4, 5, 6, 7, 8]))).unwrap();
        assert!(report.contains("DOES NOT FIT"), "{report}");
        assert!(report.contains("What would fit 80 GB:"), "{report}");
        assert!(report.contains("GPUs with the subjects sharded: the fullest holds"), "{report}");
        assert!(report.contains("  on 1 GPU(s), a global batch of"), "{report}");
        // On 3 GPUs the fullest rank holds subjects 2–4, 54 rows.
        let three = MemoryRequest { gpus: 3, ..request(126, Some(vec![2, 3, 4, 5, 6, 7, 8])) };
        let report = memory_report(&released(), &three).unwrap();
        assert!(
            report.contains("rank 0: ridges of subjects 2, 3, 4, 54 rows") && report.contains(": FITS"),
            "{report}"
        );
    }

    #[test]
    fn subjects_outside_the_model_file_or_twice_are_refused() {
        let err = memory_report(&released(), &request(24, Some(vec![9]))).unwrap_err().to_string();
        assert_eq!(err, "--subjects 9: the model file has 8 ridges (subjects 1–8)");
        let err = memory_report(&released(), &request(24, Some(vec![2, 2]))).unwrap_err().to_string();
        assert_eq!(err, "--subjects lists subject 2 twice");
        let err = memory_report(&released(), &MemoryRequest { gpus: 30, ..request(24, Some(vec![1, 2])) });
        assert!(err.unwrap_err().to_string().starts_with("--gpus 30: "));
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
