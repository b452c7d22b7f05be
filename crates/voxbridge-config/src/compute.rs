//! `[compute]`: where a run's tensors live and in which precision its matmuls run. The device
//! does not change what is trained (a run may resume on another device); the precision does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A compute device, as written in `[compute] device` and `--device`: `cpu`, `cuda` (GPU 0),
/// `cuda:N`, or `wgpu` (the default Vulkan/Metal adapter; lavapipe in CI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Wgpu,
}

impl DeviceSpec {
    /// The spellings accepted, for messages.
    pub const SPELLINGS: &'static str = "cpu, cuda, cuda:N, wgpu";

    /// The cargo feature a binary needs to run on this device (`None`: always built in).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(_) => Some("cuda"),
            DeviceSpec::Wgpu => Some("wgpu"),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a device; expected one of {}", DeviceSpec::SPELLINGS);
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The precision of a run's matmuls and convolutions. Weights, gradients and AdamW moments are
/// f32 either way; softmax, norms and losses run in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere. On CUDA burn's f32 matmuls use TF32 tensor cores (torch's `allow_tf32`).
    #[default]
    Fp32,
    /// bf16 operands with f32 accumulation for matmuls and convolutions (emulated by rounding
    /// on backends without bf16 arithmetic, such as wgpu).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[compute]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    pub device: DeviceSpec,
    pub precision: Precision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("wgpu", DeviceSpec::Wgpu),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(device));
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda:0".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", ""] {
            let error = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(error.contains("cpu, cuda, cuda:N, wgpu"), "{error}");
        }
    }

    #[test]
    fn devices_name_the_feature_they_need() {
        assert_eq!(DeviceSpec::Cpu.feature(), None);
        assert_eq!(DeviceSpec::Cuda(1).feature(), Some("cuda"));
        assert_eq!(DeviceSpec::Wgpu.feature(), Some("wgpu"));
    }
}
