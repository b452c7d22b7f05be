//! DALLE2's `DiffusionPrior` as MindEye2's `BrainDiffusionPrior` uses it: forward noising, the
//! x0-prediction training loss and the DDIM sampler (eta = 1 at inference); and MindEye1's full
//! ancestral DDPM sampler.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::network::{CondKeep, PriorNetwork, timesteps_tensor};
use super::schedule::NoiseSchedule;

/// The DDIM `(t, t_next)` pairs for `steps` sampling steps over a `total`-step schedule:
/// `int(linspace(-1, total, steps + 1)[:-1])` (float32, truncated toward zero), reversed and
/// paired. `None` stands for the final `t_next = -1` (return the x0 prediction).
///
/// # Panics
/// If `steps` is 0 or larger than `total`.
pub fn ddim_time_pairs(total: usize, steps: usize) -> Vec<(usize, Option<usize>)> {
    assert!(steps >= 1 && steps <= total, "DDIM steps {steps} must be in 1..={total}");
    let n = steps + 1;
    let (start, end) = (-1f32, total as f32);
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    // torch.linspace's CPU formula: from the start for the first half, from the end for the rest
    let times: Vec<i64> = (0..n - 1)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 })
        .map(|v| v as i64)
        .rev()
        .collect();
    times.windows(2).map(|w| (w[0].max(0) as usize, usize::try_from(w[1]).ok())).collect()
}

/// One DDIM step's outputs (`[B, T, D]` each).
#[derive(Debug, Clone)]
pub struct DdimStep<B: Backend> {
    /// The network's x0 prediction at this step.
    pub pred_x0: Tensor<B, 3>,
    /// The next sample (`pred_x0` itself on the final step).
    pub x_next: Tensor<B, 3>,
}

/// The prior network with its noise schedule.
#[derive(Module, Debug)]
pub struct DiffusionPrior<B: Backend> {
    pub net: PriorNetwork<B>,
    #[module(skip)]
    pub schedule: NoiseSchedule,
}

impl<B: Backend> DiffusionPrior<B> {
    /// Wraps `net` with the cosine schedule of `net.config.timesteps` steps.
    pub fn new(net: PriorNetwork<B>) -> Self {
        let schedule = NoiseSchedule::cosine(net.config.timesteps);
        Self { net, schedule }
    }

    /// Per-sample coefficient `values[t_b]` as `[B, 1, 1]`.
    fn coef(&self, values: &[f32], t: &[usize], device: &B::Device) -> Tensor<B, 3> {
        let picked: Vec<f32> = t
            .iter()
            .map(|&ti| {
                assert!(ti < values.len(), "timestep {ti} outside the {}-step schedule", values.len());
                values[ti]
            })
            .collect();
        Tensor::from_data(TensorData::new(picked, [t.len(), 1, 1]), device)
    }

    /// Forward noising `x_t = sqrt(ac_t) x0 + sqrt(1 - ac_t) noise`; `x0`, `noise` `[B, T, D]`,
    /// `t` one integer step per batch element -> `[B, T, D]`.
    ///
    /// # Panics
    /// If a timestep is outside the schedule.
    pub fn q_sample(&self, x0: Tensor<B, 3>, t: &[usize], noise: Tensor<B, 3>) -> Tensor<B, 3> {
        let device = x0.device();
        let a = self.coef(&self.schedule.sqrt_alphas_cumprod, t, &device);
        let s = self.coef(&self.schedule.sqrt_one_minus_alphas_cumprod, t, &device);
        a * x0 + s * noise
    }

    /// The training loss: noise `x0` to step `t`, predict x0 with conditioning keep-masks `keep`,
    /// return `(pred_x0 [B, T, D], MSE(pred_x0, x0) [1])`. `x0` is the raw target (no
    /// `image_embed_scale`), `brain` `[B, T, D]` the backbone's tokens.
    pub fn p_losses(
        &self,
        x0: Tensor<B, 3>,
        t: &[usize],
        brain: Tensor<B, 3>,
        noise: Tensor<B, 3>,
        keep: &CondKeep,
    ) -> (Tensor<B, 3>, Tensor<B, 1>) {
        let device = x0.device();
        let x_t = self.q_sample(x0.clone(), t, noise);
        let pred = self.net.forward(x_t, timesteps_tensor(t, &device), brain, keep);
        let loss = (pred.clone() - x0).square().mean();
        (pred, loss)
    }

    /// [`DiffusionPrior::p_losses`] with keep-masks drawn as in training: brain and image
    /// conditioning each dropped with `config.cond_drop_prob` from the caller's uniform draws.
    pub fn p_losses_sampled(
        &self,
        x0: Tensor<B, 3>,
        t: &[usize],
        brain: Tensor<B, 3>,
        noise: Tensor<B, 3>,
        uniform: &mut dyn FnMut() -> f64,
    ) -> (Tensor<B, 3>, Tensor<B, 1>) {
        let p = self.net.config.cond_drop_prob;
        let keep = CondKeep::sample(t.len(), p, p, uniform);
        self.p_losses(x0, t, brain, noise, &keep)
    }

    /// One DDIM step from `x` `[B, T, D]` at integer step `t` towards `t_next` (`None` = final step,
    /// which returns the x0 prediction). With `a = alphas_cumprod_prev[t]`,
    /// `a_next = alphas_cumprod_prev[t_next]` and the noise estimate
    /// `eps = (sqrt(1/ac_t) x - x0) / sqrt(1/ac_t - 1)` (from `alphas_cumprod[t]`):
    /// `c1 = eta sqrt((1 - a/a_next)(1 - a_next)/(1 - a))`, `c2 = sqrt(1 - a_next - c1^2)`,
    /// `x_next = x0 sqrt(a_next) + c1 noise + c2 eps`. `noise` `[B, T, D]` is used when given
    /// (the sampler supplies it only for `t_next > 0`), otherwise taken as zero.
    pub fn ddim_step(
        &self,
        x: Tensor<B, 3>,
        brain: Tensor<B, 3>,
        t: usize,
        t_next: Option<usize>,
        cond_scale: f64,
        eta: f64,
        noise: Option<Tensor<B, 3>>,
    ) -> DdimStep<B> {
        let s = &self.schedule;
        assert!(t < s.timesteps, "DDIM step t = {t} outside the {}-step schedule", s.timesteps);
        let b = x.dims()[0];
        let device = x.device();
        let pred_x0 =
            self.net.forward_with_cond_scale(x.clone(), timesteps_tensor(&vec![t; b], &device), brain, cond_scale);
        let Some(t_next) = t_next else {
            return DdimStep { x_next: pred_x0.clone(), pred_x0 };
        };
        assert!(t_next < s.timesteps, "DDIM step t_next = {t_next} outside the schedule");
        let eps = (x.mul_scalar(s.sqrt_recip_alphas_cumprod[t]) - pred_x0.clone())
            .div_scalar(s.sqrt_recipm1_alphas_cumprod[t]);
        let (a, a_next) = (s.alphas_cumprod_prev[t], s.alphas_cumprod_prev[t_next]);
        let c1 = eta as f32 * ((1.0 - a / a_next) * (1.0 - a_next) / (1.0 - a)).sqrt();
        let c2 = ((1.0 - a_next) - c1 * c1).sqrt();
        let mut x_next = pred_x0.clone().mul_scalar(a_next.sqrt());
        if let Some(noise) = noise {
            x_next = x_next + noise.mul_scalar(c1);
        }
        let x_next = x_next + eps.mul_scalar(c2);
        DdimStep { pred_x0, x_next }
    }

    /// DDIM sampling (`p_sample_loop(shape, text_cond, cond_scale, timesteps=steps)` with
    /// `steps < timesteps`): `brain` `[B, T, D]` -> x0 sample `[B, T, D]`, NOT divided by
    /// `image_embed_scale` (MindEye2's override). Every Gaussian draw comes from `draw(shape)`:
    /// first the starting sample, then one per step whose `t_next > 0`.
    pub fn sample_ddim(
        &self,
        brain: Tensor<B, 3>,
        steps: usize,
        cond_scale: f64,
        eta: f64,
        draw: &mut dyn FnMut([usize; 3]) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let shape = brain.dims();
        let mut x = draw(shape);
        for (t, t_next) in ddim_time_pairs(self.schedule.timesteps, steps) {
            let noise = t_next.filter(|&tn| tn > 0).map(|_| draw(shape));
            x = self.ddim_step(x, brain.clone(), t, t_next, cond_scale, eta, noise).x_next;
        }
        x
    }

    /// One ancestral DDPM step at integer step `t` (MindEye1's `p_sample`): the network's x0
    /// prediction, the posterior mean `coef1[t]·x0 + coef2[t]·x`, plus
    /// `exp(½·log_var_clipped[t])·noise` except at `t = 0` (where the draw is still consumed).
    /// `x`, `brain`, `noise` `[B, T, D]`; returns `(pred_x0, x_prev)`.
    pub fn ddpm_step(
        &self,
        x: Tensor<B, 3>,
        brain: Tensor<B, 3>,
        t: usize,
        cond_scale: f64,
        noise: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let s = &self.schedule;
        assert!(t < s.timesteps, "DDPM step t = {t} outside the {}-step schedule", s.timesteps);
        let b = x.dims()[0];
        let device = x.device();
        let pred_x0 =
            self.net.forward_with_cond_scale(x.clone(), timesteps_tensor(&vec![t; b], &device), brain, cond_scale);
        let mean = pred_x0.clone().mul_scalar(s.posterior_mean_coef1[t]) + x.mul_scalar(s.posterior_mean_coef2[t]);
        let x_prev =
            if t == 0 { mean } else { mean + noise.mul_scalar((0.5 * s.posterior_log_variance_clipped[t]).exp()) };
        (pred_x0, x_prev)
    }

    /// Full ancestral sampling over every step (`p_sample_loop(..., timesteps=T)`, MindEye1's
    /// reconstruction path): `brain` `[B, T, D]` → the sample divided by `image_embed_scale`
    /// (MindEye1 trains on targets × that scale). `draw(shape)` gives the starting sample, then
    /// one draw per step, t = T−1 down to 0 (T + 1 draws in all, as the original consumes them).
    pub fn sample_ddpm(
        &self,
        brain: Tensor<B, 3>,
        cond_scale: f64,
        image_embed_scale: f64,
        draw: &mut dyn FnMut([usize; 3]) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let shape = brain.dims();
        let mut x = draw(shape);
        for t in (0..self.schedule.timesteps).rev() {
            let noise = draw(shape);
            x = self.ddpm_step(x, brain.clone(), t, cond_scale, noise).1;
        }
        x.div_scalar(image_embed_scale)
    }

    /// A standard-normal source for [`DiffusionPrior::sample_ddim`] from the backend RNG.
    pub fn gaussian_source(device: B::Device) -> impl FnMut([usize; 3]) -> Tensor<B, 3> {
        move |shape| Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
    }
}
