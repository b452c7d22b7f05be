//! Closed-form ridge regression from voxels to a feature space (CLIP tokens, low-level latents,
//! caption embeddings): the classic linear decoding baseline, and the "ridge" model family.
//!
//! Inputs are centred; the solve uses the primal form (XᵀX + λI)W = XᵀY when there are more
//! trials than voxels and the dual form W = Xᵀ(XXᵀ + λI)⁻¹Y otherwise, both by Cholesky in f64.
//! λ is given relative to the number of training rows (λ = alpha · n), so the same alpha means
//! the same amount of shrinkage for z-scored voxels whatever the data size. [`multi`] fits several
//! feature spaces from one eigendecomposition, λ chosen per space over sessions.

use nalgebra::{DMatrix, DVector};
use thiserror::Error;

pub mod multi;
pub use multi::{FeatureSpace, Folds, SpaceFit, fit_spaces};

#[derive(Debug, Error, PartialEq)]
pub enum RidgeError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("the regularised system is not positive definite (alpha = {0}); use a larger alpha")]
    NotPositiveDefinite(f64),
    #[error("no alphas to choose from")]
    NoAlphas,
}

/// A fitted ridge decoder: `y = (x − x_mean)·W + y_mean`.
#[derive(Debug, Clone)]
pub struct Ridge {
    /// `[inputs, outputs]`.
    pub weights: DMatrix<f64>,
    pub x_mean: DVector<f64>,
    pub y_mean: DVector<f64>,
    pub alpha: f64,
}

fn matrix(data: &[f32], rows: usize, cols: usize, what: &str) -> Result<DMatrix<f64>, RidgeError> {
    if rows == 0 || cols == 0 || data.len() != rows * cols {
        return Err(RidgeError::Shape(format!("{what} has {} values, expected {rows}×{cols} > 0", data.len())));
    }
    Ok(DMatrix::from_row_iterator(rows, cols, data.iter().map(|&x| x as f64)))
}

fn centre(m: &mut DMatrix<f64>) -> DVector<f64> {
    let mean = m.row_mean().transpose();
    for mut row in m.row_iter_mut() {
        row -= mean.transpose();
    }
    mean
}

/// The centred data of one fit with its Gram (primal) or kernel (dual) matrix computed once, so
/// that several alphas cost one Cholesky each instead of a full pass over the data.
#[derive(Debug)]
struct Prepared {
    n: usize,
    x: DMatrix<f64>,
    x_mean: DVector<f64>,
    y_mean: DVector<f64>,
    /// Primal: XᵀX `[inputs, inputs]` and XᵀY; dual: XXᵀ `[n, n]` and Y.
    system: DMatrix<f64>,
    rhs: DMatrix<f64>,
    primal: bool,
}

impl Prepared {
    fn new(x: &[f32], y: &[f32], n: usize, inputs: usize, outputs: usize) -> Result<Prepared, RidgeError> {
        let mut xm = matrix(x, n, inputs, "x")?;
        let mut ym = matrix(y, n, outputs, "y")?;
        let x_mean = centre(&mut xm);
        let y_mean = centre(&mut ym);
        let primal = n >= inputs;
        let xt = xm.transpose();
        let (system, rhs) = if primal { (&xt * &xm, &xt * &ym) } else { (&xm * &xt, ym) };
        Ok(Prepared { n, x: xm, x_mean, y_mean, system, rhs, primal })
    }

    fn solve(&self, alpha: f64) -> Result<Ridge, RidgeError> {
        let mut system = self.system.clone();
        let lambda = alpha * self.n as f64;
        for i in 0..system.nrows() {
            system[(i, i)] += lambda;
        }
        let chol = system.cholesky().ok_or(RidgeError::NotPositiveDefinite(alpha))?;
        let solution = chol.solve(&self.rhs);
        let weights = if self.primal { solution } else { self.x.transpose() * solution };
        Ok(Ridge { weights, x_mean: self.x_mean.clone(), y_mean: self.y_mean.clone(), alpha })
    }
}

impl Ridge {
    /// Fits on `x` `[n, inputs]` and `y` `[n, outputs]` (row-major).
    pub fn fit(x: &[f32], y: &[f32], n: usize, inputs: usize, outputs: usize, alpha: f64) -> Result<Ridge, RidgeError> {
        Prepared::new(x, y, n, inputs, outputs)?.solve(alpha)
    }

    pub fn inputs(&self) -> usize {
        self.weights.nrows()
    }

    pub fn outputs(&self) -> usize {
        self.weights.ncols()
    }

    /// Predicts `[rows, outputs]` from `x` `[rows, inputs]`.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>, RidgeError> {
        let inputs = self.inputs();
        if inputs == 0 || !x.len().is_multiple_of(inputs) {
            return Err(RidgeError::Shape(format!("x has {} values, not a multiple of {inputs} inputs", x.len())));
        }
        let mut xm = matrix(x, x.len() / inputs, inputs, "x")?;
        for mut row in xm.row_iter_mut() {
            row -= self.x_mean.transpose();
        }
        let mut y = xm * &self.weights;
        for mut row in y.row_iter_mut() {
            row += self.y_mean.transpose();
        }
        Ok(y.row_iter().flat_map(|r| r.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect())
    }

    /// Picks alpha on a held-out tail of the rows (the last `holdout` fraction, so with
    /// chronologically ordered trials the choice is not fooled by within-session drift), then
    /// refits on all rows. Returns the model and the validation MSE of every alpha.
    pub fn fit_select(
        x: &[f32],
        y: &[f32],
        n: usize,
        inputs: usize,
        outputs: usize,
        alphas: &[f64],
        holdout: f64,
    ) -> Result<(Ridge, Vec<(f64, f64)>), RidgeError> {
        if alphas.is_empty() {
            return Err(RidgeError::NoAlphas);
        }
        let n_val = ((n as f64 * holdout).round() as usize).clamp(1, n.saturating_sub(2).max(1));
        let n_fit = n - n_val;
        let mut scores = Vec::with_capacity(alphas.len());
        let prepared = Prepared::new(&x[..n_fit * inputs], &y[..n_fit * outputs], n_fit, inputs, outputs)?;
        for &alpha in alphas {
            let model = prepared.solve(alpha)?;
            let pred = model.predict(&x[n_fit * inputs..])?;
            let truth = &y[n_fit * outputs..];
            let mse = pred.iter().zip(truth).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / truth.len() as f64;
            scores.push((alpha, mse));
        }
        let best = scores.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|s| s.0).ok_or(RidgeError::NoAlphas)?;
        Ok((Ridge::fit(x, y, n, inputs, outputs, best)?, scores))
    }
}

/// Fits a ridge decoder (alpha chosen on a held-out tail) and runs the retrieval protocol on the
/// test set: cosine similarity between predicted and true targets, top-1 both ways.
///
/// `train_x` `[n_train, inputs]`, `train_y` `[n_train, outputs]`, `test_x` `[n_test, inputs]`
/// (typically repeat-averaged), `test_y` `[n_test, outputs]`.
pub fn ridge_retrieval(
    train_x: &[f32],
    train_y: &[f32],
    test_x: &[f32],
    test_y: &[f32],
    inputs: usize,
    outputs: usize,
    alphas: &[f64],
    seed: u64,
) -> Result<(Ridge, voxbridge_eval::Retrieval), RidgeError> {
    let n_train = train_x.len() / inputs.max(1);
    let (model, _) = Ridge::fit_select(train_x, train_y, n_train, inputs, outputs, alphas, 0.2)?;
    let predicted = model.predict(test_x)?;
    if predicted.len() != test_y.len() {
        return Err(RidgeError::Shape(format!("{} predicted values for {} targets", predicted.len(), test_y.len())));
    }
    let scores = voxbridge_eval::ScoreMatrix::cosine(&predicted, test_y, outputs);
    let retrieval =
        voxbridge_eval::top1_retrieval(&scores, voxbridge_eval::MINDEYE2_WAYS, voxbridge_eval::MINDEYE2_LOOPS, seed);
    Ok((model, retrieval))
}

/// Default alpha grid (λ = alpha · n).
pub const DEFAULT_ALPHAS: [f64; 6] = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0];

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 2·x0 − x1 + 3, exactly.
    fn linear_data(n: usize) -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let (a, b) = ((i as f32 * 0.37).sin(), (i as f32 * 0.91).cos());
            x.extend([a, b]);
            y.push(2.0 * a - b + 3.0);
        }
        (x, y)
    }

    #[test]
    fn tiny_alpha_recovers_exact_linear_map() {
        let (x, y) = linear_data(50);
        let m = Ridge::fit(&x, &y, 50, 2, 1, 1e-9).unwrap();
        assert!((m.weights[(0, 0)] - 2.0).abs() < 1e-5);
        assert!((m.weights[(1, 0)] + 1.0).abs() < 1e-5);
        let p = m.predict(&[0.5, 0.25]).unwrap();
        assert!((p[0] - (2.0 * 0.5 - 0.25 + 3.0)).abs() < 1e-4);
    }

    #[test]
    fn primal_and_dual_agree() {
        // n = 6 rows: primal with 3 inputs, dual with 8 inputs (pad with more features).
        let x: Vec<f32> = (0..6 * 8).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let y: Vec<f32> = (0..6 * 2).map(|i| (i as f32).sin()).collect();
        let dual = Ridge::fit(&x, &y, 6, 8, 2, 0.5).unwrap();
        // Reference: the primal solution computed directly.
        let mut xm = DMatrix::from_row_iterator(6, 8, x.iter().map(|&v| v as f64));
        let mut ym = DMatrix::from_row_iterator(6, 2, y.iter().map(|&v| v as f64));
        centre(&mut xm);
        centre(&mut ym);
        let gram = xm.transpose() * &xm + DMatrix::identity(8, 8) * 3.0;
        let primal = gram.cholesky().unwrap().solve(&(xm.transpose() * ym));
        assert!((dual.weights - primal).abs().max() < 1e-9);
    }

    #[test]
    fn large_alpha_shrinks_to_the_mean() {
        let (x, y) = linear_data(40);
        let m = Ridge::fit(&x, &y, 40, 2, 1, 1e9).unwrap();
        let mean = y.iter().sum::<f32>() / 40.0;
        assert!((m.predict(&[1.0, 1.0]).unwrap()[0] - mean).abs() < 1e-3);
    }

    #[test]
    fn selection_prefers_small_alpha_on_clean_data() {
        let (x, y) = linear_data(80);
        let (m, scores) = Ridge::fit_select(&x, &y, 80, 2, 1, &[1e-6, 1.0, 100.0], 0.25).unwrap();
        assert_eq!(m.alpha, 1e-6, "{scores:?}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(Ridge::fit(&[1.0; 5], &[1.0; 2], 2, 2, 1, 1.0), Err(RidgeError::Shape(_))));
    }
}
