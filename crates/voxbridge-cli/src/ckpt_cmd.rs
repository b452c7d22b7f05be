//! `voxbridge ckpt ls` and `voxbridge ckpt inspect`: voxbridge-experiment's `checkpoints`,
//! printed.

use std::io::Write;

use voxbridge_experiment::checkpoints::{inspect_checkpoint, list_checkpoints};
use voxbridge_experiment::resume::TrainingState;

pub fn ls(url: &str) -> anyhow::Result<()> {
    let listing = list_checkpoints(url)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} ({} checkpoints)", listing.url, listing.rows.len())?;
    writeln!(out, "  {:<24} {:>10} {:>4} {:>10} {:>12}  summary", "checkpoint", "step", "gen", "state", "bytes")?;
    for row in &listing.rows {
        writeln!(
            out,
            "  {:<24} {:>10} {:>4} {:>10} {:>12}  {}",
            row.name, row.step, row.generation, row.state, row.bytes, row.summary
        )?;
    }
    Ok(())
}

/// Prints one checkpoint (a root: its newest committed one) with every file verified; an error
/// (non-zero exit) when any file fails its check, after printing what could be read.
pub fn inspect(url: &str) -> anyhow::Result<()> {
    let inspection = inspect_checkpoint(url)?;
    let record = &inspection.found.record;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} (committed)", inspection.location())?;
    writeln!(out, "  step {}, generation {}, {} bytes", record.id.step, record.id.generation, record.total_bytes())?;
    writeln!(out, "  files (size and sha256 verified against COMMIT):")?;
    for file in &inspection.files {
        let status = file.problem.as_ref().map_or_else(|| "ok".to_string(), |e| format!("BAD: {e}"));
        writeln!(out, "    {:<24} {:>12}  {}  {status}", file.name, file.bytes, &file.sha256[..16])?;
    }
    if let Some(state) = inspection.state()? {
        print_state(&mut out, &state)?;
    }
    if let Some(config) = inspection.config()? {
        writeln!(out, "  config:")?;
        for line in config.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    let bad = inspection.bad_files();
    if !bad.is_empty() {
        anyhow::bail!(
            "{}: {} of {} files failed verification ({}); this checkpoint cannot be resumed from",
            inspection.location(),
            bad.len(),
            inspection.files.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// The training state of a checkpoint whose state file verified.
fn print_state(out: &mut impl Write, state: &TrainingState) -> anyhow::Result<()> {
    writeln!(out, "  run {} (config {}…), voxbridge {}", state.run, &state.config_hash[..12], state.voxbridge_version)?;
    writeln!(
        out,
        "  progress: {} of {} steps, epoch {}{}, last loss {}",
        state.steps_done,
        state.total_steps,
        state.epoch,
        if state.epoch_finished { " (finished)" } else { "" },
        state.last_loss.map_or("-".into(), |l| format!("{l:.6}"))
    )?;
    writeln!(out, "  subjects {:?}, sessions {:?}", state.train_subjects, state.sessions_used)?;
    if let Some(parent) = &state.parent {
        writeln!(out, "  fine-tuned from {parent}")?;
    }
    for s in &state.sampler {
        writeln!(out, "  sampler: subject {} at stream epoch {}, position {} of {}", s.id, s.epoch, s.pos, s.len)?;
    }
    writeln!(out, "  optimizer: {} over {} parameters", state.optimizer.kind, state.optimizer.steps.len())?;
    writeln!(out, "  rng: seed {}; {}", state.rng.seed, state.rng.scheme)?;
    Ok(())
}
