//! Closed-form ridge from one subject's voxels to several feature spaces at once (the
//! MindDiffuser-style pipeline: CLIP image tokens, caption embeddings, the low-level latent), λ
//! chosen per space by cross-validation over sessions.
//!
//! One eigendecomposition per fold serves every space and every λ. With `X` the centred inputs
//! (`n` rows, `p` voxels) and `r = min(n, p)`, the smaller of the kernel `XXᵀ = U S Uᵀ` (dual,
//! `n ≤ p`, NSD's case) or the Gram matrix `XᵀX = V S Vᵀ` (primal) is decomposed once; then for
//! any λ and any targets `Y` (centred):
//!
//! ```text
//! dual:   W(λ) = Xᵀ U (S + λ)⁻¹ Uᵀ Y        primal: W(λ) = V (S + λ)⁻¹ Vᵀ Xᵀ Y
//! ```
//!
//! so a validation prediction is `A (S + λ)⁻¹ B` with `A = X_val Xᵀ U` (or `X_val V`) computed
//! once per fold and `B = UᵀY` (or `VᵀXᵀY`) once per space: trying a λ costs `n_val · r · width`,
//! with no new factorisation and no `p × width` weight matrix until the final refit.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::{Ridge, RidgeError, centre, matrix};

/// One feature space's targets: `[n, width]` row-major, row i belonging to input row i.
#[derive(Debug, Clone, Copy)]
pub struct FeatureSpace<'a> {
    pub name: &'a str,
    pub y: &'a [f32],
    pub width: usize,
}

/// A fitted space: its decoder, the λ chosen and every λ's cross-validated error.
#[derive(Debug, Clone)]
pub struct SpaceFit {
    pub name: String,
    pub ridge: Ridge,
    /// The chosen alpha (λ = alpha · n).
    pub alpha: f64,
    /// `(alpha, mean validation MSE over folds)` for every alpha tried.
    pub cv: Vec<(f64, f64)>,
}

/// How the rows are split for cross-validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Folds {
    /// One fold per group (session) label, merged round-robin into at most `max` folds.
    Groups { labels: Vec<u32>, max: usize },
    /// `k` contiguous blocks (one session: trials are in time order, so blocks keep drift out
    /// of the choice).
    Blocks(usize),
}

impl Folds {
    /// Leave-sessions-out folds when there are at least two sessions, else 5 contiguous blocks.
    pub fn by_session(sessions: &[u32], max: usize) -> Folds {
        let mut distinct: Vec<u32> = sessions.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= 2 {
            Folds::Groups { labels: sessions.to_vec(), max: max.max(2) }
        } else {
            Folds::Blocks(5)
        }
    }

    /// The validation rows of each fold.
    fn validation_rows(&self, n: usize) -> Result<Vec<Vec<usize>>, RidgeError> {
        match self {
            Folds::Groups { labels, max } => {
                if labels.len() != n {
                    return Err(RidgeError::Shape(format!("{} session labels for {n} rows", labels.len())));
                }
                let mut distinct: Vec<u32> = labels.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let k = distinct.len().min(*max);
                if k < 2 {
                    return Err(RidgeError::Shape("cross-validation over sessions needs at least 2 sessions".into()));
                }
                let fold_of = |label: u32| distinct.binary_search(&label).unwrap_or(0) % k;
                let mut folds = vec![Vec::new(); k];
                for (row, &label) in labels.iter().enumerate() {
                    folds[fold_of(label)].push(row);
                }
                Ok(folds)
            }
            Folds::Blocks(k) => {
                let k = (*k).clamp(2, n.max(2));
                if n < 2 * k {
                    return Err(RidgeError::Shape(format!("{n} rows are too few for {k} folds")));
                }
                Ok((0..k).map(|f| (f * n / k..(f + 1) * n / k).collect()).collect())
            }
        }
    }
}

/// The eigen-factorised training side of one fit (see the module docs).
struct Factored {
    n: usize,
    x: DMatrix<f64>,
    x_mean: DVector<f64>,
    /// Eigenvectors: U `[n, r]` (dual) or V `[p, r]` (primal); eigenvalues S `[r]`.
    vectors: DMatrix<f64>,
    values: DVector<f64>,
    dual: bool,
}

impl Factored {
    fn new(x: DMatrix<f64>) -> Factored {
        let mut x = x;
        let x_mean = centre(&mut x);
        let n = x.nrows();
        let dual = n <= x.ncols();
        let square = if dual { &x * x.transpose() } else { x.transpose() * &x };
        let eig = SymmetricEigen::new(square);
        // Round-off can leave tiny negative eigenvalues of a PSD matrix.
        let values = eig.eigenvalues.map(|v| v.max(0.0));
        Factored { n, x, x_mean, vectors: eig.eigenvectors, values, dual }
    }

    /// `B`: the targets projected on the eigenvectors, `[r, width]` (`y` centred by the caller).
    fn project(&self, y: &DMatrix<f64>) -> DMatrix<f64> {
        if self.dual { self.vectors.transpose() * y } else { self.vectors.transpose() * (self.x.transpose() * y) }
    }

    /// `A` for rows `x_other` (raw): `[rows, r]`.
    fn features_of(&self, x_other: &DMatrix<f64>) -> DMatrix<f64> {
        let mut xo = x_other.clone();
        for mut row in xo.row_iter_mut() {
            row -= self.x_mean.transpose();
        }
        if self.dual { (xo * self.x.transpose()) * &self.vectors } else { xo * &self.vectors }
    }

    /// The weights `[p, width]` for alpha, from `B`.
    fn weights(&self, b: &DMatrix<f64>, alpha: f64) -> DMatrix<f64> {
        let scaled = shrink(b, &self.values, alpha * self.n as f64);
        if self.dual { self.x.transpose() * (&self.vectors * scaled) } else { &self.vectors * scaled }
    }
}

/// `diag(1 / (s + λ)) · B`.
fn shrink(b: &DMatrix<f64>, values: &DVector<f64>, lambda: f64) -> DMatrix<f64> {
    let mut out = b.clone();
    for (i, mut row) in out.row_iter_mut().enumerate() {
        row /= values[i] + lambda;
    }
    out
}

fn rows(m: &DMatrix<f64>, which: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(which.len(), m.ncols(), |i, j| m[(which[i], j)])
}

/// Fits a ridge to every space from the same inputs `x` `[n, inputs]`, choosing each space's
/// alpha (λ = alpha · n) by the mean validation MSE over `folds`, then refitting on all rows.
pub fn fit_spaces(
    x: &[f32],
    n: usize,
    inputs: usize,
    spaces: &[FeatureSpace<'_>],
    folds: &Folds,
    alphas: &[f64],
) -> Result<Vec<SpaceFit>, RidgeError> {
    if alphas.is_empty() {
        return Err(RidgeError::NoAlphas);
    }
    if let Some(bad) = alphas.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
        return Err(RidgeError::Shape(format!("alpha {bad} must be positive")));
    }
    let xm = matrix(x, n, inputs, "x")?;
    let ys = spaces.iter().map(|s| matrix(s.y, n, s.width, s.name)).collect::<Result<Vec<_>, _>>()?;
    let validation = folds.validation_rows(n)?;
    let mut errors = vec![vec![0.0; alphas.len()]; spaces.len()];
    for val in &validation {
        let mut is_val = vec![false; n];
        val.iter().for_each(|&r| is_val[r] = true);
        let fit_rows: Vec<usize> = (0..n).filter(|&r| !is_val[r]).collect();
        let factored = Factored::new(rows(&xm, &fit_rows));
        let a = factored.features_of(&rows(&xm, val));
        for (s, y) in ys.iter().enumerate() {
            let mut y_fit = rows(y, &fit_rows);
            let y_mean = centre(&mut y_fit);
            let b = factored.project(&y_fit);
            let y_val = rows(y, val);
            for (k, &alpha) in alphas.iter().enumerate() {
                let mut pred = &a * shrink(&b, &factored.values, alpha * factored.n as f64);
                for mut row in pred.row_iter_mut() {
                    row += y_mean.transpose();
                }
                errors[s][k] += (pred - &y_val).map(|v| v * v).mean() / validation.len() as f64;
            }
        }
    }
    let all = Factored::new(xm);
    spaces
        .iter()
        .zip(ys)
        .zip(errors)
        .map(|((space, mut y), errs)| {
            let cv: Vec<(f64, f64)> = alphas.iter().copied().zip(errs).collect();
            let alpha = cv.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|c| c.0).ok_or(RidgeError::NoAlphas)?;
            let y_mean = centre(&mut y);
            let weights = all.weights(&all.project(&y), alpha);
            let ridge = Ridge { weights, x_mean: all.x_mean.clone(), y_mean, alpha };
            Ok(SpaceFit { name: space.name.to_string(), ridge, alpha, cv })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [−1, 1): SplitMix64 of (seed, index), so streams of
    /// different seeds are independent.
    fn noise(seed: u64, len: usize) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let mut z =
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn one_factorisation_gives_the_same_weights_as_a_direct_solve_in_both_forms() {
        for (n, p) in [(12, 30), (40, 6)] {
            let x = noise(1, n * p);
            let y = noise(2, n * 3);
            let spaces = [FeatureSpace { name: "y", y: &y, width: 3 }];
            let fits = fit_spaces(&x, n, p, &spaces, &Folds::Blocks(2), &[0.7]).unwrap();
            let direct = Ridge::fit(&x, &y, n, p, 3, 0.7).unwrap();
            assert!((&fits[0].ridge.weights - &direct.weights).abs().max() < 1e-9, "n {n}, p {p}");
            assert!((&fits[0].ridge.y_mean - &direct.y_mean).abs().max() < 1e-12);
        }
    }

    #[test]
    fn each_space_gets_its_own_alpha() {
        // Space "clean" is an exact linear map of x; space "noisy" is unrelated noise: the first
        // wants almost no shrinkage, the second a lot.
        let (n, p, sessions) = (120, 20, 4);
        let x = noise(3, n * p);
        let w = noise(4, p * 2);
        let mut clean = vec![0f32; n * 2];
        for i in 0..n {
            for j in 0..2 {
                clean[i * 2 + j] = (0..p).map(|k| x[i * p + k] * w[k * 2 + j]).sum();
            }
        }
        let junk = noise(5, n * 2);
        let noisy: Vec<f32> = junk.iter().map(|j| 3.0 * j).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i / (n as u32 / sessions)).collect();
        let folds = Folds::by_session(&labels, 10);
        assert!(matches!(folds, Folds::Groups { .. }));
        let spaces =
            [FeatureSpace { name: "clean", y: &clean, width: 2 }, FeatureSpace { name: "noisy", y: &noisy, width: 2 }];
        let alphas = [1e-4, 1e-2, 1.0, 100.0, 1e4];
        let fits = fit_spaces(&x, n, p, &spaces, &folds, &alphas).unwrap();
        assert_eq!(fits[0].alpha, 1e-4, "{:?}", fits[0].cv);
        assert!(fits[1].alpha >= 100.0, "{:?}", fits[1].cv);
        assert_eq!(fits[1].name, "noisy");
    }

    #[test]
    fn folds_follow_sessions_and_bad_input_is_an_error() {
        let rows = Folds::Groups { labels: vec![7, 7, 3, 3, 9, 9], max: 2 }.validation_rows(6).unwrap();
        // Sessions 3, 7, 9 round-robin into 2 folds: {3, 9} and {7}.
        assert_eq!(rows, vec![vec![2, 3, 4, 5], vec![0, 1]]);
        assert_eq!(Folds::by_session(&[1, 1, 1], 5), Folds::Blocks(5));
        assert!(Folds::Groups { labels: vec![1; 4], max: 5 }.validation_rows(4).is_err());
        let err = fit_spaces(
            &[1.0; 8],
            4,
            2,
            &[FeatureSpace { name: "c", y: &[1.0; 3], width: 1 }],
            &Folds::Blocks(2),
            &[1.0],
        );
        assert!(matches!(err, Err(RidgeError::Shape(m)) if m.contains("c has 3 values")));
        assert!(matches!(fit_spaces(&[1.0; 8], 4, 2, &[], &Folds::Blocks(2), &[-1.0]), Err(RidgeError::Shape(_))));
    }
}
