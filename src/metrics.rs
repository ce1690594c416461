//! Pure statistics over SAE activations and reconstructions: L0, top-k, MSE, variance explained.
//!
//! Callers pass only the tokens that count: the BOS position is excluded before anything here
//! sees the data, because the SAEs were not trained on it and it is a huge outlier.

use crate::model::HookPoint;
use anyhow::{bail, Result};
use serde::Serialize;

/// One feature's activation at one token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FeatureActivation {
    pub feature: u32,
    pub activation: f32,
}

/// Number of features with activation > 0.
pub fn l0(row: &[f32]) -> usize {
    row.iter().filter(|&&a| a > 0.0).count()
}

/// Orders by activation, descending; ties by the lower feature id.
fn by_activation_then_id(a: &FeatureActivation, b: &FeatureActivation) -> std::cmp::Ordering {
    b.activation
        .total_cmp(&a.activation)
        .then(a.feature.cmp(&b.feature))
}

/// The `k` strongest active features of one token (activation > 0 only), strongest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<FeatureActivation> {
    let mut active: Vec<FeatureActivation> = row
        .iter()
        .enumerate()
        .filter(|(_, &a)| a > 0.0)
        .map(|(i, &a)| FeatureActivation {
            feature: i as u32,
            activation: a,
        })
        .collect();
    if active.len() > k {
        active.select_nth_unstable_by(k, by_activation_then_id);
        active.truncate(k);
    }
    active.sort_by(by_activation_then_id);
    active
}

/// A feature's activity summed over a prompt's (non-BOS) tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AggregateFeature {
    pub feature: u32,
    /// Sum of the feature's activation over the tokens.
    pub activation_sum: f32,
    /// Its largest activation at any one token.
    pub activation_max: f32,
    /// Number of tokens where it was active.
    pub active_tokens: u32,
}

/// The `k` features with the largest summed activation over `rows` (each `[d_sae]`), strongest
/// first; ties by the lower feature id.
pub fn aggregate_top<'a>(
    rows: impl IntoIterator<Item = &'a [f32]>,
    d_sae: usize,
    k: usize,
) -> Vec<AggregateFeature> {
    let mut sum = vec![0f32; d_sae];
    let mut max = vec![0f32; d_sae];
    let mut count = vec![0u32; d_sae];
    for row in rows {
        for (i, &a) in row.iter().enumerate() {
            if a > 0.0 {
                sum[i] += a;
                max[i] = max[i].max(a);
                count[i] += 1;
            }
        }
    }
    let mut features: Vec<AggregateFeature> = (0..d_sae)
        .filter(|&i| count[i] > 0)
        .map(|i| AggregateFeature {
            feature: i as u32,
            activation_sum: sum[i],
            activation_max: max[i],
            active_tokens: count[i],
        })
        .collect();
    let order = |a: &AggregateFeature, b: &AggregateFeature| {
        b.activation_sum
            .total_cmp(&a.activation_sum)
            .then(a.feature.cmp(&b.feature))
    };
    if features.len() > k {
        features.select_nth_unstable_by(k, order);
        features.truncate(k);
    }
    features.sort_by(order);
    features
}

/// How well a reconstruction matches its input over a set of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reconstruction {
    /// `mean((x_hat - x)^2)` over every token and dimension.
    pub mse: f64,
    /// `1 - mse / var(x)`, `var` the unbiased variance of all the elements of `x` (torch's `.var()`).
    pub variance_explained: f64,
}

/// Running sums for [`Reconstruction`], so tokens can be added in any grouping (prompt by
/// prompt, batch by batch) and pooled exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReconstructionSums {
    n: u64,
    sum_x: f64,
    sum_x2: f64,
    sum_err2: f64,
}

impl ReconstructionSums {
    /// Adds the elements of `x` and its reconstruction `x_hat` (same length).
    pub fn add(&mut self, x: &[f32], x_hat: &[f32]) {
        assert_eq!(
            x.len(),
            x_hat.len(),
            "input and reconstruction differ in length"
        );
        for (&a, &b) in x.iter().zip(x_hat) {
            let (a, b) = (a as f64, b as f64);
            self.sum_x += a;
            self.sum_x2 += a * a;
            self.sum_err2 += (b - a) * (b - a);
        }
        self.n += x.len() as u64;
    }

    /// `None` when fewer than two elements were seen (the unbiased variance is undefined).
    pub fn finish(&self) -> Option<Reconstruction> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let mse = self.sum_err2 / n;
        let mean = self.sum_x / n;
        // Sum of squared deviations; clamp the rounding error of the one-pass formula.
        let ss = (self.sum_x2 - n * mean * mean).max(0.0);
        let var = ss / (n - 1.0);
        Some(Reconstruction {
            mse,
            variance_explained: 1.0 - mse / var,
        })
    }
}

/// [`Reconstruction`] of `x_hat` against `x` in one call.
pub fn reconstruction(x: &[f32], x_hat: &[f32]) -> Option<Reconstruction> {
    let mut sums = ReconstructionSums::default();
    sums.add(x, x_hat);
    sums.finish()
}

/// Fails on the first NaN or infinity, naming the hook point and token: a model run in a
/// narrow dtype can overflow, and its features would be garbage.
pub fn ensure_finite(rows: &[Vec<f32>], point: HookPoint) -> Result<()> {
    for (position, row) in rows.iter().enumerate() {
        if let Some(v) = row.iter().find(|v| !v.is_finite()) {
            bail!(
                "the activation at layer {} {} is not finite ({v}) at token {position}; \
                 the model overflowed (try --dtype f32)",
                point.layer,
                point.site
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l0_counts_strictly_positive() {
        assert_eq!(l0(&[0.0, 1.0, -2.0, 0.5, 0.0]), 2);
    }

    #[test]
    fn top_k_sorts_desc_breaks_ties_by_id_and_skips_zero() {
        let row = [0.0, 3.0, 1.0, 3.0, 0.0, 2.0];
        let top = top_k(&row, 3);
        let ids: Vec<u32> = top.iter().map(|f| f.feature).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        assert_eq!(top_k(&row, 10).len(), 4);
        assert!(top_k(&[0.0, 0.0], 5).is_empty());
    }

    #[test]
    fn aggregate_sums_maxes_and_counts() {
        let a = [1.0f32, 0.0, 2.0];
        let b = [3.0f32, 0.0, 0.5];
        let agg = aggregate_top([&a[..], &b[..]], 3, 5);
        assert_eq!(agg.len(), 2);
        assert_eq!(
            agg[0],
            AggregateFeature {
                feature: 0,
                activation_sum: 4.0,
                activation_max: 3.0,
                active_tokens: 2
            }
        );
        assert_eq!(
            agg[1],
            AggregateFeature {
                feature: 2,
                activation_sum: 2.5,
                activation_max: 2.0,
                active_tokens: 2
            }
        );
    }

    #[test]
    fn variance_explained_uses_unbiased_variance() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let x_hat = [1.5f32, 2.0, 3.0, 4.0];
        let r = reconstruction(&x, &x_hat).unwrap();
        // mse = 0.25 / 4; var = 5/3 (unbiased).
        assert!((r.mse - 0.0625).abs() < 1e-12);
        assert!((r.variance_explained - (1.0 - 0.0625 / (5.0 / 3.0))).abs() < 1e-12);
        assert!(reconstruction(&x, &x).unwrap().variance_explained == 1.0);
        assert!(reconstruction(&[1.0], &[1.0]).is_none());
    }

    #[test]
    fn sums_pool_like_one_pass() {
        let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.7 - 2.0).collect();
        let x_hat: Vec<f32> = x.iter().map(|v| v * 0.9 + 0.1).collect();
        let whole = reconstruction(&x, &x_hat).unwrap();
        let mut sums = ReconstructionSums::default();
        sums.add(&x[..3], &x_hat[..3]);
        sums.add(&x[3..], &x_hat[3..]);
        let pooled = sums.finish().unwrap();
        assert!((whole.mse - pooled.mse).abs() < 1e-12);
        assert!((whole.variance_explained - pooled.variance_explained).abs() < 1e-12);
    }
}
