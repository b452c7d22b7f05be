//! AdamW as PyTorch computes it, with the learning rate **and β1** given at every step (OneCycle
//! cycles β1 as "momentum"; burn's AdamW fixes β1 at construction) and a weight decay chosen per
//! parameter from its module path (MindEye2's groups).
//!
//! Per parameter, with t its step count:
//! `p ← p·(1 − lr·wd)`, `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`,
//! `p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)` — the current β1 in the bias correction.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// First and second moments of one parameter, flattened, and its step count.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    steps: i32,
}

/// AdamW state for one model.
pub struct AdamW<B: AutodiffBackend> {
    pub beta2: f64,
    pub eps: f64,
    moments: HashMap<ParamId, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend> std::fmt::Debug for AdamW<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("beta2", &self.beta2)
            .field("eps", &self.eps)
            .field("params", &self.moments.len())
            .finish()
    }
}

impl<B: AutodiffBackend> Default for AdamW<B> {
    /// torch's defaults: β2 0.999, ε 1e-8.
    fn default() -> Self {
        AdamW { beta2: 0.999, eps: 1e-8, moments: HashMap::new() }
    }
}

impl<B: AutodiffBackend> AdamW<B> {
    /// One update of every parameter that has a gradient in `grads`. `weight_decay(path)` gives
    /// the decay of the parameter at burn module path `path` (e.g. `ridge.linears.0.bias`).
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        model: M,
        mut grads: GradientsParams,
        lr: f64,
        beta1: f64,
        weight_decay: &dyn Fn(&str) -> f64,
    ) -> M {
        let mut mapper = Mapper { optim: self, grads: &mut grads, lr, beta1, weight_decay, path: Vec::new() };
        model.map(&mut mapper)
    }

    /// Number of parameters with optimizer state.
    pub fn tracked(&self) -> usize {
        self.moments.len()
    }

    /// Drops the state of parameters `model` no longer has (a data-parallel rank keeps only its
    /// own subjects' ridges).
    pub fn retain_params_of<M: Module<B>>(&mut self, model: &M) {
        let ids: std::collections::HashSet<ParamId> =
            params_by_path(model).into_iter().map(|(_, id, _, _)| id).collect();
        self.moments.retain(|id, _| ids.contains(id));
    }

    /// The state of every parameter of `model` that has any, keyed by burn module path, in the
    /// model's parameter order (for checkpoints: ids change between processes, paths do not).
    pub fn export<M: Module<B>>(&self, model: &M) -> Vec<ParamMoments> {
        self.export_matching(model, &|_| true)
    }

    /// [`AdamW::export`] of the parameters whose paths `keep` accepts (only those are copied
    /// to the host).
    pub fn export_matching<M: Module<B>>(&self, model: &M, keep: &dyn Fn(&str) -> bool) -> Vec<ParamMoments> {
        params_by_path(model)
            .into_iter()
            .filter(|(path, ..)| keep(path))
            .filter_map(|(path, id, shape, _)| {
                let state = self.moments.get(&id)?;
                let values = |t: &Tensor<B::InnerBackend, 1>| t.clone().into_data().convert::<f32>().to_vec::<f32>();
                Some(ParamMoments {
                    path,
                    shape,
                    exp_avg: values(&state.m).ok()?,
                    exp_avg_sq: values(&state.v).ok()?,
                    steps: state.steps,
                })
            })
            .collect()
    }

    /// An optimizer holding `moments` for the parameters of `model` with the same paths. A path
    /// the model lacks or a size that differs is an error naming the path.
    pub fn import<M: Module<B>>(model: &M, moments: Vec<ParamMoments>) -> Result<Self, MomentsError> {
        let params: HashMap<String, (ParamId, Vec<usize>, _)> =
            params_by_path(model).into_iter().map(|(path, id, shape, device)| (path, (id, shape, device))).collect();
        let mut optim = AdamW::default();
        for p in moments {
            let Some((id, shape, device)) = params.get(&p.path) else {
                return Err(MomentsError::UnknownParam { path: p.path });
            };
            let n: usize = shape.iter().product();
            if p.shape != *shape || p.exp_avg.len() != n || p.exp_avg_sq.len() != n {
                return Err(MomentsError::Shape {
                    path: p.path,
                    shape: p.shape,
                    exp_avg: p.exp_avg.len(),
                    exp_avg_sq: p.exp_avg_sq.len(),
                    param: shape.clone(),
                });
            }
            let tensor = |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [n]), device);
            optim.moments.insert(*id, Moments { m: tensor(p.exp_avg), v: tensor(p.exp_avg_sq), steps: p.steps });
        }
        Ok(optim)
    }
}

/// Saved AdamW state that does not fit the model it is imported for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MomentsError {
    #[error("optimizer state for `{path}`, which the model does not have")]
    UnknownParam { path: String },
    #[error(
        "optimizer state for `{path}` has shape {shape:?} ({exp_avg} and {exp_avg_sq} values) but the parameter is \
         {param:?}"
    )]
    Shape { path: String, shape: Vec<usize>, exp_avg: usize, exp_avg_sq: usize, param: Vec<usize> },
}

/// One parameter's AdamW state: `exp_avg` (m) and `exp_avg_sq` (v) in the parameter's shape
/// (row-major), and its step count.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamMoments {
    pub path: String,
    pub shape: Vec<usize>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub steps: i32,
}

/// Path, id, shape and (inner-backend) device of every float parameter, in visiting order.
type ParamSite<B> = (String, ParamId, Vec<usize>, burn::tensor::Device<<B as AutodiffBackend>::InnerBackend>);

fn params_by_path<B: AutodiffBackend, M: Module<B>>(model: &M) -> Vec<ParamSite<B>> {
    let mut visitor = PathVisitor::<B> { path: Vec::new(), found: Vec::new() };
    model.visit(&mut visitor);
    visitor.found
}

struct PathVisitor<B: AutodiffBackend> {
    path: Vec<String>,
    found: Vec<ParamSite<B>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PathVisitor<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        self.found.push((self.path.join("."), param.id, tensor.dims().to_vec(), tensor.inner().device()));
    }
}

/// One parameter's update: flattened parameter, gradient and moments.
#[derive(Debug)]
pub struct Update<I: Backend> {
    pub param: Tensor<I, 1>,
    pub grad: Tensor<I, 1>,
    pub m: Tensor<I, 1>,
    pub v: Tensor<I, 1>,
}

/// The scalars of one update (each rounded to the tensors' dtype where it is used, as burn's
/// scalar ops round them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// `1 − lr·wd`
    pub decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// `√(1 − β2ᵗ)`
    pub bias2_sqrt: f64,
    pub eps: f64,
    /// `lr / (1 − β1ᵗ)`
    pub step_size: f64,
}

impl Coefficients {
    fn new(lr: f64, weight_decay: f64, beta1: f64, beta2: f64, eps: f64, steps: i32) -> Self {
        Coefficients {
            decay: 1.0 - lr * weight_decay,
            beta1,
            beta2,
            bias2_sqrt: (1.0 - beta2.powi(steps)).sqrt(),
            eps,
            step_size: lr / (1.0 - beta1.powi(steps)),
        }
    }
}

/// The update as one backend kernel for the inner backend `I`, registered by a backend's kernel
/// crate (`voxbridge-cpu`: one parallel pass over p, g, m, v in place of a dozen tensor ops).
/// The kernel computes what [`composed_update`] computes, operation for operation; it gives the
/// update back (`Err`) for tensors it does not handle, and the composed ops run.
pub struct UpdateKernel<I: Backend> {
    pub update: UpdateFn<I>,
}

/// `(update, coefficients) -> Ok([param, m, v])`, or the update back (`Err`) where not handled.
pub type UpdateFn<I> = fn(Update<I>, &Coefficients) -> Result<[Tensor<I, 1>; 3], Box<Update<I>>>;

impl<I: Backend> Clone for UpdateKernel<I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I: Backend> Copy for UpdateKernel<I> {}

/// Registers `kernel` for AdamW updates on the inner backend `I`.
pub fn install_update_kernel<I: Backend>(kernel: UpdateKernel<I>) {
    voxbridge_model::kernels::register(kernel);
}

/// `[param, m, v]` after one update.
fn update<I: Backend>(update: Update<I>, c: &Coefficients) -> [Tensor<I, 1>; 3] {
    match voxbridge_model::kernels::lookup::<UpdateKernel<I>>() {
        Some(kernel) => (kernel.update)(update, c).unwrap_or_else(|update| composed_update(*update, c)),
        None => composed_update(update, c),
    }
}

/// The update in burn's tensor ops (any backend).
pub fn composed_update<I: Backend>(update: Update<I>, c: &Coefficients) -> [Tensor<I, 1>; 3] {
    let Update { param, grad, m, v } = update;
    let param = param * c.decay;
    let m = m * c.beta1 + grad.clone() * (1.0 - c.beta1);
    let v = v * c.beta2 + grad.powi_scalar(2) * (1.0 - c.beta2);
    let denom = v.clone().sqrt() / c.bias2_sqrt + c.eps;
    let param = param - m.clone() / denom * c.step_size;
    [param, m, v]
}

struct Mapper<'a, B: AutodiffBackend> {
    optim: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    beta1: f64,
    weight_decay: &'a dyn Fn(&str) -> f64,
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Mapper<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner();
        let shape = p.dims();
        let n: usize = shape.iter().product();
        let device = p.device();
        let (g, p) = (grad.reshape([n]), p.reshape([n])); // flatten: state is rank-agnostic
        let (b1, b2) = (self.beta1, self.optim.beta2);
        let state = self.optim.moments.remove(&id).unwrap_or_else(|| Moments {
            m: Tensor::zeros([n], &device),
            v: Tensor::zeros([n], &device),
            steps: 0,
        });
        let steps = state.steps + 1;
        let wd = (self.weight_decay)(&self.path.join("."));
        let coefficients = Coefficients::new(self.lr, wd, b1, b2, self.optim.eps, steps);
        let [p, m, v] = update(Update { param: p, grad: g, m: state.m, v: state.v }, &coefficients);
        self.optim.moments.insert(id, Moments { m, v, steps });
        let mut updated = Tensor::<B, D>::from_inner(p.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::tensor::TensorData;

    type B = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        w: Param<Tensor<B, 1>>,
        bias: Param<Tensor<B, 1>>,
    }

    fn tensor(values: [f32; 2]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [2]), &Default::default())
    }

    /// Gradients equal to `g` for `w` and `gb` for `bias` (loss = Σ w·g + Σ bias·gb).
    fn grads(model: &Two<B>, g: [f32; 2], gb: [f32; 2]) -> GradientsParams {
        let loss = (model.w.val() * tensor(g)).sum() + (model.bias.val() * tensor(gb)).sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn two_steps_match_hand_computed_torch_adamw_with_a_changing_beta1() {
        let mut model =
            Two::<B> { w: Param::from_tensor(tensor([1.0, -2.0])), bias: Param::from_tensor(tensor([0.0, 0.0])) };
        let mut optim = AdamW::<B>::default();
        let seen = std::cell::RefCell::new(Vec::new());
        let decay = |path: &str| if path.contains("bias") { 0.0 } else { 0.01 };
        // Step 1: lr 0.1, β1 0.9, wd 0.01 on w. p·(1 − 0.001) = [0.999, −1.998]; m = 0.1·g,
        // v = 0.001·g², bias corrections 0.1 and 0.001 → the step is lr·sign(g) = 0.1.
        let g = grads(&model, [0.5, 0.1], [1.0, 1.0]);
        model = optim.step(model, g, 0.1, 0.9, &decay);
        let w = values(model.w.val());
        assert!((w[0] - 0.899).abs() < 1e-6 && (w[1] + 2.098).abs() < 1e-6, "{w:?}");
        // Step 2: lr 0.1, β1 now 0.8, g = [0.5, −0.1]. m = [0.14, −0.012],
        // v = [0.00049975, 0.00001999]; √(v/(1 − 0.999²)) = [0.5, 0.1]; lr/(1 − 0.8²) = 0.1/0.36;
        // update = [0.0777…, −0.0333…] → w = [0.821222, −2.064667] (wd term: ×(1 − 0.001)).
        let g = grads(&model, [0.5, -0.1], [0.0, 0.0]);
        model = optim.step(model, g, 0.1, 0.8, &|p: &str| {
            seen.borrow_mut().push(p.to_string());
            decay(p)
        });
        let w = values(model.w.val());
        let want = [0.899 * 0.999 - 0.1 / 0.36 * 0.28, -2.098 * 0.999 + 0.1 / 0.36 * 0.12];
        assert!((w[0] - want[0] as f32).abs() < 1e-5 && (w[1] - want[1] as f32).abs() < 1e-5, "{w:?} vs {want:?}");
        // `bias` is not decayed: step 1 moves it by −lr·sign(g) = −0.1; step 2 (g = 0) by the
        // momentum alone: m = 0.8·0.1 = 0.08, √v/√bc2 = √(0.999·0.001/0.001999) ≈ 0.70693.
        let b = values(model.bias.val());
        let want_b = -0.1 - 0.1 / 0.36 * 0.08 / (0.999f64 * 0.001 / 0.001999).sqrt();
        assert!((b[0] as f64 - want_b).abs() < 1e-5, "{b:?} vs {want_b}");
        assert_eq!(optim.tracked(), 2);
        assert_eq!(*seen.borrow(), ["w", "bias"], "decay sees each parameter's module path");
        assert!(model.w.val().is_require_grad());
    }
}
