use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::*;

/// `n` embeddings of width `dim` with the structure of image embeddings: most variance in a
/// `rank`-dimensional subspace, plus isotropic noise; and `q` queries that are noisy copies of
/// pool rows (a decoder's predictions of images in the pool).
fn structured(n: usize, q: usize, dim: usize, rank: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || rng.sample::<f32, _>(StandardNormal);
    let basis: Vec<f32> = (0..rank * dim).map(|_| normal()).collect();
    let mut pool = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let z: Vec<f32> = (0..rank).map(|_| normal()).collect();
        for d in 0..dim {
            let signal: f32 = (0..rank).map(|r| z[r] * basis[r * dim + d]).sum();
            pool.push(signal + 2.0 * normal());
        }
    }
    let mut queries = Vec::with_capacity(q * dim);
    for i in 0..q {
        let row = (i * 7919) % n;
        for d in 0..dim {
            queries.push(pool[row * dim + d] + 3.0 * normal());
        }
    }
    (pool, queries)
}

#[test]
fn exact_search_ranks_by_cosine_and_recall_counts_the_overlap() {
    let pool = vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7, -1.0, 0.0];
    let hits = exact_top_k(&pool, &[2.0, 0.1], 2, 3).unwrap();
    assert_eq!(hits[0].iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 2, 1]);
    assert!((hits[0][0].score - 2.0 / (4.01f32).sqrt()).abs() < 1e-6);
    let other = vec![vec![Hit { index: 0, score: 1.0 }, Hit { index: 3, score: 0.0 }, Hit { index: 2, score: 0.0 }]];
    assert!((recall_at_k(&other, &hits, 3) - 2.0 / 3.0).abs() < 1e-12);
    assert!(exact_top_k(&pool, &[1.0, 2.0, 3.0], 2, 1).unwrap_err().to_string().contains("rows of width 2"));
    assert!(exact_top_k(&[f32::NAN, 1.0], &[1.0, 2.0], 2, 1).unwrap_err().to_string().contains("NaN"));
}

#[test]
fn a_saved_index_is_reused_for_its_pool_and_refused_for_another_or_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, queries) = structured(2_000, 50, 32, 8, 1);
    let params = IndexParams::default();
    let (index, built) = SavedIndex::open_or_build(dir.path(), &pool, 32, params).unwrap();
    assert!(built);
    assert_eq!((index.meta.len, index.meta.dim), (2_000, 32));
    let (again, built) = SavedIndex::open_or_build(dir.path(), &pool, 32, params).unwrap();
    assert!(!built);
    let (approx, _) = again.search(&queries, 10, params.ef_search).unwrap();
    let exact = exact_top_k(&pool, &queries, 32, 10).unwrap();
    let recall = recall_at_k(&approx, &exact, 10);
    assert!(recall >= 0.99, "recall@10 {recall}");
    // Scores are cosines of the pool rows found.
    assert!(
        (approx[0][0].score - exact[0].iter().find(|h| h.index == approx[0][0].index).map_or(f32::NAN, |h| h.score))
            .abs()
            < 1e-5
    );

    let mut other = pool.clone();
    other[0] += 1.0;
    let err = SavedIndex::open_or_build(dir.path(), &other, 32, params).unwrap_err().to_string();
    assert!(err.contains("another pool") && err.contains("delete the folder"), "{err}");

    let (graph, _) = graph_files(dir.path());
    let mut bytes = std::fs::read(&graph).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&graph, bytes).unwrap();
    let err = SavedIndex::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("pool.hnsw.graph") && err.contains("changed since"), "{err}");
}

#[test]
fn bad_parameters_and_empty_pools_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let params = IndexParams { connections: 300, ..IndexParams::default() };
    assert!(SavedIndex::build(dir.path(), &[1.0, 2.0], 2, params).unwrap_err().to_string().contains("connections"));
    assert!(
        SavedIndex::build(dir.path(), &[], 2, IndexParams::default())
            .unwrap_err()
            .to_string()
            .contains("no embeddings")
    );
    assert!(SavedIndex::open(dir.path()).unwrap_err().to_string().contains(META_FILE));
}

/// NSD's pool size: 73,000 embeddings, 1,000 queries. The graph's top-10 against brute force.
#[test]
fn recall_at_10_on_a_73k_pool_is_at_least_0_95() {
    let (n, q, dim) = (73_000, 1_000, 128);
    let (pool, queries) = structured(n, q, dim, 32, 73);
    let dir = tempfile::tempdir().unwrap();
    let params = IndexParams::default();
    let index = SavedIndex::build(dir.path(), &pool, dim, params).unwrap();
    let (approx, times) = index.search(&queries, 10, params.ef_search).unwrap();
    let start = Instant::now();
    let exact = exact_top_k(&pool, &queries, dim, 10).unwrap();
    let brute = start.elapsed().as_secs_f64();
    let recall = recall_at_k(&approx, &exact, 10);
    println!(
        "73k × {dim}: built in {:.1} s, read in {:.0} ms; 1,000 queries: HNSW {:.0} ms, exact {:.0} ms; recall@10 {recall:.4}",
        index.meta.build_seconds,
        times.load_seconds * 1e3,
        times.search_seconds * 1e3,
        brute * 1e3
    );
    assert!(recall >= 0.95, "recall@10 {recall}");
}
