//! MindEye2 — and the other families of the framework, MindEye1 and Mind Reader — in burn: the
//! modules, their losses and checkpoint import, numerically equal to the original PyTorch code
//! (see `../shared/spec/mindeye2.md` §1–2, §8 and the parity tests).
//!
//! This crate does no IO, storage or distribution: it turns bytes and tensors into tensors.

pub mod backbone;
pub mod budget;
pub mod config;
pub mod fused;
pub mod kernels;
pub mod losses;
pub mod lowlevel;
pub mod mindeye1;
pub mod mindeye2;
pub mod mindreader;
pub mod precision;
pub mod prior;
pub mod ridge;
pub mod tensors;

pub use backbone::{Backbone, BackboneOutput};
pub use config::{BackboneMode, MindEye2Config, NSD_VOXELS};
pub use mindeye2::{MindEye2, MindEye2Output, ParamCounts, RidgeBiasInit};
pub use ridge::SubjectRidge;
pub use tensors::{HostTensor, LoadError, TensorMap};
