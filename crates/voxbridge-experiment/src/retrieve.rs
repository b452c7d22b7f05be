//! `voxbridge retrieve`: a checkpoint's retrieval embeddings for some voxels, matched against a
//! large pool of target embeddings (e.g. NSD's 73k images) through an HNSW index that is built
//! on first use, saved, and reused while the pool is the same; optionally checked against exact
//! search (recall@k).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use voxbridge_model::tensors::HostTensor;
pub use voxbridge_retrieval::IndexParams;
use voxbridge_retrieval::{Hit, IndexMeta, SavedIndex, SearchTimes, exact_top_k, recall_at_k};

use crate::predict::{PredictRequest, predict_tensors, read_npy_2d};

/// The outputs used as the query embedding, by preference: MindEye1's projector output, MindEye2's
/// retrieval tokens, Mind Reader's CLIP vector.
pub const EMBEDDINGS: [&str; 3] = ["clip_voxels_proj", "clip_voxels", "y_pred"];

/// One retrieval to make.
#[derive(Debug, Clone)]
pub struct RetrieveRequest {
    /// The checkpoint and the voxels to embed (`predict`'s request; its `out` is not used).
    pub predict: PredictRequest,
    /// `[N, D]` `.npy` of target embeddings.
    pub pool: PathBuf,
    /// Where the index lives; `<pool>.hnsw` beside the pool when not given.
    pub index: Option<PathBuf>,
    pub k: usize,
    pub params: IndexParams,
    /// Also search exactly and report recall@k.
    pub exact: bool,
}

/// What a retrieval found.
#[derive(Debug, Clone, Serialize)]
pub struct Retrieval {
    /// Which output was embedded.
    pub embedding: String,
    pub k: usize,
    /// Per query, the `k` pool rows found, most similar first.
    pub hits: Vec<Vec<Hit>>,
    pub index_dir: PathBuf,
    pub index: IndexMeta,
    /// The index was built by this call (not reused).
    pub built: bool,
    pub times: SearchTimes,
    /// recall@k against exact search, with `exact`.
    pub recall: Option<f64>,
    pub exact_seconds: Option<f64>,
}

impl Retrieval {
    /// Milliseconds of graph search per 1,000 queries.
    pub fn ms_per_1000(&self) -> f64 {
        self.times.search_seconds * 1e3 * 1000.0 / self.hits.len().max(1) as f64
    }
}

/// The default index folder of a pool: `<pool>.hnsw` beside it.
pub fn default_index_dir(pool: &Path) -> PathBuf {
    let mut name = pool.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".hnsw");
    pool.with_file_name(name)
}

/// Embeds the request's voxels, opens (or builds) the pool's index and searches it.
pub fn retrieve(request: &RetrieveRequest, notice: &mut dyn FnMut(String)) -> anyhow::Result<Retrieval> {
    if request.k == 0 {
        bail!("--k must be at least 1");
    }
    let pool = read_npy_2d(&request.pool)?;
    let dim = pool.shape[1];
    let outputs = predict_tensors(&request.predict, notice)?;
    let (embedding, queries) = query_embeddings(&outputs.tensors)?;
    if queries.data.len() / queries.shape[0].max(1) != dim {
        bail!(
            "{}: pool embeddings are {dim} wide, but the model's `{embedding}` is {} wide",
            request.pool.display(),
            queries.data.len() / queries.shape[0].max(1)
        );
    }
    let index_dir = request.index.clone().unwrap_or_else(|| default_index_dir(&request.pool));
    let (index, built) = SavedIndex::open_or_build(&index_dir, &pool.data, dim, request.params)
        .with_context(|| format!("the index of {}", request.pool.display()))?;
    let (hits, times) = index.search(&queries.data, request.k, request.params.ef_search)?;
    let (recall, exact_seconds) = if request.exact {
        let start = Instant::now();
        let exact = exact_top_k(&pool.data, &queries.data, dim, request.k)?;
        (Some(recall_at_k(&hits, &exact, request.k)), Some(start.elapsed().as_secs_f64()))
    } else {
        (None, None)
    };
    Ok(Retrieval { embedding, k: request.k, hits, index_dir, index: index.meta, built, times, recall, exact_seconds })
}

/// The first of [`EMBEDDINGS`] among a prediction's outputs, flattened to `[N, rest]`.
fn query_embeddings(tensors: &[(String, HostTensor)]) -> anyhow::Result<(String, HostTensor)> {
    for name in EMBEDDINGS {
        if let Some((_, t)) = tensors.iter().find(|(k, _)| k == name) {
            let n = t.shape[0];
            let width = t.shape[1..].iter().product();
            return Ok((name.to_string(), HostTensor::new(vec![n, width], t.data.clone())));
        }
    }
    let names: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    bail!("the checkpoint gives none of {EMBEDDINGS:?} to retrieve with (it gives {names:?})")
}

/// The hits as JSON: per query, the pool rows and their cosine similarities.
pub fn write_hits(path: &Path, retrieval: &Retrieval) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(retrieval)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_sits_beside_the_pool_and_the_embedding_is_chosen_by_preference() {
        assert_eq!(default_index_dir(Path::new("data/pool.npy")), Path::new("data/pool.npy.hnsw"));
        let t = |shape: Vec<usize>| HostTensor::new(shape.clone(), vec![0.0; shape.iter().product()]);
        let outputs =
            vec![("clip_voxels".to_string(), t(vec![2, 3, 4])), ("clip_voxels_proj".to_string(), t(vec![2, 3, 4]))];
        let (name, q) = query_embeddings(&outputs).unwrap();
        assert_eq!((name.as_str(), q.shape), ("clip_voxels_proj", vec![2, 12]));
        let err = query_embeddings(&[("upsampler_out".to_string(), t(vec![1, 2]))]).unwrap_err().to_string();
        assert!(err.contains("upsampler_out"), "{err}");
    }
}
