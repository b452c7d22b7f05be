//! Mind Reader's fMRI-to-CLIP mapper, `fmri_clip_res` of sklin93/mind-reader (spec §8), and its
//! losses. One subject; the input is the voxel vector zero-padded to `signal_len`.
//!
//! ```text
//! fmri (B, L)  viewed (B, 1, L)
//!   encoder.0    Conv1d(1, h, 4, stride 2, pad 1) -> ReLU                    (B, h, L/2)
//!   encoder.1-4  residual: Conv1d(h, h, 3) ReLU Conv1d(h, h, 3) ReLU Conv1d(h, h, 1); + x; ReLU
//!   encoder.5    Conv1d(h, E, 1)                                             (B, E, L/2)
//!   transpose                                                               (B, L/2, E)
//!   fc           ReLU -> Conv1d(L/2, f, 1) -> ReLU -> Conv1d(f, 1, 1)        (B, 1, E) -> (B, E)
//! ```
//!
//! The head's 1×1 convolutions treat the L/2 positions as channels (the same two-layer MLP runs
//! on every CLIP dimension's column of positions). Released: L 15,744 (subject 1's 15,724
//! voxels padded 10 + 10), h 64, E 512 (CLIP ViT-B/32), f 128: 1,156,929 parameters.
//! 1×1 convolutions are computed as matrix products (`[out, in] · [in, len]`).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig1d;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::tensors::{LoadError, TensorMap};

/// Sizes of a Mind Reader mapper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MindReaderConfig {
    /// Input length L after zero padding (15,744); even.
    pub signal_len: usize,
    /// Voxels of the subject before padding (15,724); padded `(L − V) / 2` on the left.
    pub voxels: usize,
    /// Width E of the CLIP target (512, `num_tokens` in the original).
    pub clip_dim: usize,
    /// Encoder channels h (64).
    pub hidden: usize,
    /// Width f of the head's hidden layer (128).
    pub fc_hidden: usize,
    /// Residual blocks (4).
    pub resnet_blocks: usize,
}

impl MindReaderConfig {
    /// The released subject-1 mapper: 15,724 voxels padded to 15,744, CLIP ViT-B/32 targets.
    pub fn released() -> Self {
        Self::for_voxels(15724, 512)
    }

    /// The released sizes for a subject with `voxels` voxels: padded by 10 on each side (rounded
    /// up to an even length), as the original pads subject 1.
    pub fn for_voxels(voxels: usize, clip_dim: usize) -> Self {
        let padded = voxels + 20;
        MindReaderConfig {
            signal_len: padded + padded % 2,
            voxels,
            clip_dim,
            hidden: 64,
            fc_hidden: 128,
            resnet_blocks: 4,
        }
    }

    /// Length of the encoder's output, L/2.
    pub fn encoded_len(&self) -> usize {
        self.signal_len / 2
    }

    /// Zeros before the voxels: `(L − V) / 2` (the rest go after).
    pub fn left_pad(&self) -> usize {
        (self.signal_len - self.voxels) / 2
    }

    /// Every problem with the sizes, in words; empty when the model can be built.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("signal_len", self.signal_len),
            ("voxels", self.voxels),
            ("clip_dim", self.clip_dim),
            ("hidden", self.hidden),
            ("fc_hidden", self.fc_hidden),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if !self.signal_len.is_multiple_of(2) {
            problems.push(format!("signal_len {} must be even (the first convolution halves it)", self.signal_len));
        }
        if self.voxels > self.signal_len {
            problems.push(format!("voxels {} do not fit in signal_len {}", self.voxels, self.signal_len));
        }
        problems
    }

    /// Every parameter (original name, PyTorch shape).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, e, f, l2) = (self.hidden, self.clip_dim, self.fc_hidden, self.encoded_len());
        let mut shapes =
            vec![("encoder.0.0.weight".to_string(), vec![h, 1, 4]), ("encoder.0.0.bias".to_string(), vec![h])];
        for i in 1..=self.resnet_blocks {
            for (j, k) in [(0, 3), (2, 3), (4, 1)] {
                shapes.push((format!("encoder.{i}.net.{j}.weight"), vec![h, h, k]));
                shapes.push((format!("encoder.{i}.net.{j}.bias"), vec![h]));
            }
        }
        let last = self.resnet_blocks + 1;
        shapes.extend([
            (format!("encoder.{last}.weight"), vec![e, h, 1]),
            (format!("encoder.{last}.bias"), vec![e]),
            ("fc.1.weight".to_string(), vec![f, l2, 1]),
            ("fc.1.bias".to_string(), vec![f]),
            ("fc.3.weight".to_string(), vec![1, f, 1]),
            ("fc.3.bias".to_string(), vec![1]),
        ]);
        shapes
    }

    /// Counts as the reference names them: `encoder`, `fc` and `total`.
    pub fn param_counts(&self) -> Vec<(String, u64)> {
        let size = |s: &Vec<usize>| s.iter().map(|&d| d as u64).product::<u64>();
        let shapes = self.param_shapes();
        let part = |p: &str| shapes.iter().filter(|(n, _)| n.starts_with(p)).map(|(_, s)| size(s)).sum::<u64>();
        let (encoder, fc) = (part("encoder."), part("fc."));
        vec![("encoder".into(), encoder), ("fc".into(), fc), ("total".into(), encoder + fc)]
    }

    /// The sizes of a `fmri_clip_res` state dict. `voxels` is not recorded in it: the padding the
    /// original uses (10 each side) is assumed, `signal_len − 20`.
    pub fn infer(map: &TensorMap) -> Result<MindReaderConfig, LoadError> {
        let shape = |key: &str| map.get(key).map(|t| t.shape.clone());
        let hidden = shape("encoder.0.0.weight")?[0];
        let resnet_blocks = (1..).take_while(|i| map.contains(&format!("encoder.{i}.net.0.weight"))).count();
        let clip_dim = shape(&format!("encoder.{}.weight", resnet_blocks + 1))?[0];
        let fc1 = shape("fc.1.weight")?;
        let (fc_hidden, encoded_len) = (fc1[0], fc1.get(1).copied().unwrap_or(0));
        let signal_len = 2 * encoded_len;
        let config = MindReaderConfig {
            signal_len,
            voxels: signal_len.saturating_sub(20).max(1),
            clip_dim,
            hidden,
            fc_hidden,
            resnet_blocks,
        };
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LoadError::Architecture {
                source_name: map.source_name().to_string(),
                message: problems.join("; "),
            });
        }
        for (key, shape) in config.param_shapes() {
            map.get_shaped(&key, &shape)?;
        }
        Ok(config)
    }
}

/// A 1×1 convolution as a matrix product: `[B, in, len]` → `[B, out, len]`.
#[derive(Module, Debug)]
pub struct Pointwise<B: Backend> {
    /// `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Pointwise<B> {
    fn init(c_in: usize, c_out: usize, device: &B::Device) -> Self {
        let conv = Conv1dConfig::new(c_in, c_out, 1).init::<B>(device);
        Pointwise {
            weight: Param::from_tensor(conv.weight.val().reshape([c_out, c_in])),
            bias: Param::from_tensor(conv.bias.map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([c_out], device))),
        }
    }

    fn load(map: &TensorMap, p: &str, c_in: usize, c_out: usize, device: &B::Device) -> Result<Self, LoadError> {
        let weight: Tensor<B, 3> = map.get_shaped(&format!("{p}weight"), &[c_out, c_in, 1])?.to_tensor(device);
        Ok(Pointwise {
            weight: Param::from_tensor(weight.reshape([c_out, c_in])),
            bias: map.param(&format!("{p}bias"), [c_out], device)?,
        })
    }

    /// `[B, in, len]` → `[B, out, len]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [c_out, _] = self.weight.dims();
        let y = self.weight.val().unsqueeze::<3>().matmul(x);
        y + self.bias.val().reshape([1, c_out, 1])
    }
}

/// Conv1d(h, h, 3) ReLU Conv1d(h, h, 3) ReLU Conv1d(h, h, 1), plus the input, then ReLU.
#[derive(Module, Debug)]
pub struct ResBlock1d<B: Backend> {
    pub conv0: Conv1d<B>,
    pub conv2: Conv1d<B>,
    pub conv4: Pointwise<B>,
}

impl<B: Backend> ResBlock1d<B> {
    /// The three-convolution branch before the residual add, `[B, h, n]`.
    pub fn branch(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = relu(self.conv0.forward(x));
        let x = relu(self.conv2.forward(x));
        self.conv4.forward(x)
    }

    /// `[B, h, n]` → `[B, h, n]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        relu(self.branch(x.clone()) + x)
    }
}

/// The `fmri_clip_res` mapper (see the module docs).
#[derive(Module, Debug)]
pub struct MindReader<B: Backend> {
    pub stem: Conv1d<B>,
    pub blocks: Vec<ResBlock1d<B>>,
    pub to_clip: Pointwise<B>,
    pub fc1: Pointwise<B>,
    pub fc3: Pointwise<B>,
}

/// Every intermediate of a forward pass, named like the reference's hooks.
#[derive(Debug, Clone)]
pub struct MindReaderTrace<B: Backend> {
    /// `encoder.0` `[B, h, L/2]`.
    pub stem: Tensor<B, 3>,
    /// Each residual block's branch output and its output, `[B, h, L/2]`.
    pub blocks: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// `encoder.5` `[B, E, L/2]`.
    pub encoded: Tensor<B, 3>,
    /// `fc` output `[B, 1, E]`.
    pub fc_out: Tensor<B, 3>,
    /// `y_pred` `[B, E]`.
    pub y_pred: Tensor<B, 2>,
}

fn conv1d<B: Backend>(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, device: &B::Device) -> Conv1d<B> {
    Conv1dConfig::new(c_in, c_out, k).with_stride(stride).with_padding(PaddingConfig1d::Explicit(pad, pad)).init(device)
}

#[allow(clippy::too_many_arguments)]
fn load_conv1d<B: Backend>(
    map: &TensorMap,
    p: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Result<Conv1d<B>, LoadError> {
    let mut conv = conv1d(c_in, c_out, k, stride, pad, device);
    conv.weight = map.param(&format!("{p}weight"), [c_out, c_in, k], device)?;
    conv.bias = Some(map.param(&format!("{p}bias"), [c_out], device)?);
    Ok(conv)
}

impl<B: Backend> MindReader<B> {
    /// Freshly initialised, PyTorch-style.
    ///
    /// # Panics
    /// If the sizes cannot build a model ([`MindReaderConfig::problems`]).
    pub fn init(config: &MindReaderConfig, device: &B::Device) -> Self {
        let problems = config.problems();
        assert!(problems.is_empty(), "Mind Reader: {}", problems.join("; "));
        let h = config.hidden;
        MindReader {
            stem: conv1d(1, h, 4, 2, 1, device),
            blocks: (0..config.resnet_blocks)
                .map(|_| ResBlock1d {
                    conv0: conv1d(h, h, 3, 1, 1, device),
                    conv2: conv1d(h, h, 3, 1, 1, device),
                    conv4: Pointwise::init(h, h, device),
                })
                .collect(),
            to_clip: Pointwise::init(h, config.clip_dim, device),
            fc1: Pointwise::init(config.encoded_len(), config.fc_hidden, device),
            fc3: Pointwise::init(config.fc_hidden, 1, device),
        }
    }

    /// From the original state dict (`encoder.*`, `fc.*`).
    pub fn from_tensors(map: &TensorMap, config: &MindReaderConfig, device: &B::Device) -> Result<Self, LoadError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(LoadError::Architecture {
                source_name: map.source_name().to_string(),
                message: problems.join("; "),
            });
        }
        let h = config.hidden;
        let blocks = (1..=config.resnet_blocks)
            .map(|i| {
                let p = format!("encoder.{i}.net.");
                Ok(ResBlock1d {
                    conv0: load_conv1d(map, &format!("{p}0."), h, h, 3, 1, 1, device)?,
                    conv2: load_conv1d(map, &format!("{p}2."), h, h, 3, 1, 1, device)?,
                    conv4: Pointwise::load(map, &format!("{p}4."), h, h, device)?,
                })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(MindReader {
            stem: load_conv1d(map, "encoder.0.0.", 1, h, 4, 2, 1, device)?,
            blocks,
            to_clip: Pointwise::load(
                map,
                &format!("encoder.{}.", config.resnet_blocks + 1),
                h,
                config.clip_dim,
                device,
            )?,
            fc1: Pointwise::load(map, "fc.1.", config.encoded_len(), config.fc_hidden, device)?,
            fc3: Pointwise::load(map, "fc.3.", config.fc_hidden, 1, device)?,
        })
    }

    /// Padded voxels `[B, L]` → predicted CLIP vector `[B, E]`.
    pub fn forward(&self, fmri: Tensor<B, 2>) -> Tensor<B, 2> {
        self.trace(fmri).y_pred
    }

    /// [`MindReader::forward`] with every intermediate.
    pub fn trace(&self, fmri: Tensor<B, 2>) -> MindReaderTrace<B> {
        let stem = relu(self.stem.forward(fmri.unsqueeze_dim::<3>(1))); // [B, h, L/2]
        let mut x = stem.clone();
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let branch = block.branch(x.clone());
            x = relu(branch.clone() + x);
            blocks.push((branch, x.clone()));
        }
        let encoded = self.to_clip.forward(x); // [B, E, L/2]
        let fc_in = encoded.clone().swap_dims(1, 2); // [B, L/2, E]
        let fc_out = self.fc3.forward(relu(self.fc1.forward(relu(fc_in)))); // [B, 1, E]
        let y_pred = fc_out.clone().squeeze_dim::<2>(1);
        MindReaderTrace { stem, blocks, encoded, fc_out, y_pred }
    }
}

/// Voxels `[V]` zero-padded to `config.signal_len` the way the original dataset pads them.
pub fn pad_voxels(voxels: &[f32], config: &MindReaderConfig) -> Vec<f32> {
    let mut out = vec![0.0; config.signal_len];
    let left = config.left_pad();
    out[left..left + voxels.len()].copy_from_slice(voxels);
    out
}

/// A CLIP target as Mind Reader uses it: clamped to ±`threshold`, then divided by its l2 norm.
pub fn prepare_target(target: &[f32], threshold: f32) -> Vec<f32> {
    let clamped: Vec<f32> = target.iter().map(|v| v.clamp(-threshold, threshold)).collect();
    let norm = clamped.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    clamped.into_iter().map(|v| v / norm).collect()
}

/// `cos(pred_i, y_i)` per row as `CosineEmbeddingLoss` computes it (1e-12 added to each squared
/// norm), `[B]`.
fn row_cosine<B: Backend>(pred: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    let dot = (pred.clone() * y.clone()).sum_dim(1);
    let norms = (pred.square().sum_dim(1).add_scalar(1e-12) * y.square().sum_dim(1).add_scalar(1e-12)).sqrt();
    (dot / norms).squeeze_dim::<1>(1)
}

/// `mse_cos`: `(1 − w)·MSE + w·mean(1 − cos)`, `w` = `cos_weight` (0.6 in the released run).
pub fn mse_cos_loss<B: Backend>(pred: Tensor<B, 2>, y: Tensor<B, 2>, cos_weight: f64) -> Tensor<B, 1> {
    let mse = (pred.clone() - y.clone()).square().mean();
    let cos = row_cosine(pred, y).neg().add_scalar(1.0).mean();
    mse.mul_scalar(1.0 - cos_weight) + cos.mul_scalar(cos_weight)
}

/// `contrastive_loss`: `S = cos(pred_i, y_j) / τ`; the mean over i of
/// `−(λ·log_softmax_j S[i, :]_i + (1 − λ)·log_softmax_i S[:, i]_i)`. With `τ = 0` the mean
/// negative cosine instead (the original's special case).
pub fn contrastive_loss<B: Backend>(pred: Tensor<B, 2>, y: Tensor<B, 2>, temperature: f64, lam: f64) -> Tensor<B, 1> {
    let [n, _] = pred.dims();
    let unit = |t: Tensor<B, 2>| {
        let norm = t.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
        t / norm
    };
    let (p, t) = (unit(pred), unit(y));
    if temperature == 0.0 {
        return (p * t).sum_dim(1).mean().neg();
    }
    let s = p.matmul(t.transpose()) / temperature; // [B, B]
    let eye = Tensor::<B, 2>::eye(n, &s.device());
    let rows = (log_softmax(s.clone(), 1) * eye.clone()).sum().div_scalar(n as f64);
    let cols = (log_softmax(s, 0) * eye).sum().div_scalar(n as f64);
    (rows.mul_scalar(lam) + cols.mul_scalar(1.0 - lam)).neg()
}

/// Which objective a Mind Reader model trains with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MindReaderLoss {
    /// `mse_cos` with its cosine weight (0.6).
    MseCos { cos_weight: f64 },
    /// `contrastive` at temperature τ; the original passes `cos_weight` as λ.
    Contrastive { temperature: f64, lam: f64 },
    /// `mse_cos_contrastive`: the mean of `mse_cos(cos_weight)` and `contrastive(τ, λ 0.5)`.
    MseCosContrastive { temperature: f64, cos_weight: f64 },
}

impl MindReaderLoss {
    /// The released training loss.
    pub fn released() -> Self {
        MindReaderLoss::MseCos { cos_weight: 0.6 }
    }

    /// The loss of predictions `[B, E]` against prepared targets `[B, E]`.
    pub fn compute<B: Backend>(&self, pred: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
        match *self {
            MindReaderLoss::MseCos { cos_weight } => mse_cos_loss(pred, y, cos_weight),
            MindReaderLoss::Contrastive { temperature, lam } => contrastive_loss(pred, y, temperature, lam),
            MindReaderLoss::MseCosContrastive { temperature, cos_weight } => {
                let a = mse_cos_loss(pred.clone(), y.clone(), cos_weight);
                let b = contrastive_loss(pred, y, temperature, 0.5);
                (a + b).mul_scalar(0.5)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_counts_match_the_original() {
        // ../shared/reference/mindreader-tiny/param_counts_full.json
        let config = MindReaderConfig::released();
        assert_eq!(config.signal_len, 15744);
        assert_eq!(config.left_pad(), 10);
        let counts: std::collections::BTreeMap<String, u64> = config.param_counts().into_iter().collect();
        assert_eq!(counts["encoder"], 149_056);
        assert_eq!(counts["fc"], 1_007_873);
        assert_eq!(counts["total"], 1_156_929);
    }

    #[test]
    fn targets_are_clamped_before_they_are_normalised() {
        let t = prepare_target(&[3.0, 0.0, -4.0, 0.0], 1.5);
        let s = 1.5 / (2.0f32 * 1.5 * 1.5).sqrt();
        assert_eq!(t, vec![s, 0.0, -s, 0.0]);
    }

    #[test]
    fn padding_puts_the_voxels_in_the_middle() {
        let config =
            MindReaderConfig { signal_len: 8, voxels: 3, clip_dim: 2, hidden: 2, fc_hidden: 2, resnet_blocks: 1 };
        assert_eq!(pad_voxels(&[1.0, 2.0, 3.0], &config), vec![0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
        let mut odd = config.clone();
        odd.signal_len = 7;
        assert!(odd.problems().join(" ").contains("must be even"));
    }
}
