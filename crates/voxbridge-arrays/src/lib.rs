//! Array file formats shared by the model (checkpoint and reference imports), the CLI
//! (`predict` inputs and outputs) and the NSD import (behaviour rows, targets): NumPy `.npy`
//! of any plain little-endian numeric dtype, and safetensors elements converted to `f32`.
//! No burn, no IO: bytes in, values out.

pub mod npy;

/// A safetensors tensor's elements as `f32` (floats, integers and bools are converted).
pub fn safetensors_f32(dtype: safetensors::Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    use safetensors::Dtype;
    fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(|c| c.try_into().expect("exact chunk"))
    }
    Ok(match dtype {
        Dtype::F32 => chunks::<4>(bytes).map(f32::from_le_bytes).collect(),
        Dtype::F64 => chunks::<8>(bytes).map(|b| f64::from_le_bytes(b) as f32).collect(),
        Dtype::F16 => chunks::<2>(bytes).map(|b| half::f16::from_le_bytes(b).to_f32()).collect(),
        Dtype::BF16 => chunks::<2>(bytes).map(|b| half::bf16::from_le_bytes(b).to_f32()).collect(),
        Dtype::I64 => chunks::<8>(bytes).map(|b| i64::from_le_bytes(b) as f32).collect(),
        Dtype::I32 => chunks::<4>(bytes).map(|b| i32::from_le_bytes(b) as f32).collect(),
        Dtype::U32 => chunks::<4>(bytes).map(|b| u32::from_le_bytes(b) as f32).collect(),
        Dtype::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        Dtype::BOOL => bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_matches_known_values() {
        let half_to_f32 = |h: u16| safetensors_f32(safetensors::Dtype::F16, &h.to_le_bytes()).unwrap()[0];
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x3555), 0.333_251_95);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
    }

    #[test]
    fn safetensors_elements_convert_to_f32() {
        use safetensors::Dtype;
        assert_eq!(safetensors_f32(Dtype::F16, &[0x00, 0x3c, 0x00, 0xc0]).unwrap(), [1.0, -2.0]);
        assert_eq!(safetensors_f32(Dtype::BF16, &[0x80, 0x3f]).unwrap(), [1.0]);
        assert_eq!(safetensors_f32(Dtype::I64, &(-3i64).to_le_bytes()).unwrap(), [-3.0]);
        assert!(safetensors_f32(Dtype::C64, &[0; 8]).unwrap_err().contains("unsupported"));
    }
}
