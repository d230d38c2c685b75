//! The model's own scoring rule as inner products (see `docs/model-contract.md`).
//!
//! Stored vector of a proposal: `v = [scale_l · e ; bias_l]`; query vector of a text:
//! `q = [t̂ ; 1]`; then `<q, v>` is the model's logit and `activation(<q, v>)` its probability.

use crate::manifest::{Activation, ScoringSpec};

/// A stored vector `[x ; b]` by its parts: `x` the embedding scaled by its level (`D` values),
/// `b` the level's bias. The one place that knows the layout; every vector engine reads stored
/// vectors through it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredVectorRef<'a> {
    embedding: &'a [f32],
    bias: f32,
}

impl<'a> StoredVectorRef<'a> {
    /// The parts of `v`; `None` when it is too short to hold an embedding and a bias.
    pub fn new(v: &'a [f32]) -> Option<Self> {
        let (bias, embedding) = v.split_last()?;
        (!embedding.is_empty()).then_some(StoredVectorRef {
            embedding,
            bias: *bias,
        })
    }

    /// `x`, the level-scaled embedding.
    pub fn embedding(&self) -> &'a [f32] {
        self.embedding
    }

    /// `b`, the level's bias.
    pub fn bias(&self) -> f32 {
        self.bias
    }

    /// `|x|` (the bias is not part of the norm).
    pub fn norm(&self) -> f32 {
        dot(self.embedding, self.embedding).sqrt()
    }
}

/// A query vector `[t ; w]` by its parts: `t` the text side (`D` values), `w` the weight of the
/// stored bias (1 for a text query), so that `<q, v> = <t, x> + w·b` is the model's logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryVectorRef<'a> {
    text: &'a [f32],
    bias_weight: f32,
}

impl<'a> QueryVectorRef<'a> {
    /// The parts of `q`; `None` when it is too short.
    pub fn new(q: &'a [f32]) -> Option<Self> {
        let (bias_weight, text) = q.split_last()?;
        (!text.is_empty()).then_some(QueryVectorRef {
            text,
            bias_weight: *bias_weight,
        })
    }

    /// `t`.
    pub fn text(&self) -> &'a [f32] {
        self.text
    }

    /// `w`.
    pub fn bias_weight(&self) -> f32 {
        self.bias_weight
    }

    /// `|t|`.
    pub fn norm(&self) -> f32 {
        dot(self.text, self.text).sqrt()
    }

    /// The logit `<t, x> + w·b` against a stored vector.
    pub fn logit(&self, stored: StoredVectorRef<'_>) -> f32 {
        dot(self.text, stored.embedding) + self.bias_weight * stored.bias
    }
}

/// The scoring rule of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    spec: ScoringSpec,
}

impl Scoring {
    /// Wraps the manifest's scoring spec.
    pub fn new(spec: &ScoringSpec) -> Self {
        Scoring { spec: spec.clone() }
    }

    /// Number of scoring levels.
    pub fn levels(&self) -> usize {
        self.spec.levels.len()
    }

    /// Default probability threshold for showing hits.
    pub fn default_threshold(&self) -> f32 {
        self.spec.default_threshold
    }

    /// The vector stored for a proposal with embedding `embedding` at `level` (`D + 1` floats).
    /// Levels out of range are clamped to the last level.
    pub fn stored_vector(&self, embedding: &[f32], level: usize) -> Vec<f32> {
        let l = &self.spec.levels[level.min(self.spec.levels.len() - 1)];
        let mut v = Vec::with_capacity(embedding.len() + 1);
        v.extend(embedding.iter().map(|x| x * l.scale));
        v.push(l.bias);
        v
    }

    /// The graph's embedding back from a stored vector: the inverse of [`Scoring::stored_vector`]
    /// (same level clamping).
    pub fn embedding_of(&self, stored: &[f32], level: usize) -> Vec<f32> {
        let l = &self.spec.levels[level.min(self.spec.levels.len() - 1)];
        let d = stored.len().saturating_sub(1);
        stored[..d].iter().map(|x| x / l.scale).collect()
    }

    /// The query vector of a (normalised) text embedding (`D + 1` floats).
    pub fn query_vector(&self, text_embedding: &[f32]) -> Vec<f32> {
        let mut q = Vec::with_capacity(text_embedding.len() + 1);
        q.extend_from_slice(text_embedding);
        q.push(1.0);
        q
    }

    /// The model's logit of a query against a stored vector.
    pub fn logit(&self, query: &[f32], stored: &[f32]) -> f32 {
        dot(query, stored)
    }

    /// Turns a logit into the probability shown to users.
    pub fn probability(&self, logit: f32) -> f32 {
        match self.spec.activation {
            Activation::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Activation::Identity => logit,
        }
    }

    /// The logit at which the probability equals `p` (inverse of [`Scoring::probability`]).
    pub fn logit_of_probability(&self, p: f32) -> f32 {
        match self.spec.activation {
            Activation::Sigmoid => {
                let p = p.clamp(1e-7, 1.0 - 1e-7);
                (p / (1.0 - p)).ln()
            }
            Activation::Identity => p,
        }
    }

    /// Probability of a query against a stored vector.
    pub fn score(&self, query: &[f32], stored: &[f32]) -> f32 {
        self.probability(self.logit(query, stored))
    }
}

/// Inner product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::LevelScoring;

    fn wedetect_like() -> Scoring {
        let levels = [(0.0609, -12.315), (0.1997, -10.934), (0.2794, -9.574)]
            .iter()
            .map(|&(scale, bias)| LevelScoring {
                stride: None,
                scale,
                bias,
            })
            .collect();
        Scoring::new(&ScoringSpec {
            activation: Activation::Sigmoid,
            levels,
            default_threshold: 0.2,
        })
    }

    #[test]
    fn inner_product_of_stored_and_query_is_the_wedetect_logit() {
        let s = wedetect_like();
        let e = [30.0f32, -12.0, 55.0, 4.0];
        let norm = (0.5f32 * 0.5 + 0.5 * 0.5 + 0.7 * 0.7 + 0.1 * 0.1).sqrt();
        let t: Vec<f32> = [0.5f32, 0.5, 0.7, 0.1].iter().map(|x| x / norm).collect();
        for level in 0..3 {
            let (scale, bias) = [(0.0609, -12.315), (0.1997, -10.934), (0.2794, -9.574)][level];
            let expected = 1.0 / (1.0 + (-(scale * dot(&e, &t) + bias)).exp());
            let v = s.stored_vector(&e, level);
            let q = s.query_vector(&t);
            assert!((s.score(&q, &v) - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn embedding_of_inverts_stored_vector() {
        let s = wedetect_like();
        let e = [30.0f32, -12.0, 55.0, 4.0];
        for level in 0..3 {
            let back = s.embedding_of(&s.stored_vector(&e, level), level);
            assert_eq!(back.len(), e.len());
            for (a, b) in back.iter().zip(&e) {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "level {level}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn logit_of_probability_inverts_probability() {
        let s = wedetect_like();
        for p in [0.01f32, 0.2, 0.5, 0.9] {
            assert!((s.probability(s.logit_of_probability(p)) - p).abs() < 1e-5);
        }
    }
}
