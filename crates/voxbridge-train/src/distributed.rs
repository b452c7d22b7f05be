//! Data-parallel training, gathered in one place for callers: where the global batch's rows go
//! ([`Placement`], from `voxbridge-placement`), the step's hooks of one rank ([`ShardComm`],
//! in `shard_comm`) and the assembly of the whole model on the writer ([`gather_model`], in
//! `ridge_wire`).

pub use voxbridge_placement::{Layout, Piece, Placement, PlacementError};

pub use crate::ridge_wire::gather_model;
pub use crate::shard_comm::ShardComm;
