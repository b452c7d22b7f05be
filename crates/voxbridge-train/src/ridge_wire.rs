//! A ridge on the wire between ranks — weight, bias and their AdamW moments, little-endian —
//! and [`gather_model`], which assembles every subject's ridge from its first owner on the
//! writer (rank 0) for checkpoints, the final evaluation and the saved model.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use voxbridge_collective::Collective;
use voxbridge_model::MindEye2;
use voxbridge_placement::Placement;

use crate::adamw::ParamMoments;
use crate::error::{CommError, WireError};

/// The subject index of a `ridge.linears.<k>.…` path.
pub(crate) fn ridge_subject(path: &str) -> Option<usize> {
    path.strip_prefix("ridge.linears.")?.split('.').next()?.parse().ok()
}

/// The model with every subject's ridge, on the writer (rank 0; `None` elsewhere): each ridge
/// is broadcast from its first owner (for the final evaluation and the saved model).
pub fn gather_model<B: AutodiffBackend>(
    model: &MindEye2<B>,
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Option<MindEye2<B>>, CommError> {
    Ok(gather_ridges(model, &[], collective, placement)?.map(|(m, _)| m))
}

/// The model with every subject's ridge, and those ridges' AdamW moments.
pub(crate) type WholeRidges<B> = (MindEye2<B>, Vec<ParamMoments>);

/// Every subject's ridge (with its AdamW moments, those of `exported` under its path) from its
/// first owner, assembled on rank 0. The other ranks pass the bytes along the ring and drop them.
pub(crate) fn gather_ridges<B: AutodiffBackend>(
    model: &MindEye2<B>,
    exported: &[ParamMoments],
    collective: &mut dyn Collective,
    placement: &Placement,
) -> Result<Option<WholeRidges<B>>, CommError> {
    let rank = collective.rank();
    let device = model.backbone.backbone_linear.weight.device();
    let mut whole = (rank == 0).then(|| model.clone());
    let mut moments = Vec::new();
    for subject in 0..placement.shares().len() {
        let root = placement.owners(subject)[0];
        let mut bytes = Vec::new();
        if root == rank {
            let linear = model.ridge.linear(subject).ok_or(CommError::MissingRidge { rank, subject })?;
            let prefix = format!("ridge.linears.{subject}.");
            bytes = encode_ridge(linear, exported.iter().filter(|m| m.path.starts_with(&prefix)));
        }
        collective.broadcast(&mut bytes, root)?;
        let Some(whole) = whole.as_mut() else { continue };
        let mut ridge = decode_ridge(&bytes).map_err(|error| CommError::RidgeWire { subject, root, error })?;
        let ridge_moments = std::mem::take(&mut ridge.moments);
        if whole.ridge.linear(subject).is_none() {
            whole.ridge.linears[subject] = Some(ridge.linear::<B>(&device));
        }
        moments.extend(ridge_moments.into_iter().map(|mut m| {
            m.path = format!("ridge.linears.{subject}.{}", m.path);
            m
        }));
    }
    Ok(whole.map(|w| (w, moments)))
}

/// A ridge on the wire: weight `[V, hidden]`, bias `[hidden]`, then the moments of those of
/// them that have any. Little-endian: `u64` counts, then `f32` values.
fn encode_ridge<'m, B: AutodiffBackend>(
    linear: &Linear<B>,
    moments: impl Iterator<Item = &'m ParamMoments>,
) -> Vec<u8> {
    let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let weight = host(linear.weight.val());
    let [inputs, hidden] = linear.weight.dims();
    let bias = linear.bias.as_ref().map(|b| host(b.val().unsqueeze::<2>())).unwrap_or_default();
    let mut out = Vec::with_capacity(4 * (weight.len() + bias.len()) + 64);
    let put_u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
    let put_values = |out: &mut Vec<u8>, values: &[f32]| {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    put_u64(&mut out, inputs as u64);
    put_u64(&mut out, hidden as u64);
    put_u64(&mut out, bias.len() as u64);
    put_values(&mut out, &weight);
    put_values(&mut out, &bias);
    let moments: Vec<&ParamMoments> = moments.collect();
    put_u64(&mut out, moments.len() as u64);
    for m in moments {
        let leaf = m.path.rsplit('.').next().unwrap_or("");
        put_u64(&mut out, u64::from(leaf == "bias"));
        put_u64(&mut out, m.steps as u64);
        put_values(&mut out, &m.exp_avg);
        put_values(&mut out, &m.exp_avg_sq);
    }
    out
}

#[derive(Debug)]
struct DecodedRidge {
    shape: [usize; 2],
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// Paths relative to the ridge (`weight`, `bias`).
    moments: Vec<ParamMoments>,
}

impl DecodedRidge {
    fn linear<B: AutodiffBackend>(self, device: &B::Device) -> Linear<B> {
        let weight = Tensor::<B, 2>::from_data(TensorData::new(self.weight, self.shape), device);
        let bias = self.bias.map(|b| {
            let n = b.len();
            Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(b, [n]), device))
        });
        Linear { weight: Param::from_tensor(weight), bias }
    }
}

/// Reads [`encode_ridge`]'s format, with the byte offset in errors.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let part =
            self.bytes.get(self.at..self.at + n).ok_or(WireError::Truncated { at: self.at, len: self.bytes.len() })?;
        self.at += n;
        Ok(part)
    }

    fn count(&mut self) -> Result<usize, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    }

    fn values(&mut self, n: usize) -> Result<Vec<f32>, WireError> {
        Ok(self.take(4 * n)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

fn decode_ridge(bytes: &[u8]) -> Result<DecodedRidge, WireError> {
    let mut r = Reader { bytes, at: 0 };
    let (inputs, hidden, bias_len) = (r.count()?, r.count()?, r.count()?);
    let weight = r.values(inputs * hidden)?;
    let bias = if bias_len > 0 { Some(r.values(bias_len)?) } else { None };
    let count = r.count()?;
    let mut moments = Vec::with_capacity(count);
    for _ in 0..count {
        let is_bias = r.count()? == 1;
        let steps = r.count()? as i32;
        let (path, shape) = if is_bias { ("bias", vec![bias_len]) } else { ("weight", vec![inputs, hidden]) };
        let n: usize = shape.iter().product();
        let (exp_avg, exp_avg_sq) = (r.values(n)?, r.values(n)?);
        moments.push(ParamMoments { path: path.into(), shape, exp_avg, exp_avg_sq, steps });
    }
    if r.at != bytes.len() {
        return Err(WireError::LeftOver(bytes.len() - r.at));
    }
    Ok(DecodedRidge { shape: [inputs, hidden], weight, bias, moments })
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::LinearConfig;

    use super::*;

    #[test]
    fn a_ridge_and_its_moments_survive_the_wire_and_damaged_bytes_are_named() {
        let linear = LinearConfig::new(3, 2).init::<Autodiff<Flex>>(&Default::default());
        let moments = [ParamMoments {
            path: "ridge.linears.1.bias".into(),
            shape: vec![2],
            exp_avg: vec![1.0, 2.0],
            exp_avg_sq: vec![3.0, 4.0],
            steps: 5,
        }];
        let bytes = encode_ridge(&linear, moments.iter());
        let decoded = decode_ridge(&bytes).unwrap();
        assert_eq!(decoded.shape, [3, 2]);
        assert_eq!(decoded.weight, linear.weight.val().into_data().to_vec::<f32>().unwrap());
        assert_eq!(decoded.moments, [ParamMoments { path: "bias".into(), ..moments[0].clone() }]);
        assert_eq!(decode_ridge(&bytes[..10]).unwrap_err(), WireError::Truncated { at: 8, len: 10 });
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(decode_ridge(&longer).unwrap_err(), WireError::LeftOver(1));
    }
}
