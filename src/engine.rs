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
/// Most images one [`SearchEngine::score_images`] call scores.
pub const MAX_SCORED_IMAGES: usize = 1000;
/// Most concepts one [`SearchEngine::score_images`] call scores (LVIS has 1203 categories).
pub const MAX_SCORED_CONCEPTS: usize = 2000;

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
    /// Only photos taken at or after this wall-clock time (seconds since 1970, read as if UTC,
    /// as [`spotter_indexer::PhotoInfo::taken`] is).
    pub taken_after: Option<i64>,
    /// Only photos taken before this wall-clock time.
    pub taken_before: Option<i64>,
    /// Only photos whose camera (make and model) contains this, ignoring case.
    pub camera: Option<String>,
}

impl Filters {
    /// Whether the image of `hit` passes every filter.
    pub(crate) fn accepts(&self, hit: &HitRecord) -> bool {
        let taken = hit.photo.taken;
        self.path_prefix
            .as_ref()
            .is_none_or(|p| hit.rel_path.starts_with(p.as_str()))
            && self.root.is_none_or(|r| hit.root == r)
            && self.min_width.is_none_or(|w| hit.width >= w)
            && self.min_height.is_none_or(|h| hit.height >= h)
            && self
                .taken_after
                .is_none_or(|t| taken.is_some_and(|taken| taken >= t))
            && self
                .taken_before
                .is_none_or(|t| taken.is_some_and(|taken| taken < t))
            && self.camera.as_ref().is_none_or(|wanted| {
                hit.photo
                    .camera
                    .as_ref()
                    .is_some_and(|c| c.to_lowercase().contains(&wanted.to_lowercase()))
            })
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
    /// The order of the hits.
    pub sort: SortOrder,
    /// Stops the search between steps once cancelled (the server cancels a request that timed
    /// out or whose client went away, so its work does not go on in the background).
    pub cancel: Cancel,
}

/// How hits are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Best match first (the default).
    #[default]
    Score,
    /// Newest capture time first (photos with no known time last; ties by score). Every
    /// match above the threshold is gathered first, so this costs more on broad queries.
    Time,
}

/// Orders hits as `sort` says (ties by proposal id, so the order is total).
fn sort_hits(hits: &mut [ObjectHit], sort: SortOrder) {
    hits.sort_by(|a, b| {
        let by_time = match sort {
            SortOrder::Score => std::cmp::Ordering::Equal,
            SortOrder::Time => b.photo.taken.cmp(&a.photo.taken),
        };
        by_time
            .then(b.rank.total_cmp(&a.rank))
            .then(a.proposal.cmp(&b.proposal))
    });
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ObjectHit {
    /// Proposal id (for "more like this"); a decimal string in JSON, since ids pass 2^53.
    #[serde(serialize_with = "id_as_string")]
    #[schema(value_type = String, example = "4294967296")]
    pub proposal: u64,
    /// Image id (for `/api/images/{id}` and thumbnails); a decimal string in JSON.
    #[serde(serialize_with = "id_as_string")]
    #[schema(value_type = String, example = "17")]
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
    /// The photo's capture time, camera and GPS position, where known.
    pub photo: spotter_indexer::PhotoInfo,
    #[serde(skip)]
    rank: f32,
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Timings {
    /// Text tower (0 on a cache hit).
    pub text_ms: f64,
    /// Vector index.
    pub ann_ms: f64,
    /// Reading records and exact scoring.
    pub meta_ms: f64,
}

/// A page of results.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageHit {
    /// Image id; a decimal string in JSON.
    #[serde(serialize_with = "id_as_string")]
    #[schema(value_type = String, example = "17")]
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
    /// The photo's capture time, camera and GPS position, where known.
    pub photo: spotter_indexer::PhotoInfo,
    /// Matching boxes, best first.
    pub boxes: Vec<ObjectHit>,
}

/// A page of images.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
            photo: hit.photo.clone(),
            boxes: vec![hit],
        }
    }
}

/// One positive concept of a query: its label (shown with each hit), weight and query vector
/// `[t̂ ; 1]`.
#[derive(Debug, Clone)]
pub struct Concept {
    /// Shown with each hit it matched (the query text, or `like #ID`).
    pub label: String,
    /// A hit's rank is its probability times this.
    pub weight: f32,
    /// The query vector.
    pub vector: Arc<Vec<f32>>,
}

/// Ranked, paginated object hits for query vectors over one index: the part of search that
/// needs only the index and the model's scoring rule (no text tower), so it is unit-tested on
/// temporary indexes of random vectors.
pub struct ConceptSearch {
    index: Arc<Index>,
    scoring: Scoring,
}

impl ConceptSearch {
    /// Searches `index` with `scoring` (the rule of the model the index was built with).
    pub fn new(index: Arc<Index>, scoring: Scoring) -> Self {
        ConceptSearch { index, scoring }
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The scoring rule.
    pub fn scoring(&self) -> &Scoring {
        &self.scoring
    }

    /// The page `params` asks for of the proposals that match any of `positives` (rank: the
    /// best concept's probability times its weight) at or above the threshold, none of
    /// `negatives` more than that, and the filters; `exclude` (a "more like this" source) is
    /// left out. The vector index gathers candidates with a growing breadth until the page is
    /// full or the index is exhausted, so filters and negatives never shorten a page that
    /// enough matches could fill; every score is the model's, recomputed from stored vectors.
    pub fn run(
        &self,
        positives: &[Concept],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
        exclude: Option<u64>,
    ) -> Result<SearchResult> {
        let threshold = params.threshold.unwrap_or(self.scoring.default_threshold());
        let min_logit = self.scoring.logit_of_probability(threshold);
        let want = params.offset + params.k + 1; // one more tells whether a next page exists
        let total = self.index.vector_count()?;
        let mut timings = Timings::default();
        let mut fetch = (want * 2).max(32);
        loop {
            let t = Instant::now();
            let mut candidates: Vec<u64> = Vec::new();
            let mut exhausted = true;
            for concept in positives {
                params.cancel.check()?;
                let ef = params.ef.unwrap_or(0).max(fetch);
                let found = self.index.search_vectors(&concept.vector, fetch, ef)?;
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
            // Sorting by time needs every match; by score, the best `want` are enough.
            let enough = params.sort == SortOrder::Score && hits.len() >= want;
            if enough || exhausted || fetch >= total {
                sort_hits(&mut hits, params.sort);
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
        positives: &[Concept],
        negatives: &[Arc<Vec<f32>>],
        record: &HitRecord,
        threshold: f32,
    ) -> Option<ObjectHit> {
        let v = &record.vector;
        let (mut best, mut best_rank, mut best_concept) = (f32::MIN, f32::MIN, "");
        for concept in positives {
            let prob = self.scoring.probability(dot(&concept.vector, v));
            if prob * concept.weight > best_rank {
                (best, best_rank, best_concept) = (prob, prob * concept.weight, &concept.label);
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
        Some(ObjectHit::new(
            record,
            best,
            best_concept.to_string(),
            best_rank,
        ))
    }
}

impl ObjectHit {
    /// The hit of proposal `record` matching `concept` with probability `score`, ranked `rank`.
    pub(crate) fn new(record: &HitRecord, score: f32, concept: String, rank: f32) -> Self {
        let p = &record.proposal;
        ObjectHit {
            proposal: record.id,
            image: p.image,
            score,
            concept,
            bbox: p.bbox,
            objectness: p.objectness,
            root: record.root,
            path: record.rel_path.display(),
            width: record.width,
            height: record.height,
            photo: record.photo.clone(),
            rank,
        }
    }
}

/// Search over one index with its model's text tower; shareable between threads.
pub struct SearchEngine {
    concepts: ConceptSearch,
    package: ModelPackage,
    text: TextTower,
    cache: TextCache,
    image_tower: Option<Arc<crate::image_query::LazyImageTower>>,
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
            concepts: ConceptSearch::new(index, Scoring::new(&package.manifest.scoring)),
            package,
            text,
            cache: TextCache::new(CACHE_CAPACITY),
            image_tower: None,
        })
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        self.concepts.index()
    }

    /// The model package.
    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The scoring rule.
    pub fn scoring(&self) -> &Scoring {
        self.concepts.scoring()
    }

    /// Query vector `[t̂ ; 1]` of a concept and whether it was cached; concurrent requests for
    /// the same uncached concept share one text-tower run.
    pub fn query_vector(&self, concept: &str) -> Result<(Arc<Vec<f32>>, bool)> {
        self.cache.get_or_compute(concept, || {
            let t = self.text.embed_queries(&[concept])?;
            let first = t.first().ok_or_else(|| {
                SpotterError::Internal(format!("the text tower returned nothing for {concept:?}"))
            })?;
            Ok(self.scoring().query_vector(first))
        })
    }

    /// Every proposal of each image at `paths` (absolute, as indexed; `None` for one the index
    /// does not hold), with the model's probability for each of `concepts`. The concepts are
    /// embedded as one batch on every call, so every caller (`spotter eval` on a closed index,
    /// or through `POST /api/proposals`) gets the same numbers for the same list.
    pub fn score_images(
        &self,
        paths: &[std::path::PathBuf],
        concepts: &[String],
        cancel: &Cancel,
    ) -> Result<Vec<Option<Vec<crate::eval::EvalProposal>>>> {
        if paths.len() > MAX_SCORED_IMAGES || concepts.len() > MAX_SCORED_CONCEPTS {
            return Err(SpotterError::Usage(format!(
                "at most {MAX_SCORED_IMAGES} images and {MAX_SCORED_CONCEPTS} concepts at once \
                 (got {} and {})",
                paths.len(),
                concepts.len()
            )));
        }
        if let Some(long) = concepts
            .iter()
            .find(|c| c.trim().is_empty() || c.len() > crate::query::MAX_QUERY_BYTES)
        {
            return Err(SpotterError::Usage(format!(
                "each concept must be 1 to {} bytes of text, not {:?}",
                crate::query::MAX_QUERY_BYTES,
                long.chars().take(40).collect::<String>()
            )));
        }
        let names: Vec<&str> = concepts.iter().map(String::as_str).collect();
        let queries: Vec<Vec<f32>> = if names.is_empty() {
            Vec::new()
        } else {
            self.text
                .embed_queries(&names)?
                .iter()
                .map(|t| self.scoring().query_vector(t))
                .collect()
        };
        let index = self.index();
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            cancel.check()?;
            let Some((id, _)) = index.image_at(path)? else {
                out.push(None);
                continue;
            };
            let proposals = index
                .proposals_of(id)?
                .into_iter()
                .map(|(_, p, v)| crate::eval::EvalProposal {
                    bbox: p.bbox,
                    objectness: p.objectness,
                    probs: queries
                        .iter()
                        .map(|q| self.scoring().score(q, &v))
                        .collect(),
                })
                .collect();
            out.push(Some(proposals));
        }
        Ok(out)
    }

    /// How the query-text cache has been used.
    pub fn text_cache_stats(&self) -> TextCacheStats {
        self.cache.stats()
    }

    /// The concepts (and whether all came from the cache) of `texts`.
    fn concepts_of(
        &self,
        texts: &[crate::query::Concept],
        params: &SearchParams,
        uncached: &mut bool,
    ) -> Result<Vec<Concept>> {
        let mut out = Vec::with_capacity(texts.len());
        for c in texts {
            params.cancel.check()?;
            let (vector, hit) = self.query_vector(&c.text)?;
            *uncached |= !hit;
            out.push(Concept {
                label: c.text.clone(),
                weight: c.weight,
                vector,
            });
        }
        Ok(out)
    }

    /// The query vectors of `query`'s negatives (and whether all came from the cache).
    fn negatives_of(
        &self,
        query: &Query,
        params: &SearchParams,
        uncached: &mut bool,
    ) -> Result<Vec<Arc<Vec<f32>>>> {
        let mut out = Vec::with_capacity(query.negatives.len());
        for n in &query.negatives {
            params.cancel.check()?;
            let (v, hit) = self.query_vector(n)?;
            *uncached |= !hit;
            out.push(v);
        }
        Ok(out)
    }

    /// At least `want` photos holding every term of an `&` query (fewer when no more exist).
    fn together(
        &self,
        query: &Query,
        params: &SearchParams,
        want: usize,
    ) -> Result<crate::together::TogetherPage> {
        let t0 = Instant::now();
        let mut uncached = false;
        let mut requirements = Vec::with_capacity(query.together.len());
        for term in &query.together {
            requirements.push(self.concepts_of(term, params, &mut uncached)?);
        }
        let negatives = self.negatives_of(query, params, &mut uncached)?;
        let text_ms = if uncached {
            t0.elapsed().as_secs_f64() * 1e3
        } else {
            0.0
        };
        let mut page = self
            .concepts
            .together(&requirements, &negatives, params, want)?;
        page.timings.text_ms = text_ms;
        Ok(page)
    }

    /// Runs a parsed text query. For an `&` query the hits are the matched boxes of each
    /// matching photo, photo by photo (best photo first, its boxes in the query's order).
    pub fn search(&self, query: &Query, params: &SearchParams) -> Result<SearchResult> {
        self.search_mixed(query, &[], params)
    }

    /// [`SearchEngine::search`] with `examples` (concepts of an example image) as further
    /// alternatives beside the query's own; the query may then have no text concept.
    pub fn search_mixed(
        &self,
        query: &Query,
        examples: &[Concept],
        params: &SearchParams,
    ) -> Result<SearchResult> {
        if !query.together.is_empty() && !examples.is_empty() {
            return Err(SpotterError::Usage(
                "an & query cannot be mixed with an example image".into(),
            ));
        }
        if !query.together.is_empty() {
            let per_photo = query.together.len();
            let want = match params.sort {
                SortOrder::Score => (params.offset + params.k + 1).div_ceil(per_photo),
                SortOrder::Time => usize::MAX,
            };
            let page = self.together(query, params, want)?;
            let threshold = params
                .threshold
                .unwrap_or(self.scoring().default_threshold());
            let boxes: Vec<ObjectHit> = page.photos.into_iter().flat_map(|p| p.boxes).collect();
            let more = boxes.len() > params.offset + params.k;
            return Ok(SearchResult {
                hits: boxes
                    .into_iter()
                    .skip(params.offset)
                    .take(params.k)
                    .collect(),
                next_offset: more.then_some(params.offset + params.k),
                threshold,
                timings: page.timings,
            });
        }
        let t0 = Instant::now();
        let mut uncached = false;
        let mut positives = self.concepts_of(&query.positives, params, &mut uncached)?;
        let negatives = self.negatives_of(query, params, &mut uncached)?;
        let text_ms = if uncached {
            t0.elapsed().as_secs_f64() * 1e3
        } else {
            0.0
        };
        positives.extend(examples.iter().cloned());
        if positives.is_empty() {
            return Err(SpotterError::Usage(
                "nothing to look for: give a text query or an example image".into(),
            ));
        }
        let mut result = self.concepts.run(&positives, &negatives, params, None)?;
        result.timings.text_ms = text_ms;
        Ok(result)
    }

    /// The concepts of an example image (see [`crate::image_query::example_concepts`]), with
    /// the image tower this engine was given.
    pub fn example_concepts(
        &self,
        bytes: &[u8],
        region: Option<[f32; 4]>,
        limits: spotter_model::DecodeLimits,
    ) -> Result<Vec<Concept>> {
        let tower = self.image_tower.as_ref().ok_or_else(|| {
            SpotterError::Usage("this search engine has no image tower for example images".into())
        })?;
        crate::image_query::example_concepts(&*tower.get()?, bytes, region, limits)
    }

    /// Gives the engine an image tower (loaded at first use) for example-image queries.
    pub fn with_image_tower(mut self, tower: Arc<crate::image_query::LazyImageTower>) -> Self {
        self.image_tower = Some(tower);
        self
    }

    /// "More like this": the proposal's own embedding direction is the query.
    pub fn similar(&self, proposal: u64, params: &SearchParams) -> Result<SearchResult> {
        let v = self
            .index()
            .proposal_vector(proposal)?
            .ok_or_else(|| SpotterError::NotFound(format!("no proposal {proposal}")))?;
        let concept = similar_concept(self.scoring(), proposal, &v)?;
        self.concepts.run(&[concept], &[], params, Some(proposal))
    }

    /// Runs a query and groups its hits by image: each image with all its matching boxes,
    /// ranked by its best hit; `params.k`/`offset` count images.
    pub fn search_images(&self, query: &Query, params: &SearchParams) -> Result<ImageResult> {
        self.search_images_mixed(query, &[], params)
    }

    /// [`SearchEngine::search_images`] with example-image concepts (see
    /// [`SearchEngine::search_mixed`]).
    pub fn search_images_mixed(
        &self,
        query: &Query,
        examples: &[Concept],
        params: &SearchParams,
    ) -> Result<ImageResult> {
        if !query.together.is_empty() && examples.is_empty() {
            let want = match params.sort {
                SortOrder::Score => params.offset + params.k + 1,
                SortOrder::Time => usize::MAX,
            };
            let page = self.together(query, params, want)?;
            let more = page.photos.len() > params.offset + params.k;
            return Ok(ImageResult {
                images: page
                    .photos
                    .into_iter()
                    .skip(params.offset)
                    .take(params.k)
                    .filter_map(crate::together::PhotoMatch::into_image_hit)
                    .collect(),
                next_offset: more.then_some(params.offset + params.k),
                threshold: params
                    .threshold
                    .unwrap_or(self.scoring().default_threshold()),
                timings: page.timings,
            });
        }
        let mut object_params = params.clone();
        object_params.offset = 0;
        object_params.k = ((params.offset + params.k + 1) * 4).max(64);
        loop {
            params.cancel.check()?;
            let result = self.search_mixed(query, examples, &object_params)?;
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
}

/// The "more like this" concept of proposal `id` with stored vector `stored`: its embedding's
/// direction as a text query vector (so scores are on the model's own scale).
fn similar_concept(scoring: &Scoring, id: u64, stored: &[f32]) -> Result<Concept> {
    if spotter_model::StoredVectorRef::new(stored).is_none() {
        return Err(SpotterError::from(spotter_indexer::IndexError::Corrupt {
            what: format!("proposal {id}"),
            message: "its stored vector holds no embedding".into(),
        }));
    }
    example_concept(scoring, format!("like #{id}"), stored)
}

/// The "more like this" concept of a stored vector (an indexed proposal's, or one the image
/// tower just made of an example image), labelled `label`.
pub(crate) fn example_concept(scoring: &Scoring, label: String, stored: &[f32]) -> Result<Concept> {
    let parts = spotter_model::StoredVectorRef::new(stored)
        .ok_or_else(|| SpotterError::Internal(format!("{label}: the vector holds no embedding")))?;
    let norm = parts.norm().max(1e-12);
    let t: Vec<f32> = parts.embedding().iter().map(|x| x / norm).collect();
    Ok(Concept {
        label,
        weight: 1.0,
        vector: Arc::new(scoring.query_vector(&t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotter_indexer::records::{ImageRecord, ImageStatus, IndexMeta, ProposalRecord};
    use spotter_indexer::{EmbeddedEngine, RelPath};
    use spotter_model::manifest::{Activation, LevelScoring, ScoringSpec};

    const D: usize = 32;
    /// The capture time of image 0 in the test indexes (2023-11-14, wall clock).
    const DAY0: i64 = 1_700_000_000;
    const LEVELS: [(f32, f32); 3] = [(9.0, -4.0), (7.0, -3.0), (5.0, -2.5)];

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn unit(&mut self) -> Vec<f32> {
            let mut v: Vec<f32> = (0..D).map(|_| self.next()).collect();
            let n = dot(&v, &v).sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        }
    }

    fn scoring() -> Scoring {
        Scoring::new(&ScoringSpec {
            activation: Activation::Sigmoid,
            levels: LEVELS
                .iter()
                .map(|&(scale, bias)| LevelScoring {
                    stride: None,
                    scale,
                    bias,
                })
                .collect(),
            default_threshold: 0.05,
        })
    }

    /// A quantised index of `images` random images (1–4 proposals each, three levels; every
    /// 50th image 4000 px wide, the others 640) in a temporary folder.
    fn index(images: u64) -> (tempfile::TempDir, ConceptSearch) {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = IndexMeta {
            model: "test".into(),
            manifest_hash: "0".repeat(64),
            vector_dim: D + 1,
            half_precision: false,
            hnsw_m: 16,
            hnsw_ef_construction: 100,
        };
        let index = Index::create(
            dir.path(),
            &meta,
            &[std::path::PathBuf::from("/archive")],
            EmbeddedEngine::Quantised,
        )
        .expect("create index");
        let scoring = scoring();
        let mut rng = Rng(7);
        for id in 1..=images {
            let n = 1 + (id % 4) as usize;
            let proposals: Vec<(ProposalRecord, Vec<f32>)> = (0..n)
                .map(|rank| {
                    let level = (id as usize + rank) % LEVELS.len();
                    let p = ProposalRecord {
                        image: 0,
                        bbox: [0.0, 0.0, 10.0, 10.0],
                        objectness: 0.5,
                        level: level as u32,
                        vector: spotter_indexer::records::StoredVector::InVectorIndex,
                    };
                    (p, scoring.stored_vector(&rng.unit(), level))
                })
                .collect();
            let record = ImageRecord {
                root: 0,
                rel_path: RelPath::from_relative(std::path::Path::new(&format!(
                    "{}/{id}.jpg",
                    if id % 3 == 0 { "cats" } else { "dogs" }
                ))),
                size: 1,
                mtime_ns: 0,
                hash: [0; 32],
                width: if id % 50 == 0 { 4000 } else { 640 },
                height: 480,
                status: ImageStatus::Indexed,
                proposals: n as u32,
                // One photo a day from `DAY0`; one in a hundred by a Canon, the rest by Nikon.
                photo: spotter_indexer::PhotoMetadata {
                    taken: Some(spotter_indexer::metadata::CaptureTime {
                        seconds: DAY0 + id as i64 * 86_400,
                        offset_minutes: None,
                        source: spotter_indexer::TimeSource::Exif,
                    }),
                    make: Some(if id % 100 == 7 { "Canon" } else { "NIKON" }.into()),
                    model: Some(
                        if id % 100 == 7 {
                            "Canon EOS 5D"
                        } else {
                            "D750"
                        }
                        .into(),
                    ),
                    gps: None,
                },
            };
            index
                .commit_image(id, &record, &proposals, None)
                .expect("commit");
        }
        index.persist().expect("persist");
        (dir, ConceptSearch::new(Arc::new(index), scoring))
    }

    fn concept(label: &str, weight: f32, t: Vec<f32>) -> Concept {
        let mut q = t;
        q.push(1.0);
        Concept {
            label: label.into(),
            weight,
            vector: Arc::new(q),
        }
    }

    fn params(k: usize, offset: usize) -> SearchParams {
        SearchParams {
            k,
            offset,
            threshold: None,
            ef: None,
            filters: Filters::default(),
            sort: SortOrder::Score,
            cancel: Cancel::new(),
        }
    }

    /// The exact answer by the rule the engine documents, over every stored proposal (with the
    /// vectors the index gives back, so that equal inputs give equal floats): (id, score,
    /// concept) best first.
    fn exact(
        search: &ConceptSearch,
        positives: &[Concept],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
    ) -> Vec<(u64, f32, String)> {
        let index = search.index();
        let threshold = params.threshold.unwrap_or(0.05);
        let mut all = Vec::new();
        for image in index.images() {
            let (id, _) = image.expect("image");
            let ids: Vec<u64> = index
                .proposals_of(id)
                .expect("proposals")
                .into_iter()
                .map(|(pid, _, _)| pid)
                .collect();
            for record in index.hit_records(&ids).expect("records") {
                if !params.filters.accepts(&record) {
                    continue;
                }
                let v = &record.vector;
                let (mut best, mut rank, mut label) = (f32::MIN, f32::MIN, String::new());
                for c in positives {
                    let p = search.scoring().probability(dot(&c.vector, v));
                    if p * c.weight > rank {
                        (best, rank, label) = (p, p * c.weight, c.label.clone());
                    }
                }
                let negated = negatives
                    .iter()
                    .any(|n| search.scoring().probability(dot(n, v)) > best);
                if best >= threshold && !negated {
                    all.push((record.id, best, rank, label));
                }
            }
        }
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        all.into_iter().map(|(id, s, _, l)| (id, s, l)).collect()
    }

    fn page_of(result: &SearchResult) -> Vec<(u64, f32, String)> {
        result
            .hits
            .iter()
            .map(|h| (h.proposal, h.score, h.concept.clone()))
            .collect()
    }

    /// Photos holding every requirement by the documented rule, by brute force over every
    /// choice of distinct boxes: (image, weakest rank) best first.
    fn exact_together(
        search: &ConceptSearch,
        requirements: &[Vec<Concept>],
        negatives: &[Arc<Vec<f32>>],
        params: &SearchParams,
    ) -> Vec<(u64, f32)> {
        let index = search.index();
        let threshold = params.threshold.unwrap_or(0.05);
        let sc = search.scoring();
        let mut photos = Vec::new();
        for image in index.images() {
            let (id, _) = image.expect("image");
            let ids: Vec<u64> = index
                .proposals_of(id)
                .expect("proposals")
                .into_iter()
                .map(|(pid, _, _)| pid)
                .collect();
            let boxes = index.hit_records(&ids).expect("records");
            if !boxes.first().is_some_and(|b| params.filters.accepts(b)) {
                continue;
            }
            let rank = |r: &[Concept], b: &HitRecord| -> Option<f32> {
                let (mut prob, mut rank) = (0.0f32, f32::MIN);
                for c in r {
                    let p = sc.probability(dot(&c.vector, &b.vector));
                    if p * c.weight > rank {
                        (prob, rank) = (p, p * c.weight);
                    }
                }
                let vetoed = negatives
                    .iter()
                    .any(|n| sc.probability(dot(n, &b.vector)) > prob);
                (prob >= threshold && !vetoed).then_some(rank)
            };
            // Every injective choice of boxes, as index tuples.
            fn choices(k: usize, n: usize, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
                if prefix.len() == k {
                    out.push(prefix.clone());
                    return;
                }
                for b in 0..n {
                    if !prefix.contains(&b) {
                        prefix.push(b);
                        choices(k, n, prefix, out);
                        prefix.pop();
                    }
                }
            }
            let mut all = Vec::new();
            choices(requirements.len(), boxes.len(), &mut Vec::new(), &mut all);
            let best = all
                .iter()
                .filter_map(|choice| {
                    choice
                        .iter()
                        .enumerate()
                        .map(|(r, &b)| rank(&requirements[r], &boxes[b]))
                        .try_fold(f32::INFINITY, |low, x| x.map(|x| low.min(x)))
                })
                .fold(None, |best: Option<f32>, x| {
                    Some(best.map_or(x, |b| b.max(x)))
                });
            if let Some(best) = best {
                photos.push((id, best));
            }
        }
        photos.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        photos
    }

    #[test]
    fn objects_together_match_an_exact_per_photo_check() {
        let (_dir, search) = index(800);
        let mut rng = Rng(23);
        for round in 0..4 {
            let (a, b, c) = (rng.unit(), rng.unit(), rng.unit());
            let mut requirements = vec![
                vec![concept("a", 1.0, a.clone()), concept("a2", 0.5, rng.unit())],
                vec![concept("b", 2.0, b)],
            ];
            if round == 3 {
                requirements.push(vec![concept("c", 1.0, c)]);
            }
            let negatives = if round == 1 {
                vec![Arc::new({
                    let mut n = rng.unit();
                    n.push(1.0);
                    n
                })]
            } else {
                Vec::new()
            };
            let mut p = params(5, 0);
            if round == 2 {
                p.filters.path_prefix = Some("cats/".into());
            }
            let want = exact_together(&search, &requirements, &negatives, &p);
            assert!(
                want.len() > 12,
                "round {round}: the test needs matches: {}",
                want.len()
            );
            // The first photos the engine calls final are the exact first ones.
            for n in [1, 5, 12] {
                let got = search.together(&requirements, &negatives, &p, n).unwrap();
                assert!(got.photos.len() >= n);
                let top: Vec<(u64, f32)> = got
                    .photos
                    .iter()
                    .take(n)
                    .map(|m| (m.image, m.rank))
                    .collect();
                assert_eq!(top, want[..n].to_vec(), "round {round}, {n} photos");
                for photo in &got.photos {
                    let images: Vec<u64> = photo.boxes.iter().map(|h| h.image).collect();
                    assert!(images.iter().all(|&i| i == photo.image));
                    let mut ids: Vec<u64> = photo.boxes.iter().map(|h| h.proposal).collect();
                    ids.dedup();
                    assert_eq!(ids.len(), requirements.len(), "one box per requirement");
                }
            }
            // Asking for everything returns exactly every matching photo.
            let all = search
                .together(&requirements, &negatives, &p, 10_000)
                .unwrap();
            assert!(all.complete);
            let every: Vec<(u64, f32)> = all.photos.iter().map(|m| (m.image, m.rank)).collect();
            assert_eq!(every, want, "round {round}");
        }
    }

    #[test]
    fn pages_walk_the_exact_ranking_to_its_end() {
        let (_dir, search) = index(400);
        let mut rng = Rng(11);
        for _ in 0..3 {
            let positives = [concept("a", 1.0, rng.unit())];
            let want = exact(&search, &positives, &[], &params(10, 0));
            assert!(
                want.len() > 40,
                "the test needs several pages: {}",
                want.len()
            );
            let mut got = Vec::new();
            let mut offset = Some(0);
            while let Some(at) = offset {
                let result = search.run(&positives, &[], &params(10, at), None).unwrap();
                assert!(result.hits.len() == 10 || result.next_offset.is_none());
                got.extend(page_of(&result));
                offset = result.next_offset;
            }
            assert_eq!(got, want);
        }
    }

    #[test]
    fn sorting_by_time_orders_every_match_newest_first() {
        let (_dir, search) = index(600);
        let mut rng = Rng(17);
        let positives = [concept("a", 1.0, rng.unit())];
        let mut p = params(7, 3);
        p.sort = SortOrder::Time;
        let by_score = exact(&search, &positives, &[], &p);
        // The exact order by time: image ids grow with capture time here.
        let mut want = by_score.clone();
        want.sort_by(|a, b| {
            let image = |id: u64| spotter_indexer::records::image_of_proposal(id);
            image(b.0).cmp(&image(a.0)).then(std::cmp::Ordering::Equal)
        });
        let got = search.run(&positives, &[], &p, None).unwrap();
        let images: Vec<u64> = got.hits.iter().map(|h| h.image).collect();
        let expected: Vec<u64> = want[3..10]
            .iter()
            .map(|(id, _, _)| spotter_indexer::records::image_of_proposal(*id))
            .collect();
        assert_eq!(images, expected);
        assert!(got.next_offset.is_some());
        // Within a photo, the better match first.
        for pair in got.hits.windows(2) {
            if pair[0].image == pair[1].image {
                assert!(pair[0].score >= pair[1].score);
            }
        }
    }

    #[test]
    fn photo_filters_apply_while_gathering_and_keep_pages_full() {
        let (_dir, search) = index(1000);
        let mut rng = Rng(5);
        let positives = [concept("a", 1.0, rng.unit())];
        for (name, filters) in [
            (
                "camera (1 %)",
                Filters {
                    camera: Some("eos 5d".into()),
                    ..Default::default()
                },
            ),
            (
                "a date range (3 %)",
                Filters {
                    taken_after: Some(DAY0 + 400 * 86_400),
                    taken_before: Some(DAY0 + 430 * 86_400),
                    ..Default::default()
                },
            ),
        ] {
            let mut p = params(5, 0);
            p.filters = filters;
            p.threshold = Some(0.0);
            let want = exact(&search, &positives, &[], &p);
            assert!(want.len() >= 5, "{name}: {}", want.len());
            let got = search.run(&positives, &[], &p, None).unwrap();
            assert_eq!(page_of(&got), want[..5].to_vec(), "{name}");
        }
    }

    #[test]
    fn a_filter_that_keeps_two_percent_still_fills_its_page() {
        let (_dir, search) = index(1000);
        let mut p = params(15, 0);
        p.filters.min_width = Some(3000);
        p.threshold = Some(0.001);
        let positives = [concept("a", 1.0, Rng(5).unit())];
        let want = exact(&search, &positives, &[], &p);
        assert!(want.len() > 15, "{}", want.len());
        let result = search.run(&positives, &[], &p, None).unwrap();
        assert_eq!(page_of(&result), want[..15].to_vec());
        assert_eq!(result.next_offset, Some(15));
        let mut p = params(15, 0);
        p.filters.path_prefix = Some("cats/".into());
        let want = exact(&search, &positives, &[], &p);
        let result = search.run(&positives, &[], &p, None).unwrap();
        assert_eq!(page_of(&result), want[..15].to_vec());
        assert!(result.hits.iter().all(|h| h.path.starts_with("cats/")));
    }

    #[test]
    fn weights_rank_and_negatives_drop_by_the_documented_rule() {
        let (_dir, search) = index(400);
        let mut rng = Rng(23);
        let positives = [
            concept("strong", 1.0, rng.unit()),
            concept("weak", 0.5, rng.unit()),
        ];
        let negatives = [Arc::new({
            let mut q = rng.unit();
            q.push(1.0);
            q
        })];
        let want = exact(&search, &positives, &negatives, &params(50, 0));
        let unfiltered = exact(&search, &positives, &[], &params(50, 0));
        assert!(
            want.len() < unfiltered.len(),
            "the negative removes some hits"
        );
        assert!(want.iter().any(|h| h.2 == "weak") && want.iter().any(|h| h.2 == "strong"));
        let result = search
            .run(&positives, &negatives, &params(50, 0), None)
            .unwrap();
        assert_eq!(page_of(&result), want[..50.min(want.len())].to_vec());
    }

    #[test]
    fn threshold_exclusion_and_cancellation() {
        let (_dir, search) = index(200);
        let positives = [concept("a", 1.0, Rng(3).unit())];
        let mut p = params(10, 0);
        p.threshold = Some(0.9999);
        let none = search.run(&positives, &[], &p, None).unwrap();
        assert!(none.hits.is_empty() && none.next_offset.is_none());
        let top = search.run(&positives, &[], &params(5, 0), None).unwrap();
        let first = top.hits[0].proposal;
        let without = search
            .run(&positives, &[], &params(5, 0), Some(first))
            .unwrap();
        assert_eq!(without.hits[0].proposal, top.hits[1].proposal);
        assert!(without.hits.iter().all(|h| h.proposal != first));
        let cancelled = params(5, 0);
        cancelled.cancel.cancel();
        assert!(matches!(
            search.run(&positives, &[], &cancelled, None),
            Err(SpotterError::Cancelled)
        ));
    }

    #[test]
    fn more_like_this_scores_its_source_at_the_level_maximum() {
        let scoring = scoring();
        let e = Rng(9).unit();
        for (level, &(scale, bias)) in LEVELS.iter().enumerate() {
            let stored = scoring.stored_vector(&e, level);
            let c = similar_concept(&scoring, 42, &stored).unwrap();
            assert_eq!(c.label, "like #42");
            let logit = dot(&c.vector, &stored);
            assert!((logit - (scale + bias)).abs() < 1e-4, "{logit}");
        }
        assert!(similar_concept(&scoring, 1, &[0.5]).is_err());
    }
}
