//! How a run stops on purpose: a stop request that every rank agrees on after the same step
//! (`agree_to_stop`), and the fault drills of `VOXBRIDGE_FAULT` that crash, hang or preempt
//! this process after a chosen step ([`StepFault`]). Faults of the checkpoint store itself
//! (`fail-put`, `kill-put`) are injected by `voxbridge_checkpoint::fault`.

use std::sync::atomic::{AtomicBool, Ordering};

use voxbridge_checkpoint::fault::{FAULT_ENV, SignalError, kill_self, parse_put_fault, signal_self};
use voxbridge_train::StepComm;

use burn::tensor::backend::AutodiffBackend;

/// Whether the run stops after this step: asked on any rank (the flag a SIGTERM handler sets),
/// agreed by all of them with one 4-byte sum, so every rank stops after the same step. The
/// run's last step never stops (it ends anyway).
pub(crate) fn agree_to_stop<B: AutodiffBackend>(
    flag: Option<&AtomicBool>,
    run_finished: bool,
    comm: &mut dyn StepComm<B>,
) -> Result<bool, String> {
    match flag {
        Some(flag) if !run_finished => {
            let mut asked = [if flag.load(Ordering::SeqCst) { 1.0 } else { 0.0 }];
            comm.sum(&mut asked).map_err(|e| e.to_string())?;
            Ok(asked[0] > 0.0)
        }
        _ => Ok(false),
    }
}

/// A drill that signals this process once a number of training steps are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepFault {
    /// SIGKILL once this many training steps are done (on every rank, or on rank `rank`; in
    /// every generation of a restarted run, or only in `generation`).
    KillAfterStep { rank: Option<usize>, step: u64, generation: Option<u32> },
    /// SIGSTOP (the process hangs, as a stuck rank does) once this many steps are done on `rank`.
    StopAfterStep { rank: usize, step: u64 },
    /// SIGTERM (a scheduler's preemption notice) once this many steps are done on `rank`.
    TermAfterStep { rank: usize, step: u64 },
}

impl StepFault {
    /// The signal due on `rank` after `steps_done` steps: `Some("KILL" | "STOP" | "TERM")`.
    pub fn signal_after_step(&self, rank: usize, steps_done: u64) -> Option<&'static str> {
        match *self {
            StepFault::KillAfterStep { rank: r, step, .. } if step == steps_done && r.is_none_or(|r| r == rank) => {
                Some("KILL")
            }
            StepFault::StopAfterStep { rank: r, step } if step == steps_done && r == rank => Some("STOP"),
            StepFault::TermAfterStep { rank: r, step } if step == steps_done && r == rank => Some("TERM"),
            _ => None,
        }
    }

    /// Whether the fault is armed in the run's `generation`-th start.
    pub fn applies_to_generation(&self, generation: u32) -> bool {
        match *self {
            StepFault::KillAfterStep { generation: Some(g), .. } => g == generation,
            _ => true,
        }
    }
}

/// Parses `kill-after-step:N`, `kill-rank-after-step:R:N[:G]` (only in generation G when
/// given), `stop-rank-after-step:R:N` or `term-rank-after-step:R:N`. `Ok(None)`: a valid
/// `fail-put:K` or `kill-put:K`, a fault of the checkpoint store rather than of the run.
pub fn parse_step_fault(spec: &str) -> Result<Option<StepFault>, String> {
    let bad = || {
        format!(
            "{FAULT_ENV}={spec:?}: expected fail-put:K, kill-put:K, kill-after-step:N, kill-rank-after-step:R:N, \
             stop-rank-after-step:R:N or term-rank-after-step:R:N"
        )
    };
    if parse_put_fault(spec).map_err(|_| bad())?.is_some() {
        return Ok(None);
    }
    let mut parts = spec.split(':');
    let kind = parts.next().ok_or_else(bad)?;
    let numbers: Vec<u64> = parts.map(|p| p.trim().parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let fault = match (kind, numbers.as_slice()) {
        ("kill-after-step", [n]) => StepFault::KillAfterStep { rank: None, step: *n, generation: None },
        ("kill-rank-after-step", [r, n]) => {
            StepFault::KillAfterStep { rank: Some(*r as usize), step: *n, generation: None }
        }
        ("kill-rank-after-step", [r, n, g]) => {
            StepFault::KillAfterStep { rank: Some(*r as usize), step: *n, generation: Some(*g as u32) }
        }
        ("stop-rank-after-step", [r, n]) => StepFault::StopAfterStep { rank: *r as usize, step: *n },
        ("term-rank-after-step", [r, n]) => StepFault::TermAfterStep { rank: *r as usize, step: *n },
        _ => return Err(bad()),
    };
    Ok(Some(fault))
}

/// The step drill `VOXBRIDGE_FAULT` asks for, if any.
pub fn step_fault_from_env() -> Result<Option<StepFault>, String> {
    match std::env::var(FAULT_ENV) {
        Ok(spec) if !spec.is_empty() => parse_step_fault(&spec),
        _ => Ok(None),
    }
}

/// A step drill armed in this process (rank `rank` of the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArmedDrill {
    pub fault: StepFault,
    pub rank: usize,
}

impl ArmedDrill {
    /// The drill of `VOXBRIDGE_FAULT` for rank `rank` in the run's `generation`-th start.
    pub fn from_env(rank: usize, generation: u32) -> Result<Option<Self>, String> {
        let fault = step_fault_from_env()?;
        Ok(fault.filter(|f| f.applies_to_generation(generation)).map(|fault| ArmedDrill { fault, rank }))
    }

    /// Signals this process if the drill is due after `steps_done` steps. SIGKILL does not
    /// return; an error means the signal could not be sent.
    pub fn after_step(&self, steps_done: u64) -> Result<(), SignalError> {
        let Some(signal) = self.fault.signal_after_step(self.rank, steps_done) else {
            return Ok(());
        };
        let why = format!("{FAULT_ENV} on rank {} after step {steps_done}", self.rank);
        if signal == "KILL" {
            let Err(e) = kill_self(&why);
            return Err(e);
        }
        signal_self(signal, &why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_step_fault("kill-put:3"), Ok(None));
        assert_eq!(parse_step_fault("fail-put:0"), Ok(None));
        assert_eq!(
            parse_step_fault("kill-after-step:12"),
            Ok(Some(StepFault::KillAfterStep { rank: None, step: 12, generation: None }))
        );
        let once = parse_step_fault("kill-rank-after-step:1:8:0").unwrap().unwrap();
        assert!(once.applies_to_generation(0) && !once.applies_to_generation(1));
        let stop = parse_step_fault("stop-rank-after-step:1:5").unwrap().unwrap();
        assert_eq!(stop, StepFault::StopAfterStep { rank: 1, step: 5 });
        assert_eq!(stop.signal_after_step(1, 5), Some("STOP"));
        assert_eq!(stop.signal_after_step(0, 5), None);
        assert_eq!(
            parse_step_fault("kill-rank-after-step:0:2").unwrap().unwrap().signal_after_step(0, 2),
            Some("KILL")
        );
        let term = parse_step_fault("term-rank-after-step:1:4").unwrap().unwrap();
        assert_eq!((term.signal_after_step(1, 4), term.signal_after_step(0, 4)), (Some("TERM"), None));
        let err = parse_step_fault("kill:3").unwrap_err();
        assert!(err.contains("expected fail-put:K, kill-put:K, kill-after-step:N"), "{err}");
        let err = parse_step_fault("fail-put:x").unwrap_err();
        assert!(err.contains("expected fail-put:K, kill-put:K, kill-after-step:N"), "{err}");
    }

    #[test]
    fn a_drill_due_at_another_step_or_rank_does_nothing() {
        let drill = ArmedDrill { fault: StepFault::StopAfterStep { rank: 1, step: 5 }, rank: 0 };
        assert!(drill.after_step(5).is_ok());
        let drill = ArmedDrill { fault: StepFault::KillAfterStep { rank: None, step: 5, generation: None }, rank: 0 };
        assert!(drill.after_step(4).is_ok() && drill.after_step(6).is_ok());
    }
}
