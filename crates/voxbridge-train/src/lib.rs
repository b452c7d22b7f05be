//! MindEye2's training recipe (spec §2.2): the OneCycle learning-rate and β1 schedule and the
//! AdamW weight-decay groups. Pure functions of step and parameter name, so they are tested
//! against hand-computed values and shared by every rank.
//!
//! The training loop itself (batch assembly, the written-out step) arrives with issue 5.

pub mod decay;
pub mod schedule;

pub use decay::{DecayGroup, decay_group};
pub use schedule::{OneCycle, OneCyclePoint};
