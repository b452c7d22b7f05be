//! Top-k retrieval from a large pool of embeddings (MindEye1's retrieval from LAION-scale pools;
//! here NSD's 73k images or any pool a user gives): cosine similarity, answered by an HNSW graph
//! ([`hnsw_rs`]) built once and saved beside a small description of what it indexes, or exactly
//! by brute force; and recall@k of one against the other.
//!
//! Embeddings are rows of a row-major `[n, dim]` `f32` matrix. Both sides are l2-normalised here,
//! so cosine similarity is a dot product and the graph uses `1 − dot` as its distance.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{AnnT, DistDot, Hnsw};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The description saved beside the graph: what it indexes and how it was built.
pub const META_FILE: &str = "index.json";
/// Base name of hnsw_rs's two files (`<base>.hnsw.graph`, `<base>.hnsw.data`).
const BASENAME: &str = "pool";
/// Layers of the graph (hnsw_rs's maximum).
const MAX_LAYERS: usize = 16;
/// Version of [`IndexMeta`]'s layout.
const FORMAT: u32 = 1;

/// Why an index could not be built, read or searched.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("{0}")]
    Shape(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}; delete the folder or give another --index to rebuild it")]
    Stale { path: PathBuf, message: String },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// How the graph is built and searched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Neighbours kept per node and layer (HNSW's M; at most 255).
    pub connections: usize,
    /// Candidates explored while inserting (efConstruction).
    pub ef_construction: usize,
    /// Candidates explored while searching (efSearch; at least k).
    pub ef_search: usize,
}

impl Default for IndexParams {
    /// M 16, efConstruction 100, efSearch 64: recall@10 ≥ 0.95 on 73k embeddings (tested).
    fn default() -> Self {
        IndexParams { connections: 16, ef_construction: 100, ef_search: 64 }
    }
}

impl IndexParams {
    fn check(&self) -> Result<(), RetrievalError> {
        if !(2..=255).contains(&self.connections) {
            return Err(RetrievalError::Shape(format!("connections {} must be in 2..=255", self.connections)));
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            return Err(RetrievalError::Shape("ef_construction and ef_search must be positive".into()));
        }
        Ok(())
    }
}

/// One retrieved pool entry: its row and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// Seconds spent reading a saved graph and searching it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchTimes {
    pub load_seconds: f64,
    pub search_seconds: f64,
}

/// What a saved index indexes, checked before it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub format: u32,
    pub dim: usize,
    pub len: usize,
    pub params: IndexParams,
    /// SHA-256 of the normalised pool, so an index is never used with another pool.
    pub pool_sha256: String,
    /// SHA-256 of hnsw_rs's graph and data files, so a damaged file is an error, not a panic
    /// inside the reader.
    pub graph_sha256: String,
    pub data_sha256: String,
    pub build_seconds: f64,
}

/// Rows of `values` (`[n, dim]`) scaled to unit length; zero rows stay zero.
pub fn normalize_rows(values: &mut [f32], dim: usize) {
    values.par_chunks_mut(dim.max(1)).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

fn rows_of(values: &[f32], dim: usize, what: &str) -> Result<usize, RetrievalError> {
    if dim == 0 || !values.len().is_multiple_of(dim) {
        return Err(RetrievalError::Shape(format!("{what}: {} values are not rows of width {dim}", values.len())));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(RetrievalError::Shape(format!("{what}: contains NaN or infinite values")));
    }
    Ok(values.len() / dim)
}

/// The `k` most similar rows of `pool` for each query, by brute force (both normalised first).
pub fn exact_top_k(pool: &[f32], queries: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>, RetrievalError> {
    rows_of(pool, dim, "pool")?;
    rows_of(queries, dim, "queries")?;
    let (mut pool, mut queries) = (pool.to_vec(), queries.to_vec());
    normalize_rows(&mut pool, dim);
    normalize_rows(&mut queries, dim);
    Ok(queries
        .par_chunks(dim)
        .map(|q| {
            let mut scored: Vec<Hit> = pool
                .chunks(dim)
                .enumerate()
                .map(|(index, p)| Hit { index, score: q.iter().zip(p).map(|(a, b)| a * b).sum() })
                .collect();
            let k = k.min(scored.len());
            if k > 0 && k < scored.len() {
                scored.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            }
            scored.truncate(k);
            scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            scored
        })
        .collect())
}

/// The mean over queries of |approximate top-k ∩ exact top-k| / k.
pub fn recall_at_k(approx: &[Vec<Hit>], exact: &[Vec<Hit>], k: usize) -> f64 {
    if approx.is_empty() || k == 0 {
        return 0.0;
    }
    let total: f64 = approx
        .iter()
        .zip(exact)
        .map(|(a, e)| {
            let truth: std::collections::HashSet<usize> = e.iter().take(k).map(|h| h.index).collect();
            a.iter().take(k).filter(|h| truth.contains(&h.index)).count() as f64 / k.min(truth.len().max(1)) as f64
        })
        .sum();
    total / approx.len() as f64
}

fn sha256_of(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for chunk in values.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
    }
    hex::encode(h.finalize())
}

fn sha256_file(path: &Path) -> Result<String, RetrievalError> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| io_err(path, e))?;
    Ok(hex::encode(h.finalize()))
}

fn graph_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(format!("{BASENAME}.hnsw.graph")), dir.join(format!("{BASENAME}.hnsw.data")))
}

/// A saved index: a folder holding the graph, its data and [`META_FILE`].
#[derive(Debug, Clone)]
pub struct SavedIndex {
    pub dir: PathBuf,
    pub meta: IndexMeta,
}

impl SavedIndex {
    /// Builds the graph of `pool` (`[n, dim]`, normalised here) and saves it in `dir` (created).
    pub fn build(dir: &Path, pool: &[f32], dim: usize, params: IndexParams) -> Result<SavedIndex, RetrievalError> {
        params.check()?;
        let len = rows_of(pool, dim, "pool")?;
        if len == 0 {
            return Err(RetrievalError::Shape("pool: no embeddings".into()));
        }
        let mut pool = pool.to_vec();
        normalize_rows(&mut pool, dim);
        let start = Instant::now();
        let hnsw: Hnsw<'_, f32, DistDot> =
            Hnsw::new(params.connections, len, MAX_LAYERS, params.ef_construction, DistDot);
        let rows: Vec<(&[f32], usize)> = pool.chunks(dim).enumerate().map(|(i, r)| (r, i)).collect();
        hnsw.parallel_insert_slice(&rows);
        let build_seconds = start.elapsed().as_secs_f64();
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let written = hnsw.file_dump(dir, BASENAME).map_err(|e| io_err(dir, e))?;
        if written != BASENAME {
            return Err(io_err(dir, format!("the index files were written as `{written}`, not `{BASENAME}`")));
        }
        let (graph, data) = graph_files(dir);
        let meta = IndexMeta {
            format: FORMAT,
            dim,
            len,
            params,
            pool_sha256: sha256_of(&pool),
            graph_sha256: sha256_file(&graph)?,
            data_sha256: sha256_file(&data)?,
            build_seconds,
        };
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(&meta).map_err(|e| io_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        Ok(SavedIndex { dir: dir.to_path_buf(), meta })
    }

    /// The index saved in `dir`, checked: its description reads, and its files are the ones
    /// described.
    pub fn open(dir: &Path) -> Result<SavedIndex, RetrievalError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let meta: IndexMeta = serde_json::from_str(&text).map_err(|e| io_err(&path, e))?;
        if meta.format != FORMAT {
            return Err(RetrievalError::Stale {
                path,
                message: format!("index format {} (expected {FORMAT})", meta.format),
            });
        }
        let (graph, data) = graph_files(dir);
        for (file, want) in [(&graph, &meta.graph_sha256), (&data, &meta.data_sha256)] {
            if &sha256_file(file)? != want {
                return Err(RetrievalError::Stale {
                    path: file.clone(),
                    message: "changed since the index was built".into(),
                });
            }
        }
        Ok(SavedIndex { dir: dir.to_path_buf(), meta })
    }

    /// The saved index of `pool` in `dir` if there is one for exactly this pool and these build
    /// parameters, else a new one built and saved there. Returns it and whether it was built.
    pub fn open_or_build(
        dir: &Path,
        pool: &[f32],
        dim: usize,
        params: IndexParams,
    ) -> Result<(SavedIndex, bool), RetrievalError> {
        if dir.join(META_FILE).exists() {
            let index = Self::open(dir)?;
            rows_of(pool, dim, "pool")?;
            let mut normalised = pool.to_vec();
            normalize_rows(&mut normalised, dim);
            let m = &index.meta;
            let same_build =
                (m.params.connections, m.params.ef_construction) == (params.connections, params.ef_construction);
            if m.dim != dim || m.pool_sha256 != sha256_of(&normalised) || !same_build {
                return Err(RetrievalError::Stale {
                    path: dir.join(META_FILE),
                    message: format!(
                        "indexes another pool or build ({} × {}, M {}, efConstruction {})",
                        m.len, m.dim, m.params.connections, m.params.ef_construction
                    ),
                });
            }
            return Ok((index, false));
        }
        Ok((Self::build(dir, pool, dim, params)?, true))
    }

    /// The approximate `k` nearest pool rows of each query (`[q, dim]`), exploring `ef`
    /// candidates (raised to `k` if smaller), and how long reading the graph and searching took.
    pub fn search(&self, queries: &[f32], k: usize, ef: usize) -> Result<(Vec<Vec<Hit>>, SearchTimes), RetrievalError> {
        let dim = self.meta.dim;
        rows_of(queries, dim, "queries")?;
        let mut queries = queries.to_vec();
        normalize_rows(&mut queries, dim);
        let start = Instant::now();
        let mut io = HnswIo::new(&self.dir, BASENAME);
        let hnsw: Hnsw<'_, f32, DistDot> = io.load_hnsw().map_err(|e| io_err(&self.dir, e))?;
        let load_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let rows: Vec<Vec<f32>> = queries.chunks(dim).map(<[f32]>::to_vec).collect();
        let found = hnsw.parallel_search(&rows, k, ef.max(k));
        let search_seconds = start.elapsed().as_secs_f64();
        let hits = found
            .into_iter()
            .map(|hits| hits.into_iter().map(|n| Hit { index: n.d_id, score: 1.0 - n.distance }).collect())
            .collect();
        Ok((hits, SearchTimes { load_seconds, search_seconds }))
    }
}

#[cfg(test)]
mod tests;
