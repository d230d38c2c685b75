//! Search over an open index: query → text tower (cached) → query vectors → ANN per concept →
//! exact model scores → negatives, filters, threshold → ranked, paginated hits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use spotter_indexer::{HitRecord, Index};
use spotter_model::scoring::dot;
use spotter_model::{ModelPackage, RuntimeOptions, Scoring, TextTower};

use crate::error::{Result, SpotterError};
use crate::query::Query;
use crate::text_cache::{TextCache, TextCacheStats};

/// Query texts whose vectors are kept in the cache.
const CACHE_CAPACITY: usize = 4096;

/// Largest page size.
pub const MAX_K: usize = 1000;

/// Ids are 64-bit (shard bits above 2^36, proposal ranks below 2^16), past the 2^53 that a
/// JavaScript number holds exactly, so JSON carries them as decimal strings.
fn id_as_string<S: serde::Serializer>(id: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Optional restrictions on hits.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only images whose path relative to their archive starts with this.
    pub path_prefix: Option<String>,
    /// Only this archive root id.
    pub root: Option<u32>,
    /// Minimum image width.
    pub min_width: Option<u32>,
    /// Minimum image height.
    pub min_height: Option<u32>,
}

impl Filters {
    fn accepts(&self, hit: &HitRecord) -> bool {
        self.path_prefix
            .as_ref()
            .is_none_or(|p| hit.rel_path.starts_with(p.as_str()))
            && self.root.is_none_or(|r| hit.root == r)
            && self.min_width.is_none_or(|w| hit.width >= w)
            && self.min_height.is_none_or(|h| hit.height >= h)
    }
}

/// Paging and scoring parameters.
#[derive(Debug, Clone)]
pub struct SearchParams {
    /// Hits per page.
    pub k: usize,
    /// Hits to skip (the cursor).
    pub offset: usize,
    /// Minimum probability (default: the model's).
    pub threshold: Option<f32>,
    /// ANN search breadth (default: adaptive).
    pub ef: Option<usize>,
    /// Restrictions.
    pub filters: Filters,
    /// Stops the search between steps once cancelled (the server cancels a request that timed
    /// out or whose client went away, so its work does not go on in the background).
    pub cancel: Cancel,
}

/// A cancellation flag shared between a request and the work it started.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A flag that is not cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Cancels the work.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `Err(SpotterError::Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(SpotterError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One matching object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectHit {
    /// Proposal id (for "more like this"); a decimal string in JSON, since ids pass 2^53.
    #[serde(serialize_with = "id_as_string")]
    pub proposal: u64,
    /// Image id (for `/api/images/{id}` and thumbnails); a decimal string in JSON.
    #[serde(serialize_with = "id_as_string")]
    pub image: u64,
    /// The model's probability for the best-matching concept.
    pub score: f32,
    /// That concept.
    pub concept: String,
    /// `x1, y1, x2, y2` in displayed image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Objectness of the proposal.
    pub objectness: f32,
    /// Archive root id.
    pub root: u32,
    /// Path relative to the archive root, for people (bytes that are not UTF-8 as `\xNN`; the
    /// file itself is addressed by `image`).
    pub path: String,
    /// Displayed image width.
    pub width: u32,
    /// Displayed image height.
    pub height: u32,
    #[serde(skip)]
    rank: f32,
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Text tower (0 on a cache hit).
    pub text_ms: f64,
    /// Vector index.
    pub ann_ms: f64,
    /// Reading records and exact scoring.
    pub meta_ms: f64,
}

/// A page of results.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The hits of this page, best first.
    pub hits: Vec<ObjectHit>,
    /// Offset of the next page, or `None` when there is no more.
    pub next_offset: Option<usize>,
    /// Threshold applied.
    pub threshold: f32,
    /// Stage timings.
    pub timings: Timings,
}

/// An image with all its matching boxes.
#[derive(Debug, Clone, Serialize)]
pub struct ImageHit {
    /// Image id; a decimal string in JSON.
    #[serde(serialize_with = "id_as_string")]
    pub image: u64,
    /// Its best hit's score.
    pub score: f32,
    /// Archive root id.
    pub root: u32,
    /// Path relative to the root.
    pub path: String,
    /// Displayed width.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
    /// Matching boxes, best first.
    pub boxes: Vec<ObjectHit>,
}

/// A page of images.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    /// Images of this page, best first.
    pub images: Vec<ImageHit>,
    /// Offset of the next page, or `None`.
    pub next_offset: Option<usize>,
    /// Threshold applied.
    pub threshold: f32,
    /// Stage timings.
    pub timings: Timings,
}

/// Groups a page of object hits by image (for "more like this" in image mode).
pub fn group_by_image(result: SearchResult) -> ImageResult {
    let mut images: Vec<ImageHit> = Vec::new();
    let mut position: HashMap<u64, usize> = HashMap::new();
    for hit in result.hits {
        match position.get(&hit.image) {
            Some(&i) => images[i].boxes.push(hit),
            None => {
                position.insert(hit.image, images.len());
                images.push(ImageHit::from_first(hit));
            }
        }
    }
    ImageResult {
        images,
        next_offset: result.next_offset,
        threshold: result.threshold,
        timings: result.timings,
    }
}

impl ImageHit {
    fn from_first(hit: ObjectHit) -> Self {
        ImageHit {
            image: hit.image,
            score: hit.score,
            root: hit.root,
            path: hit.path.clone(),
            width: hit.width,
            height: hit.height,
            boxes: vec![hit],
        }
    }
}

/// Search over one index with its model's text tower; shareable between threads.
pub struct SearchEngine {
    index: Arc<Index>,
    package: ModelPackage,
    text: TextTower,
    scoring: Scoring,
    cache: TextCache,
}

impl SearchEngine {
    /// Loads the text tower of the index's model (`text_sessions` copies for concurrent queries).
    pub fn new(
        index: Arc<Index>,
        package: ModelPackage,
        runtime: &RuntimeOptions,
        text_sessions: usize,
    ) -> Result<Self> {
        index.check_model(&package)?;
        let text = TextTower::load_pool(&package, runtime, text_sessions)?;
        Ok(SearchEngine {
            scoring: Scoring::new(&package.manifest.scoring),
            index,
            package,
            text,
            cache: TextCache::new(CACHE_CAPACITY),
        })
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The model package.
    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The scoring rule.
    pub fn scoring(&self) -> &Scoring {
        &self.scoring
    }

    /// Query vector `[t̂ ; 1]` of a concept and whether it was cached; concurrent requests for
    /// the same uncached concept share one text-tower run.
    pub fn query_vector(&self, concept: &str) -> Result<(Arc<Vec<f32>>, bool)> {
        self.cache.get_or_compute(concept, || {
            let t = self.text.embed_queries(&[concept])?;
            let first = t.first().ok_or_else(|| {
                SpotterError::Internal(format!("the text tower returned nothing for {concept:?}"))
            })?;
            Ok(self.scoring.query_vector(first))
        })
    }

    /// How the query-text cache has been used.
    pub fn text_cache_stats(&self) -> TextCacheStats {
        self.cache.stats()
    }

    /// Runs a parsed text query.
    pub fn search(&self, query: &Query, params: &SearchParams) -> Result<SearchResult> {
        let t0 = Instant::now();
        let mut uncached = false;
        let mut positives = Vec::new();
        for c in &query.positives {
            params.cancel.check()?;
            let (v, hit) = self.query_vector(&c.text)?;
            uncached |= !hit;
            positives.push((c.text.clone(), c.weight, v));
        }
        let mut negatives = Vec::new();
        for n in &query.negatives {
            params.cancel.check()?;
            let (v, hit) = self.query_vector(n)?;
            uncached |= !hit;
            negatives.push(v);
        }
        let text_ms = if uncached {
            t0.elapsed().as_secs_f64() * 1e3
        } else {
            0.0
        };
        self.run(&positives, &negatives, params, None, text_ms)
    }

    /// "More like this": the proposal's own embedding direction is the query.
    pub fn similar(&self, proposal: u64, params: &SearchParams) -> Result<SearchResult> {
        let v = self
            .index
            .proposal_vector(proposal)?
            .ok_or_else(|| SpotterError::NotFound(format!("no proposal {proposal}")))?;
        let stored = spotter_model::StoredVectorRef::new(&v).ok_or_else(|| {
            SpotterError::from(spotter_indexer::IndexError::Corrupt {
                what: format!("proposal {proposal}"),
                message: "its stored vector holds no embedding".into(),
            })
        })?;
        let norm = stored.norm().max(1e-12);
        let t: Vec<f32> = stored.embedding().iter().map(|x| x / norm).collect();
        let q = Arc::new(self.scoring.query_vector(&t));
        self.run(
            &[(format!("like #{proposal}"), 1.0, q)],
            &[],
            params,
            Some(proposal),
            0.0,
        )
    }

    /// Runs a query and groups its hits by image: each image with all its matching boxes,
    /// ranked by its best hit; `params.k`/`offset` count images.
    pub fn search_images(&self, query: &Query, params: &SearchParams) -> Result<ImageResult> {
        let mut object_params = params.clone();
        object_params.offset = 0;
        object_params.k = ((params.offset + params.k + 1) * 4).max(64);
        loop {
            params.cancel.check()?;
            let result = self.search(query, &object_params)?;
            let complete = result.next_offset.is_none();
            let ImageResult {
                images: groups,
                threshold,
                timings,
                ..
            } = group_by_image(result);
            if groups.len() > params.offset + params.k || complete {
                let more = groups.len() > params.offset + params.k;
                let images: Vec<ImageHit> = groups
                    .into_iter()
                    .skip(params.offset)
                    .take(params.k)
                    .collect();
                return Ok(ImageResult {
                    next_offset: more.then_some(params.offset + params.k),
                    images,
                    threshold,
                    timings,
                });
            }
            object_params.k *= 4;
        }
    }

    fn run(
        &self,
        positives: &[(String, f32, Arc<Vec<f32>>)],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
        exclude: Option<u64>,
        text_ms: f64,
    ) -> Result<SearchResult> {
        let threshold = params.threshold.unwrap_or(self.scoring.default_threshold());
        let min_logit = self.scoring.logit_of_probability(threshold);
        let want = params.offset + params.k + 1; // one more tells whether a next page exists
        let total = self.index.vectors().len()?;
        let mut timings = Timings {
            text_ms,
            ..Default::default()
        };
        let mut fetch = (want * 2).max(32);
        loop {
            let t = Instant::now();
            let mut candidates: Vec<u64> = Vec::new();
            let mut exhausted = true;
            for (_, _, q) in positives {
                params.cancel.check()?;
                let ef = params.ef.unwrap_or(0).max(fetch);
                let found = self.index.vectors().search(q, fetch, ef)?;
                // More could exist only if the page was full and its last hit still passes.
                if found.len() == fetch && found.last().is_some_and(|n| n.logit >= min_logit) {
                    exhausted = false;
                }
                candidates.extend(found.iter().filter(|n| n.logit >= min_logit).map(|n| n.id));
            }
            candidates.sort_unstable();
            candidates.dedup();
            timings.ann_ms += t.elapsed().as_secs_f64() * 1e3;

            let t = Instant::now();
            let mut hits = Vec::with_capacity(candidates.len());
            candidates.retain(|id| Some(*id) != exclude);
            for record in self.index.hit_records(&candidates)? {
                if !params.filters.accepts(&record) {
                    continue;
                }
                if let Some(hit) = self.score(positives, negatives, &record, threshold) {
                    hits.push(hit);
                }
            }
            timings.meta_ms += t.elapsed().as_secs_f64() * 1e3;
            if hits.len() >= want || exhausted || fetch >= total {
                hits.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(a.proposal.cmp(&b.proposal)));
                let more = hits.len() > params.offset + params.k;
                let page: Vec<ObjectHit> = hits
                    .into_iter()
                    .skip(params.offset)
                    .take(params.k)
                    .collect();
                return Ok(SearchResult {
                    next_offset: more.then_some(params.offset + params.k),
                    hits: page,
                    threshold,
                    timings,
                });
            }
            fetch = (fetch * 4).min(total.max(1));
        }
    }

    fn score(
        &self,
        positives: &[(String, f32, Arc<Vec<f32>>)],
        negatives: &[Arc<Vec<f32>>],
        record: &HitRecord,
        threshold: f32,
    ) -> Option<ObjectHit> {
        let p = &record.proposal;
        let v = &record.vector;
        let (mut best, mut best_rank, mut best_concept) = (f32::MIN, f32::MIN, "");
        for (text, weight, q) in positives {
            let prob = self.scoring.probability(dot(q, v));
            if prob * weight > best_rank {
                (best, best_rank, best_concept) = (prob, prob * weight, text);
            }
        }
        if best < threshold {
            return None;
        }
        if negatives
            .iter()
            .any(|n| self.scoring.probability(dot(n, v)) > best)
        {
            return None;
        }
        Some(ObjectHit {
            proposal: record.id,
            image: p.image,
            score: best,
            concept: best_concept.to_string(),
            bbox: p.bbox,
            objectness: p.objectness,
            root: record.root,
            path: record.rel_path.display(),
            width: record.width,
            height: record.height,
            rank: best_rank,
        })
    }
}
