//! The coordinator's decisions as one pure function of (now, state, options): what to do next and
//! why. No sockets, no clocks: the event loop feeds it the time and what it observed, and carries
//! out the action. Times are milliseconds since the coordinator started.

use serde::Serialize;

/// Limits the coordinator enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub world_size: usize,
    /// Rendezvous gives up when not every worker has joined within this time.
    pub join_timeout_ms: u64,
    /// A worker is dead after this long without a heartbeat.
    pub heartbeat_timeout_ms: u64,
    /// Restarts of the whole group allowed before giving up.
    pub max_restarts: u32,
}

/// What the coordinator knows of one rank in the current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Worker {
    /// Not joined yet.
    Missing,
    /// Joined; last heartbeat at this time.
    Alive { last_heartbeat_ms: u64 },
    /// Finished its training and exited 0.
    Done,
    /// Failed: exited non-zero, was killed, or reported an error.
    Failed { why: String },
}

/// One failure, kept for the final summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub generation: u32,
    pub rank: usize,
    pub at_ms: u64,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every worker of this generation, since this time.
    Rendezvous { since_ms: u64 },
    /// All joined and training.
    Training,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub generation: u32,
    pub phase: Phase,
    pub workers: Vec<Worker>,
    pub restarts: u32,
    pub failures: Vec<Failure>,
}

impl State {
    pub fn new(world_size: usize, now_ms: u64) -> Self {
        State {
            generation: 0,
            phase: Phase::Rendezvous { since_ms: now_ms },
            workers: vec![Worker::Missing; world_size],
            restarts: 0,
            failures: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do before `until_ms` (or the next event).
    Wait { until_ms: u64 },
    /// Every worker joined: send ranks, subjects and the collective's bootstrap.
    Start,
    /// Stop every worker and start generation `generation` from the last committed checkpoint.
    RestartAll { generation: u32 },
    /// Out of restarts (or rendezvous failed): exit non-zero with the failures.
    GiveUp { failures: Vec<Failure> },
    /// Every worker finished: exit 0.
    Finish,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

fn decision(action: Action, reason: impl Into<String>) -> Decision {
    Decision { action, reason: reason.into() }
}

/// The next step. Failures found now (dead heartbeats, failed workers) are part of the returned
/// `GiveUp` summary; the caller records them in its state with [`record_failures`].
pub fn decide(now_ms: u64, state: &State, options: &Options) -> Decision {
    let failures = new_failures(now_ms, state, options);
    if !failures.is_empty() {
        let what = failures.iter().map(|f| format!("rank {}: {}", f.rank, f.why)).collect::<Vec<_>>().join("; ");
        if state.restarts >= options.max_restarts {
            let mut all = state.failures.clone();
            all.extend(failures);
            return decision(
                Action::GiveUp { failures: all },
                format!("{what}; the restart budget ({}) is spent", options.max_restarts),
            );
        }
        return decision(
            Action::RestartAll { generation: state.generation + 1 },
            format!("{what}; restart {} of {}", state.restarts + 1, options.max_restarts),
        );
    }
    match &state.phase {
        Phase::Rendezvous { since_ms } => {
            let missing: Vec<usize> =
                state.workers.iter().enumerate().filter(|(_, w)| **w == Worker::Missing).map(|(r, _)| r).collect();
            if missing.is_empty() {
                return decision(Action::Start, format!("all {} workers joined", options.world_size));
            }
            let deadline = since_ms + options.join_timeout_ms;
            if now_ms >= deadline {
                let mut all = state.failures.clone();
                all.extend(missing.iter().map(|&rank| Failure {
                    generation: state.generation,
                    rank,
                    at_ms: now_ms,
                    why: format!("did not join within {} ms", options.join_timeout_ms),
                }));
                return decision(
                    Action::GiveUp { failures: all },
                    format!("rendezvous timed out waiting for ranks {missing:?}"),
                );
            }
            decision(Action::Wait { until_ms: deadline }, format!("waiting for ranks {missing:?} to join"))
        }
        Phase::Training => {
            if state.workers.iter().all(|w| *w == Worker::Done) {
                return decision(Action::Finish, "every worker finished");
            }
            let next_check = state
                .workers
                .iter()
                .filter_map(|w| match w {
                    Worker::Alive { last_heartbeat_ms } => Some(last_heartbeat_ms + options.heartbeat_timeout_ms),
                    _ => None,
                })
                .min()
                .unwrap_or(now_ms + options.heartbeat_timeout_ms);
            decision(Action::Wait { until_ms: next_check }, "training")
        }
    }
}

/// Failures visible now: workers that failed, and live ones whose heartbeat is too old.
fn new_failures(now_ms: u64, state: &State, options: &Options) -> Vec<Failure> {
    state
        .workers
        .iter()
        .enumerate()
        .filter_map(|(rank, w)| {
            let why = match w {
                Worker::Failed { why } => why.clone(),
                Worker::Alive { last_heartbeat_ms } if now_ms >= last_heartbeat_ms + options.heartbeat_timeout_ms => {
                    format!("no heartbeat for {} ms", now_ms - last_heartbeat_ms)
                }
                _ => return None,
            };
            Some(Failure { generation: state.generation, rank, at_ms: now_ms, why })
        })
        .collect()
}

/// The state after carrying out `RestartAll`: the failures recorded, a new generation waiting
/// for every worker again.
pub fn restarted(now_ms: u64, state: &State, options: &Options) -> State {
    let mut failures = state.failures.clone();
    failures.extend(new_failures(now_ms, state, options));
    State {
        generation: state.generation + 1,
        phase: Phase::Rendezvous { since_ms: now_ms },
        workers: vec![Worker::Missing; state.workers.len()],
        restarts: state.restarts + 1,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: Options =
        Options { world_size: 2, join_timeout_ms: 30_000, heartbeat_timeout_ms: 10_000, max_restarts: 2 };

    fn training(workers: Vec<Worker>) -> State {
        State { phase: Phase::Training, workers, ..State::new(2, 0) }
    }

    #[test]
    fn rendezvous_waits_then_starts_or_times_out_naming_the_missing() {
        let mut state = State::new(2, 1_000);
        assert_eq!(decide(1_000, &state, &OPTIONS).action, Action::Wait { until_ms: 31_000 });
        state.workers[0] = Worker::Alive { last_heartbeat_ms: 30_000 };
        let d = decide(31_000, &state, &OPTIONS);
        let Action::GiveUp { failures } = d.action else { panic!("{d:?}") };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].rank, 1);
        assert!(d.reason.contains("ranks [1]"), "{}", d.reason);
        state.workers[1] = Worker::Alive { last_heartbeat_ms: 3_000 };
        assert_eq!(decide(5_000, &state, &OPTIONS).action, Action::Start);
    }

    #[test]
    fn a_silent_worker_is_dead_after_the_heartbeat_timeout_and_everyone_restarts() {
        let state =
            training(vec![Worker::Alive { last_heartbeat_ms: 50_000 }, Worker::Alive { last_heartbeat_ms: 41_000 }]);
        assert_eq!(decide(50_999, &state, &OPTIONS).action, Action::Wait { until_ms: 51_000 });
        let d = decide(51_000, &state, &OPTIONS);
        assert_eq!(d.action, Action::RestartAll { generation: 1 });
        assert!(
            d.reason.contains("rank 1: no heartbeat for 10000 ms") && d.reason.contains("restart 1 of 2"),
            "{}",
            d.reason
        );
        let next = restarted(51_000, &state, &OPTIONS);
        assert_eq!((next.generation, next.restarts, next.failures.len()), (1, 1, 1));
        assert_eq!(next.phase, Phase::Rendezvous { since_ms: 51_000 });
    }

    #[test]
    fn the_third_failure_with_two_restarts_gives_up_with_every_failure() {
        let options = OPTIONS;
        let mut state =
            training(vec![Worker::Alive { last_heartbeat_ms: 0 }, Worker::Failed { why: "killed by SIGKILL".into() }]);
        for expected_generation in 1..=2 {
            let d = decide(1_000, &state, &options);
            assert_eq!(d.action, Action::RestartAll { generation: expected_generation });
            state = restarted(1_000, &state, &options);
            state.phase = Phase::Training;
            state.workers =
                vec![Worker::Alive { last_heartbeat_ms: 1_000 }, Worker::Failed { why: "killed by SIGKILL".into() }];
        }
        let d = decide(1_000, &state, &options);
        let Action::GiveUp { failures } = d.action else { panic!("{d:?}") };
        assert_eq!(failures.len(), 3);
        assert_eq!(failures.iter().map(|f| f.generation).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(d.reason.contains("restart budget (2) is spent"), "{}", d.reason);
    }

    #[test]
    fn finishes_when_every_worker_is_done() {
        let state = training(vec![Worker::Done, Worker::Done]);
        assert_eq!(decide(5, &state, &OPTIONS).action, Action::Finish);
        let state = training(vec![Worker::Done, Worker::Alive { last_heartbeat_ms: 5 }]);
        assert_eq!(decide(6, &state, &OPTIONS).action, Action::Wait { until_ms: 10_005 });
    }
}
