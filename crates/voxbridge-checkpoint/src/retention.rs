//! Which checkpoints to delete: a pure function of the listing, returning a decision and its
//! reason for every checkpoint. The caller runs it only after its own commit returned, so "the
//! newest committed checkpoint" is always durable when anything older is deleted.

use crate::CheckpointId;

/// Keep the newest `keep_last` committed checkpoints and every one whose step is a multiple of
/// `keep_every_steps` (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    keep_last: usize,
    keep_every_steps: u64,
}

impl RetentionPolicy {
    /// `keep_last` must be at least 2: the newest checkpoint may still be being written while an
    /// older one is deleted, and keeping one could leave nothing complete to resume from.
    pub fn new(keep_last: usize, keep_every_steps: u64) -> Result<Self, String> {
        if keep_last < 2 {
            return Err(format!(
                "keep_last = {keep_last}: at least 2 are kept, because the newest checkpoint may still be being \
                 written when an older one is deleted; keeping only one could leave no complete checkpoint"
            ));
        }
        Ok(RetentionPolicy { keep_last, keep_every_steps })
    }
}

/// What the policy sees of one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub id: CheckpointId,
    pub committed: bool,
    /// Committed, but its files failed verification ([`crate::DAMAGED_FILE`]).
    pub damaged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep { id: CheckpointId, reason: &'static str },
    Delete { id: CheckpointId, reason: &'static str },
}

impl Decision {
    pub fn id(&self) -> CheckpointId {
        match self {
            Decision::Keep { id, .. } | Decision::Delete { id, .. } => *id,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self, Decision::Delete { .. })
    }
}

/// One decision per checkpoint in `seen`, in the same order. `generation` is the caller's own: an
/// uncommitted checkpoint of an earlier generation is a dead writer's leftover; one of the
/// current generation is kept unless a newer checkpoint is already committed. A damaged
/// checkpoint is kept (for inspection) and never counted as one of the kept ones: the newest and
/// the last `keep_last` are intact ones.
pub fn decide(seen: &[Seen], generation: u32, policy: RetentionPolicy) -> Vec<Decision> {
    let mut committed: Vec<CheckpointId> = seen.iter().filter(|s| s.committed && !s.damaged).map(|s| s.id).collect();
    committed.sort_unstable_by(|a, b| b.cmp(a));
    let newest = committed.first().copied();
    let recent = &committed[..committed.len().min(policy.keep_last)];
    seen.iter()
        .map(|s| {
            let id = s.id;
            if s.committed && s.damaged {
                Decision::Keep { id, reason: "damaged: kept for inspection, not counted as kept" }
            } else if s.committed {
                if Some(id) == newest {
                    Decision::Keep { id, reason: "the newest committed checkpoint" }
                } else if recent.contains(&id) {
                    Decision::Keep { id, reason: "among the last keep_last committed" }
                } else if policy.keep_every_steps > 0 && id.step.is_multiple_of(policy.keep_every_steps) {
                    Decision::Keep { id, reason: "its step is a multiple of keep_every" }
                } else {
                    Decision::Delete { id, reason: "older than the last keep_last committed" }
                }
            } else if id.generation < generation {
                Decision::Delete { id, reason: "an unfinished save of an earlier generation" }
            } else if newest.is_some_and(|n| n > id) {
                Decision::Delete { id, reason: "an unfinished save older than the newest commit" }
            } else {
                Decision::Keep { id, reason: "possibly still being written" }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn id(step: u64, generation: u32) -> CheckpointId {
        CheckpointId { step, generation }
    }

    fn seen(step: u64, generation: u32, committed: bool) -> Seen {
        Seen { id: id(step, generation), committed, damaged: false }
    }

    #[test]
    fn a_damaged_checkpoint_is_kept_but_not_counted() {
        let policy = RetentionPolicy::new(2, 0).unwrap();
        let damaged = Seen { damaged: true, ..seen(30, 0, true) };
        let listing = [seen(10, 0, true), seen(20, 0, true), damaged, seen(40, 1, true)];
        let decisions = decide(&listing, 1, policy);
        // Intact 20 and 40 are the two kept; 10 goes; the damaged 30 stays, uncounted.
        let deleted: Vec<CheckpointId> = decisions.iter().filter(|d| d.is_delete()).map(Decision::id).collect();
        assert_eq!(deleted, [id(10, 0)]);
        assert_eq!(decisions[1], Decision::Keep { id: id(20, 0), reason: "among the last keep_last committed" });
        assert_eq!(
            decisions[2],
            Decision::Keep { id: id(30, 0), reason: "damaged: kept for inspection, not counted as kept" }
        );
        // A damaged newest one is not "the newest committed": the intact ones before it stay.
        let listing = [seen(10, 0, true), seen(20, 0, true), Seen { damaged: true, ..seen(30, 0, true) }];
        assert!(decide(&listing, 0, policy).iter().all(|d| !d.is_delete()));
    }

    #[test]
    fn keep_last_below_two_is_refused_with_the_reason() {
        let err = RetentionPolicy::new(1, 0).unwrap_err();
        assert!(err.contains("at least 2") && err.contains("still be being written"), "{err}");
        assert!(RetentionPolicy::new(2, 0).is_ok());
    }

    #[test]
    fn keeps_the_last_n_and_every_kth_and_drops_leftovers() {
        let policy = RetentionPolicy::new(2, 40).unwrap();
        let listing = [
            seen(10, 0, true),
            seen(20, 0, true),
            seen(40, 0, true),
            seen(50, 0, false), // gen 0 crashed while saving 50
            seen(30, 1, true),  // gen 1 resumed from 20
            seen(45, 1, true),
            seen(35, 1, false),
            seen(60, 1, false), // being written now
        ];
        let decisions = decide(&listing, 1, policy);
        let deleted: Vec<CheckpointId> = decisions.iter().filter(|d| d.is_delete()).map(Decision::id).collect();
        assert_eq!(deleted, [id(10, 0), id(20, 0), id(50, 0), id(30, 1), id(35, 1)]);
        assert_eq!(decisions[2], Decision::Keep { id: id(40, 0), reason: "among the last keep_last committed" });
        assert_eq!(decisions[5], Decision::Keep { id: id(45, 1), reason: "the newest committed checkpoint" });
        assert_eq!(decisions[7], Decision::Keep { id: id(60, 1), reason: "possibly still being written" });
    }

    #[test]
    fn with_nothing_committed_nothing_of_this_generation_is_deleted() {
        let policy = RetentionPolicy::new(2, 0).unwrap();
        let decisions = decide(&[seen(5, 3, false), seen(9, 2, false)], 3, policy);
        assert!(!decisions[0].is_delete());
        assert!(decisions[1].is_delete());
    }

    /// Random histories of saves, crashes (uncommitted leftovers), restarts and purges: after
    /// every purge the newest committed checkpoint survives, at least min(keep_last, commits)
    /// committed ones survive, and nothing committed newer than a deleted one is missing.
    #[test]
    fn random_histories_never_lose_the_newest_commit() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            let keep_last = rng.random_range(2..5usize);
            let keep_every = [0u64, 3, 5][rng.random_range(0..3)];
            let policy = RetentionPolicy::new(keep_last, keep_every).unwrap();
            let mut store: Vec<Seen> = Vec::new();
            let (mut step, mut generation) = (0u64, 0u32);
            for _ in 0..rng.random_range(1..40) {
                match rng.random_range(0..10) {
                    0 => {
                        // restart: a new generation resumes from the newest commit
                        generation += 1;
                        step = store.iter().filter(|s| s.committed).map(|s| s.id.step).max().unwrap_or(0);
                    }
                    1 | 2 => {
                        step += rng.random_range(1..4);
                        store.push(seen(step, generation, false)); // a save that crashed
                    }
                    _ => {
                        step += rng.random_range(1..4);
                        store.push(seen(step, generation, true));
                        let newest = store.iter().filter(|s| s.committed).map(|s| s.id).max().unwrap();
                        let commits = store.iter().filter(|s| s.committed).count();
                        let decisions = decide(&store, generation, policy);
                        assert_eq!(decisions.len(), store.len());
                        let deleted: Vec<CheckpointId> =
                            decisions.iter().filter(|d| d.is_delete()).map(Decision::id).collect();
                        assert!(!deleted.contains(&newest), "{store:?} → {decisions:?}");
                        let deleted_commits: Vec<CheckpointId> =
                            store.iter().filter(|s| s.committed && deleted.contains(&s.id)).map(|s| s.id).collect();
                        store.retain(|s| !deleted.contains(&s.id));
                        for d in &deleted_commits {
                            let newer = store.iter().filter(|s| s.committed && s.id > *d).count();
                            assert!(
                                newer >= keep_last.min(commits),
                                "deleted {d} with only {newer} newer commits left"
                            );
                        }
                        let left = store.iter().filter(|s| s.committed).count();
                        assert!(left >= keep_last.min(commits), "{left} of {commits} kept, keep_last {keep_last}");
                    }
                }
            }
        }
    }
}
