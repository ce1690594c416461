//! Feature cards: what a feature's weights say about it (logit effects, decoder neighbours,
//! norms), as pure functions over weight slices.
//!
//! Logit effects follow TransformerLens's direct path: a unit of feature `f` adds `W_dec[f]` to
//! the residual stream; the final RMSNorm scales each dimension by `1 + w` (its scale by the
//! RMS is left out, as a per-token factor shared by every logit), and the tied unembedding is
//! the embedding matrix without the `sqrt(hidden)` scale the input side applies. So the effect
//! on token `t`'s logit is `W_dec[f] · diag(1 + w_final_norm) · W_E[t]`.

use crate::model::weights::MappedWeights;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

/// The checkpoint tensor holding the (tied) embedding matrix `[vocab, hidden]`.
pub const EMBEDDING: &str = "model.embed_tokens.weight";
/// The checkpoint tensor holding the final RMSNorm's weight `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";

/// Vocabulary rows multiplied at once: bounds the f32 copy of the embedding matrix to
/// `ROWS_PER_CHUNK x hidden` (75 MB for Gemma 2 2B) however large the vocabulary.
const ROWS_PER_CHUNK: usize = 8192;

/// A value and the id it belongs to (a token or a feature).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub id: u32,
    pub value: f32,
}

/// The `k` largest values (largest first) and the `k` smallest (smallest first); ties by the
/// lower id in both lists. NaN never occurs in finite weights and sorts as the largest if it did.
pub fn extremes(values: &[f32], k: usize) -> (Vec<Ranked>, Vec<Ranked>) {
    let all: Vec<Ranked> = values
        .iter()
        .enumerate()
        .map(|(i, &value)| Ranked {
            id: i as u32,
            value,
        })
        .collect();
    let top = |mut v: Vec<Ranked>, cmp: &dyn Fn(&Ranked, &Ranked) -> std::cmp::Ordering| {
        if v.len() > k {
            v.select_nth_unstable_by(k, cmp);
            v.truncate(k);
        }
        v.sort_by(cmp);
        v
    };
    let largest = top(all.clone(), &|a, b| {
        b.value.total_cmp(&a.value).then(a.id.cmp(&b.id))
    });
    let smallest = top(all, &|a, b| {
        a.value.total_cmp(&b.value).then(a.id.cmp(&b.id))
    });
    (largest, smallest)
}

/// Euclidean norm, accumulated in f64.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32
}

/// The `k` decoder rows most similar to row `feature` by cosine, highest first, ties by lower id,
/// `feature` itself excluded. `w_dec` is `[d_sae, d_in]` row-major. A zero row has cosine 0 with
/// everything. Dot products and norms are accumulated in f64.
pub fn neighbours(w_dec: &[f32], d_in: usize, feature: usize, k: usize) -> Vec<Ranked> {
    assert!(
        d_in > 0 && w_dec.len().is_multiple_of(d_in),
        "w_dec is not [d_sae, d_in]"
    );
    let rows: Vec<&[f32]> = w_dec.chunks_exact(d_in).collect();
    let own = rows[feature];
    let own_norm = norm64(own);
    let cosines: Vec<f32> = rows
        .iter()
        .map(|row| {
            let denominator = own_norm * norm64(row);
            if denominator == 0.0 {
                return 0.0;
            }
            let dot: f64 = row
                .iter()
                .zip(own)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            (dot / denominator) as f32
        })
        .collect();
    let mut others: Vec<Ranked> = cosines
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != feature)
        .map(|(i, &value)| Ranked {
            id: i as u32,
            value,
        })
        .collect();
    let cmp = |a: &Ranked, b: &Ranked| b.value.total_cmp(&a.value).then(a.id.cmp(&b.id));
    if others.len() > k {
        others.select_nth_unstable_by(k, cmp);
        others.truncate(k);
    }
    others.sort_by(cmp);
    others
}

fn norm64(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

/// `direction · diag(1 + norm_weight)`: a decoder row as the unembedding sees it.
pub fn through_final_norm(direction: &[f32], norm_weight: &[f32]) -> Vec<f32> {
    direction
        .iter()
        .zip(norm_weight)
        .map(|(&d, &w)| d * (1.0 + w))
        .collect()
}

/// The logit effect of each of `directions` (each `[hidden]`, already through the final norm)
/// on every token: `[directions.len()][vocab]`, `embedding` read from the mapped checkpoint a
/// chunk of rows at a time (in f32), so no block and never the whole matrix in f32 is loaded.
pub fn logit_effects(weights: &MappedWeights, directions: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let shape = weights
        .shape(EMBEDDING)
        .with_context(|| format!("the checkpoint has no {EMBEDDING}"))?;
    let [vocab, hidden] = shape[..] else {
        anyhow::bail!("{EMBEDDING} has shape {shape:?}, expected [vocab, hidden]");
    };
    ensure!(
        directions.iter().all(|d| d.len() == hidden),
        "a decoder direction does not have the model's hidden size {hidden}"
    );
    let k = directions.len();
    let flat: Vec<f32> = directions.iter().flatten().copied().collect();
    let device = Device::Cpu;
    // [hidden, k]: each chunk of rows [n, hidden] times this gives [n, k].
    let columns = Tensor::from_vec(flat, (k, hidden), &device)?
        .t()?
        .contiguous()?;
    let mut effects = vec![Vec::with_capacity(vocab); k];
    let mut start = 0usize;
    while start < vocab {
        let end = (start + ROWS_PER_CHUNK).min(vocab);
        let ids: Vec<u32> = (start as u32..end as u32).collect();
        let rows = weights.load_rows(EMBEDDING, &ids, DType::F32, &device)?;
        let chunk = rows.matmul(&columns)?.to_vec2::<f32>()?;
        for row in chunk {
            for (effect, value) in effects.iter_mut().zip(row) {
                effect.push(value);
            }
        }
        start = end;
    }
    Ok(effects)
}

/// The final RMSNorm's weight `[hidden]` from the mapped checkpoint.
pub fn final_norm_weight(weights: &MappedWeights) -> Result<Vec<f32>> {
    ensure!(
        weights.contains(FINAL_NORM),
        "the checkpoint has no {FINAL_NORM} (the final norm), needed for logit effects"
    );
    Ok(weights
        .load(FINAL_NORM, DType::F32, &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: &[Ranked]) -> Vec<u32> {
        r.iter().map(|r| r.id).collect()
    }

    #[test]
    fn extremes_rank_both_ends_with_ties_to_the_lower_id() {
        let values = [0.5, -2.0, 3.0, 0.5, -2.0, 1.0];
        let (top, bottom) = extremes(&values, 3);
        assert_eq!(ids(&top), vec![2, 5, 0]);
        assert_eq!(ids(&bottom), vec![1, 4, 0]);
        assert_eq!(top[0].value, 3.0);
        let (top, bottom) = extremes(&values[..2], 10);
        assert_eq!((ids(&top), ids(&bottom)), (vec![0, 1], vec![1, 0]));
    }

    #[test]
    fn neighbours_rank_by_cosine_excluding_self() {
        // Rows: 0 = x, 1 = 2x (cosine 1), 2 = -x (-1), 3 = y (0), 4 = zero, 5 = x + y (0.707).
        let w_dec = [1., 0., 2., 0., -1., 0., 0., 1., 0., 0., 1., 1.];
        let n = neighbours(&w_dec, 2, 0, 4);
        assert_eq!(ids(&n), vec![1, 5, 3, 4]);
        assert!((n[0].value - 1.0).abs() < 1e-7);
        assert!((n[1].value - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(n[3].value, 0.0, "a zero row has cosine 0");
        let all = neighbours(&w_dec, 2, 4, 10);
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|r| r.value == 0.0 && r.id != 4));
        assert_eq!(ids(&all), vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn norms_and_the_final_norm_scale() {
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
        assert_eq!(
            through_final_norm(&[1.0, 2.0], &[0.5, -1.0]),
            vec![1.5, 0.0]
        );
    }

    #[test]
    fn logit_effects_multiply_by_the_embedding_in_chunks() {
        // A 3-token, 2-dim embedding in a real safetensors file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let embedding: Vec<f32> = vec![1., 0., 0., 1., 2., -3.];
        let bytes: Vec<u8> = embedding.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 2], &bytes)
                .unwrap();
        safetensors::serialize_to_file([(EMBEDDING, view)], None, &path).unwrap();
        let weights = MappedWeights::open(&[path]).unwrap();
        let effects = logit_effects(&weights, &[vec![1.0, 1.0], vec![0.5, -1.0]]).unwrap();
        assert_eq!(effects, vec![vec![1.0, 1.0, -1.0], vec![0.5, -1.0, 4.0]]);
        assert!(logit_effects(&weights, &[vec![1.0]]).is_err());
        assert!(final_norm_weight(&weights).is_err());
    }
}
