//! Collectives for data-parallel training behind one trait ([`Collective`]): all-reduce (sum),
//! all-gather, broadcast and barrier.
//!
//! Every operation carries a header — generation, sequence number, operation, part, byte count —
//! and a deadline. A peer that stops participating is a [`CollectiveError::Timeout`] naming the
//! operation, its sequence number and the peer waited on; ranks that issue different sequences
//! of operations get a [`CollectiveError::Desync`] ("desync at seq N") instead of a hang.
//!
//! [`TcpRing`] is the CPU implementation (loopback and CPU clusters): a ring of TCP connections,
//! ring all-reduce (reduce-scatter then all-gather, each rank sending `2·(w−1)/w` of the buffer).
//! The NCCL implementation (GPU, feature `nccl`) plugs in behind the same trait, and offers
//! collectives on raw device pointers ([`nccl::NcclComm`]); every NCCL call is bounded by the
//! deadlines of [`watchdog`] ([`CollectiveError::DeviceTimeout`] names op, step and rank).

mod framing;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ring;
pub mod watchdog;
mod wire;

use std::time::Duration;

pub use ring::{TcpRing, bench_all_reduce, local_rings};
pub use watchdog::OpLabel;
pub use wire::{Header, Op};

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("{op} seq {seq}: no data from rank {peer} within {waited:?} (rank {peer} stopped participating?)")]
    Timeout { op: Op, seq: u64, peer: usize, waited: Duration },
    #[error(
        "desync at seq {at}: rank {rank} was in {expected} and received {got} from rank {peer}; the ranks issued \
         different sequences of collectives"
    )]
    Desync { at: u64, rank: usize, peer: usize, expected: Header, got: Header },
    #[error("{op} seq {seq}: rank {peer} closed the connection")]
    PeerClosed { op: Op, seq: u64, peer: usize },
    #[error("{op} seq {seq}: connection to rank {peer}: {source}")]
    Io {
        op: Op,
        seq: u64,
        peer: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("collective setup: {0}")]
    Setup(String),
    /// The GPU library failed (NCCL, CUDA).
    #[error("{0}")]
    Backend(String),
    /// A device collective (NCCL) did not complete within its deadline; the communicator was
    /// aborted and every later operation on it fails. `seq` counts the communicator's device
    /// collectives.
    #[error(
        "NCCL {op} #{seq} ({label}) on rank {rank}: not complete after {waited:?}; communicator aborted (a peer \
         stopped participating, or a GPU hung)"
    )]
    DeviceTimeout { op: Op, label: OpLabel, seq: u64, rank: usize, waited: Duration },
    /// A device collective failed (an NCCL error, asynchronous or returned, or a CUDA error), or
    /// its communicator had been aborted before.
    #[error("NCCL {op} #{seq} ({label}) on rank {rank}: {reason}")]
    DeviceFailed { op: Op, label: OpLabel, seq: u64, rank: usize, reason: String },
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// The operations data-parallel training needs. All ranks must call the same operations in the
/// same order with the same sizes.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()>;
    /// Every rank's `local` (all the same length), concatenated in rank order.
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>>;
    /// `root`'s bytes on every rank (`data` is replaced on the others).
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns once every rank has entered it.
    fn barrier(&mut self) -> Result<()>;
    /// Deadline of each following operation (a longer one for the first step).
    fn set_timeout(&mut self, timeout: Duration);
    /// Sequence number of the next operation.
    fn next_seq(&self) -> u64;
    /// A new communicator of the ranks that pass the same `color`, ranked in this one's order
    /// (as `MPI_Comm_split`): the owners of one subject reduce its ridge gradients over it.
    /// Every rank must call it.
    fn split(&mut self, color: u64) -> Result<Box<dyn Collective>>;
}

/// A single process: every operation is the identity.
#[derive(Debug, Default)]
pub struct Solo {
    seq: u64,
}

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<()> {
        self.seq += 1;
        Ok(())
    }
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        self.seq += 1;
        Ok(local.to_vec())
    }
    fn broadcast(&mut self, _: &mut Vec<u8>, _: usize) -> Result<()> {
        self.seq += 1;
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        self.seq += 1;
        Ok(())
    }
    fn set_timeout(&mut self, _: Duration) {}
    fn next_seq(&self) -> u64 {
        self.seq
    }
    fn split(&mut self, _: u64) -> Result<Box<dyn Collective>> {
        self.seq += 1;
        Ok(Box::new(Solo::default()))
    }
}
