//! MindEye2's training recipe (spec §2.2): the OneCycle learning-rate and β1 schedule, the
//! AdamW weight-decay groups, an AdamW whose β1 and learning rate change every step, the
//! balanced per-subject sample streams ([`sampler`]), the written-out step ([`step`]) and its
//! data-parallel hooks ([`comm`], [`distributed`]), the loop over epochs ([`trainer`]) and the
//! evaluation of a model ([`evaluate`](mod@evaluate)). No IO: data comes in memory, progress goes to an
//! observer.

pub mod adamw;
pub mod comm;
pub mod decay;
pub mod device_comm;
pub mod distributed;
pub mod error;
pub mod evaluate;
#[cfg(feature = "nccl")]
pub mod nccl_device;
mod ridge_wire;
pub mod sampler;
pub mod schedule;
mod shard_comm;
pub mod step;
pub mod trainer;

pub use adamw::{AdamW, MomentsError, ParamMoments};
pub use comm::{Alone, StepComm, WholeState};
pub use decay::{DecayGroup, decay_group, mindeye2_weight_decay};
pub use error::{BatchError, CommError, NonFiniteLoss, StepError, WireError};
pub use evaluate::{EvalOptions, Evaluation, TestTrials, evaluate};
pub use schedule::{OneCycle, OneCyclePoint};
pub use step::{
    BLUR_CONT_TEMPERATURE, Batch, ContrastivePhase, StepContext, StepReport, SubjectBatch, mixco_draw, teacher_pick,
    train_step,
};
pub use trainer::{
    ClipTargets, Progress, Quiet, Resume, StepRecord, SubjectSamples, TeacherTargets, TrainData, TrainError,
    TrainObserver, TrainPlan, fresh_streams, stream_keys, train,
};
pub use voxbridge_placement::{Layout, Piece};
