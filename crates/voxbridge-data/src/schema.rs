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
//! `lowlevel: fixed_size_list<f32>[c·h·w]`, `captions: fixed_size_list<f32>[n_captions·dim]`,
//! and, only in datasets whose manifest records `teacher` (optional since the column was added;
//! older datasets lack it and read as before): `teacher: fixed_size_list<f32>[positions·width]`
//! (the low-level teacher features of the clean image, row-major positions × width; MindEye2's
//! ConvNeXt features, 49 × 512) and `teacher_aug: fixed_size_list<f32>[augs·positions·width]`
//! (the same features of `teacher_augs` fixed augmentations of the image, one block per view).

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetShapes {
    /// CLIP image tokens: [tokens, dim] (OpenCLIP ViT-bigG: [256, 1664]).
    pub clip_tokens: [usize; 2],
    /// Low-level latent: [channels, height, width] (SD VAE: [4, 28, 28]).
    pub lowlevel: [usize; 3],
    /// Caption embeddings: [captions per image, dim].
    pub captions: [usize; 2],
    /// Low-level teacher features per image: [positions, width] (ConvNeXt-XL VICRegL's maps
    /// projector at 224 px: [49, 512]). Absent (the `teacher` columns too) in datasets without
    /// them, which train the low-level branch without its soft contrastive term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<[usize; 2]>,
    /// Fixed augmented views stored per image in `teacher_aug` (≥ 1 with `teacher`, else 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher_augs: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TargetShapes {
    /// Values of one image's clean teacher features (0 without them).
    pub fn teacher_len(&self) -> usize {
        self.teacher.map_or(0, |[p, w]| p * w)
    }
    /// Values of one image's augmented teacher views, `augs · positions · width` (0 without them).
    pub fn teacher_aug_len(&self) -> usize {
        self.teacher_augs * self.teacher_len()
    }
    /// What is inconsistent about the teacher fields, if anything.
    pub fn teacher_problem(&self) -> Option<String> {
        match (self.teacher, self.teacher_augs) {
            (None, 0) => None,
            (None, n) => Some(format!("teacher_augs = {n} without `teacher` features")),
            (Some(shape), 0) => Some(format!("teacher {shape:?} needs teacher_augs ≥ 1 augmented views")),
            (Some([p, w]), _) if p == 0 || w == 0 => Some(format!("teacher [{p}, {w}] needs non-zero sizes")),
            _ => None,
        }
    }
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

/// The targets columns of `shapes`: the two teacher columns only when it records `teacher`.
pub fn targets_schema(shapes: &TargetShapes) -> SchemaRef {
    let mut fields = vec![
        Field::new("image_id", DataType::UInt32, false),
        Field::new("is_test", DataType::Boolean, false),
        Field::new("clip_tokens", float_list(shapes.clip_len()), false),
        Field::new("lowlevel", float_list(shapes.lowlevel_len()), false),
        Field::new("captions", float_list(shapes.captions_len()), false),
    ];
    if shapes.teacher.is_some() {
        fields.push(Field::new("teacher", float_list(shapes.teacher_len()), false));
        fields.push(Field::new("teacher_aug", float_list(shapes.teacher_aug_len()), false));
    }
    Arc::new(Schema::new(fields))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TargetsInfo;

    /// `[targets]` of a manifest written before the teacher columns existed reads with none;
    /// one with them round-trips, and a dataset without them writes the old table unchanged.
    #[test]
    fn teacher_shapes_in_the_manifest_are_optional() {
        let old = "clip_tokens = [4, 32]\nlowlevel = [4, 8, 8]\ncaptions = [5, 32]\nimages = 10\ntest_images = 2\n";
        let info: TargetsInfo = toml::from_str(old).unwrap();
        assert_eq!(info.shapes.teacher, None);
        assert_eq!(info.shapes.teacher_augs, 0);
        assert_eq!(targets_schema(&info.shapes).fields().len(), 5);
        let again = toml::to_string(&info).unwrap();
        assert!(!again.contains("teacher"), "{again}");

        let with = TargetsInfo {
            shapes: TargetShapes { teacher: Some([49, 512]), teacher_augs: 2, ..info.shapes },
            ..info.clone()
        };
        let text = toml::to_string(&with).unwrap();
        assert!(text.contains("teacher = [49, 512]") && text.contains("teacher_augs = 2"), "{text}");
        assert_eq!(toml::from_str::<TargetsInfo>(&text).unwrap(), with);
        let names: Vec<String> = targets_schema(&with.shapes).fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names[5..], ["teacher", "teacher_aug"]);
        assert_eq!(with.shapes.teacher_aug_len(), 2 * 49 * 512);
    }
}
