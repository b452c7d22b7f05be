//! Encoding and decoding of the two shard kinds. Decoding checks the schema and reads row group by
//! row group, so an error names the file and the row group; it never panics on bad bytes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, PrimitiveArray, RecordBatch, UInt8Array,
    UInt16Array, UInt32Array,
};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, SchemaRef, UInt8Type, UInt16Type, UInt32Type};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::{DataError, Result};
use crate::schema::{TargetShapes, schema_difference, targets_schema, trials_schema};

/// The trials of one subject's session (or any subset of them), column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialRows {
    pub voxel_count: usize,
    pub subject: Vec<u8>,
    pub session: Vec<u16>,
    pub run: Vec<u16>,
    pub trial: Vec<u16>,
    pub global_trial: Vec<u32>,
    pub image_id: Vec<u32>,
    pub is_test: Vec<bool>,
    pub repeat: Vec<u8>,
    /// Row-major `[rows, voxel_count]`.
    pub voxels: Vec<f32>,
}

impl TrialRows {
    pub fn new(voxel_count: usize) -> Self {
        Self { voxel_count, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.image_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.image_id.is_empty()
    }

    pub fn voxels_of(&self, row: usize) -> &[f32] {
        &self.voxels[row * self.voxel_count..(row + 1) * self.voxel_count]
    }

    /// Appends the rows of `other` (same voxel count).
    pub fn extend(&mut self, other: TrialRows) {
        assert_eq!(self.voxel_count, other.voxel_count, "voxel counts differ");
        self.subject.extend(other.subject);
        self.session.extend(other.session);
        self.run.extend(other.run);
        self.trial.extend(other.trial);
        self.global_trial.extend(other.global_trial);
        self.image_id.extend(other.image_id);
        self.is_test.extend(other.is_test);
        self.repeat.extend(other.repeat);
        self.voxels.extend(other.voxels);
    }

    /// Keeps the rows for which `keep(row)` holds.
    pub fn filter(&self, keep: impl Fn(usize) -> bool) -> TrialRows {
        let mut out = TrialRows::new(self.voxel_count);
        for r in (0..self.len()).filter(|&r| keep(r)) {
            out.subject.push(self.subject[r]);
            out.session.push(self.session[r]);
            out.run.push(self.run[r]);
            out.trial.push(self.trial[r]);
            out.global_trial.push(self.global_trial[r]);
            out.image_id.push(self.image_id[r]);
            out.is_test.push(self.is_test[r]);
            out.repeat.push(self.repeat[r]);
            out.voxels.extend_from_slice(self.voxels_of(r));
        }
        out
    }

    fn slice_batch(&self, schema: &SchemaRef, range: std::ops::Range<usize>) -> RecordBatch {
        let v = self.voxel_count;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(self.subject[range.clone()].to_vec())),
            Arc::new(UInt16Array::from(self.session[range.clone()].to_vec())),
            Arc::new(UInt16Array::from(self.run[range.clone()].to_vec())),
            Arc::new(UInt16Array::from(self.trial[range.clone()].to_vec())),
            Arc::new(UInt32Array::from(self.global_trial[range.clone()].to_vec())),
            Arc::new(UInt32Array::from(self.image_id[range.clone()].to_vec())),
            Arc::new(BooleanArray::from(self.is_test[range.clone()].to_vec())),
            Arc::new(UInt8Array::from(self.repeat[range.clone()].to_vec())),
            float_list(&self.voxels[range.start * v..range.end * v], v, range.len()),
        ];
        RecordBatch::try_new(schema.clone(), columns).expect("columns match the trials schema")
    }
}

/// Per-image targets, column by column (rows in `image_id` order of the file).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRows {
    pub shapes: TargetShapes,
    pub image_id: Vec<u32>,
    pub is_test: Vec<bool>,
    /// `[rows, tokens·dim]`.
    pub clip_tokens: Vec<f32>,
    /// `[rows, c·h·w]`.
    pub lowlevel: Vec<f32>,
    /// `[rows, n_captions·dim]`.
    pub captions: Vec<f32>,
    /// `[rows, positions·width]`: clean-image teacher features; empty without `shapes.teacher`.
    pub teacher: Vec<f32>,
    /// `[rows, augs·positions·width]`: the augmented views; empty without `shapes.teacher`.
    pub teacher_aug: Vec<f32>,
}

impl TargetRows {
    pub fn new(shapes: TargetShapes) -> Self {
        Self {
            shapes,
            image_id: Vec::new(),
            is_test: Vec::new(),
            clip_tokens: Vec::new(),
            lowlevel: Vec::new(),
            captions: Vec::new(),
            teacher: Vec::new(),
            teacher_aug: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.image_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.image_id.is_empty()
    }

    pub fn extend(&mut self, other: TargetRows) {
        self.image_id.extend(other.image_id);
        self.is_test.extend(other.is_test);
        self.clip_tokens.extend(other.clip_tokens);
        self.lowlevel.extend(other.lowlevel);
        self.captions.extend(other.captions);
        self.teacher.extend(other.teacher);
        self.teacher_aug.extend(other.teacher_aug);
    }

    /// Appends row `r` of `other` (same shapes).
    pub fn push_row(&mut self, other: &TargetRows, r: usize) {
        let s = &other.shapes;
        let row = |values: &[f32], n: usize| values[r * n..(r + 1) * n].to_vec();
        self.image_id.push(other.image_id[r]);
        self.is_test.push(other.is_test[r]);
        self.clip_tokens.extend(row(&other.clip_tokens, s.clip_len()));
        self.lowlevel.extend(row(&other.lowlevel, s.lowlevel_len()));
        self.captions.extend(row(&other.captions, s.captions_len()));
        self.teacher.extend(row(&other.teacher, s.teacher_len()));
        self.teacher_aug.extend(row(&other.teacher_aug, s.teacher_aug_len()));
    }

    fn slice_batch(&self, schema: &SchemaRef, range: std::ops::Range<usize>) -> RecordBatch {
        let (c, l, p) = (self.shapes.clip_len(), self.shapes.lowlevel_len(), self.shapes.captions_len());
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.image_id[range.clone()].to_vec())),
            Arc::new(BooleanArray::from(self.is_test[range.clone()].to_vec())),
            float_list(&self.clip_tokens[range.start * c..range.end * c], c, range.len()),
            float_list(&self.lowlevel[range.start * l..range.end * l], l, range.len()),
            float_list(&self.captions[range.start * p..range.end * p], p, range.len()),
        ];
        if self.shapes.teacher.is_some() {
            let (t, a) = (self.shapes.teacher_len(), self.shapes.teacher_aug_len());
            columns.push(float_list(&self.teacher[range.start * t..range.end * t], t, range.len()));
            columns.push(float_list(&self.teacher_aug[range.start * a..range.end * a], a, range.len()));
        }
        RecordBatch::try_new(schema.clone(), columns).expect("columns match the targets schema")
    }
}

/// `rows` lists of `len` values each; `len` may be 0 (a target kind the dataset lacks, e.g.
/// imported data without caption embeddings).
fn float_list(values: &[f32], len: usize, rows: usize) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(values.to_vec()));
    Arc::new(
        FixedSizeListArray::try_new_with_length(item, len as i32, values, None, rows)
            .expect("values.len() == rows · len by construction"),
    )
}

/// An encoded shard, ready to store, with what the manifest records about it.
#[derive(Debug, Clone)]
pub struct EncodedShard {
    pub bytes: Bytes,
    pub rows: u64,
    pub row_groups: Vec<u64>,
}

/// Writer settings are fixed so the same rows always give the same bytes. Betas and embeddings
/// are noise-like floats that do not compress, so compression and statistics are off.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_created_by(format!("voxbridge {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `payload_bytes` is the size of the values; reserving it up front keeps the buffer from
/// doubling (and briefly existing twice) while a large shard is encoded.
fn encode(
    schema: SchemaRef,
    rows: usize,
    rows_per_group: usize,
    payload_bytes: usize,
    batch: impl Fn(std::ops::Range<usize>) -> RecordBatch,
) -> EncodedShard {
    let mut buffer = Vec::with_capacity(payload_bytes + payload_bytes / 64 + (64 << 10));
    let mut row_groups = Vec::new();
    {
        let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(writer_properties()))
            .expect("writing to memory cannot fail");
        let step = rows_per_group.max(1);
        for start in (0..rows).step_by(step) {
            let end = (start + step).min(rows);
            writer.write(&batch(start..end)).expect("batch matches schema");
            // One flush per batch makes each batch exactly one row group.
            writer.flush().expect("writing to memory cannot fail");
            row_groups.push((end - start) as u64);
        }
        writer.close().expect("writing to memory cannot fail");
    }
    EncodedShard { bytes: Bytes::from(buffer), rows: rows as u64, row_groups }
}

pub fn encode_trials(rows: &TrialRows, rows_per_group: usize) -> EncodedShard {
    let schema = trials_schema(rows.voxel_count);
    let payload = rows.voxels.len() * 4 + rows.len() * 16;
    encode(schema.clone(), rows.len(), rows_per_group, payload, |r| rows.slice_batch(&schema, r))
}

pub fn encode_targets(rows: &TargetRows, rows_per_group: usize) -> EncodedShard {
    let schema = targets_schema(&rows.shapes);
    let values = rows.clip_tokens.len() + rows.lowlevel.len() + rows.captions.len();
    let payload = (values + rows.teacher.len() + rows.teacher_aug.len()) * 4 + rows.len() * 8;
    encode(schema.clone(), rows.len(), rows_per_group, payload, |r| rows.slice_batch(&schema, r))
}

/// Reads every row group of a Parquet file after checking its schema. `on_batch` receives each
/// decoded batch with its row group index. Returns rows per row group.
fn decode(
    file: &str,
    bytes: Bytes,
    expected: &SchemaRef,
    mut on_batch: impl FnMut(usize, &RecordBatch) -> Result<()>,
) -> Result<Vec<u64>> {
    let footer =
        |e: parquet::errors::ParquetError| DataError::Footer { file: file.to_string(), message: e.to_string() };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(footer)?;
    if let Some(diff) = schema_difference(expected, builder.schema()) {
        return Err(DataError::Schema { file: file.to_string(), message: diff });
    }
    let groups = builder.metadata().num_row_groups();
    let mut counts = Vec::with_capacity(groups);
    for group in 0..groups {
        let group_err = |message: String| DataError::RowGroup { file: file.to_string(), row_group: group, message };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .map_err(footer)?
            .with_row_groups(vec![group])
            .with_batch_size(1 << 16)
            .build()
            .map_err(|e| group_err(e.to_string()))?;
        let mut rows = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| group_err(e.to_string()))?;
            rows += batch.num_rows() as u64;
            on_batch(group, &batch)?;
        }
        counts.push(rows);
    }
    Ok(counts)
}

fn column<'a, T: ArrowPrimitiveType>(
    file: &str,
    group: usize,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("no column `{name}`") })?;
    if col.null_count() > 0 {
        return Err(DataError::RowGroup {
            file: file.into(),
            row_group: group,
            message: format!("column `{name}` has nulls"),
        });
    }
    col.as_primitive_opt::<T>()
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("column `{name}` has the wrong type") })
}

fn floats<'a>(file: &str, group: usize, batch: &'a RecordBatch, name: &str) -> Result<&'a [f32]> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("no column `{name}`") })?;
    let list = col.as_fixed_size_list_opt().ok_or_else(|| DataError::Schema {
        file: file.into(),
        message: format!("column `{name}` is not a fixed-size list"),
    })?;
    if list.null_count() > 0 || list.values().null_count() > 0 {
        return Err(DataError::RowGroup {
            file: file.into(),
            row_group: group,
            message: format!("column `{name}` has nulls"),
        });
    }
    let values = list
        .values()
        .as_primitive_opt::<arrow::datatypes::Float32Type>()
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("column `{name}` is not float32") })?;
    // A sliced list starts at an offset into its values.
    let width = list.value_length() as usize;
    let start = list.offset() * width;
    Ok(&values.values()[start..start + list.len() * width])
}

fn bools(file: &str, group: usize, batch: &RecordBatch, name: &str) -> Result<Vec<bool>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("no column `{name}`") })?;
    if col.null_count() > 0 {
        return Err(DataError::RowGroup {
            file: file.into(),
            row_group: group,
            message: format!("column `{name}` has nulls"),
        });
    }
    let b = col
        .as_boolean_opt()
        .ok_or_else(|| DataError::Schema { file: file.into(), message: format!("column `{name}` is not boolean") })?;
    Ok(b.iter().map(|v| v.unwrap_or(false)).collect())
}

/// Decodes a trials shard; `file` names it in errors. Non-finite voxels are an error.
pub fn decode_trials(file: &str, bytes: Bytes, voxel_count: usize) -> Result<(TrialRows, Vec<u64>)> {
    let schema = trials_schema(voxel_count);
    let mut rows = TrialRows::new(voxel_count);
    let groups = decode(file, bytes, &schema, |group, batch| {
        rows.subject.extend_from_slice(column::<UInt8Type>(file, group, batch, "subject")?.values());
        rows.session.extend_from_slice(column::<UInt16Type>(file, group, batch, "session")?.values());
        rows.run.extend_from_slice(column::<UInt16Type>(file, group, batch, "run")?.values());
        rows.trial.extend_from_slice(column::<UInt16Type>(file, group, batch, "trial")?.values());
        rows.global_trial.extend_from_slice(column::<UInt32Type>(file, group, batch, "global_trial")?.values());
        rows.image_id.extend_from_slice(column::<UInt32Type>(file, group, batch, "image_id")?.values());
        rows.is_test.extend(bools(file, group, batch, "is_test")?);
        rows.repeat.extend_from_slice(column::<UInt8Type>(file, group, batch, "repeat")?.values());
        let v = floats(file, group, batch, "voxels")?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(DataError::RowGroup {
                file: file.into(),
                row_group: group,
                message: format!("non-finite voxel value at row {} of the group", i / voxel_count.max(1)),
            });
        }
        rows.voxels.extend_from_slice(v);
        Ok(())
    })?;
    Ok((rows, groups))
}

/// Decodes a targets shard; `file` names it in errors. The teacher columns are read when
/// `shapes` records them (a shard without them then fails the schema check, and vice versa).
pub fn decode_targets(file: &str, bytes: Bytes, shapes: &TargetShapes) -> Result<(TargetRows, Vec<u64>)> {
    let schema = targets_schema(shapes);
    let mut rows = TargetRows::new(*shapes);
    let with_teacher = shapes.teacher.is_some();
    let groups = decode(file, bytes, &schema, |group, batch| {
        rows.image_id.extend_from_slice(column::<UInt32Type>(file, group, batch, "image_id")?.values());
        rows.is_test.extend(bools(file, group, batch, "is_test")?);
        let mut columns = vec![
            ("clip_tokens", &mut rows.clip_tokens),
            ("lowlevel", &mut rows.lowlevel),
            ("captions", &mut rows.captions),
        ];
        if with_teacher {
            columns.extend([("teacher", &mut rows.teacher), ("teacher_aug", &mut rows.teacher_aug)]);
        }
        for (name, out) in columns {
            let v = floats(file, group, batch, name)?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(DataError::RowGroup {
                    file: file.into(),
                    row_group: group,
                    message: format!("non-finite value in `{name}`"),
                });
            }
            out.extend_from_slice(v);
        }
        Ok(())
    })?;
    Ok((rows, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_trials(n: usize, v: usize) -> TrialRows {
        let mut t = TrialRows::new(v);
        for i in 0..n {
            t.subject.push(3);
            t.session.push(2);
            t.run.push(1 + (i / 4) as u16);
            t.trial.push(1 + (i % 4) as u16);
            t.global_trial.push(100 + i as u32);
            t.image_id.push(7 * i as u32);
            t.is_test.push(i % 3 == 0);
            t.repeat.push((i % 3) as u8);
            t.voxels.extend((0..v).map(|j| (i * v + j) as f32 * 0.5));
        }
        t
    }

    #[test]
    fn trials_round_trip_with_row_groups() {
        let rows = sample_trials(10, 6);
        let enc = encode_trials(&rows, 4);
        assert_eq!(enc.row_groups, vec![4, 4, 2]);
        let (back, groups) = decode_trials("mem.parquet", enc.bytes.clone(), 6).unwrap();
        assert_eq!(back, rows);
        assert_eq!(groups, enc.row_groups);
        // Same rows, same bytes.
        assert_eq!(encode_trials(&rows, 4).bytes, enc.bytes);
    }

    #[test]
    fn wrong_voxel_count_is_a_schema_error() {
        let enc = encode_trials(&sample_trials(3, 6), 4);
        let err = decode_trials("a/b.parquet", enc.bytes, 7).unwrap_err().to_string();
        assert!(err.starts_with("a/b.parquet: schema mismatch"), "{err}");
    }

    #[test]
    fn garbage_is_a_footer_error() {
        let err = decode_trials("x.parquet", Bytes::from_static(b"not parquet at all"), 6).unwrap_err();
        assert!(matches!(err, DataError::Footer { .. }), "{err}");
    }

    fn sample_targets(shapes: TargetShapes) -> TargetRows {
        let mut t = TargetRows::new(shapes);
        for i in 0..5u32 {
            t.image_id.push(i);
            t.is_test.push(i < 2);
            t.clip_tokens.extend((0..6).map(|j| (i * 10 + j) as f32));
            t.lowlevel.extend((0..4).map(|j| -((i * 10 + j) as f32)));
            t.captions.extend((0..4).map(|j| (i + j) as f32 / 3.0));
            t.teacher.extend((0..shapes.teacher_len()).map(|j| (i * 100 + j as u32) as f32));
            t.teacher_aug.extend((0..shapes.teacher_aug_len()).map(|j| -((i * 100 + j as u32) as f32)));
        }
        t
    }

    const SHAPES: TargetShapes =
        TargetShapes { clip_tokens: [2, 3], lowlevel: [1, 2, 2], captions: [2, 2], teacher: None, teacher_augs: 0 };

    #[test]
    fn targets_round_trip() {
        let t = sample_targets(SHAPES);
        let enc = encode_targets(&t, 2);
        let (back, groups) = decode_targets("t.parquet", enc.bytes, &SHAPES).unwrap();
        assert_eq!(back, t);
        assert_eq!(groups, vec![2, 2, 1]);
    }

    /// The teacher columns round-trip; a shard without them (written before they existed) reads
    /// with shapes that lack them and is a schema error for shapes that record them.
    #[test]
    fn teacher_columns_round_trip_and_are_optional() {
        let shapes = TargetShapes { teacher: Some([3, 2]), teacher_augs: 2, ..SHAPES };
        let t = sample_targets(shapes);
        assert_eq!((t.teacher.len(), t.teacher_aug.len()), (5 * 6, 5 * 12));
        let enc = encode_targets(&t, 2);
        let (back, _) = decode_targets("t.parquet", enc.bytes.clone(), &shapes).unwrap();
        assert_eq!(back, t);
        let err = decode_targets("t.parquet", enc.bytes, &SHAPES).unwrap_err().to_string();
        assert!(err.contains("schema mismatch"), "{err}");

        let old = encode_targets(&sample_targets(SHAPES), 2);
        let (back, _) = decode_targets("old.parquet", old.bytes.clone(), &SHAPES).unwrap();
        assert!(back.teacher.is_empty() && back.teacher_aug.is_empty());
        let err = decode_targets("old.parquet", old.bytes, &shapes).unwrap_err().to_string();
        assert!(err.contains("old.parquet: schema mismatch"), "{err}");

        let mut one = TargetRows::new(shapes);
        one.push_row(&t, 3);
        assert_eq!(one.image_id, [3]);
        assert_eq!(one.teacher, t.teacher[18..24]);
        assert_eq!(one.teacher_aug, t.teacher_aug[36..48]);
    }

    #[test]
    fn teacher_fields_must_agree() {
        assert_eq!(SHAPES.teacher_problem(), None);
        assert!(TargetShapes { teacher_augs: 1, ..SHAPES }.teacher_problem().is_some());
        assert!(TargetShapes { teacher: Some([49, 512]), ..SHAPES }.teacher_problem().is_some());
        assert_eq!(TargetShapes { teacher: Some([49, 512]), teacher_augs: 2, ..SHAPES }.teacher_problem(), None);
    }
}
