//! How a step reaches the other ranks of a data-parallel run: the [`StepComm`] hooks, each the
//! identity on one process ([`Alone`]). [`ShardComm`](crate::distributed::ShardComm) implements
//! them for one rank of a [`Placement`](voxbridge_placement::Placement).
//!
//! A data-parallel run trains the model one process would train on the global batch: every
//! random draw is made for the global batch and sliced; the contrastive losses see the gathered
//! embeddings of the whole batch (other ranks' rows as constants), so each rank's backward
//! yields its rows' share of the exact gradient; per-sample losses are scaled by the rank's
//! share of the rows; the shared gradients are summed.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use voxbridge_model::MindEye2;
use voxbridge_model::losses::LossWeights;
use voxbridge_placement::Layout;

use crate::adamw::{AdamW, ParamMoments};
use crate::error::CommError;
use crate::sampler::{BalancedStreams, Stream};
use crate::step::StepReport;

/// The data-parallel hooks of a step, in the order the step calls them.
pub trait StepComm<B: AutodiffBackend> {
    /// Where this rank's rows sit in the global batch. `held` are the rows of each share of the
    /// batch the rank was handed: on one process the whole batch; a rank of a data-parallel
    /// run holds its subjects' *whole* shares (mixing partners may be another rank's rows) and
    /// trains its pieces of them.
    fn layout(&self, held: &[usize]) -> Layout;
    /// Mixed into the backend's dropout seed, so ranks draw different masks (0 on one process).
    fn rank_key(&self) -> u64;
    /// This rank's rows `local` `[n, width]` among every rank's: `[B, width]` in global row
    /// order, this rank's rows differentiable, the others constants.
    fn among_all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError>;
    /// Every rank's rows of `local` `[n, width]`, as one `[B, width]` (constants but on one
    /// process).
    fn all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError>;
    /// A per-sample loss (the mean over this rank's rows) weighted by the rank's share of the
    /// rows, so the ranks' values sum to the global mean.
    fn per_sample_share(&self, loss: Tensor<B, 1>) -> Tensor<B, 1>;
    /// The step's losses as one process would report them: the contrastive losses are already
    /// global; the per-sample ones are summed over ranks and the total recombined.
    fn reduce_report(&mut self, report: StepReport, weights: &LossWeights) -> Result<StepReport, CommError>;
    /// Element-wise sum over ranks (for decisions every rank must share, such as stopping).
    fn sum(&mut self, values: &mut [f32]) -> Result<(), CommError>;
    /// Gradients of the shared parameters summed over all ranks; each ridge's summed over its
    /// subject's owner ranks.
    fn sync_gradients(&mut self, model: &MindEye2<B>, grads: GradientsParams) -> Result<GradientsParams, CommError>;
    /// The whole run's state as one process would hold it — every subject's ridge, its AdamW
    /// moments and its sample stream from the rank that owns it — on the writer (for
    /// checkpoints); `None` on the other ranks. Every rank must call it at the same step.
    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<Option<WholeState<B>>, CommError>;
    /// Whether this rank writes checkpoints and the run directory (rank 0).
    fn is_writer(&self) -> bool;
}

/// See [`StepComm::whole_state`].
pub struct WholeState<B: AutodiffBackend> {
    pub model: MindEye2<B>,
    pub moments: Vec<ParamMoments>,
    pub streams: Vec<Stream>,
}

/// A single process: nothing to exchange, every hook is the identity.
#[derive(Debug, Default)]
pub struct Alone;

impl<B: AutodiffBackend> StepComm<B> for Alone {
    fn layout(&self, held: &[usize]) -> Layout {
        Layout::whole(held.to_vec())
    }
    fn rank_key(&self) -> u64 {
        0
    }
    fn among_all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        Ok(local)
    }
    fn all_rows(&mut self, local: Tensor<B, 2>) -> Result<Tensor<B, 2>, CommError> {
        Ok(local)
    }
    fn per_sample_share(&self, loss: Tensor<B, 1>) -> Tensor<B, 1> {
        loss
    }
    fn reduce_report(&mut self, report: StepReport, _: &LossWeights) -> Result<StepReport, CommError> {
        Ok(report)
    }
    fn sum(&mut self, _: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn sync_gradients(&mut self, _: &MindEye2<B>, grads: GradientsParams) -> Result<GradientsParams, CommError> {
        Ok(grads)
    }
    fn whole_state(
        &mut self,
        model: &MindEye2<B>,
        optim: &AdamW<B>,
        streams: &BalancedStreams,
    ) -> Result<Option<WholeState<B>>, CommError> {
        Ok(Some(WholeState { model: model.clone(), moments: optim.export(model), streams: streams.state().to_vec() }))
    }
    fn is_writer(&self) -> bool {
        true
    }
}
