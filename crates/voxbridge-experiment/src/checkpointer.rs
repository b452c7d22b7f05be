//! Training checkpoints during a run: when one is due ([`checkpoint_due`]), saving the whole
//! state (gathered from every rank, committed by rank 0) and applying the retention policy
//! after each commit.

use anyhow::Context;
use voxbridge_checkpoint::retention::{self, RetentionPolicy, Seen};
use voxbridge_checkpoint::{CheckpointId, CheckpointStore};
use voxbridge_config::CheckpointConfig;
use voxbridge_train::{Progress, StepComm};

use crate::checkpoint::ModelCard;
use crate::resume::{self, TrainingCheckpoint, TrainingState};
use burn::tensor::backend::AutodiffBackend;

/// Whether a checkpoint is due after `steps_done` steps: every `every_steps` steps (0: at each
/// epoch's end), and always after the run's last step.
pub fn checkpoint_due(steps_done: u64, epoch_finished: bool, run_finished: bool, every_steps: u64) -> bool {
    run_finished || if every_steps == 0 { epoch_finished } else { steps_done.is_multiple_of(every_steps) }
}

/// Steps between two checkpoints that retention keeps however old: every `keep_every`-th
/// checkpoint, checkpoints being `every_steps` steps apart (0: one epoch, `iters_per_epoch`).
pub fn keep_every_steps(checkpoint: &CheckpointConfig, iters_per_epoch: usize) -> u64 {
    let spacing = if checkpoint.every_steps > 0 { u64::from(checkpoint.every_steps) } else { iters_per_epoch as u64 };
    u64::from(checkpoint.keep_every) * spacing
}

/// Saves training checkpoints when due and applies the retention policy after each commit.
pub(crate) struct Checkpointer<'a> {
    store: &'a CheckpointStore,
    generation: u32,
    /// 0: at the end of every epoch.
    every_steps: u64,
    policy: RetentionPolicy,
    base: TrainingState,
    card: ModelCard,
    config_toml: String,
}

impl<'a> Checkpointer<'a> {
    /// Saves into `store` as its next generation (so a restarted run never writes over the
    /// files of an earlier start), with `checkpoint`'s cadence and retention.
    pub fn new(
        store: &'a CheckpointStore,
        checkpoint: &CheckpointConfig,
        iters_per_epoch: usize,
        base: TrainingState,
        card: ModelCard,
        config_toml: String,
    ) -> anyhow::Result<Self> {
        Ok(Checkpointer {
            generation: store.next_generation()?,
            store,
            every_steps: u64::from(checkpoint.every_steps),
            policy: RetentionPolicy::new(checkpoint.keep_last as usize, keep_every_steps(checkpoint, iters_per_epoch))
                .map_err(|e| anyhow::anyhow!("checkpoint.{e}"))?,
            base,
            card,
            config_toml,
        })
    }

    /// Whether a checkpoint is due after this step (see [`checkpoint_due`]).
    pub fn is_due<B: AutodiffBackend>(&self, p: &Progress<'_, B>) -> bool {
        checkpoint_due(p.steps_done, p.epoch_finished, p.run_finished, self.every_steps)
    }

    /// Every rank gathers the whole state; the writer (rank 0) commits it.
    pub fn save<B: AutodiffBackend>(
        &self,
        p: &Progress<'_, B>,
        comm: &mut dyn StepComm<B>,
        last_loss: f64,
    ) -> anyhow::Result<()> {
        let Some(whole) = comm.whole_state(p.model, p.optim, p.streams).map_err(anyhow::Error::msg)? else {
            return Ok(()); // not the writer
        };
        let id = CheckpointId { step: p.steps_done, generation: self.generation };
        let state = resume::training_state(
            &self.base,
            p.steps_done,
            p.epoch,
            p.epoch_finished,
            &whole.streams,
            p.optim,
            last_loss,
        );
        let parts = TrainingCheckpoint {
            model: &whole.model,
            card: &self.card,
            moments: &whole.moments,
            state: &state,
            config_toml: &self.config_toml,
        };
        let record = resume::save_training(self.store, id, &parts)
            .with_context(|| format!("saving checkpoint {}", self.store.location(id)))?;
        tracing::info!(checkpoint = %self.store.location(id), bytes = record.total_bytes(), "checkpoint committed");
        self.apply_retention()
    }

    /// Retention runs only once a newer commit is durable; a failed delete is not fatal.
    fn apply_retention(&self) -> anyhow::Result<()> {
        let seen: Vec<Seen> =
            self.store.list()?.iter().map(|l| Seen { id: l.id, committed: l.committed, damaged: l.damaged }).collect();
        for decision in retention::decide(&seen, self.generation, self.policy) {
            if let retention::Decision::Delete { id, reason } = decision {
                match self.store.delete(id) {
                    Ok(()) => tracing::debug!(checkpoint = %self.store.location(id), reason, "deleted"),
                    Err(e) => tracing::warn!("retention could not delete {}: {e}", self.store.location(id)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_due_on_the_cadence_and_after_the_last_step() {
        assert!(checkpoint_due(10, false, false, 5));
        assert!(!checkpoint_due(11, true, false, 5));
        assert!(checkpoint_due(7, true, false, 0));
        assert!(!checkpoint_due(7, false, false, 0));
        assert!(checkpoint_due(7, false, true, 5));
    }

    #[test]
    fn kept_checkpoints_are_spaced_by_the_cadence_or_the_epoch() {
        let mut checkpoint = CheckpointConfig { url: None, keep_last: 2, keep_every: 4, every_steps: 25 };
        assert_eq!(keep_every_steps(&checkpoint, 100), 100);
        checkpoint.every_steps = 0;
        assert_eq!(keep_every_steps(&checkpoint, 30), 120);
        checkpoint.keep_every = 0;
        assert_eq!(keep_every_steps(&checkpoint, 30), 0);
    }
}
