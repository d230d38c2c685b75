//! The embedded vector index for large archives: per scoring level, inverted lists of int8
//! codes under an hnsw_rs graph of their centroids, re-ranked from a finer copy on disk.
//!
//! Every stored vector `v = [x ; b]` (embedding `x`, level bias `b`) gets a *slot*, in insertion
//! order, and is quantised twice (see [`crate::quant`]): the coarse code (`D` bytes) and its scale
//! stay in memory, the fine residual code (`D` bytes) stays on disk.
//!
//! Slots are grouped in *parts*, one per bias (one per scoring level) and norm band (a factor √2
//! wide): `<q, v> = <t, x> + b·q_D`, so a part's best logit is at most `max|x|·|t| + b·q_D`, and
//! a query visits the parts from the highest such ceiling down, stopping when the next ceiling
//! cannot beat what it holds (levels of very different bias are never searched in vain). Inside
//! a part norms differ by at most √2, so ranking by direction ranks nearly by logit. Inside a
//! part, until
//! [`IvfParams::train_at`] vectors are stored, a query scans every coarse code. Then spherical
//! k-means over the part's *centred* directions `(x − μ) / |x − μ|` (`μ` the part's mean: within a
//! part `<t, x> = <t, μ> + <t, x − μ>`, and the first term is the same for every vector) gives
//! `nlist` centroids; each slot joins the list of its nearest centroid, and an hnsw_rs graph over
//! the centroids picks the lists a query visits (as FAISS's IVF-HNSW does). A query ranks the
//! visited codes by their coarse logit and re-ranks the best with both codes, read back from
//! disk: returned logits equal `<q, v>` to ~1e-5.
//!
//! Files in the folder (little-endian):
//! - `codes.i8`, `fine.i8`: `D` bytes per slot, appended;
//! - `slots.bin`: per slot the proposal id (u64), the scale (f32) and the bias (f32), appended;
//! - `lists.bin`: every trained part's mean and centroids and every slot's list, rewritten
//!   (temp file + rename) when saved;
//! - `deleted.bin`: the deleted slots, rewritten when saved.
//!
//! Slots are only appended, so after a crash the three appended files are cut to the slots all
//! three hold in full; slots added after the last save join their lists again at open, and a
//! deletion made after it is made again by the caller (see `Index::reconcile`).

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use hnsw_rs::prelude::Hnsw;
use rayon::prelude::*;

use spotter_model::{QueryVectorRef, StoredVectorRef};

use crate::error::{IndexError, Result};
use crate::quant::{self, dot_f32, dot_i8};
use crate::vectors::{DirectionL2, Neighbour, VectorEntry, VectorIndex};

/// Settings of the quantised engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfParams {
    /// Vectors of one level stored before its lists are trained (until then every query scans
    /// all of that level's codes).
    pub train_at: usize,
    /// Lists visited per level by a query at least (more when the caller asks for a wider
    /// search).
    pub min_probe: usize,
}

impl Default for IvfParams {
    fn default() -> Self {
        IvfParams {
            train_at: 50_000,
            min_probe: 24,
        }
    }
}

const SLOT_BYTES: usize = 16;
const CODES_FILE: &str = "codes.i8";
const FINE_FILE: &str = "fine.i8";
const SLOTS_FILE: &str = "slots.bin";
const LISTS_FILE: &str = "lists.bin";
const DELETED_FILE: &str = "deleted.bin";
const LISTS_MAGIC: &[u8; 8] = b"SPIVF\x00\x00\x03";
/// Slots per block of coarse codes (blocks keep growth from copying all codes).
const BLOCK_SLOTS: usize = 1 << 16;
/// Training sample per list (FAISS warns below 39).
const SAMPLE_PER_LIST: usize = 64;
const KMEANS_ITERATIONS: usize = 12;
const UNASSIGNED: u32 = u32::MAX;

/// The number of lists for `n` vectors: about 2·√n, a power of two in 64..=16384.
pub fn lists_for(n: usize) -> usize {
    let target = 2.0 * (n.max(1) as f64).sqrt();
    (target.log2().round().exp2() as usize).clamp(64, 16_384)
}

type CentroidGraph = Hnsw<'static, f32, DirectionL2>;

/// A part's trained centroids with their lists.
struct Lists {
    /// The part's mean embedding when trained (`D` values).
    mean: Vec<f32>,
    /// `nlist × D` unit vectors (of centred directions).
    centroids: Vec<f32>,
    graph: CentroidGraph,
    members: Vec<Vec<u32>>,
}

impl Lists {
    fn new(d: usize, mean: Vec<f32>, centroids: Vec<f32>) -> Self {
        let nlist = centroids.len() / d;
        let graph = Hnsw::new(16, nlist.max(16), 16, 200, DirectionL2);
        let points: Vec<Vec<f32>> = centroids
            .chunks_exact(d)
            .map(|c| {
                let mut p = c.to_vec();
                p.push(0.0);
                p
            })
            .collect();
        let refs: Vec<(&Vec<f32>, usize)> = points.iter().zip(0..).collect();
        graph.parallel_insert(&refs);
        let mut graph = graph;
        graph.set_searching_mode(true);
        Lists {
            mean,
            centroids,
            graph,
            members: vec![Vec::new(); nlist],
        }
    }

    fn nlist(&self) -> usize {
        self.members.len()
    }

    /// The `n` lists whose centroids are most similar to the unit direction `u` (`D + 1` values,
    /// the last ignored).
    fn nearest(&self, u: &[f32], n: usize) -> Vec<usize> {
        let n = n.min(self.nlist());
        self.graph
            .search(u, n, (2 * n).max(64))
            .into_iter()
            .map(|x| x.d_id)
            .collect()
    }
}

/// Parts per doubling of the embedding norm: inside a part norms differ by at most √2, so the
/// direction lists rank its vectors nearly as their logits do.
const BANDS_PER_OCTAVE: f32 = 2.0;

/// The norm band of an embedding norm.
fn band_of(norm: f32) -> i32 {
    (norm.max(1e-20).log2() * BANDS_PER_OCTAVE).floor() as i32
}

/// The slots of one bias (one scoring level) and one norm band.
struct Part {
    bias: f32,
    band: i32,
    /// Upper bound of `|x|` over the part's slots (for the stopping rule).
    max_norm: f32,
    live: usize,
    /// Slots not in a list (all of them until the part is trained), scanned exactly.
    flat: Vec<u32>,
    lists: Option<Lists>,
}

/// Low bits of an id that vary inside a group of consecutive slots: Spotter's proposal ids are
/// `image << 16 | rank` (`records::PROPOSAL_BITS`) and an image's proposals are inserted
/// together, so one entry per image finds all of them.
const GROUP_BITS: u32 = crate::records::PROPOSAL_BITS;

/// Slot-indexed data in memory (about `D + 14` bytes per slot).
struct State {
    d: usize,
    ids: Vec<u64>,
    scales: Vec<f32>,
    blocks: Vec<Vec<i8>>,
    parts: Vec<Part>,
    /// Slot → part.
    part: Vec<u16>,
    part_of_key: HashMap<(u32, i32), usize>,
    /// Id group (`id >> GROUP_BITS`) → the slot its rank 0 has, or would have.
    groups: HashMap<u64, u32>,
    /// Ids not at their group's slot (inserted out of order, or again after a deletion).
    stray: HashMap<u64, u32>,
    live: usize,
    deleted: Vec<u64>,
    n_deleted: usize,
    /// Read handle of `fine.i8` (positioned reads only).
    fine: Option<File>,
}

impl State {
    fn empty(d: usize) -> Self {
        State {
            d,
            ids: Vec::new(),
            scales: Vec::new(),
            blocks: Vec::new(),
            parts: Vec::new(),
            part: Vec::new(),
            part_of_key: HashMap::new(),
            groups: HashMap::new(),
            stray: HashMap::new(),
            live: 0,
            deleted: Vec::new(),
            n_deleted: 0,
            fine: None,
        }
    }

    fn slots(&self) -> usize {
        self.ids.len()
    }

    fn code(&self, slot: usize) -> &[i8] {
        let block = &self.blocks[slot / BLOCK_SLOTS];
        let at = (slot % BLOCK_SLOTS) * self.d;
        &block[at..at + self.d]
    }

    fn part_of(&self, slot: usize) -> usize {
        usize::from(self.part[slot])
    }

    fn bias(&self, slot: usize) -> f32 {
        self.parts[self.part_of(slot)].bias
    }

    /// The live slot of `id`.
    fn slot_of(&self, id: u64) -> Option<usize> {
        let slot = match self.stray.get(&id) {
            Some(&slot) => slot as usize,
            None => {
                let first = *self.groups.get(&(id >> GROUP_BITS))? as usize;
                first + (id & ((1 << GROUP_BITS) - 1)) as usize
            }
        };
        (slot < self.slots() && self.ids[slot] == id && !self.is_deleted(slot)).then_some(slot)
    }

    /// The live ids.
    fn live_ids(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.slots())
            .filter(|s| !self.is_deleted(*s))
            .map(|s| self.ids[s])
    }

    fn is_deleted(&self, slot: usize) -> bool {
        self.deleted
            .get(slot / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn mark_deleted(&mut self, slot: usize) {
        if self.deleted.len() <= slot / 64 {
            self.deleted.resize(slot / 64 + 1, 0);
        }
        if !self.is_deleted(slot) {
            self.deleted[slot / 64] |= 1 << (slot % 64);
            self.n_deleted += 1;
            self.live -= 1;
            let part = self.part_of(slot);
            self.parts[part].live -= 1;
        }
    }

    /// Deletes the live vector `id`, if any.
    fn delete_id(&mut self, id: u64) {
        if let Some(slot) = self.slot_of(id) {
            self.mark_deleted(slot);
        }
    }

    /// Adds a slot (in no list yet: see [`State::place`]); an older live slot of the same id
    /// is deleted (a replay keeps its newest slot).
    fn push(&mut self, id: u64, scale: f32, bias: f32, coarse: &[i8]) -> Result<usize> {
        let coarse_norm = scale * (dot_i8(coarse, coarse) as f32).sqrt();
        let band = band_of(coarse_norm);
        let parts = self.parts.len();
        let part = *self
            .part_of_key
            .entry((bias.to_bits(), band))
            .or_insert(parts);
        let part_index = u16::try_from(part).map_err(|_| {
            IndexError::Vectors(format!(
                "more than {} distinct (bias, norm band) pairs: the vectors are not a model's",
                u16::MAX
            ))
        })?;
        if part == parts {
            self.parts.push(Part {
                bias,
                band,
                max_norm: 0.0,
                live: 0,
                flat: Vec::new(),
                lists: None,
            });
        }
        self.delete_id(id);
        let slot = self.slots();
        if slot.is_multiple_of(BLOCK_SLOTS) {
            self.blocks.push(Vec::with_capacity(BLOCK_SLOTS * self.d));
        }
        if let Some(block) = self.blocks.last_mut() {
            block.extend_from_slice(coarse);
        }
        self.ids.push(id);
        self.scales.push(scale);
        self.part.push(part_index);
        // |x| ≤ |s·c| + |x − s·c| ≤ |s·c| + √D·s/2.
        let norm = coarse_norm + (self.d as f32).sqrt() * scale * 0.5;
        let p = &mut self.parts[part];
        p.max_norm = p.max_norm.max(norm);
        p.live += 1;
        self.live += 1;
        let rank = (id & ((1 << GROUP_BITS) - 1)) as usize;
        let expected = match self.groups.get(&(id >> GROUP_BITS)) {
            Some(&first) => Some(first as usize + rank),
            None if slot >= rank => {
                self.groups.insert(id >> GROUP_BITS, (slot - rank) as u32);
                Some(slot)
            }
            None => None,
        };
        if expected == Some(slot) {
            self.stray.remove(&id);
        } else {
            self.stray.insert(id, slot as u32);
        }
        Ok(slot)
    }

    /// Puts a live slot in its list (or its part's flat scan while the part is untrained).
    fn place(&mut self, slot: usize) {
        let part = self.part_of(slot);
        let list = match &self.parts[part].lists {
            Some(lists) => {
                let u = self.centred_direction(slot, &lists.mean);
                lists.nearest(&u, 1).first().copied()
            }
            None => None,
        };
        let p = &mut self.parts[part];
        match (list, &mut p.lists) {
            (Some(list), Some(lists)) => lists.members[list].push(slot as u32),
            _ => p.flat.push(slot as u32),
        }
    }

    /// `(x − mean) / |x − mean|` of a slot's coarse code, `D + 1` values (the last 0).
    fn centred_direction(&self, slot: usize, mean: &[f32]) -> Vec<f32> {
        let mut u = quant::decode_coarse(self.scales[slot], self.code(slot));
        u.iter_mut().zip(mean).for_each(|(x, m)| *x -= m);
        normalise(&mut u);
        u.push(0.0);
        u
    }

    fn live_slots_of(&self, part: usize) -> Vec<usize> {
        (0..self.slots())
            .filter(|&s| !self.is_deleted(s) && self.part_of(s) == part)
            .collect()
    }
}

fn normalise(v: &mut [f32]) {
    let n = dot_f32(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The appended files.
struct Files {
    codes: File,
    fine: File,
    slots: File,
}

impl Files {
    fn open(dir: &Path) -> Result<Self> {
        Ok(Files {
            codes: open_append(&dir.join(CODES_FILE))?,
            fine: open_append(&dir.join(FINE_FILE))?,
            slots: open_append(&dir.join(SLOTS_FILE))?,
        })
    }

    /// Appends rows; slot rows last, so a torn append leaves no id without its codes.
    fn append(&mut self, dir: &Path, codes: &[u8], fine: &[u8], slots: &[u8]) -> Result<()> {
        self.codes
            .write_all(codes)
            .map_err(io_err(&dir.join(CODES_FILE)))?;
        self.fine
            .write_all(fine)
            .map_err(io_err(&dir.join(FINE_FILE)))?;
        self.slots
            .write_all(slots)
            .map_err(io_err(&dir.join(SLOTS_FILE)))
    }
}

/// The quantised embedded vector index, persisted in a folder of its own.
pub struct IvfVectors {
    dir: PathBuf,
    dim: usize,
    params: IvfParams,
    state: RwLock<State>,
    files: Mutex<Files>,
    /// Serialises training and compaction (each runs at most once at a time).
    rebuilding: Mutex<()>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        what: path.display().to_string(),
        message: message.into(),
    }
}

fn poisoned<T>(_: T) -> IndexError {
    IndexError::Vectors("lock poisoned".into())
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut out = Vec::new();
            f.read_to_end(&mut out).map_err(io_err(path))?;
            Ok(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    u32s(bytes).map(f32::from_bits)
}

/// Spherical k-means (cosine) over unit directions (`d` values each, more ignored);
/// deterministic.
fn train_centroids(sample: &[Vec<f32>], d: usize, nlist: usize) -> Vec<f32> {
    let nlist = nlist.min(sample.len()).max(1);
    // Evenly spaced starting points (the sample is already spread over the part).
    let step = sample.len() as f64 / nlist as f64;
    let mut centroids: Vec<f32> = (0..nlist)
        .flat_map(|i| sample[(i as f64 * step) as usize][..d].to_vec())
        .collect();
    for _ in 0..KMEANS_ITERATIONS {
        let assigned: Vec<(usize, f32)> = sample
            .par_iter()
            .map(|u| nearest_centroid(&centroids, d, &u[..d]))
            .collect();
        let mut sums = vec![0f32; nlist * d];
        let mut counts = vec![0usize; nlist];
        for (u, &(c, _)) in sample.iter().zip(&assigned) {
            counts[c] += 1;
            sums[c * d..(c + 1) * d]
                .iter_mut()
                .zip(&u[..d])
                .for_each(|(s, x)| *s += x);
        }
        // An empty list restarts at the points farthest from their centroids.
        let mut far: Vec<usize> = (0..sample.len()).collect();
        far.sort_by(|a, b| assigned[*a].1.total_cmp(&assigned[*b].1));
        let mut far = far.into_iter();
        for c in 0..nlist {
            if counts[c] == 0 {
                if let Some(i) = far.next() {
                    sums[c * d..(c + 1) * d].copy_from_slice(&sample[i][..d]);
                }
            }
        }
        for c in sums.chunks_exact_mut(d) {
            normalise(c);
        }
        centroids = sums;
    }
    centroids
}

/// The most similar centroid and the similarity.
fn nearest_centroid(centroids: &[f32], d: usize, u: &[f32]) -> (usize, f32) {
    centroids
        .chunks_exact(d)
        .map(|c| dot_f32(c, u))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .unwrap_or((0, 0.0))
}

/// Trains lists for `slots` (live slots of one part): mean, sample, k-means, and every slot's
/// list. Reads `state` only.
fn train_lists(state: &State, slots: &[usize]) -> (Lists, Vec<u32>) {
    let d = state.d;
    let nlist = lists_for(slots.len());
    let want = (nlist * SAMPLE_PER_LIST).min(slots.len()).max(1);
    let stride = slots.len() as f64 / want as f64;
    let picked: Vec<usize> = (0..want)
        .map(|i| slots[(i as f64 * stride) as usize])
        .collect();
    let mut mean = vec![0f32; d];
    for &slot in &picked {
        let x = quant::decode_coarse(state.scales[slot], state.code(slot));
        mean.iter_mut().zip(&x).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= picked.len() as f32);
    let sample: Vec<Vec<f32>> = picked
        .par_iter()
        .map(|&slot| state.centred_direction(slot, &mean))
        .collect();
    let centroids = train_centroids(&sample, d, nlist);
    let assigned: Vec<u32> = slots
        .par_iter()
        .map(|&slot| {
            let u = state.centred_direction(slot, &mean);
            nearest_centroid(&centroids, d, &u[..d]).0 as u32
        })
        .collect();
    (Lists::new(d, mean, centroids), assigned)
}

/// Installs trained lists on a part: `assigned[i]` is the list of `slots[i]`; live slots of the
/// part not among `slots` (added since) join theirs through the graph.
fn install_lists(state: &mut State, part: usize, lists: Lists, slots: &[usize], assigned: &[u32]) {
    let flat = std::mem::take(&mut state.parts[part].flat);
    state.parts[part].lists = Some(lists);
    let known: HashMap<usize, u32> = slots
        .iter()
        .copied()
        .zip(assigned.iter().copied())
        .collect();
    for slot in flat {
        let slot = slot as usize;
        if state.is_deleted(slot) {
            continue;
        }
        match known.get(&slot) {
            Some(&list) => {
                if let Some(lists) = &mut state.parts[part].lists {
                    lists.members[list as usize].push(slot as u32);
                }
            }
            None => state.place(slot),
        }
    }
}

/// A candidate in the coarse pass: ordered so the binary heap's top is the worst kept one.
#[derive(PartialEq)]
struct Candidate(f32, u32);

impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// Coarse candidates re-ranked per query for `k` results.
fn rerank_depth(k: usize) -> usize {
    2 * k + 64
}

/// One row of `slots.bin`.
fn slot_row(id: u64, scale: f32, bias: f32) -> [u8; SLOT_BYTES] {
    let mut row = [0u8; SLOT_BYTES];
    row[..8].copy_from_slice(&id.to_le_bytes());
    row[8..12].copy_from_slice(&scale.to_le_bytes());
    row[12..].copy_from_slice(&bias.to_le_bytes());
    row
}

/// The deleted slots, as `deleted.bin` holds them.
fn deleted_bytes(state: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.n_deleted * 4);
    for slot in (0..state.slots()).filter(|s| state.is_deleted(*s)) {
        out.extend_from_slice(&(slot as u32).to_le_bytes());
    }
    out
}

/// `lists.bin`: magic, trained parts, slots; per trained part its bias, band, nlist, mean and
/// centroids; then every slot's list.
fn lists_bytes(state: &State) -> Vec<u8> {
    let trained: Vec<&Part> = state.parts.iter().filter(|p| p.lists.is_some()).collect();
    let mut out = Vec::new();
    out.extend_from_slice(LISTS_MAGIC);
    out.extend_from_slice(&(trained.len() as u64).to_le_bytes());
    out.extend_from_slice(&(state.slots() as u64).to_le_bytes());
    for part in trained {
        let Some(lists) = &part.lists else { continue };
        out.extend_from_slice(&part.bias.to_le_bytes());
        out.extend_from_slice(&part.band.to_le_bytes());
        out.extend_from_slice(&(lists.nlist() as u32).to_le_bytes());
        for x in lists.mean.iter().chain(&lists.centroids) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    // Every slot's list, from the lists themselves (flat and deleted slots: none).
    let mut assign = vec![UNASSIGNED; state.slots()];
    for part in &state.parts {
        if let Some(lists) = &part.lists {
            for (list, members) in lists.members.iter().enumerate() {
                for &slot in members {
                    assign[slot as usize] = list as u32;
                }
            }
        }
    }
    for a in &assign {
        out.extend_from_slice(&a.to_le_bytes());
    }
    out
}

impl IvfVectors {
    /// Opens the index in `dir` (creating an empty one). `dim` is the stored-vector length
    /// (`D + 1`).
    pub fn open(dir: &Path, dim: usize, params: IvfParams) -> Result<Self> {
        if dim < 2 {
            return Err(IndexError::Invalid(format!(
                "stored vectors need at least 2 values, not {dim}"
            )));
        }
        // A compaction interrupted between its two renames leaves the old folder aside: it is
        // complete, so it comes back (the half-built new one is dropped).
        let old_dir = dir.with_extension("old");
        if !dir.exists() && old_dir.exists() {
            tracing::warn!(dir = %dir.display(), "restoring the vector folder an interrupted compaction set aside");
            std::fs::rename(&old_dir, dir).map_err(io_err(dir))?;
        } else if old_dir.exists() {
            let _ = std::fs::remove_dir_all(&old_dir); // the compaction's new folder is in place
        }
        let _ = std::fs::remove_dir_all(dir.with_extension("new"));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let d = dim - 1;
        let files = Files::open(dir)?;
        let mut state = Self::load(dir, d)?;
        state.fine = Some(File::open(dir.join(FINE_FILE)).map_err(io_err(dir))?);
        Ok(IvfVectors {
            dir: dir.to_path_buf(),
            dim,
            params,
            state: RwLock::new(state),
            files: Mutex::new(files),
            rebuilding: Mutex::new(()),
        })
    }

    fn load(dir: &Path, d: usize) -> Result<State> {
        let codes_path = dir.join(CODES_FILE);
        let fine_path = dir.join(FINE_FILE);
        let slots_path = dir.join(SLOTS_FILE);
        let len = |p: &Path| match std::fs::metadata(p) {
            Ok(m) => Ok(m.len() as usize),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(p)(e)),
        };
        // Slots every appended file holds in full; a torn tail (a crash mid-append) is cut.
        let n = (len(&codes_path)? / d)
            .min(len(&fine_path)? / d)
            .min(len(&slots_path)? / SLOT_BYTES);
        for (path, row) in [(&codes_path, d), (&fine_path, d), (&slots_path, SLOT_BYTES)] {
            if len(path)? > n * row {
                tracing::warn!(path = %path.display(), slots = n, "cutting a partly written vector file to its complete slots");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len((n * row) as u64).map_err(io_err(path))?;
            }
        }
        let mut state = State::empty(d);
        if n == 0 {
            return Ok(state);
        }
        let slots = read_all(&slots_path)?;
        let mut codes = std::io::BufReader::with_capacity(
            1 << 20,
            File::open(&codes_path).map_err(io_err(&codes_path))?,
        );
        let mut row = vec![0u8; d];
        let mut coarse = vec![0i8; d];
        for s in slots.chunks_exact(SLOT_BYTES).take(n) {
            let id = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
            let scale = f32::from_le_bytes(s[8..12].try_into().expect("4 bytes"));
            let bias = f32::from_le_bytes(s[12..16].try_into().expect("4 bytes"));
            codes.read_exact(&mut row).map_err(io_err(&codes_path))?;
            coarse.iter_mut().zip(&row).for_each(|(c, b)| *c = *b as i8);
            state.push(id, scale, bias, &coarse)?;
        }
        // Deleted slots as last saved.
        for slot in u32s(&read_all(&dir.join(DELETED_FILE))?) {
            let slot = slot as usize;
            if slot < n {
                state.mark_deleted(slot);
            }
        }
        // Lists as last saved; slots saved without one (added later) join theirs now.
        let lists_path = dir.join(LISTS_FILE);
        let bytes = read_all(&lists_path)?;
        let mut assign: Vec<u32> = Vec::new();
        if !bytes.is_empty() {
            let bad = |m: String| corrupt(&lists_path, m);
            if bytes.len() < 24 || &bytes[..8] != LISTS_MAGIC {
                return Err(bad("not a Spotter list file of this version".into()));
            }
            let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            let (trained, saved_slots) = (word(8) as usize, word(16) as usize);
            let mut at = 24;
            for _ in 0..trained {
                let head = bytes
                    .get(at..at + 12)
                    .ok_or_else(|| bad("cut short".into()))?;
                let bias = f32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
                let band = i32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
                let nlist = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
                at += 12;
                let size = (nlist + 1) * d * 4;
                let body = bytes
                    .get(at..at + size)
                    .ok_or_else(|| bad("cut short".into()))?;
                at += size;
                let values: Vec<f32> = f32s(body).collect();
                let (mean, centroids) = values.split_at(d);
                // A part whose slots are all gone after a crash has nothing to list.
                if let Some(&part) = state.part_of_key.get(&(bias.to_bits(), band)) {
                    if nlist == 0 {
                        return Err(bad(format!(
                            "a part with no lists (bias {bias}, band {band})"
                        )));
                    }
                    state.parts[part].lists =
                        Some(Lists::new(d, mean.to_vec(), centroids.to_vec()));
                }
            }
            let lists = &bytes[at..];
            if lists.len() != saved_slots * 4 {
                return Err(bad(format!(
                    "{} bytes of assignments for {saved_slots} slots",
                    lists.len()
                )));
            }
            assign = u32s(lists).take(n).collect();
        }
        for slot in 0..n {
            if state.is_deleted(slot) {
                continue;
            }
            let part = state.part_of(slot);
            let list = assign.get(slot).copied().unwrap_or(UNASSIGNED);
            let nlist = state.parts[part].lists.as_ref().map(Lists::nlist);
            match nlist {
                Some(nlist) if (list as usize) < nlist => {
                    if let Some(lists) = &mut state.parts[part].lists {
                        lists.members[list as usize].push(slot as u32);
                    }
                }
                Some(_) if list != UNASSIGNED => {
                    return Err(corrupt(
                        &lists_path,
                        format!("slot {slot} is in list {list}, beyond its part's lists"),
                    ))
                }
                // Untrained part, or a slot saved before its part's lists (or after the save).
                _ => state.place(slot),
            }
        }
        Ok(state)
    }

    fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(poisoned)
    }

    fn read_lock(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        self.state.read().map_err(poisoned)
    }

    fn lock_files(&self) -> Result<std::sync::MutexGuard<'_, Files>> {
        self.files.lock().map_err(poisoned)
    }

    /// Sizes of the lists of every part, largest first (for benchmarks).
    pub fn list_sizes(&self) -> Result<Vec<usize>> {
        let state = self.read_lock()?;
        let mut sizes: Vec<usize> = state
            .parts
            .iter()
            .filter_map(|p| p.lists.as_ref())
            .flat_map(|l| l.members.iter().map(Vec::len))
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        Ok(sizes)
    }

    /// Lists over all parts, once any part is trained (for stats and tests).
    pub fn lists(&self) -> Result<Option<usize>> {
        let state = self.read_lock()?;
        let trained: Vec<usize> = state
            .parts
            .iter()
            .filter_map(|p| p.lists.as_ref().map(Lists::nlist))
            .collect();
        Ok((!trained.is_empty()).then(|| trained.iter().sum()))
    }

    /// Which of `ids` are stored (live), in order; no other memory is used.
    pub fn contains_each(&self, ids: &[u64]) -> Result<Vec<bool>> {
        let state = self.read_lock()?;
        Ok(ids.iter().map(|id| state.slot_of(*id).is_some()).collect())
    }

    /// The stored vectors of `ids` (`None` for ids not stored), reconstructed from both codes.
    pub fn stored_vectors(&self, ids: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        let state = self.read_lock()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(slot) = state.slot_of(*id) else {
                out.push(None);
                continue;
            };
            let mut v = self.reconstruct(&state, slot)?;
            v.push(state.bias(slot));
            out.push(Some(v));
        }
        Ok(out)
    }

    /// A slot's embedding from both codes.
    fn reconstruct(&self, state: &State, slot: usize) -> Result<Vec<f32>> {
        let fine: Vec<i8> = self
            .fine_row(state, slot)?
            .iter()
            .map(|b| *b as i8)
            .collect();
        Ok(quant::decode(state.scales[slot], state.code(slot), &fine))
    }

    /// The fine code of `slot`, read from disk.
    fn fine_row(&self, state: &State, slot: usize) -> Result<Vec<u8>> {
        let mut row = vec![0u8; state.d];
        let path = self.dir.join(FINE_FILE);
        let file = state
            .fine
            .as_ref()
            .ok_or_else(|| IndexError::Vectors("fine codes are not open".into()))?;
        file.read_exact_at(&mut row, (slot * state.d) as u64)
            .map_err(io_err(&path))?;
        Ok(row)
    }

    /// Trains the lists of every part that reached [`IvfParams::train_at`], without blocking
    /// searches: the training reads under the read lock (inserts wait), and only installing the
    /// result takes the write lock.
    fn train_if_due(&self) -> Result<()> {
        let due = |state: &State| -> Vec<usize> {
            (0..state.parts.len())
                .filter(|&p| {
                    state.parts[p].lists.is_none() && state.parts[p].live >= self.params.train_at
                })
                .collect()
        };
        if due(&*self.read_lock()?).is_empty() {
            return Ok(());
        }
        let Ok(_rebuilding) = self.rebuilding.try_lock() else {
            return Ok(()); // another thread trains or compacts
        };
        let parts = due(&*self.read_lock()?);
        for part in parts {
            let started = std::time::Instant::now();
            let (slots, lists, assigned) = {
                let state = self.read_lock()?;
                let slots = state.live_slots_of(part);
                let (lists, assigned) = train_lists(&state, &slots);
                (slots, lists, assigned)
            };
            let mut state = self.write_lock()?;
            let nlist = lists.nlist();
            install_lists(&mut state, part, lists, &slots, &assigned);
            tracing::info!(
                bias = state.parts[part].bias,
                lists = nlist,
                vectors = state.parts[part].live,
                seconds = started.elapsed().as_secs_f64(),
                "vector lists trained"
            );
        }
        Ok(())
    }

    /// The lists a query visits per part for breadth `ef`.
    fn probes(&self, ef: usize) -> usize {
        (ef / 8).max(self.params.min_probe)
    }

    /// The `k` best vectors for `query`, visiting `probes` lists of each trained part (every
    /// vector of the others). [`VectorIndex::search`] derives `probes` from its breadth.
    pub fn search_probing(&self, query: &[f32], k: usize, probes: usize) -> Result<Vec<Neighbour>> {
        if query.len() != self.dim {
            return Err(IndexError::Vectors(format!(
                "query has {} values, the index holds {}",
                query.len(),
                self.dim
            )));
        }
        let state = self.read_lock()?;
        if state.live == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let parts = QueryVectorRef::new(query)
            .ok_or_else(|| IndexError::Vectors("a query needs at least 2 values".into()))?;
        let (t, q_bias) = (parts.text(), parts.bias_weight());
        let t_norm = parts.norm();
        let (q_scale, q_code) = quant::encode_coarse(t);
        let mut u = t.to_vec();
        normalise(&mut u);
        u.push(0.0);
        // Parts in decreasing order of the best logit they could hold.
        let ceiling = |p: &Part| p.max_norm * t_norm + p.bias * q_bias;
        let mut order: Vec<&Part> = state.parts.iter().filter(|p| p.live > 0).collect();
        order.sort_by(|a, b| ceiling(b).total_cmp(&ceiling(a)));
        // Coarse pass: the best `keep` slots by their coarse logit.
        let keep = rerank_depth(k);
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(keep + 1);
        let consider = |heap: &mut BinaryHeap<Candidate>, slot: usize| {
            if state.is_deleted(slot) {
                return;
            }
            let logit = q_scale * state.scales[slot] * dot_i8(&q_code, state.code(slot)) as f32
                + q_bias * state.bias(slot);
            if heap.len() < keep {
                heap.push(Candidate(logit, slot as u32));
            } else if heap.peek().is_some_and(|worst| logit > worst.0) {
                heap.pop();
                heap.push(Candidate(logit, slot as u32));
            }
        };
        for part in order {
            // The coarse logits are within ~1e-2 of the exact ones; the margin keeps a part
            // whose ceiling is that close.
            let full = heap.len() >= keep;
            if full && heap.peek().is_some_and(|w| w.0 > ceiling(part) + 0.05) {
                break;
            }
            for &slot in &part.flat {
                consider(&mut heap, slot as usize);
            }
            if let Some(lists) = &part.lists {
                for list in lists.nearest(&u, probes.max(1)) {
                    for &slot in &lists.members[list] {
                        consider(&mut heap, slot as usize);
                    }
                }
            }
        }
        // Re-rank with the fine codes.
        let mut out = Vec::with_capacity(heap.len());
        for Candidate(_, slot) in heap.into_vec() {
            let slot = slot as usize;
            let x = self.reconstruct(&state, slot)?;
            out.push(Neighbour {
                id: state.ids[slot],
                logit: dot_f32(t, &x) + q_bias * state.bias(slot),
            });
        }
        out.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        out.truncate(k);
        Ok(out)
    }

    /// True when compaction has something to do: deleted slots, or a part trained for a much
    /// smaller size (or not yet trained past the training size).
    fn compaction_due(&self, state: &State) -> bool {
        let retrain = state.parts.iter().any(|p| match &p.lists {
            Some(lists) => lists.nlist() * 2 < lists_for(p.live),
            None => p.live >= self.params.train_at,
        });
        state.n_deleted > 0 || retrain
    }

    /// Rewrites the folder without deleted slots and retrains every part's lists for its size.
    /// Searches go on meanwhile; inserts and removals wait for the copy, and those made during
    /// the training are replayed onto the new folder before it replaces the old one.
    fn rebuild_without_deleted(&self) -> Result<()> {
        let _rebuilding = self.rebuilding.lock().map_err(poisoned)?;
        let fresh_dir = self.dir.with_extension("new");
        let (d, live) = {
            let state = self.read_lock()?;
            if !self.compaction_due(&state) {
                return Ok(());
            }
            let _ = std::fs::remove_dir_all(&fresh_dir);
            std::fs::create_dir_all(&fresh_dir).map_err(io_err(&fresh_dir))?;
            let live: Vec<usize> = (0..state.slots())
                .filter(|s| !state.is_deleted(*s))
                .collect();
            let (codes, fine, slots) = self.rows(&state, &live)?;
            for (name, bytes) in [
                (CODES_FILE, &codes),
                (FINE_FILE, &fine),
                (SLOTS_FILE, &slots),
            ] {
                write_atomically(&fresh_dir.join(name), bytes)?;
            }
            (state.d, live)
        };
        let snapshot = live.last().map_or(0, |l| l + 1);
        let mut fresh = Self::load(&fresh_dir, d)?;
        for part in 0..fresh.parts.len() {
            if fresh.parts[part].live >= self.params.train_at {
                let slots = fresh.live_slots_of(part);
                let (lists, assigned) = train_lists(&fresh, &slots);
                install_lists(&mut fresh, part, lists, &slots, &assigned);
            }
        }
        // Replay what happened since the copy, then swap the folders.
        let mut state = self.write_lock()?;
        let mut files = self.lock_files()?;
        for (new_slot, &old_slot) in live.iter().enumerate() {
            if state.is_deleted(old_slot) {
                let id = fresh.ids[new_slot];
                fresh.delete_id(id);
            }
        }
        let added: Vec<usize> = (snapshot..state.slots())
            .filter(|s| !state.is_deleted(*s))
            .collect();
        if !added.is_empty() {
            let (codes, fine, slots) = self.rows(&state, &added)?;
            Files::open(&fresh_dir)?.append(&fresh_dir, &codes, &fine, &slots)?;
            for &slot in &added {
                let coarse = state.code(slot).to_vec();
                let at = fresh.push(
                    state.ids[slot],
                    state.scales[slot],
                    state.bias(slot),
                    &coarse,
                )?;
                fresh.place(at);
            }
        }
        write_atomically(&fresh_dir.join(DELETED_FILE), &deleted_bytes(&fresh))?;
        write_atomically(&fresh_dir.join(LISTS_FILE), &lists_bytes(&fresh))?;
        let old_dir = self.dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&old_dir);
        std::fs::rename(&self.dir, &old_dir).map_err(io_err(&self.dir))?;
        std::fs::rename(&fresh_dir, &self.dir).map_err(io_err(&fresh_dir))?;
        let _ = std::fs::remove_dir_all(&old_dir);
        *files = Files::open(&self.dir)?;
        fresh.fine = Some(File::open(self.dir.join(FINE_FILE)).map_err(io_err(&self.dir))?);
        *state = fresh;
        Ok(())
    }

    /// The file rows (coarse codes, fine codes, slot rows) of `slots`.
    fn rows(&self, state: &State, slots: &[usize]) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let d = state.d;
        let mut codes = Vec::with_capacity(slots.len() * d);
        let mut fine = Vec::with_capacity(slots.len() * d);
        let mut rows = Vec::with_capacity(slots.len() * SLOT_BYTES);
        for &slot in slots {
            codes.extend(state.code(slot).iter().map(|x| *x as u8));
            fine.extend_from_slice(&self.fine_row(state, slot)?);
            rows.extend_from_slice(&slot_row(
                state.ids[slot],
                state.scales[slot],
                state.bias(slot),
            ));
        }
        Ok((codes, fine, rows))
    }
}

impl VectorIndex for IvfVectors {
    fn insert(&self, items: &[VectorEntry]) -> Result<()> {
        if let Some(e) = items.iter().find(|e| e.vector.len() != self.dim) {
            return Err(IndexError::Vectors(format!(
                "vector {} has {} values, the index holds {}",
                e.id,
                e.vector.len(),
                self.dim
            )));
        }
        let layouts: Vec<StoredVectorRef<'_>> = items
            .iter()
            .map(|e| {
                StoredVectorRef::new(&e.vector).ok_or_else(|| {
                    IndexError::Vectors(format!("vector {} is too short to hold a bias", e.id))
                })
            })
            .collect::<Result<_>>()?;
        let layout_of: HashMap<u64, StoredVectorRef<'_>> =
            items.iter().map(|e| e.id).zip(layouts).collect();
        {
            let mut state = self.write_lock()?;
            let mut seen = HashSet::new();
            let fresh: Vec<&VectorEntry> = items
                .iter()
                .filter(|e| state.slot_of(e.id).is_none() && seen.insert(e.id))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            let encoded: Vec<quant::Codes> = fresh
                .par_iter()
                .map(|e| quant::encode(layout_of[&e.id].embedding()))
                .collect();
            let d = self.dim - 1;
            let (mut codes, mut fine, mut slots) = (
                Vec::with_capacity(fresh.len() * d),
                Vec::with_capacity(fresh.len() * d),
                Vec::with_capacity(fresh.len() * SLOT_BYTES),
            );
            for (e, c) in fresh.iter().zip(&encoded) {
                codes.extend(c.coarse.iter().map(|x| *x as u8));
                fine.extend(c.fine.iter().map(|x| *x as u8));
                slots.extend_from_slice(&slot_row(e.id, c.scale, layout_of[&e.id].bias()));
            }
            self.lock_files()?
                .append(&self.dir, &codes, &fine, &slots)?;
            for (e, c) in fresh.iter().zip(&encoded) {
                let slot = state.push(e.id, c.scale, layout_of[&e.id].bias(), &c.coarse)?;
                state.place(slot);
            }
        }
        self.train_if_due()
    }

    fn remove(&self, ids: &[u64]) -> Result<()> {
        let mut state = self.write_lock()?;
        for id in ids {
            state.delete_id(*id);
        }
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>> {
        self.search_probing(query, k, self.probes(ef))
    }

    fn len(&self) -> Result<usize> {
        Ok(self.read_lock()?.live)
    }

    fn tombstones(&self) -> Result<usize> {
        Ok(self.read_lock()?.n_deleted)
    }

    /// The live ids (a deleted vector cannot come back, so it does not count as held).
    fn ids(&self) -> Result<HashSet<u64>> {
        Ok(self.read_lock()?.live_ids().collect())
    }

    fn persist(&self) -> Result<()> {
        let state = self.read_lock()?;
        {
            let files = self.lock_files()?;
            for (f, name) in [
                (&files.codes, CODES_FILE),
                (&files.fine, FINE_FILE),
                (&files.slots, SLOTS_FILE),
            ] {
                f.sync_data().map_err(io_err(&self.dir.join(name)))?;
            }
        }
        write_atomically(&self.dir.join(DELETED_FILE), &deleted_bytes(&state))?;
        write_atomically(&self.dir.join(LISTS_FILE), &lists_bytes(&state))
    }

    fn compact(&self) -> Result<()> {
        self.rebuild_without_deleted()
    }

    fn describe(&self) -> String {
        let lists = match self.lists() {
            Ok(Some(n)) => format!("{n} lists under hnsw_rs graphs of their centroids"),
            Ok(None) => format!(
                "an exact scan per level until it holds {} vectors, then inverted lists",
                self.params.train_at
            ),
            Err(e) => format!("unknown lists ({e})"),
        };
        format!(
            "embedded quantised index (int8 codes in memory, {lists}, ≥{} lists per level and query, re-ranked from fine codes on disk)",
            self.params.min_probe
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// WeDetect-like vectors: directions around 40 concepts, three levels with their own scale
    /// and bias, norms varying 3×.
    fn dataset(n: usize, d: usize, seed: u64) -> Vec<(u64, Vec<f32>)> {
        let mut rng = Rng(seed);
        let concepts: Vec<Vec<f32>> = (0..40)
            .map(|_| (0..d).map(|_| rng.next()).collect())
            .collect();
        let levels = [(0.0609f32, -4.36f32), (0.1997, -3.1), (0.2794, -2.2)];
        (0..n)
            .map(|i| {
                let c = &concepts[i % concepts.len()];
                let (s, b) = levels[(i / 7) % 3];
                let mut e: Vec<f32> = c.iter().map(|x| x + 0.8 * rng.next()).collect();
                normalise(&mut e);
                let n = 28.0 + 4.0 * rng.next().abs(); // one norm band per level
                let mut v: Vec<f32> = e.iter().map(|x| x * s * n).collect();
                v.push(b);
                (i as u64 * 5 + 3, v)
            })
            .collect()
    }

    fn query(rng: &mut Rng, items: &[(u64, Vec<f32>)], d: usize) -> Vec<f32> {
        let base = &items[(rng.next().abs() * items.len() as f32) as usize % items.len()].1;
        let mut q: Vec<f32> = base[..d].iter().map(|x| x + 0.02 * rng.next()).collect();
        normalise(&mut q);
        q.push(1.0);
        q
    }

    fn exact(
        items: &[(u64, Vec<f32>)],
        q: &[f32],
        k: usize,
        skip: &HashSet<u64>,
    ) -> Vec<Neighbour> {
        let mut all: Vec<Neighbour> = items
            .iter()
            .filter(|(id, _)| !skip.contains(id))
            .map(|(id, v)| Neighbour {
                id: *id,
                logit: v.iter().zip(q).map(|(a, b)| a * b).sum(),
            })
            .collect();
        all.sort_by(|a, b| b.logit.total_cmp(&a.logit));
        all.truncate(k);
        all
    }

    fn entries(items: &[(u64, Vec<f32>)]) -> Vec<VectorEntry> {
        items
            .iter()
            .map(|(id, v)| VectorEntry::bare(*id, v.clone()))
            .collect()
    }

    /// A temporary folder, removed when the returned guard drops.
    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    /// Recall@k of the index against the exact scan, and the largest logit error of the hits.
    fn check(
        index: &IvfVectors,
        items: &[(u64, Vec<f32>)],
        d: usize,
        skip: &HashSet<u64>,
    ) -> (f32, f32) {
        let mut rng = Rng(77);
        let (mut found, mut wanted, mut worst) = (0, 0, 0f32);
        for _ in 0..20 {
            let q = query(&mut rng, items, d);
            let want = exact(items, &q, 50, skip);
            let got = index.search(&q, 50, 100).unwrap();
            let want_ids: HashSet<u64> = want.iter().map(|n| n.id).collect();
            found += got.iter().filter(|n| want_ids.contains(&n.id)).count();
            wanted += want.len();
            for n in &got {
                assert!(!skip.contains(&n.id), "deleted {} returned", n.id);
                let v = &items.iter().find(|(id, _)| *id == n.id).unwrap().1;
                let logit: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
                worst = worst.max((logit - n.logit).abs());
            }
        }
        (found as f32 / wanted as f32, worst)
    }

    #[test]
    fn scans_then_trains_lists_keeps_recall_and_exact_logits_across_reload_and_compaction() {
        let tmp = temp();
        let (d, dir) = (64, tmp.path().to_path_buf());
        let items = dataset(6000, d, 1);
        let params = IvfParams {
            train_at: 1500,
            min_probe: 8,
        };
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        index.insert(&entries(&items[..1500])).unwrap();
        assert_eq!(index.lists().unwrap(), None, "below train_at: exact scan");
        let (recall, worst) = check(&index, &items[..1500], d, &HashSet::new());
        assert_eq!(recall, 1.0);
        assert!(worst < 1e-4, "{worst}");
        index.insert(&entries(&items[1500..])).unwrap();
        index.insert(&entries(&items[..10])).unwrap(); // replays are ignored
        assert_eq!(index.len().unwrap(), 6000);
        assert_eq!(
            index.lists().unwrap(),
            Some(3 * lists_for(2000)),
            "one set of lists per level"
        );
        let (recall, worst) = check(&index, &items, d, &HashSet::new());
        assert!(recall >= 0.98, "recall {recall}");
        assert!(worst < 1e-4, "{worst}");
        // Stored vectors come back within the quantisation bound.
        let back = index.stored_vectors(&[items[7].0, 1]).unwrap();
        assert!(back[1].is_none());
        let v = back[0].as_ref().unwrap();
        let max = items[7].1[..d].iter().fold(0f32, |m, x| m.max(x.abs()));
        for (a, b) in v.iter().zip(&items[7].1) {
            assert!((a - b).abs() <= max / 60_000.0);
        }

        let removed: HashSet<u64> = items.iter().step_by(3).map(|(id, _)| *id).collect();
        index
            .remove(&removed.iter().copied().collect::<Vec<_>>())
            .unwrap();
        assert_eq!(index.tombstones().unwrap(), 2000);
        index.persist().unwrap();
        drop(index);

        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        assert_eq!(
            (index.len().unwrap(), index.tombstones().unwrap()),
            (4000, 2000)
        );
        let (recall, _) = check(&index, &items, d, &removed);
        assert!(recall >= 0.98, "recall after reload {recall}");
        index.compact().unwrap();
        assert_eq!(
            (index.len().unwrap(), index.tombstones().unwrap()),
            (4000, 0)
        );
        let (recall, worst) = check(&index, &items, d, &removed);
        assert!(recall >= 0.98, "recall after compaction {recall}");
        assert!(worst < 1e-4);
        // New vectors after compaction are searchable at once.
        let late = dataset(10, d, 9)
            .into_iter()
            .map(|(id, mut v)| {
                v[..d].iter_mut().for_each(|x| *x *= 5.0); // stands out from the rest
                (id + 1_000_000, v)
            })
            .collect::<Vec<_>>();
        index.insert(&entries(&late)).unwrap();
        let q = {
            let mut q = late[4].1[..d].to_vec();
            normalise(&mut q);
            q.push(1.0);
            q
        };
        let best = index.search(&q, 5, 10).unwrap();
        let mut all: Vec<(u64, Vec<f32>)> = items.clone();
        all.extend(late.iter().cloned());
        let want: Vec<u64> = exact(&all, &q, 5, &removed).iter().map(|n| n.id).collect();
        assert!(
            want.contains(&late[4].0),
            "the test's query should find its own vector"
        );
        assert_eq!(best.iter().map(|n| n.id).collect::<Vec<_>>(), want);
        index.persist().unwrap();
        drop(index);
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        assert_eq!(index.len().unwrap(), 4010);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_append_is_cut_and_unsaved_slots_rejoin_their_lists() {
        let tmp = temp();
        let (d, dir) = (32, tmp.path().to_path_buf());
        let items = dataset(3000, d, 2);
        let params = IvfParams {
            train_at: 1000,
            min_probe: 8,
        };
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        index.insert(&entries(&items[..2000])).unwrap();
        index.persist().unwrap();
        // Appended after the last save (kept by the OS, as after kill -9), then a torn row.
        index.insert(&entries(&items[2000..])).unwrap();
        drop(index);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(CODES_FILE))
            .unwrap();
        f.write_all(&[1u8; 10]).unwrap();
        drop(f);
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        assert_eq!(index.len().unwrap(), 3000);
        assert_eq!(
            std::fs::metadata(dir.join(CODES_FILE)).unwrap().len(),
            3000 * d as u64
        );
        let (recall, _) = check(&index, &items, d, &HashSet::new());
        assert!(recall >= 0.98, "{recall}");
        // A compaction interrupted between its renames: the set-aside folder comes back.
        drop(index);
        std::fs::rename(&dir, dir.with_extension("old")).unwrap();
        std::fs::create_dir_all(dir.with_extension("new")).unwrap();
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        assert_eq!(index.len().unwrap(), 3000);
        assert!(!dir.with_extension("new").exists());
        // A wrong-size vector and a corrupt list file are errors, not silent defaults.
        assert!(index.insert(&[VectorEntry::bare(1, vec![0.0; 3])]).is_err());
        drop(index);
        std::fs::write(dir.join(LISTS_FILE), b"garbage").unwrap();
        assert!(matches!(
            IvfVectors::open(&dir, d + 1, params),
            Err(IndexError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_out_of_their_group_order_and_reinserted_ids_are_found() {
        let tmp = temp();
        let (d, dir) = (8, tmp.path().to_path_buf());
        let params = IvfParams {
            train_at: 1000,
            min_probe: 8,
        };
        let id = |image: u64, rank: u64| (image << GROUP_BITS) | rank;
        let v = |x: f32| {
            let mut v: Vec<f32> = (0..d).map(|i| x + i as f32 * 0.1).collect();
            v.push(-1.0);
            v
        };
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        let order = [
            id(5, 0),
            id(5, 1),
            id(5, 2),
            id(2, 1),
            id(2, 0),
            id(7, 3),
            3,
        ];
        let entries: Vec<VectorEntry> = order
            .iter()
            .enumerate()
            .map(|(i, id)| VectorEntry::bare(*id, v(i as f32)))
            .collect();
        index.insert(&entries).unwrap();
        index.remove(&[id(5, 1)]).unwrap();
        index
            .insert(&[VectorEntry::bare(id(5, 1), v(9.0))])
            .unwrap(); // again, in a new slot
        let check = |index: &IvfVectors| {
            assert_eq!(index.len().unwrap(), order.len());
            let got = index.stored_vectors(&order).unwrap();
            for (i, g) in got.iter().enumerate() {
                let want = if order[i] == id(5, 1) {
                    v(9.0)
                } else {
                    v(i as f32)
                };
                let g = g
                    .as_ref()
                    .unwrap_or_else(|| panic!("{} not found", order[i]));
                assert!(
                    g.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3),
                    "{i}"
                );
            }
            assert!(index
                .stored_vectors(&[id(5, 3), id(2, 2)])
                .unwrap()
                .iter()
                .all(Option::is_none));
            assert_eq!(index.ids().unwrap(), order.iter().copied().collect());
        };
        check(&index);
        index.persist().unwrap();
        drop(index);
        let index = IvfVectors::open(&dir, d + 1, params).unwrap();
        check(&index);
        assert_eq!(index.tombstones().unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn list_counts_grow_with_the_square_root() {
        assert_eq!(lists_for(0), 64);
        assert_eq!(lists_for(50_000), 512);
        assert_eq!(lists_for(1_000_000), 2048);
        assert_eq!(lists_for(100_000_000), 16_384);
    }
}
