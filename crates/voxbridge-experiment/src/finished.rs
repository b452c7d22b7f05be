//! Whether a run already finished: rank 0's `report.json` says so, and every rank takes its
//! word, so no rank trains alone while the others stop (or the other way round).

use anyhow::{Context, bail};
use voxbridge_collective::Collective;

use crate::options::Rank;
use crate::report::{RunReport, read_report};

/// The report of the run of `config_hash` finished in `rank`'s run directory, as rank 0 reads
/// it; `None`: it has not finished. A directory holding another config's finished run is an
/// error, so nothing finished is overwritten.
pub(crate) fn agree_on_finished(
    config_hash: &str,
    rank: &Rank,
    collective: Option<&mut (dyn Collective + '_)>,
) -> anyhow::Result<Option<RunReport>> {
    // Whether the run already finished is rank 0's report's to say: a rank whose own report
    // survived a job killed before rank 0 wrote its report trains again with the others
    // (deciding alone, it would leave rank 0 waiting in a collective).
    let mut finished = None;
    if rank.is_primary()
        && let Some(existing) = read_report(&rank.dir)?
    {
        if existing.config_hash != config_hash {
            bail!(
                "{} already holds the finished run `{}` of another config (hash {}…); pass another output \
                 directory or remove it",
                rank.dir.path().display(),
                existing.name,
                &existing.config_hash[..12]
            );
        }
        finished = Some(existing);
    }
    if let Some(c) = collective
        && rank.is_shared()
    {
        let mut bytes = match &finished {
            Some(report) => serde_json::to_vec(report)?,
            None => Vec::new(),
        };
        c.broadcast(&mut bytes, 0).context("agreeing whether the run already finished")?;
        if !rank.is_primary() && !bytes.is_empty() {
            finished = Some(serde_json::from_slice(&bytes).context("rank 0's report")?);
        }
    }
    Ok(finished)
}
