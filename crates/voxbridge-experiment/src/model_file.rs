//! Model files and architectures (`voxbridge params`, and `predict`'s inferred architecture): a
//! [`MindEye2Config`] read from TOML with unknown keys rejected, its parameters per submodule,
//! and a paragraph describing it. Nothing is allocated.

use std::path::Path;

use anyhow::{Context, bail};

pub use voxbridge_model::MindEye2Config;

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

/// `1234567` → `1,234,567`.
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

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
