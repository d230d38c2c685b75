//! The vector index behind a small interface, so a distributed engine can stand in for the
//! embedded one. The embedded implementation is an HNSW graph (hnsw_rs) answering
//! maximum-inner-product queries exactly through the standard reduction to L2:
//! stored `x = [v ; sqrt(M² − |v|²)]`, query `y = [q ; 0]`, so `|y − x|² = |q|² + M² − 2<q, v>`
//! and the L2-nearest stored vectors are the ones of largest inner product (the model's logit).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};

use crate::error::{IndexError, Result};

/// A search result: the proposal id and the exact inner product `<q, v>` (the model's logit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// Proposal id.
    pub id: u64,
    /// Exact inner product of the query and the stored vector.
    pub logit: f32,
}

/// What Spotter needs from a vector index.
pub trait VectorIndex: Send + Sync {
    /// Adds vectors (ids already present are ignored, so replays are harmless).
    fn insert(&self, items: &[(u64, Vec<f32>)]) -> Result<()>;
    /// Marks ids as deleted; they are never returned again.
    fn remove(&self, ids: &[u64]) -> Result<()>;
    /// The `k` live vectors of largest inner product with `query`, best first; `ef` is the
    /// search breadth (recall/speed trade-off).
    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>>;
    /// Live vectors.
    fn len(&self) -> usize;
    /// True when no live vector is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Deleted vectors still taking space (embedded engines that cannot delete).
    fn tombstones(&self) -> usize;
    /// Every id the index holds, live or deleted (for reconciliation with the store).
    fn ids(&self) -> HashSet<u64>;
    /// Makes the current state durable.
    fn persist(&self) -> Result<()>;
    /// Human-readable description of the engine and its parameters.
    fn describe(&self) -> String;
}

/// L2 distance (auto-vectorised loop) used in the augmented MIPS space.
#[derive(Debug, Default, Clone, Copy)]
pub struct MipsL2;

impl Distance<f32> for MipsL2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
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
        sum.sqrt()
    }
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
const BASENAME: &str = "vectors";
const BOUND_FILE: &str = "bound.json";
/// Headroom of the norm bound over the largest norm seen, so later vectors rarely force a rebuild.
const BOUND_HEADROOM: f32 = 1.25;

struct State {
    hnsw: Hnsw<'static, f32, MipsL2>,
    /// The norm bound M of the reduction (0 while empty).
    bound: f32,
    ids: HashSet<u64>,
    deleted: HashSet<u64>,
}

/// The embedded HNSW vector index, persisted in a folder beside the sled database.
pub struct HnswVectors {
    dir: PathBuf,
    dim: usize,
    params: HnswParams,
    state: RwLock<State>,
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn augment(v: &[f32], bound: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(v.len() + 1);
    x.extend_from_slice(v);
    x.push(
        (bound * bound - v.iter().map(|a| a * a).sum::<f32>())
            .max(0.0)
            .sqrt(),
    );
    x
}

fn new_graph(params: HnswParams, capacity: usize) -> Hnsw<'static, f32, MipsL2> {
    Hnsw::new(
        params.m,
        capacity.max(10_000),
        MAX_LAYER,
        params.ef_construction,
        MipsL2,
    )
}

impl HnswVectors {
    /// Opens the index stored in `dir` (or an empty one). `dim` is the stored-vector length.
    /// A missing or unreadable dump yields an empty index; the caller re-inserts from the store.
    pub fn open(dir: &Path, dim: usize, params: HnswParams) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let graph_dir = dir.join("hnsw");
        let loaded = Self::load(&graph_dir, dim);
        let state = match loaded {
            Some(state) => state,
            None => State {
                hnsw: new_graph(params, 0),
                bound: 0.0,
                ids: HashSet::new(),
                deleted: HashSet::new(),
            },
        };
        Ok(HnswVectors {
            dir: dir.to_path_buf(),
            dim,
            params,
            state: RwLock::new(state),
        })
    }

    fn load(graph_dir: &Path, dim: usize) -> Option<State> {
        let bound_text = std::fs::read_to_string(graph_dir.join(BOUND_FILE)).ok()?;
        let saved: serde_json::Value = serde_json::from_str(&bound_text).ok()?;
        let bound = saved["bound"].as_f64()? as f32;
        let deleted: HashSet<u64> = saved["deleted"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect();
        // The loaded graph borrows its loader for its whole life; one small loader per open.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(graph_dir, BASENAME)));
        let mut hnsw: Hnsw<'static, f32, MipsL2> = match io.load_hnsw::<f32, MipsL2>() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(dir = %graph_dir.display(), error = %e, "vector index dump unreadable; it will be rebuilt from the database");
                return None;
            }
        };
        let ids: HashSet<u64> = hnsw
            .get_point_indexation()
            .into_iter()
            .map(|p| p.get_origin_id() as u64)
            .collect();
        if let Some(p) = hnsw.get_point_indexation().into_iter().next() {
            if p.get_v().len() != dim + 1 {
                tracing::warn!("vector index dump has another dimension; rebuilding");
                return None;
            }
        }
        hnsw.set_searching_mode(true);
        Some(State {
            hnsw,
            bound,
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

    /// Rebuilds the graph with a larger bound, keeping every live vector.
    fn rebuild(state: &mut State, params: HnswParams, new_bound: f32) {
        let live: Vec<(usize, Vec<f32>)> = state
            .hnsw
            .get_point_indexation()
            .into_iter()
            .filter(|p| !state.deleted.contains(&(p.get_origin_id() as u64)))
            .map(|p| {
                let v = p.get_v();
                (p.get_origin_id(), v[..v.len() - 1].to_vec())
            })
            .collect();
        tracing::info!(
            vectors = live.len(),
            bound = new_bound,
            "rebuilding the vector index for a larger norm bound"
        );
        let hnsw = new_graph(params, live.len());
        let augmented: Vec<(Vec<f32>, usize)> = live
            .iter()
            .map(|(id, v)| (augment(v, new_bound), *id))
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = augmented.iter().map(|(v, id)| (v, *id)).collect();
        hnsw.parallel_insert(&refs);
        state.ids = live.iter().map(|(id, _)| *id as u64).collect();
        state.deleted.clear();
        state.hnsw = hnsw;
        state.bound = new_bound;
    }

    /// Drops deleted vectors by rebuilding the graph (what `spotter compact` runs).
    pub fn compact(&self) -> Result<()> {
        let mut state = self.write_lock()?;
        let bound = state.bound;
        Self::rebuild(&mut state, self.params, bound);
        state.hnsw.set_searching_mode(true);
        Ok(())
    }
}

impl VectorIndex for HnswVectors {
    fn insert(&self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        let mut state = self.write_lock()?;
        let fresh: Vec<&(u64, Vec<f32>)> = items
            .iter()
            .filter(|(id, _)| !state.ids.contains(id))
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
        let max_norm = fresh.iter().map(|(_, v)| norm(v)).fold(0f32, f32::max);
        if max_norm > state.bound {
            let new_bound = (max_norm * BOUND_HEADROOM).max(f32::MIN_POSITIVE);
            if state.ids.is_empty() {
                state.bound = new_bound;
            } else {
                Self::rebuild(&mut state, self.params, new_bound);
            }
        }
        let bound = state.bound;
        let augmented: Vec<(Vec<f32>, usize)> = fresh
            .iter()
            .map(|(id, v)| (augment(v, bound), *id as usize))
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = augmented.iter().map(|(v, id)| (v, *id)).collect();
        state.hnsw.set_searching_mode(false);
        state.hnsw.parallel_insert(&refs);
        state.hnsw.set_searching_mode(true);
        for (id, _) in fresh {
            state.ids.insert(*id);
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
        let mut y = query.to_vec();
        y.push(0.0);
        let deleted = &state.deleted;
        let filter = |id: &usize| !deleted.contains(&(*id as u64));
        let found = if deleted.is_empty() {
            state.hnsw.search(&y, k, ef.max(k))
        } else {
            state.hnsw.search_filter(&y, k, ef.max(k), Some(&filter))
        };
        let points = state.hnsw.get_point_indexation();
        let mut out: Vec<Neighbour> = found
            .into_iter()
            .filter_map(|n| {
                let x = points.get_point_data(&n.p_id)?;
                let logit = x[..self.dim].iter().zip(query).map(|(a, b)| a * b).sum();
                Some(Neighbour {
                    id: n.d_id as u64,
                    logit,
                })
            })
            .collect();
        out.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn len(&self) -> usize {
        self.read_lock()
            .map(|s| s.ids.len() - s.deleted.len())
            .unwrap_or(0)
    }

    fn tombstones(&self) -> usize {
        self.read_lock().map(|s| s.deleted.len()).unwrap_or(0)
    }

    fn ids(&self) -> HashSet<u64> {
        self.read_lock().map(|s| s.ids.clone()).unwrap_or_default()
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
        if !state.ids.is_empty() {
            state
                .hnsw
                .file_dump(&fresh, BASENAME)
                .map_err(|e| IndexError::Vectors(format!("dump to {}: {e}", fresh.display())))?;
        }
        let mut deleted: Vec<u64> = state.deleted.iter().copied().collect();
        deleted.sort_unstable();
        let meta = serde_json::json!({"bound": state.bound, "deleted": deleted, "dim": self.dim});
        std::fs::write(fresh.join(BOUND_FILE), meta.to_string()).map_err(io(&fresh))?;
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
            "embedded HNSW (hnsw_rs, M={}, ef_construction={}, inner product via L2 reduction)",
            self.params.m, self.params.ef_construction
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
        let items: Vec<(u64, Vec<f32>)> = (0..2000u64)
            .map(|i| {
                let scale = 1.0 + (i % 10) as f32;
                (
                    i * 3 + 1,
                    (0..dim).map(|_| rng(&mut seed) * scale).collect(),
                )
            })
            .collect();
        let index = HnswVectors::open(&dir, dim, HnswParams::default()).unwrap();
        index.insert(&items[..500]).unwrap();
        index.insert(&items[500..]).unwrap(); // larger norms later force a rebuild
        index.insert(&items[..10]).unwrap(); // replays are ignored
        assert_eq!(index.len(), 2000);
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
        assert_eq!(reopened.len(), 1999);
        assert_eq!(reopened.tombstones(), 1);
        assert!(reopened
            .search(&queries[0], 10, 100)
            .unwrap()
            .iter()
            .all(|n| n.id != top.id));
        reopened.compact().unwrap();
        assert_eq!((reopened.len(), reopened.tombstones()), (1999, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
