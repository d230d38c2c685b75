//! Objects together (`cat & sofa`): the photos that hold a box for every requirement, each
//! requirement matched by its own box, ranked by the weakest match.
//!
//! A requirement is a list of alternative concepts (`cat, kitten & sofa` has two). A box
//! matches a requirement with the rank `probability × weight` of its best alternative when that
//! probability reaches the threshold and no negative concept scores higher on it. A photo's
//! rank is the best over assignments of distinct boxes to requirements of the smallest matched
//! rank (a bottleneck assignment, solved exactly per photo).
//!
//! Candidates come from the vector index like any search, without reading every match: each
//! concept's top `fetch` proposals are gathered, and only photos that appear for every
//! requirement are evaluated, from all their proposals. A photo missing from some
//! requirement's list can rank at most that list's last rank, so photos ranked above the
//! largest such frontier are final; `fetch` grows until the page holds enough final photos or
//! every list is exhausted. Filters apply to the photos evaluated, so a filter never shortens
//! a page that enough matches could fill.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use spotter_indexer::records::{image_of_proposal, proposal_id};
use spotter_model::scoring::dot;

use crate::engine::{
    Concept, ConceptSearch, ImageHit, ObjectHit, SearchParams, SortOrder, Timings,
};
use crate::error::Result;

/// Most `&` terms in one query.
pub const MAX_REQUIREMENTS: usize = 8;

/// One photo that holds every requirement.
#[derive(Debug, Clone)]
pub struct PhotoMatch {
    /// The image id.
    pub image: u64,
    /// The weakest matched rank (what photos are ordered by).
    pub rank: f32,
    /// The weakest matched box's probability.
    pub score: f32,
    /// The box matched to each requirement, in the query's order.
    pub boxes: Vec<ObjectHit>,
}

impl PhotoMatch {
    /// The photo as an image hit, its boxes the matched ones.
    pub fn into_image_hit(self) -> Option<ImageHit> {
        let first = self.boxes.first()?.clone();
        Some(ImageHit {
            image: self.image,
            score: self.score,
            root: first.root,
            path: first.path,
            width: first.width,
            height: first.height,
            photo: first.photo,
            boxes: self.boxes,
        })
    }
}

/// The photos found so far, best first, and whether they are all there are.
pub struct TogetherPage {
    /// Final photos in rank order (ties by image id).
    pub photos: Vec<PhotoMatch>,
    /// No other photo matches.
    pub complete: bool,
    /// Where the time went.
    pub timings: Timings,
}

impl ConceptSearch {
    /// At least `want` photos matching every requirement (fewer only when no more exist), best
    /// first. `requirements` must not be empty; each holds at least one concept.
    pub fn together(
        &self,
        requirements: &[Vec<Concept>],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
        want: usize,
    ) -> Result<TogetherPage> {
        let scoring = self.scoring();
        let threshold = params.threshold.unwrap_or(scoring.default_threshold());
        let min_logit = scoring.logit_of_probability(threshold);
        let total = self.index().vector_count()?;
        let mut timings = Timings::default();
        let mut evaluated: HashMap<u64, Option<PhotoMatch>> = HashMap::new();
        let mut fetch = want.saturating_mul(4).max(64).min(total.max(1));
        loop {
            let t = Instant::now();
            // The highest rank a photo absent from some requirement's lists could have.
            let mut frontier = f32::NEG_INFINITY;
            let mut exhausted = true;
            let mut holding: Option<HashSet<u64>> = None;
            for requirement in requirements {
                let mut seen = HashSet::new();
                for concept in requirement {
                    params.cancel.check()?;
                    let ef = params.ef.unwrap_or(0).max(fetch);
                    let found = self.index().search_vectors(&concept.vector, fetch, ef)?;
                    if let Some(last) = found.last() {
                        if found.len() == fetch && last.logit >= min_logit {
                            exhausted = false;
                            let rank = scoring.probability(last.logit) * concept.weight;
                            frontier = frontier.max(rank);
                        }
                    }
                    seen.extend(
                        found
                            .iter()
                            .filter(|n| n.logit >= min_logit)
                            .map(|n| image_of_proposal(n.id)),
                    );
                }
                holding = Some(match holding {
                    None => seen,
                    Some(before) => before.intersection(&seen).copied().collect(),
                });
            }
            timings.ann_ms += t.elapsed().as_secs_f64() * 1e3;

            let t = Instant::now();
            let mut fresh: Vec<u64> = holding
                .unwrap_or_default()
                .into_iter()
                .filter(|image| !evaluated.contains_key(image))
                .collect();
            fresh.sort_unstable();
            for image in fresh {
                params.cancel.check()?;
                let found = self.photo(image, requirements, negatives, params, threshold)?;
                evaluated.insert(image, found);
            }
            timings.meta_ms += t.elapsed().as_secs_f64() * 1e3;

            let everything = exhausted || fetch >= total;
            let mut photos: Vec<PhotoMatch> = evaluated
                .values()
                .flatten()
                .filter(|m| everything || m.rank > frontier)
                .cloned()
                .collect();
            if photos.len() >= want || everything {
                let taken = |m: &PhotoMatch| m.boxes.first().and_then(|b| b.photo.taken);
                photos.sort_by(|a, b| {
                    let by_time = match params.sort {
                        SortOrder::Score => std::cmp::Ordering::Equal,
                        SortOrder::Time => taken(b).cmp(&taken(a)),
                    };
                    by_time
                        .then(b.rank.total_cmp(&a.rank))
                        .then(a.image.cmp(&b.image))
                });
                return Ok(TogetherPage {
                    photos,
                    complete: everything,
                    timings,
                });
            }
            fetch = (fetch * 4).min(total.max(1));
        }
    }

    /// Photo `image` evaluated from all its proposals: its best assignment, or `None` when it
    /// is filtered out or some requirement has no box of its own.
    fn photo(
        &self,
        image: u64,
        requirements: &[Vec<Concept>],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
        threshold: f32,
    ) -> Result<Option<PhotoMatch>> {
        let Some(record) = self.index().image(image)? else {
            return Ok(None);
        };
        let ids: Vec<u64> = (0..record.proposals)
            .map(|rank| proposal_id(image, rank))
            .collect();
        let boxes = self.index().hit_records(&ids)?;
        if boxes
            .first()
            .is_none_or(|first| !params.filters.accepts(first))
        {
            return Ok(None);
        }
        // matches[r][b]: box b's match to requirement r.
        let scoring = self.scoring();
        let matches: Vec<Vec<Option<BoxMatch>>> = requirements
            .iter()
            .map(|alternatives| {
                boxes
                    .iter()
                    .map(|b| {
                        let (mut best_prob, mut best_rank, mut label) = (0.0, f32::MIN, "");
                        for c in alternatives {
                            let prob = scoring.probability(dot(&c.vector, &b.vector));
                            if prob * c.weight > best_rank {
                                (best_prob, best_rank, label) = (prob, prob * c.weight, &c.label);
                            }
                        }
                        let vetoed = negatives
                            .iter()
                            .any(|n| scoring.probability(dot(n, &b.vector)) > best_prob);
                        (best_prob >= threshold && !vetoed).then_some(BoxMatch {
                            rank: best_rank,
                            probability: best_prob,
                            concept: label,
                        })
                    })
                    .collect()
            })
            .collect();
        let ranks: Vec<Vec<Option<f32>>> = matches
            .iter()
            .map(|row| row.iter().map(|m| m.as_ref().map(|m| m.rank)).collect())
            .collect();
        let Some(assigned) = bottleneck_assignment(&ranks) else {
            return Ok(None);
        };
        let (mut rank, mut score) = (f32::INFINITY, 0.0);
        let mut hits = Vec::with_capacity(assigned.len());
        for (r, &b) in assigned.iter().enumerate() {
            let Some(m) = &matches[r][b] else { continue };
            if m.rank < rank {
                (rank, score) = (m.rank, m.probability);
            }
            hits.push(ObjectHit::new(
                &boxes[b],
                m.probability,
                m.concept.to_string(),
                m.rank,
            ));
        }
        Ok(Some(PhotoMatch {
            image,
            rank,
            score,
            boxes: hits,
        }))
    }
}

/// How one box matches one requirement.
struct BoxMatch<'a> {
    /// Probability times the weight of the best alternative.
    rank: f32,
    /// That alternative's probability.
    probability: f32,
    /// That alternative's label.
    concept: &'a str,
}

/// The assignment of distinct boxes to requirements (`ranks[r][b]`: box `b`'s rank for
/// requirement `r`, or `None` when it cannot match) whose smallest rank is largest; `None`
/// when no assignment covers every requirement. Searches the distinct ranks by bisection,
/// testing each with augmenting paths over the edges at or above it.
fn bottleneck_assignment(ranks: &[Vec<Option<f32>>]) -> Option<Vec<usize>> {
    let mut levels: Vec<f32> = ranks.iter().flatten().filter_map(|r| *r).collect();
    levels.sort_by(|a, b| b.total_cmp(a));
    levels.dedup();
    // levels[i] decreasing: find the smallest i (highest level) whose edges admit a matching.
    let feasible = |level: f32| assign(ranks, level);
    let (mut lo, mut hi) = (0usize, levels.len());
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        match feasible(levels[mid]) {
            Some(found) => {
                best = Some(found);
                hi = mid;
            }
            None => lo = mid + 1,
        }
    }
    best
}

/// A matching of every requirement to its own box among edges of rank ≥ `level` (Kuhn's
/// augmenting paths; boxes tried best first), or `None`.
fn assign(ranks: &[Vec<Option<f32>>], level: f32) -> Option<Vec<usize>> {
    let boxes = ranks.first().map_or(0, Vec::len);
    let edges: Vec<Vec<usize>> = ranks
        .iter()
        .map(|row| {
            let mut e: Vec<usize> = (0..boxes)
                .filter(|&b| row[b].is_some_and(|rank| rank >= level))
                .collect();
            e.sort_by(|&a, &b| {
                let rank = |i: usize| row[i].unwrap_or(f32::MIN);
                rank(b).total_cmp(&rank(a)).then(a.cmp(&b))
            });
            e
        })
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; boxes];
    fn augment(
        r: usize,
        edges: &[Vec<usize>],
        owner: &mut [Option<usize>],
        visited: &mut [bool],
    ) -> bool {
        for &b in &edges[r] {
            if visited[b] {
                continue;
            }
            visited[b] = true;
            if owner[b].is_none_or(|other| augment(other, edges, owner, visited)) {
                owner[b] = Some(r);
                return true;
            }
        }
        false
    }
    for r in 0..ranks.len() {
        let mut visited = vec![false; boxes];
        if !augment(r, &edges, &mut owner, &mut visited) {
            return None;
        }
    }
    let mut assigned = vec![0; ranks.len()];
    for (b, o) in owner.iter().enumerate() {
        if let Some(r) = o {
            assigned[*r] = b;
        }
    }
    Some(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ranks: &[&[Option<f32>]]) -> Vec<Vec<Option<f32>>> {
        ranks.iter().map(|row| row.to_vec()).collect()
    }

    #[test]
    fn each_requirement_gets_its_own_box_and_the_weakest_match_is_maximised() {
        // One box is best for both; the other requirement must take a weaker box.
        let matches = m(&[&[Some(0.9), Some(0.5)], &[Some(0.8), Some(0.6)]]);
        // Assignments: (0,1) min 0.6; (1,0) min 0.5 → (0,1).
        assert_eq!(bottleneck_assignment(&matches), Some(vec![0, 1]));
        // A single box cannot serve two requirements.
        assert_eq!(
            bottleneck_assignment(&m(&[&[Some(0.9)], &[Some(0.8)]])),
            None
        );
        // A requirement nothing matches.
        assert_eq!(
            bottleneck_assignment(&m(&[&[Some(0.9), None], &[None, None]])),
            None
        );
    }

    #[test]
    fn the_bottleneck_is_exact_against_every_permutation() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as f32 / (1u64 << 31) as f32
        };
        for _ in 0..300 {
            let (k, n) = (3, 5);
            let ranks: Vec<Vec<Option<f32>>> = (0..k)
                .map(|_| {
                    (0..n)
                        .map(|_| {
                            let x = next();
                            (x > 0.3).then_some(x)
                        })
                        .collect()
                })
                .collect();
            // Brute force over ordered choices of distinct boxes.
            let mut best: Option<f32> = None;
            for a in 0..n {
                for b in 0..n {
                    for c in 0..n {
                        if a == b || b == c || a == c {
                            continue;
                        }
                        if let (Some(x), Some(y), Some(z)) = (ranks[0][a], ranks[1][b], ranks[2][c])
                        {
                            let low = x.min(y).min(z);
                            best = Some(best.map_or(low, |v: f32| v.max(low)));
                        }
                    }
                }
            }
            let got = bottleneck_assignment(&ranks).map(|assigned| {
                assert_eq!(
                    assigned.iter().collect::<HashSet<_>>().len(),
                    k,
                    "distinct boxes"
                );
                assigned
                    .iter()
                    .enumerate()
                    .map(|(r, &b)| ranks[r][b].unwrap())
                    .fold(f32::INFINITY, f32::min)
            });
            assert_eq!(got, best, "{ranks:?}");
        }
    }
}
