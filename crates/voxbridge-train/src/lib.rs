//! MindEye2's training recipe (spec §2.2): the OneCycle learning-rate and β1 schedule, the
//! AdamW weight-decay groups, an AdamW whose β1 and learning rate change every step, the
//! written-out step ([`step`]), the loop over epochs ([`trainer`]) and the evaluation of a model
//! ([`evaluate`]). No IO: data comes in memory, progress goes to an observer.

pub mod adamw;
pub mod decay;
pub mod distributed;
pub mod evaluate;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use adamw::{AdamW, ParamMoments};
pub use decay::{DecayGroup, decay_group, mindeye2_weight_decay};
pub use evaluate::{EvalOptions, Evaluation, TestTrials, evaluate};
pub use schedule::{OneCycle, OneCyclePoint};
pub use step::{
    Alone, BLUR_CONT_TEMPERATURE, Batch, ContrastivePhase, Layout, NonFiniteLoss, Piece, StepComm, StepError,
    StepReport, SubjectBatch, mixco_draw, teacher_pick, train_step,
};
pub use trainer::{
    ClipTargets, Progress, Quiet, Resume, StepRecord, SubjectSamples, TeacherTargets, TrainData, TrainError,
    TrainObserver, TrainPlan, fresh_streams, stream_keys, train,
};
