//! Parameters of a simulated NSD and the three presets. Every number here is recorded in the
//! manifest (`[generator.params]`), so a dataset can be made again from its manifest.

use serde::{Deserialize, Serialize};
use voxbridge_data::TargetShapes;

/// NSD's nsdgeneral voxel counts, subjects 1–8.
pub const NSD_VOXELS: [usize; 8] = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386];
/// NSD's completed scan sessions, subjects 1–8.
pub const NSD_SESSIONS: [u16; 8] = [40, 40, 32, 30, 40, 32, 40, 30];
pub const NSD_TRIALS_PER_SESSION: usize = 750;
pub const NSD_RUNS_PER_SESSION: usize = 12;
pub const NSD_SHARED_TEST_IMAGES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    /// 1-based NSD subject.
    pub subject: u8,
    pub voxels: usize,
    pub sessions: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    pub preset: String,
    pub subjects: Vec<SubjectSpec>,
    pub trials_per_session: usize,
    pub runs_per_session: usize,
    /// Shared test images, each shown 3 times to every subject (NSD's shared1000, scaled).
    pub test_images: usize,
    /// Dimension of each image's latent z.
    pub latent_dim: usize,
    /// Dimension of the shared nonlinear feature map f(z) that every brain sees.
    pub feature_dim: usize,
    pub shapes: TargetShapes,
    /// Rank of the token generator (each token is U·tanh(C_k z) + b_k).
    pub token_rank: usize,
    /// Per-voxel noise-ceiling SNR (sd of signal / sd of single-trial noise), drawn uniformly.
    pub ncsnr_range: [f64; 2],
    /// Representational noise κ: the features a brain encodes on one trial are f(z) + κ·η with
    /// η ~ N(0, Σ_f), i.e. κ is the sd of the trial-to-trial feature variability relative to the
    /// features' spread across images. It reaches the voxels along the signal directions, so it
    /// limits what any decoder can extract (per-feature SNR ≤ 1/κ² per trial) whatever the number
    /// of voxels; the rest of each voxel's unit noise variance is white.
    pub representational_noise: f64,
    /// Per-session, per-voxel baseline offset (sd, in noise units).
    pub session_offset_sd: f32,
    /// Per-session, per-voxel linear drift across the session (sd of the end-to-end change).
    pub session_trend_sd: f32,
    /// Noise added to each caption embedding relative to its unit-norm base.
    pub caption_noise: f32,
    pub trial_rows_per_group: usize,
    pub target_rows_per_group: usize,
    pub targets_per_file: usize,
}

fn scaled_subjects(voxel_div: usize, session_div: f64) -> Vec<SubjectSpec> {
    (0..8)
        .map(|i| SubjectSpec {
            subject: i as u8 + 1,
            voxels: NSD_VOXELS[i].div_ceil(voxel_div),
            sessions: ((NSD_SESSIONS[i] as f64 / session_div).round() as u16).max(2),
        })
        .collect()
}

impl SimSpec {
    pub fn preset(name: &str) -> Option<SimSpec> {
        match name {
            "tiny" => Some(Self::tiny()),
            "small" => Some(Self::small()),
            "nsd-scale" => Some(Self::nsd_scale()),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 3] = ["tiny", "small", "nsd-scale"];

    /// For tests: seconds to make. Voxels ÷100, sessions ÷10, 120 trials per session. With ~150
    /// voxels the SNR is raised (ncsnr 0.1–0.6) so a few hundred trials are enough to learn from.
    pub fn tiny() -> SimSpec {
        SimSpec {
            preset: "tiny".into(),
            subjects: scaled_subjects(100, 10.0),
            trials_per_session: 120,
            runs_per_session: 4,
            test_images: 30,
            latent_dim: 12,
            feature_dim: 32,
            // No teacher features: the 8×8 latent cannot be trained by the low-level branch
            // (it makes 7·2^k squares), and the tiny golden shards stay as they were.
            shapes: TargetShapes {
                clip_tokens: [4, 32],
                lowlevel: [4, 8, 8],
                captions: [5, 32],
                teacher: None,
                teacher_augs: 0,
            },
            token_rank: 8,
            ncsnr_range: [0.1, 0.6],
            ..Self::noise_defaults()
        }
    }

    /// The demo: NSD's 750 trials per session (so one session is one hour of NSD data) and 300
    /// shared test images (300-way retrieval); voxels and sessions ÷8; small targets.
    pub fn small() -> SimSpec {
        SimSpec {
            preset: "small".into(),
            subjects: scaled_subjects(8, 8.0),
            trials_per_session: NSD_TRIALS_PER_SESSION,
            runs_per_session: NSD_RUNS_PER_SESSION,
            test_images: 300,
            latent_dim: 24,
            feature_dim: 64,
            // Teacher features on the branch's 7×7 grid, 32 wide (a model trained on them gets a
            // 32-wide maps projector; 512 would add 2 GB to the dataset), 2 augmented views.
            shapes: TargetShapes {
                clip_tokens: [16, 64],
                lowlevel: [4, 14, 14],
                captions: [5, 64],
                teacher: Some([49, 32]),
                teacher_augs: 2,
            },
            token_rank: 16,
            ..Self::noise_defaults()
        }
    }

    /// NSD's real sizes: voxel and session counts, 750 trials, shared1000, 256×1664 tokens,
    /// 4×28×28 latents, 768-d captions. Streamed: memory is bounded by one shard.
    pub fn nsd_scale() -> SimSpec {
        SimSpec {
            preset: "nsd-scale".into(),
            subjects: scaled_subjects(1, 1.0),
            trials_per_session: NSD_TRIALS_PER_SESSION,
            runs_per_session: NSD_RUNS_PER_SESSION,
            test_images: NSD_SHARED_TEST_IMAGES,
            latent_dim: 32,
            feature_dim: 64,
            // MindEye2's ConvNeXt teacher size, 49 × 512, with 2 augmented views.
            shapes: TargetShapes {
                clip_tokens: [256, 1664],
                lowlevel: [4, 28, 28],
                captions: [5, 768],
                teacher: Some([49, 512]),
                teacher_augs: 2,
            },
            token_rank: 16,
            trial_rows_per_group: 125,
            target_rows_per_group: 16,
            targets_per_file: 64,
            ..Self::noise_defaults()
        }
    }

    /// Noise shared by `small` and `nsd-scale`: per-voxel ncsnr ~ U(0.03, 0.3) (mean 0.165; the
    /// noise ceiling of a 3-repeat average, 100·ncsnr²/(ncsnr² + 1/3), runs from 0.3% to 21%,
    /// mean ≈ 8%) and representational noise κ = 1 (per-feature SNR of one trial at most 1).
    /// Calibrated on difficulty: on `small`, ridge from 1 session retrieves ~29% (300-way) and
    /// from all 5 sessions ~81%, while the ideal decoder is at ~100%.
    fn noise_defaults() -> SimSpec {
        SimSpec {
            preset: String::new(),
            subjects: Vec::new(),
            trials_per_session: 0,
            runs_per_session: 1,
            test_images: 0,
            latent_dim: 0,
            feature_dim: 0,
            shapes: TargetShapes::default(),
            token_rank: 0,
            ncsnr_range: [0.03, 0.3],
            representational_noise: 1.0,
            session_offset_sd: 1.0,
            session_trend_sd: 0.5,
            caption_noise: 0.5,
            trial_rows_per_group: 250,
            target_rows_per_group: 256,
            targets_per_file: 4096,
        }
    }

    /// Keeps only the given subjects (1-based) and at most `max_sessions` sessions each, shrinking
    /// the shared test set so it stays at most a third of every subject's trials. Used for
    /// reduced runs of a large preset.
    pub fn restrict(mut self, subjects: Option<&[u8]>, max_sessions: Option<u16>) -> SimSpec {
        if let Some(keep) = subjects {
            self.subjects.retain(|s| keep.contains(&s.subject));
        }
        if let Some(max) = max_sessions {
            for s in &mut self.subjects {
                s.sessions = s.sessions.min(max.max(2)); // every subject keeps ≥ 2 sessions
            }
        }
        let min_trials = self.subjects.iter().map(|s| s.sessions as usize).min().unwrap_or(0) * self.trials_per_session;
        self.test_images = self.test_images.min(min_trials / 9);
        self
    }

    /// Explains everything wrong with the spec, or `Ok`.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.subjects.is_empty() {
            problems.push("no subjects".to_string());
        }
        for s in &self.subjects {
            if s.sessions < 1 || s.voxels < 1 || !(1..=8).contains(&s.subject) {
                problems.push(format!("subject {}: needs subject 1..=8, ≥ 1 voxel and ≥ 1 session", s.subject));
            }
            let trials = s.sessions as usize * self.trials_per_session;
            if 3 * self.test_images * 2 > trials {
                problems.push(format!(
                    "subject {}: {} test images × 3 repeats exceed half of its {} trials",
                    s.subject, self.test_images, trials
                ));
            }
        }
        if self.runs_per_session == 0 || self.runs_per_session > self.trials_per_session {
            problems.push(format!("runs_per_session must be in 1..={}", self.trials_per_session));
        }
        if self.test_images < 2 {
            problems.push("at least 2 test images are needed for retrieval".into());
        }
        for (name, v) in
            [("latent_dim", self.latent_dim), ("feature_dim", self.feature_dim), ("token_rank", self.token_rank)]
        {
            if v == 0 {
                problems.push(format!("{name} must be ≥ 1"));
            }
        }
        let s = &self.shapes;
        if s.clip_len() == 0 || s.lowlevel_len() == 0 || s.captions_len() == 0 {
            problems.push("every target shape needs non-zero sizes".into());
        }
        problems.extend(s.teacher_problem());
        if let Some([positions, _]) = s.teacher
            && crate::truth::teacher_side(positions).is_none()
        {
            problems.push(format!("teacher positions {positions} must be a square grid (49 = 7×7)"));
        }
        let [lo, hi] = self.ncsnr_range;
        if !(lo >= 0.0 && hi >= lo && hi.is_finite()) {
            problems.push(format!("ncsnr_range [{lo}, {hi}] must satisfy 0 ≤ lo ≤ hi"));
        }
        let kappa = self.representational_noise;
        if !(kappa >= 0.0 && kappa * hi < 1.0) {
            problems.push(format!(
                "representational_noise {kappa} × the highest ncsnr {hi} must be in [0, 1): the \
                 representational part of a voxel's noise cannot exceed its unit noise variance"
            ));
        }
        if self.trial_rows_per_group == 0 || self.target_rows_per_group == 0 || self.targets_per_file == 0 {
            problems.push("row group and file sizes must be ≥ 1".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_keep_nsd_structure() {
        for name in SimSpec::PRESETS {
            let spec = SimSpec::preset(name).unwrap();
            spec.validate().unwrap();
            assert_eq!(spec.subjects.len(), 8);
            assert!(spec.subjects.iter().all(|s| s.sessions >= 2), "{name}");
        }
        let small = SimSpec::small();
        assert_eq!(small.trials_per_session, 750);
        assert!(small.test_images >= 300);
        let nsd = SimSpec::nsd_scale();
        assert_eq!(nsd.subjects.iter().map(|s| s.voxels).collect::<Vec<_>>(), NSD_VOXELS);
        assert_eq!(nsd.subjects.iter().map(|s| s.sessions).collect::<Vec<_>>(), NSD_SESSIONS);
        assert_eq!(nsd.shapes.clip_tokens, [256, 1664]);
    }

    #[test]
    fn restrict_keeps_test_set_feasible() {
        let spec = SimSpec::nsd_scale().restrict(Some(&[1]), Some(2));
        assert_eq!(spec.subjects.len(), 1);
        assert_eq!(spec.subjects[0].sessions, 2);
        spec.validate().unwrap();
    }

    #[test]
    fn validation_explains() {
        let mut spec = SimSpec::tiny();
        spec.test_images = 1000;
        let err = spec.validate().unwrap_err();
        assert!(err.contains("test images × 3 repeats exceed half"), "{err}");
    }
}
