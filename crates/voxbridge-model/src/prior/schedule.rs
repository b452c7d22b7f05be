//! DALLE2's cosine noise schedule and the float32 buffers its `NoiseScheduler` registers.

/// The schedule of a `NoiseScheduler(beta_schedule="cosine", timesteps)`: computed in float64
/// like the original, then stored as float32 (the `*_f64` fields keep the float64 values).
///
/// All vectors have `timesteps` entries, indexed by the integer timestep `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub timesteps: usize,
    pub betas_f64: Vec<f64>,
    pub alphas_cumprod_f64: Vec<f64>,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
    pub alphas_cumprod_prev: Vec<f32>,
    pub sqrt_alphas_cumprod: Vec<f32>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f32>,
    pub log_one_minus_alphas_cumprod: Vec<f32>,
    pub sqrt_recip_alphas_cumprod: Vec<f32>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f32>,
    pub posterior_variance: Vec<f32>,
    pub posterior_log_variance_clipped: Vec<f32>,
    pub posterior_mean_coef1: Vec<f32>,
    pub posterior_mean_coef2: Vec<f32>,
    /// All ones (DALLE2's p2 reweighting with gamma 0).
    pub p2_loss_weight: Vec<f32>,
}

/// Offset `s` of the cosine schedule.
const COSINE_S: f64 = 0.008;
/// Upper clip of the betas.
const MAX_BETA: f64 = 0.999;

impl NoiseSchedule {
    /// Cosine schedule (Nichol & Dhariwal), `s = 0.008`, betas clipped to `[0, 0.999]`.
    pub fn cosine(timesteps: usize) -> Self {
        let t_f = timesteps as f64;
        // f(x) = cos(((x / T) + s) / (1 + s) * pi / 2)^2, normalised by f(0)
        let f: Vec<f64> = (0..=timesteps)
            .map(|x| {
                let c = (((x as f64 / t_f) + COSINE_S) / (1.0 + COSINE_S) * std::f64::consts::PI * 0.5).cos();
                c * c
            })
            .collect();
        let f0 = f[0];
        let f: Vec<f64> = f.iter().map(|v| v / f0).collect();
        let betas: Vec<f64> = (0..timesteps).map(|i| (1.0 - f[i + 1] / f[i]).clamp(0.0, MAX_BETA)).collect();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut ac = Vec::with_capacity(timesteps);
        let mut acc = 1.0f64;
        for a in &alphas {
            acc *= a;
            ac.push(acc);
        }
        let ac_prev: Vec<f64> =
            std::iter::once(1.0).chain(ac.iter().copied().take(timesteps.saturating_sub(1))).collect();

        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let map = |g: &dyn Fn(usize) -> f64| f32s((0..timesteps).map(g).collect());
        let posterior_variance: Vec<f64> =
            (0..timesteps).map(|i| betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i])).collect();
        Self {
            timesteps,
            betas: f32s(betas.clone()),
            alphas_cumprod: f32s(ac.clone()),
            alphas_cumprod_prev: f32s(ac_prev.clone()),
            sqrt_alphas_cumprod: map(&|i| ac[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).ln()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ac[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ac[i] - 1.0).sqrt()),
            posterior_log_variance_clipped: map(&|i| posterior_variance[i].max(1e-20).ln()),
            posterior_mean_coef1: map(&|i| betas[i] * ac_prev[i].sqrt() / (1.0 - ac[i])),
            posterior_mean_coef2: map(&|i| (1.0 - ac_prev[i]) * alphas[i].sqrt() / (1.0 - ac[i])),
            posterior_variance: f32s(posterior_variance),
            p2_loss_weight: vec![1.0; timesteps],
            betas_f64: betas,
            alphas_cumprod_f64: ac,
        }
    }

    /// The float32 buffers under the names DALLE2 registers them with
    /// (`diffusion_prior.noise_scheduler.<name>` in a MindEye2 checkpoint).
    pub fn buffers(&self) -> Vec<(&'static str, &[f32])> {
        vec![
            ("betas", &self.betas),
            ("alphas_cumprod", &self.alphas_cumprod),
            ("alphas_cumprod_prev", &self.alphas_cumprod_prev),
            ("sqrt_alphas_cumprod", &self.sqrt_alphas_cumprod),
            ("sqrt_one_minus_alphas_cumprod", &self.sqrt_one_minus_alphas_cumprod),
            ("log_one_minus_alphas_cumprod", &self.log_one_minus_alphas_cumprod),
            ("sqrt_recip_alphas_cumprod", &self.sqrt_recip_alphas_cumprod),
            ("sqrt_recipm1_alphas_cumprod", &self.sqrt_recipm1_alphas_cumprod),
            ("posterior_variance", &self.posterior_variance),
            ("posterior_log_variance_clipped", &self.posterior_log_variance_clipped),
            ("posterior_mean_coef1", &self.posterior_mean_coef1),
            ("posterior_mean_coef2", &self.posterior_mean_coef2),
            ("p2_loss_weight", &self.p2_loss_weight),
        ]
    }
}
