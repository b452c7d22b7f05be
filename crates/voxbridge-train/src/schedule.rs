//! PyTorch's `OneCycleLR` as MindEye2 configures it (spec §2.2): two phases (`three_phase =
//! False`), cosine annealing, `cycle_momentum = True` — for AdamW the "momentum" is β1.

use serde::{Deserialize, Serialize};

/// The schedule's parameters; [`OneCycle::mindeye2`] gives Train.ipynb's values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycle {
    pub max_lr: f64,
    pub total_steps: usize,
    /// Fraction of the steps spent rising (`2 / epochs` in MindEye2).
    pub pct_start: f64,
    /// `initial_lr = max_lr / div_factor`.
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor`.
    pub final_div_factor: f64,
    /// β1 at the peak learning rate.
    pub base_momentum: f64,
    /// β1 at the start and the end.
    pub max_momentum: f64,
}

/// Learning rate and AdamW β1 for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCyclePoint {
    pub lr: f64,
    pub beta1: f64,
}

impl OneCycle {
    /// `OneCycleLR(max_lr, total_steps = epochs · iters_per_epoch, pct_start = 2/epochs,
    /// final_div_factor = 1000)` with torch's defaults for the rest.
    pub fn mindeye2(max_lr: f64, epochs: usize, iters_per_epoch: usize) -> Self {
        OneCycle {
            max_lr,
            total_steps: epochs * iters_per_epoch,
            pct_start: 2.0 / epochs as f64,
            div_factor: 25.0,
            final_div_factor: 1000.0,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    pub fn initial_lr(&self) -> f64 {
        self.max_lr / self.div_factor
    }

    pub fn min_lr(&self) -> f64 {
        self.initial_lr() / self.final_div_factor
    }

    /// The values PyTorch uses at 0-based iteration `step` (the scheduler is stepped after every
    /// iteration, so iteration `step` sees the schedule's `last_epoch = step`). Steps past the end
    /// stay on the last phase's curve, as PyTorch's arithmetic does until it raises.
    pub fn at(&self, step: usize) -> OneCyclePoint {
        // Phase ends as torch computes them: float(pct_start · total) − 1, then total − 1.
        let rise_end = self.pct_start * self.total_steps as f64 - 1.0;
        let fall_end = self.total_steps as f64 - 1.0;
        let s = step as f64;
        let (start, end, pct, m_start, m_end) = if s <= rise_end {
            (self.initial_lr(), self.max_lr, s / rise_end, self.max_momentum, self.base_momentum)
        } else {
            (self.max_lr, self.min_lr(), (s - rise_end) / (fall_end - rise_end), self.base_momentum, self.max_momentum)
        };
        OneCyclePoint { lr: cosine(start, end, pct), beta1: cosine(m_start, m_end, pct) }
    }
}

/// torch's `_annealing_cos`: from `start` (pct 0) to `end` (pct 1) along half a cosine.
fn cosine(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-30)
    }

    /// The 1-session fine-tune on one GPU: 150 epochs × 31 iterations = 4650 steps.
    fn finetune() -> OneCycle {
        OneCycle::mindeye2(3e-4, 150, 31)
    }

    #[test]
    fn starts_low_with_high_beta1() {
        let p = finetune().at(0);
        assert!(close(p.lr, 1.2e-5), "{p:?}"); // 3e-4 / 25
        assert!(close(p.beta1, 0.95));
    }

    #[test]
    fn peaks_at_the_end_of_the_rise() {
        // pct_start · total = 2/150 · 4650 = 62, so the rise ends at step 61.
        let s = finetune();
        let peak = s.at(61);
        assert!((peak.lr - 3e-4).abs() < 1e-15 && (peak.beta1 - 0.85).abs() < 1e-12, "{peak:?}");
        assert!(s.at(60).lr < peak.lr && s.at(62).lr < peak.lr);
    }

    #[test]
    fn hand_computed_midpoints() {
        // Step 30 of the rise: pct = 30/61; lr = 3e-4 + (1.2e-5 − 3e-4)/2 · (cos(π·30/61) + 1).
        let s = finetune();
        let pct: f64 = 30.0 / 61.0;
        let want_lr = 3e-4 + (1.2e-5 - 3e-4) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
        assert!(close(s.at(30).lr, want_lr));
        // cos(π·30/61) ≈ 0.025748: lr ≈ 1.5229e-4, β1 ≈ 0.90129 (computed by hand from the formula).
        assert!((s.at(30).lr - 1.52292e-4).abs() < 1e-9, "{}", s.at(30).lr);
        assert!((s.at(30).beta1 - 0.901287).abs() < 1e-6, "{}", s.at(30).beta1);
        // Halfway down the fall (pct = 0.5): the mean of max and min lr, β1 back to 0.90.
        let half = 61.0 + (4649.0 - 61.0) / 2.0; // = 2355, an integer
        let p = s.at(half as usize);
        assert!(close(p.lr, (3e-4 + 1.2e-8) / 2.0), "{p:?}");
        assert!(close(p.beta1, 0.90));
    }

    #[test]
    fn ends_at_min_lr() {
        let s = finetune();
        let p = s.at(4649);
        assert!(close(p.lr, 1.2e-8), "{p:?}"); // 1.2e-5 / 1000
        assert!(close(p.beta1, 0.95));
        // Monotone fall after the peak.
        assert!((62..4649).all(|i| s.at(i + 1).lr <= s.at(i).lr));
    }
}
