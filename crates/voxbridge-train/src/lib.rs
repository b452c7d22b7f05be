//! MindEye2's training recipe (spec §2.2): the OneCycle learning-rate and β1 schedule, the
//! AdamW weight-decay groups, and an AdamW whose β1 and learning rate change every step. Pure functions of step and parameter name, so they are tested
//! against hand-computed values and shared by every rank.
//!
//! The training loop itself (batch assembly, the written-out step) arrives with issue 5.

pub mod adamw;
pub mod decay;
pub mod schedule;
pub mod step;

pub use adamw::AdamW;
pub use decay::{DecayGroup, decay_group, mindeye2_weight_decay};
pub use schedule::{OneCycle, OneCyclePoint};
pub use step::{Batch, ContrastivePhase, NonFiniteLoss, StepReport, SubjectBatch, mixco_draw, train_step};
