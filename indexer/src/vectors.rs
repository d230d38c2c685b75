//! The vector index behind a small interface, so a distributed engine can stand in for the
//! embedded one.
//!
//! The embedded implementation answers maximum-inner-product queries (the model's logit
//! `<q, v>`, see the model contract) with HNSW graphs (hnsw_rs) over *directions*, exactly up to
//! the graphs' recall. A stored vector `v = [s·e ; b]` is split into its direction
//! `û = v[..D] / |v[..D]|`, its norm `n` and its bias `b`, so `<q, v> = n·|t|·cos(û, t̂) + b·q_D`.
//! Vectors are grouped by bias (one group per scoring level) and by norm band (a factor √2
//! wide); each group has its own cosine graph. A query walks the groups from the highest
//! possible logit down and, inside a group, widens its candidate list until no unseen vector can
//! beat the k-th best logit: an unseen vector's cosine is at most the frontier `c` (the lowest
//! cosine returned), so its logit is at most `max(n_max·c, n_min·c)·|t| + b·q_D`.
//! (The textbook reduction to L2, `[v ; sqrt(M² − |v|²)]`, is exact too, but HNSW recall on it
//! collapsed to 0.1–0.5 for WeDetect-like norms in `examples/bench_vectors.rs`.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};

use spotter_model::{QueryVectorRef, StoredVectorRef};

use crate::error::{IndexError, Result};

/// A search result: the proposal id and the exact inner product `<q, v>` (the model's logit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// Proposal id.
    pub id: u64,
    /// Exact inner product of the query and the stored vector.
    pub logit: f32,
}

/// What a remote engine keeps beside each vector, so that any machine can show the hit without
/// the indexing machine's database.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HitPayload {
    /// Image id.
    pub image: u64,
    /// Archive root folder, as the indexing machine saw it.
    pub root: String,
    /// Path relative to the root, with `/` separators (a JSON string when it is UTF-8, as in
    /// earlier versions; the array of its bytes otherwise).
    pub path: crate::relpath::RelPath,
    /// Displayed image width.
    pub width: u32,
    /// Displayed image height.
    pub height: u32,
    /// `x1, y1, x2, y2` in displayed pixels.
    pub bbox: [f32; 4],
    /// Objectness probability.
    pub objectness: f32,
    /// Scoring level.
    pub level: u32,
    /// The image's capture time, camera and GPS position (absent from payloads written before
    /// photo metadata).
    #[serde(default)]
    pub photo: crate::metadata::PhotoInfo,
}

/// One vector to store.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorEntry {
    /// Proposal id.
    pub id: u64,
    /// The stored vector (`[scale_l · e ; bias_l]`).
    pub vector: Vec<f32>,
    /// The hit's payload, for engines that keep one (see [`PayloadStore`]).
    pub payload: Option<HitPayload>,
}

impl VectorEntry {
    /// An entry without payload (for embedded engines).
    pub fn bare(id: u64, vector: Vec<f32>) -> Self {
        VectorEntry {
            id,
            vector,
            payload: None,
        }
    }
}

/// A stored vector with its payload, read back from a remote engine.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteHit {
    /// Proposal id.
    pub id: u64,
    /// The stored vector.
    pub vector: Vec<f32>,
    /// Its payload.
    pub payload: HitPayload,
}

/// What Spotter needs from a vector index.
pub trait VectorIndex: Send + Sync {
    /// Adds vectors (ids already present are ignored or replaced, so replays are harmless).
    fn insert(&self, items: &[VectorEntry]) -> Result<()>;
    /// Marks ids as deleted; they are never returned again.
    fn remove(&self, ids: &[u64]) -> Result<()>;
    /// The `k` live vectors of largest inner product with `query`, best first; `ef` is the
    /// search breadth (recall/speed trade-off).
    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>>;
    /// Live vectors. An error (an unreachable server, a poisoned lock) is returned, never
    /// reported as 0: callers use the count as a loop bound and in statistics.
    fn len(&self) -> Result<usize>;
    /// True when no live vector is stored.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Deleted vectors still taking space (embedded engines that cannot delete).
    fn tombstones(&self) -> Result<usize>;
    /// Every id the index holds, live or deleted (for reconciliation with the store).
    fn ids(&self) -> Result<HashSet<u64>>;
    /// Makes the current state durable.
    fn persist(&self) -> Result<()>;
    /// Drops deleted vectors for good (engines that keep tombstones).
    fn compact(&self) -> Result<()> {
        Ok(())
    }
    /// Human-readable description of the engine and its parameters.
    fn describe(&self) -> String;
    /// Waits until background index builds are done (engines that build them after a
    /// `persist`); searches before that are correct but may be slow.
    fn wait_until_indexed(&self, _timeout: std::time::Duration) -> Result<()> {
        Ok(())
    }
}

/// What engines shared between machines keep beside each vector: a [`HitPayload`], so that any
/// machine can show a hit without the indexing machine's database. Separate from
/// [`VectorIndex`], which every engine implements; `Index` holds an engine's payload side when
/// it has one.
pub trait PayloadStore: Send + Sync {
    /// Replaces the payloads of stored ids (a moved file).
    fn update_payloads(&self, items: &[VectorEntry]) -> Result<()>;
    /// Vectors and payloads of `ids` (those found).
    fn fetch(&self, ids: &[u64]) -> Result<Vec<RemoteHit>>;
    /// The payload of any one proposal of `image`.
    fn image_payload(&self, image: u64) -> Result<Option<HitPayload>>;
}

/// L2 distance between unit directions, ignoring the last component (which holds the norm).
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectionL2;

impl Distance<f32> for DirectionL2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len()).saturating_sub(1);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { squared_l2_avx2(&a[..n], &b[..n]) }.sqrt();
            }
        }
        squared_l2(&a[..n], &b[..n]).sqrt()
    }
}

/// Squared L2 distance, written so the compiler vectorises it (8 independent accumulators).
#[inline(always)]
fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            let d = ca[i] - cb[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += (x - y) * (x - y);
    }
    sum
}

/// The same loop compiled for AVX2 + FMA, chosen at run time (the release build targets plain
/// x86-64, so without this the graphs' distance runs on SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn squared_l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    squared_l2(a, b)
}

/// HNSW construction parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// Max connections per node (M).
    pub m: usize,
    /// Candidate list size during construction.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
        }
    }
}

const MAX_LAYER: usize = 16;
/// Groups of at most this many vectors are searched by an exact scan instead of their graph.
const EXACT_SCAN_MAX_POINTS: usize = 2048;
const GROUPS_FILE: &str = "groups.json";

type Graph = Hnsw<'static, f32, DirectionL2>;
/// Bias bits and norm band.
type GroupKey = (u32, i32);
/// `[û ; n]`, id, norm.
type NewPoint = (Vec<f32>, usize, f32);

/// Vectors sharing a bias and a norm band, with their cosine graph.
struct Group {
    bias: f32,
    band: i32,
    min_norm: f32,
    max_norm: f32,
    count: usize,
    graph: Graph,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GroupMeta {
    bias: f32,
    band: i32,
    min_norm: f32,
    max_norm: f32,
    count: usize,
}

struct State {
    groups: Vec<Group>,
    ids: HashSet<u64>,
    deleted: HashSet<u64>,
}

/// The embedded vector index, persisted in a folder beside the sled database.
pub struct HnswVectors {
    dir: PathBuf,
    dim: usize,
    params: HnswParams,
    state: RwLock<State>,
}

/// Bands per doubling of the norm: narrower bands give tighter bounds (fewer candidates) but
/// more graphs.
const BANDS_PER_OCTAVE: f32 = 2.0;

/// `best` and `more` in decreasing logit order (ties by id), each id once.
fn merged_best(best: &[Neighbour], more: impl IntoIterator<Item = Neighbour>) -> Vec<Neighbour> {
    let mut merged = best.to_vec();
    merged.extend(more);
    merged.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
    merged.dedup_by_key(|n| n.id);
    merged
}

/// Norm band of a vector (also the Milvus engine's partitioning).
pub(crate) fn band_of(n: f32) -> i32 {
    (n.max(1e-20).log2() * BANDS_PER_OCTAVE).floor() as i32
}

/// `[û ; n]` and the bias of a stored vector.
fn split(v: StoredVectorRef<'_>) -> (Vec<f32>, f32, f32) {
    let x = v.embedding();
    let n = v.norm();
    let mut point: Vec<f32> = if n > 0.0 {
        x.iter().map(|x| x / n).collect()
    } else {
        vec![0.0; x.len()]
    };
    point.push(n);
    (point, n, v.bias())
}

fn new_graph(params: HnswParams, capacity: usize) -> Graph {
    Hnsw::new(
        params.m,
        capacity.max(10_000),
        MAX_LAYER,
        params.ef_construction,
        DirectionL2,
    )
}

fn insert_points(graph: &Graph, points: &[(Vec<f32>, usize)]) {
    let refs: Vec<(&Vec<f32>, usize)> = points.iter().map(|(v, id)| (v, *id)).collect();
    graph.parallel_insert(&refs);
}

impl HnswVectors {
    /// Opens the index stored in `dir` (or an empty one). `dim` is the stored-vector length.
    /// A missing or unreadable dump yields an empty index; the caller re-inserts from the store.
    pub fn open(dir: &Path, dim: usize, params: HnswParams) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let state = Self::load(&dir.join("hnsw"), dim).unwrap_or_else(|| State {
            groups: Vec::new(),
            ids: HashSet::new(),
            deleted: HashSet::new(),
        });
        Ok(HnswVectors {
            dir: dir.to_path_buf(),
            dim,
            params,
            state: RwLock::new(state),
        })
    }

    fn load(graph_dir: &Path, dim: usize) -> Option<State> {
        let text = std::fs::read_to_string(graph_dir.join(GROUPS_FILE)).ok()?;
        let saved: serde_json::Value = serde_json::from_str(&text).ok()?;
        if saved["dim"].as_u64()? as usize != dim {
            tracing::warn!("vector index dump has another dimension; it will be rebuilt");
            return None;
        }
        let metas: Vec<GroupMeta> = serde_json::from_value(saved["groups"].clone()).ok()?;
        let deleted: HashSet<u64> = saved["deleted"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        let mut groups = Vec::with_capacity(metas.len());
        let mut ids = HashSet::new();
        for (i, meta) in metas.into_iter().enumerate() {
            // A loaded graph borrows its loader for its whole life: one small loader per group.
            let io: &'static mut HnswIo =
                Box::leak(Box::new(HnswIo::new(graph_dir, &format!("g{i}"))));
            let mut graph: Graph = match io.load_hnsw::<f32, DirectionL2>() {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(dir = %graph_dir.display(), error = %e, "vector index dump unreadable; it will be rebuilt from the database");
                    return None;
                }
            };
            graph.set_searching_mode(true);
            ids.extend(
                graph
                    .get_point_indexation()
                    .into_iter()
                    .map(|p| p.get_origin_id() as u64),
            );
            groups.push(Group {
                bias: meta.bias,
                band: meta.band,
                min_norm: meta.min_norm,
                max_norm: meta.max_norm,
                count: meta.count,
                graph,
            });
        }
        Some(State {
            groups,
            ids,
            deleted,
        })
    }

    fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>> {
        self.state
            .write()
            .map_err(|_| IndexError::Vectors("lock poisoned".into()))
    }

    fn read_lock(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        self.state
            .read()
            .map_err(|_| IndexError::Vectors("lock poisoned".into()))
    }

    /// Drops deleted vectors by rebuilding the graphs (what `spotter compact` runs).
    fn rebuild_without_deleted(&self) -> Result<()> {
        let mut state = self.write_lock()?;
        let deleted = std::mem::take(&mut state.deleted);
        for group in &mut state.groups {
            let live: Vec<(Vec<f32>, usize)> = group
                .graph
                .get_point_indexation()
                .into_iter()
                .filter(|p| !deleted.contains(&(p.get_origin_id() as u64)))
                .map(|p| (p.get_v().to_vec(), p.get_origin_id()))
                .collect();
            let graph = new_graph(self.params, live.len());
            insert_points(&graph, &live);
            let mut graph = graph;
            graph.set_searching_mode(true);
            group.count = live.len();
            group.graph = graph;
        }
        state.groups.retain(|g| g.count > 0);
        state.ids.retain(|id| !deleted.contains(id));
        Ok(())
    }

    /// Number of groups (bias × norm band), for stats.
    pub fn groups(&self) -> Result<usize> {
        Ok(self.read_lock()?.groups.len())
    }
}

impl VectorIndex for HnswVectors {
    fn insert(&self, items: &[VectorEntry]) -> Result<()> {
        let mut state = self.write_lock()?;
        let fresh: Vec<(u64, &Vec<f32>)> = items
            .iter()
            .filter(|e| !state.ids.contains(&e.id))
            .map(|e| (e.id, &e.vector))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        if let Some((id, v)) = fresh.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(IndexError::Vectors(format!(
                "vector {id} has {} values, the index holds {}",
                v.len(),
                self.dim
            )));
        }
        let mut by_group: HashMap<GroupKey, Vec<NewPoint>> = HashMap::new();
        for &(id, v) in &fresh {
            let stored = StoredVectorRef::new(v).ok_or_else(|| {
                IndexError::Vectors(format!("vector {id} is too short to hold a bias"))
            })?;
            let (point, n, bias) = split(stored);
            by_group
                .entry((bias.to_bits(), band_of(n)))
                .or_default()
                .push((point, id as usize, n));
        }
        for ((bias_bits, band), points) in by_group {
            let bias = f32::from_bits(bias_bits);
            let index = match state
                .groups
                .iter()
                .position(|g| g.bias.to_bits() == bias_bits && g.band == band)
            {
                Some(i) => i,
                None => {
                    state.groups.push(Group {
                        bias,
                        band,
                        min_norm: f32::MAX,
                        max_norm: 0.0,
                        count: 0,
                        graph: new_graph(self.params, points.len()),
                    });
                    state.groups.len() - 1
                }
            };
            let group = &mut state.groups[index];
            for (_, _, n) in &points {
                group.min_norm = group.min_norm.min(*n);
                group.max_norm = group.max_norm.max(*n);
            }
            group.count += points.len();
            let plain: Vec<(Vec<f32>, usize)> =
                points.into_iter().map(|(p, id, _)| (p, id)).collect();
            group.graph.set_searching_mode(false);
            insert_points(&group.graph, &plain);
            group.graph.set_searching_mode(true);
        }
        for (id, _) in fresh {
            state.ids.insert(id);
        }
        Ok(())
    }

    fn remove(&self, ids: &[u64]) -> Result<()> {
        let mut state = self.write_lock()?;
        for id in ids {
            if state.ids.contains(id) {
                state.deleted.insert(*id);
            }
        }
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>> {
        if query.len() != self.dim {
            return Err(IndexError::Vectors(format!(
                "query has {} values, the index holds {}",
                query.len(),
                self.dim
            )));
        }
        let state = self.read_lock()?;
        if state.ids.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let d = self.dim - 1;
        let parts = QueryVectorRef::new(query)
            .ok_or_else(|| IndexError::Vectors("a query needs at least 2 values".into()))?;
        let q_norm = parts.norm();
        let q_bias = parts.bias_weight();
        let mut direction: Vec<f32> = parts
            .text()
            .iter()
            .map(|x| x / q_norm.max(f32::MIN_POSITIVE))
            .collect();
        direction.push(0.0);
        let deleted = &state.deleted;
        let filter = |id: &usize| !deleted.contains(&(*id as u64));
        // Groups in decreasing order of the best logit they could hold.
        let ceiling = |g: &Group| g.max_norm * q_norm + g.bias * q_bias;
        let mut order: Vec<&Group> = state.groups.iter().collect();
        order.sort_by(|a, b| ceiling(b).total_cmp(&ceiling(a)));

        // Cosine of a stored point `[û ; n]` with the query direction, and its exact logit.
        let cosine =
            |x: &[f32]| -> f32 { x[..d].iter().zip(&direction[..d]).map(|(a, b)| a * b).sum() };
        let logit = |g: &Group, x: &[f32], cos: f32| x[d] * q_norm * cos + g.bias * q_bias;
        let mut best: Vec<Neighbour> = Vec::new();
        let kth = |best: &Vec<Neighbour>| {
            if best.len() >= k {
                best[k - 1].logit
            } else {
                f32::MIN
            }
        };
        for group in order {
            if ceiling(group) < kth(&best) {
                break;
            }
            if group.count <= EXACT_SCAN_MAX_POINTS {
                // A small group is scanned exactly: as cheap as a graph walk, and immune to
                // points a small graph cannot reach (exact duplicates, heuristic pruning).
                let scanned = group
                    .graph
                    .get_point_indexation()
                    .into_iter()
                    .filter(|p| !deleted.contains(&(p.get_origin_id() as u64)))
                    .map(|p| {
                        let x = p.get_v();
                        Neighbour {
                            id: p.get_origin_id() as u64,
                            logit: logit(group, x, cosine(x)),
                        }
                    });
                let mut merged = merged_best(&best, scanned);
                merged.truncate(k);
                best = merged;
                continue;
            }
            let mut fetch = k.max(16).min(group.count.max(1));
            loop {
                let ef_now = ef.max(fetch);
                let found = if deleted.is_empty() {
                    group.graph.search(&direction, fetch, ef_now)
                } else {
                    group
                        .graph
                        .search_filter(&direction, fetch, ef_now, Some(&filter))
                };
                let points = group.graph.get_point_indexation();
                let mut frontier = 1.0f32;
                let mut candidates = Vec::with_capacity(found.len());
                for n in &found {
                    let Some(x) = points.get_point_data(&n.p_id) else {
                        continue;
                    };
                    let x: &[f32] = &x;
                    let cos = cosine(x);
                    frontier = frontier.min(cos);
                    candidates.push(Neighbour {
                        id: n.d_id as u64,
                        logit: logit(group, x, cos),
                    });
                }
                let exhausted = found.len() < fetch || fetch >= group.count;
                let mut merged = merged_best(&best, candidates);
                let unseen_bound = (group.max_norm * frontier).max(group.min_norm * frontier)
                    * q_norm
                    + group.bias * q_bias
                    - 1e-5 * group.max_norm * q_norm; // float noise of equal norms must not widen the search
                if exhausted || (merged.len() >= k && kth(&merged) >= unseen_bound) {
                    merged.truncate(k);
                    best = merged;
                    break;
                }
                fetch = (fetch * 4).min(group.count);
            }
        }
        best.truncate(k);
        Ok(best)
    }

    fn len(&self) -> Result<usize> {
        let state = self.read_lock()?;
        Ok(state.ids.len() - state.deleted.len())
    }

    fn tombstones(&self) -> Result<usize> {
        Ok(self.read_lock()?.deleted.len())
    }

    fn ids(&self) -> Result<HashSet<u64>> {
        Ok(self.read_lock()?.ids.clone())
    }

    fn compact(&self) -> Result<()> {
        self.rebuild_without_deleted()
    }

    fn persist(&self) -> Result<()> {
        let state = self.read_lock()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IndexError::Io { path, source }
        };
        let fresh = self.dir.join("hnsw.new");
        let live = self.dir.join("hnsw");
        let old = self.dir.join("hnsw.old");
        let _ = std::fs::remove_dir_all(&fresh);
        std::fs::create_dir_all(&fresh).map_err(io(&fresh))?;
        let mut metas = Vec::new();
        for (i, group) in state.groups.iter().enumerate() {
            group
                .graph
                .file_dump(&fresh, &format!("g{i}"))
                .map_err(|e| IndexError::Vectors(format!("dump to {}: {e}", fresh.display())))?;
            metas.push(GroupMeta {
                bias: group.bias,
                band: group.band,
                min_norm: group.min_norm,
                max_norm: group.max_norm,
                count: group.count,
            });
        }
        let mut deleted: Vec<u64> = state.deleted.iter().copied().collect();
        deleted.sort_unstable();
        let meta = serde_json::json!({"dim": self.dim, "groups": metas, "deleted": deleted});
        std::fs::write(fresh.join(GROUPS_FILE), meta.to_string()).map_err(io(&fresh))?;
        // Swap folders: a crash leaves either the old dump, the new one, or none (then the
        // index is rebuilt from the database at the next open).
        let _ = std::fs::remove_dir_all(&old);
        if live.exists() {
            std::fs::rename(&live, &old).map_err(io(&live))?;
        }
        std::fs::rename(&fresh, &live).map_err(io(&fresh))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "embedded HNSW (hnsw_rs, M={}, ef_construction={}, {} cosine graph(s) by bias and norm band, exact inner-product re-ranking)",
            self.params.m,
            self.params.ef_construction,
            self.groups()
                .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    fn entries(items: &[(u64, Vec<f32>)]) -> Vec<VectorEntry> {
        items
            .iter()
            .map(|(id, v)| VectorEntry::bare(*id, v.clone()))
            .collect()
    }

    fn exact_top(items: &[(u64, Vec<f32>)], q: &[f32], k: usize) -> Vec<u64> {
        let mut scored: Vec<(f32, u64)> = items
            .iter()
            .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, id)| id).collect()
    }

    #[test]
    fn answers_inner_product_queries_with_varied_norms_and_survives_reload() {
        let dir = std::env::temp_dir().join(format!("spotter-hnsw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dim = 17;
        let mut seed = 42;
        // Norms vary by 10×, as WeDetect's un-normalised embeddings do: cosine or L2 search
        // would rank these differently from inner product.
        // 20 000 vectors: norm bands larger than EXACT_SCAN_MAX_POINTS, so the graphs are searched.
        let items: Vec<(u64, Vec<f32>)> = (0..20_000u64)
            .map(|i| {
                let scale = 1.0 + (i % 10) as f32;
                (
                    i * 3 + 1,
                    (0..dim).map(|_| rng(&mut seed) * scale).collect(),
                )
            })
            .collect();
        let index = HnswVectors::open(&dir, dim, HnswParams::default()).unwrap();
        assert!(items.len() / 8 > EXACT_SCAN_MAX_POINTS);
        index.insert(&entries(&items[..500])).unwrap();
        index.insert(&entries(&items[500..])).unwrap(); // larger norms land in new norm bands
        index.insert(&entries(&items[..10])).unwrap(); // replays are ignored
        assert_eq!(index.len().unwrap(), 20_000);
        let queries: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dim).map(|_| rng(&mut seed)).collect())
            .collect();
        let mut hits = 0;
        for q in &queries {
            let got: Vec<u64> = index
                .search(q, 10, 100)
                .unwrap()
                .iter()
                .map(|n| n.id)
                .collect();
            let want = exact_top(&items, q, 10);
            hits += got.iter().filter(|id| want.contains(id)).count();
        }
        assert!(hits >= 190, "recall@10 = {}", hits as f32 / 200.0);

        let top = index.search(&queries[0], 1, 100).unwrap()[0];
        index.remove(&[top.id]).unwrap();
        assert!(index
            .search(&queries[0], 10, 100)
            .unwrap()
            .iter()
            .all(|n| n.id != top.id));
        index.persist().unwrap();
        drop(index);

        let reopened = HnswVectors::open(&dir, dim, HnswParams::default()).unwrap();
        assert_eq!(reopened.len().unwrap(), 19_999);
        assert_eq!(reopened.tombstones().unwrap(), 1);
        assert!(reopened
            .search(&queries[0], 10, 100)
            .unwrap()
            .iter()
            .all(|n| n.id != top.id));
        reopened.compact().unwrap();
        assert_eq!(
            (reopened.len().unwrap(), reopened.tombstones().unwrap()),
            (19_999, 0)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn exact_top_k_with_per_level_scale_and_bias_like_wedetect() {
        let dir = std::env::temp_dir().join(format!("spotter-hnsw-levels-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = 24;
        let mut seed = 7;
        let levels = [(0.0609f32, -12.315f32), (0.1997, -10.934), (0.2794, -9.574)];
        let items: Vec<(u64, Vec<f32>)> = (0..3000u64)
            .map(|i| {
                let (s, b) = levels[(i % 3) as usize];
                let n = 20.0 + 30.0 * rng(&mut seed).abs() * 2.0;
                let mut e: Vec<f32> = (0..d).map(|_| rng(&mut seed)).collect();
                let en = e.iter().map(|x| x * x).sum::<f32>().sqrt();
                e.iter_mut().for_each(|x| *x *= s * n / en);
                e.push(b);
                (i, e)
            })
            .collect();
        let index = HnswVectors::open(&dir, d + 1, HnswParams::default()).unwrap();
        index.insert(&entries(&items)).unwrap();
        let mut hits = 0;
        for _ in 0..20 {
            let mut q: Vec<f32> = (0..d).map(|_| rng(&mut seed)).collect();
            let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            q.iter_mut().for_each(|x| *x /= qn);
            q.push(1.0);
            let got = index.search(&q, 10, 64).unwrap();
            let want = exact_top(&items, &q, 10);
            hits += got.iter().filter(|n| want.contains(&n.id)).count();
            // Logits are exact.
            for n in &got {
                let v = &items[n.id as usize].1;
                let exact: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
                assert!((n.logit - exact).abs() < 1e-3, "{} vs {exact}", n.logit);
            }
        }
        assert!(hits >= 196, "recall@10 = {}", hits as f32 / 200.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
