//! `voxbridge ckpt ls` and `voxbridge ckpt inspect`.

use std::io::Write;

use anyhow::Context;
use voxbridge_checkpoint::{CheckpointStore, Located, locate};
use voxbridge_experiment::resume::{self, STATE_FILE, TrainingState};

pub fn ls(url: &str) -> anyhow::Result<()> {
    let store = match locate(url)? {
        Located::Root(store) => store,
        Located::One(store, _) => store,
    };
    let listings = store.list()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} ({} checkpoints)", store.url(), listings.len())?;
    writeln!(out, "  {:<24} {:>10} {:>4} {:>10} {:>12}  summary", "checkpoint", "step", "gen", "state", "bytes")?;
    for l in &listings {
        let summary = if l.committed { summary(&store, l.id) } else { String::new() };
        writeln!(
            out,
            "  {:<24} {:>10} {:>4} {:>10} {:>12}  {summary}",
            l.id.dir_name(),
            l.id.step,
            l.id.generation,
            match (l.committed, l.damaged) {
                (true, true) => "DAMAGED",
                (true, false) => "committed",
                (false, _) => "partial",
            },
            l.bytes()
        )?;
    }
    Ok(())
}

/// `epoch E, loss L` from a commit marker (cheap: the marker only).
fn summary(store: &CheckpointStore, id: voxbridge_checkpoint::CheckpointId) -> String {
    match store.commit_record(id) {
        Ok(record) => {
            let m = &record.metadata;
            format!(
                "run {}, epoch {}, loss {}",
                m["run"].as_str().unwrap_or("?"),
                m["epoch"],
                m["last_loss"].as_f64().map_or("-".into(), |l| format!("{l:.4}"))
            )
        }
        Err(e) => format!("unreadable marker: {e}"),
    }
}

/// Prints one checkpoint (a root: its newest committed one) with every file verified; an error
/// (non-zero exit) when any file fails its check, after printing what could be read.
pub fn inspect(url: &str) -> anyhow::Result<()> {
    let found = resume::find_checkpoint(url)?.with_context(|| format!("{url}: no committed checkpoint"))?;
    let record = &found.record;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} (committed)", found.location())?;
    writeln!(out, "  step {}, generation {}, {} bytes", record.id.step, record.id.generation, record.total_bytes())?;
    writeln!(out, "  files (size and sha256 verified against COMMIT):")?;
    let mut bad = Vec::new();
    for file in &record.files {
        let status = match found.store.read(record, &file.name) {
            Ok(_) => "ok".to_string(),
            Err(e) => {
                bad.push(file.name.clone());
                format!("BAD: {e}")
            }
        };
        writeln!(out, "    {:<24} {:>12}  {}  {status}", file.name, file.bytes, &file.sha256[..16])?;
    }
    if !bad.contains(&STATE_FILE.to_string()) {
        print_state(&mut out, &found)?;
    }
    if !bad.contains(&resume::CONFIG_FILE.to_string()) {
        let config = found.store.read(record, resume::CONFIG_FILE)?;
        writeln!(out, "  config:")?;
        for line in String::from_utf8_lossy(&config).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{}: {} of {} files failed verification ({}); this checkpoint cannot be resumed from",
            found.location(),
            bad.len(),
            record.files.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// The training state of a checkpoint whose state file verified.
fn print_state(out: &mut impl Write, found: &resume::Found) -> anyhow::Result<()> {
    let state: TrainingState = serde_json::from_slice(&found.store.read(&found.record, STATE_FILE)?)
        .with_context(|| format!("{}/{STATE_FILE}", found.location()))?;
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
