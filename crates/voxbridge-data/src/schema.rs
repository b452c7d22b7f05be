//! Column layout of voxbridge's shards. Bump [`SCHEMA_VERSION`] on any change.
//!
//! Trials (one file per subject and session, one row per single-trial beta):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | subject | u8 | 1-based NSD subject |
//! | session | u16 | 1-based scan session, chronological |
//! | run | u16 | 1-based run within the session |
//! | trial | u16 | 1-based trial within the run (NSD's TRIAL) |
//! | global_trial | u32 | 0-based row in the subject's betas: (session−1)·trials_per_session + index |
//! | image_id | u32 | image index (NSD 73k id for real data) |
//! | is_test | bool | image belongs to the shared test set (NSD shared1000) |
//! | repeat | u8 | 0, 1, 2: which presentation of this image to this subject |
//! | voxels | fixed_size_list<f32>[V_s] | the z-scored betas |
//!
//! Targets (one dataset for all subjects, keyed by image_id): `image_id: u32`, `is_test: bool`,
//! `clip_tokens: fixed_size_list<f32>[tokens·dim]` (row-major tokens × dim),
//! `lowlevel: fixed_size_list<f32>[c·h·w]`, `captions: fixed_size_list<f32>[n_captions·dim]`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub const SCHEMA_VERSION: u32 = 1;

/// Name of the inner field of every fixed-size list column.
const ITEM: &str = "item";

pub fn float_list(len: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new(ITEM, DataType::Float32, false)), len as i32)
}

pub fn trials_schema(voxels: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("subject", DataType::UInt8, false),
        Field::new("session", DataType::UInt16, false),
        Field::new("run", DataType::UInt16, false),
        Field::new("trial", DataType::UInt16, false),
        Field::new("global_trial", DataType::UInt32, false),
        Field::new("image_id", DataType::UInt32, false),
        Field::new("is_test", DataType::Boolean, false),
        Field::new("repeat", DataType::UInt8, false),
        Field::new("voxels", float_list(voxels), false),
    ]))
}

/// Sizes of the target columns, as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetShapes {
    /// CLIP image tokens: [tokens, dim] (OpenCLIP ViT-bigG: [256, 1664]).
    pub clip_tokens: [usize; 2],
    /// Low-level latent: [channels, height, width] (SD VAE: [4, 28, 28]).
    pub lowlevel: [usize; 3],
    /// Caption embeddings: [captions per image, dim].
    pub captions: [usize; 2],
}

impl TargetShapes {
    pub fn clip_len(&self) -> usize {
        self.clip_tokens.iter().product()
    }
    pub fn lowlevel_len(&self) -> usize {
        self.lowlevel.iter().product()
    }
    pub fn captions_len(&self) -> usize {
        self.captions.iter().product()
    }
}

pub fn targets_schema(shapes: &TargetShapes) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::UInt32, false),
        Field::new("is_test", DataType::Boolean, false),
        Field::new("clip_tokens", float_list(shapes.clip_len()), false),
        Field::new("lowlevel", float_list(shapes.lowlevel_len()), false),
        Field::new("captions", float_list(shapes.captions_len()), false),
    ]))
}

/// Compares a file's schema with the expected one; returns a sentence naming the first difference.
pub fn schema_difference(expected: &Schema, actual: &Schema) -> Option<String> {
    if expected.fields().len() != actual.fields().len() {
        let names = |s: &Schema| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        return Some(format!("expected columns {:?}, found {:?}", names(expected), names(actual)));
    }
    for (e, a) in expected.fields().iter().zip(actual.fields()) {
        if e.name() != a.name() {
            return Some(format!("expected column `{}`, found `{}`", e.name(), a.name()));
        }
        if e.data_type() != a.data_type() {
            return Some(format!("column `{}` has type {}, expected {}", e.name(), a.data_type(), e.data_type()));
        }
    }
    None
}
