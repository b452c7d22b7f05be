//! Why a step, or a rank's exchange with the other ranks, failed. A collective's own failure
//! (a peer that timed out, ranks that desynchronised, a connection gone) stays a
//! [`CollectiveError`] inside [`CommError::Collective`]; a batch that does not fit the model or
//! the rank's rows is a [`BatchError`]; a loss that is not finite is a [`NonFiniteLoss`].

use voxbridge_collective::CollectiveError;
use voxbridge_placement::Piece;

/// Why a step stopped: a loss is NaN or infinite.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step {step}: loss `{term}` is {value} (not finite); stopping before the optimizer step")]
pub struct NonFiniteLoss {
    pub step: u64,
    pub term: &'static str,
    pub value: f64,
}

/// Why a step failed.
///
/// The step number is prefixed to the cause's message; the cause is a field, deliberately not a
/// `source`, so an error chain (`{:#}`) does not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    NonFinite(#[from] NonFiniteLoss),
    /// Talking to the other ranks failed (timeout, desync, a peer gone).
    #[error("step {step}: {error}")]
    Comm { step: u64, error: CommError },
    /// The batch does not fit the model or this rank's rows.
    #[error("step {step}: {error}")]
    Batch { step: u64, error: BatchError },
}

/// A batch that cannot be trained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A data-parallel rank was handed other shares than its pieces need (every owner of a
    /// subject holds the subject's whole share: mixing partners may be other ranks' rows).
    #[error("the batch holds shares of {held:?} rows; this rank's pieces {pieces:?} need whole shares of {needed:?}")]
    Shares { held: Vec<usize>, pieces: Vec<Piece>, needed: Vec<usize> },
    /// Teacher features of another size than the low-level branch makes, or without an
    /// augmented view.
    #[error(
        "teacher features are {views} views of [{positions}, {width}]; the low-level branch makes \
         [{model_positions}, {model_width}] and needs the clean view plus ≥ 1 augmented one"
    )]
    TeacherShape { views: usize, positions: usize, width: usize, model_positions: usize, model_width: usize },
}

/// Why exchanging data with the other ranks failed.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// A collective failed: a peer that sent nothing in time ([`CollectiveError::Timeout`]),
    /// ranks that issued different collectives ([`CollectiveError::Desync`]), a connection gone.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// Splitting the communicator into the owner groups of split subjects failed.
    #[error("forming the owner groups: {error}")]
    OwnerGroups { error: CollectiveError },
    /// The placement was made for another number of ranks than the communicator has.
    #[error("a placement for {placement} ranks on a world of {world}")]
    WorldMismatch { placement: usize, world: usize },
    /// A rank lacks the ridge of a subject it owns.
    #[error("rank {rank} lacks subject {subject}'s ridge")]
    MissingRidge { rank: usize, subject: usize },
    /// A ridge another rank sent does not decode.
    #[error("subject {subject}'s ridge from rank {root}: {error}")]
    RidgeWire { subject: usize, root: usize, error: WireError },
    /// Sample streams another rank sent (or this rank is sending) do not (de)serialise.
    #[error("streams of rank {root}: {error}")]
    Streams { root: usize, error: serde_json::Error },
}

impl CommError {
    /// The collective failure behind this error, if there is one; its variant tells a timeout
    /// from a desync from a broken connection.
    pub fn collective(&self) -> Option<&CollectiveError> {
        match self {
            CommError::Collective(error) | CommError::OwnerGroups { error } => Some(error),
            _ => None,
        }
    }
}

/// Bytes that are not a ridge in the wire format ranks send ridges in (see
/// [`gather_model`](crate::distributed::gather_model)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated at byte {at} of {len}")]
    Truncated { at: usize, len: usize },
    #[error("{0} bytes left over")]
    LeftOver(usize),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use voxbridge_collective::Op;

    use super::*;

    #[test]
    fn a_collective_timeout_and_a_bad_batch_stay_apart_and_name_the_step() {
        let timeout = CollectiveError::Timeout { op: Op::AllGather, seq: 4, peer: 1, waited: Duration::from_secs(2) };
        let err = StepError::Comm { step: 3, error: timeout.into() };
        let StepError::Comm { error, .. } = &err else { unreachable!() };
        assert!(matches!(error.collective(), Some(CollectiveError::Timeout { peer: 1, .. })));
        assert!(err.to_string().starts_with("step 3: all_gather seq 4: no data from rank 1"), "{err}");
        // The cause is in the message, not repeated as a source.
        assert!(std::error::Error::source(&err).is_none());

        let err = StepError::Batch {
            step: 5,
            error: BatchError::TeacherShape {
                views: 3,
                positions: 49,
                width: 16,
                model_positions: 49,
                model_width: 32,
            },
        };
        assert!(err.to_string().starts_with("step 5: teacher features are 3 views of [49, 16]"), "{err}");
        assert!(CommError::MissingRidge { rank: 1, subject: 0 }.collective().is_none());
    }
}
