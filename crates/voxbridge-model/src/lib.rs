//! MindEye2 in burn: the modules, their losses and checkpoint import, numerically equal to the
//! original PyTorch code (see `../shared/spec/mindeye2.md` §1–2 and the parity tests).
//!
//! This crate does no IO, storage or distribution: it turns bytes and tensors into tensors.

pub mod backbone;
pub mod budget;
pub mod config;
pub mod fused;
pub mod kernels;
pub mod losses;
pub mod lowlevel;
pub mod mindeye2;
pub mod precision;
pub mod prior;
pub mod ridge;
pub mod tensors;

pub use backbone::{Backbone, BackboneOutput};
pub use config::{BackboneMode, MindEye2Config, NSD_VOXELS};
pub use mindeye2::{MindEye2, MindEye2Output, ParamCounts, RidgeBiasInit};
pub use ridge::SubjectRidge;
pub use tensors::{HostTensor, LoadError, TensorMap};
