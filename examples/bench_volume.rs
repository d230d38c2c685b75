//! Volume benchmark of the embedded vector engines on WeDetect-shaped proposals.
//!
//! The stored vectors are the real proposals of SOURCE_INDEX (an index built with a model
//! package, e.g. the WeDetect-Uni reference architecture: its dimension, its levels' scales and
//! biases, its embedding norms), repeated until N with each copy's direction jittered (norm and
//! bias kept), as `examples/make_fixture.rs` does. Queries are `[t ; 1]` with `t` a unit
//! direction at cosine ~0.6 of a random stored proposal's (text and image embeddings of one
//! concept are not parallel), seeded, the same for every engine.
//!
//! Measured, one engine per process (so RSS figures are that engine's):
//! - ingest: proposals/s through `VectorIndex::insert` in chunks of 2048 (the pipeline's), total
//!   and over the last tenth;
//! - RAM: VmRSS after building, saving, reopening the folder and answering the queries, minus
//!   VmRSS before (the generator's buffers are freed first);
//! - disk: bytes in the engine's folder;
//! - recall@100 and the largest logit error against an exact f32 inner-product scan of the same
//!   vectors (computed while they are generated), over the first `--truth` queries;
//! - single-thread search latency (k = 100, the breadth the query server uses) p50/p90/p99.
//!
//! Prints a human-readable report on stderr and one JSON object on stdout.
//!
//! A second mode measures a whole index folder (what `scripts/bench_volume.sh` builds with
//! `examples/make_fixture.rs` and serves): recall@100 and latency of its vector engine, the
//! queries made as above from its own stored vectors, the truth an exact scan of them:
//!
//! cargo run --release --example bench_volume -- --index DIR [--queries 1000] [--truth 200]
//!
//! cargo run --release --example bench_volume -- SOURCE_INDEX N OUT_DIR [--engine ivf|hnsw]
//!     [--queries 1000] [--truth 200] [--jitter 0.15] [--probes 8,16,24,32,48,64] [--one-bias] [--train-at N]
//!
//! `--one-bias` gives every proposal the mean bias, so that all levels compete in every query
//! (with the reference-architecture package's biases one level wins every query).

#[path = "support/proc_status.rs"]
mod proc_status;

use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use spotter_indexer::ivf::{IvfParams, IvfVectors};
use spotter_indexer::vectors::{HnswParams, HnswVectors, Neighbour};
use spotter_indexer::{Index, VectorEntry, VectorIndex};

type Error = Box<dyn std::error::Error>;

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

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Min-heap entry so the heap's top is the worst of the kept best.
#[derive(PartialEq)]
struct Kept(f32, u64);
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Kept {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

enum Engine {
    Ivf(Box<IvfVectors>),
    Hnsw(HnswVectors),
}

impl Engine {
    fn open(kind: &str, dir: &Path, dim: usize, ivf: IvfParams) -> Result<Self, Error> {
        Ok(match kind {
            "ivf" => Engine::Ivf(Box::new(IvfVectors::open(dir, dim, ivf)?)),
            "hnsw" => Engine::Hnsw(HnswVectors::open(dir, dim, HnswParams::default())?),
            other => return Err(format!("unknown engine {other} (ivf, hnsw)").into()),
        })
    }

    fn index(&self) -> &dyn VectorIndex {
        match self {
            Engine::Ivf(e) => e.as_ref(),
            Engine::Hnsw(e) => e,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `[t ; 1]` with `t` at cosine ~0.6 of `base`'s embedding.
fn query_near(rng: &mut Rng, base: &[f32]) -> Vec<f32> {
    let d = base.len() - 1;
    let bn = norm(&base[..d]).max(1e-12);
    let noise: Vec<f32> = (0..d).map(|_| rng.next()).collect();
    let nn = norm(&noise).max(1e-12);
    let mut t: Vec<f32> = base[..d]
        .iter()
        .zip(&noise)
        .map(|(b, z)| 0.6 * b / bn + 0.8 * z / nn)
        .collect();
    let tn = norm(&t).max(1e-12);
    t.iter_mut().for_each(|x| *x /= tn);
    t.push(1.0);
    t
}

/// Keeps the 100 best of `logit` for one query.
fn keep_best(heap: &mut BinaryHeap<Kept>, logit: f32, id: u64) {
    if heap.len() < 100 {
        heap.push(Kept(logit, id));
    } else if heap.peek().is_some_and(|w| logit > w.0) {
        heap.pop();
        heap.push(Kept(logit, id));
    }
}

fn sorted_truth(heaps: Vec<BinaryHeap<Kept>>) -> Vec<Vec<Neighbour>> {
    heaps
        .into_iter()
        .map(|h| {
            let mut v: Vec<Neighbour> = h
                .into_vec()
                .into_iter()
                .map(|Kept(logit, id)| Neighbour { id, logit })
                .collect();
            v.sort_by(|a, b| b.logit.total_cmp(&a.logit));
            v
        })
        .collect()
}

/// Recall of `found` against `want` (ids) and the largest logit difference of the shared ids.
fn recall_of(found: &[Neighbour], want: &[Neighbour]) -> (usize, f32) {
    let ids: std::collections::HashMap<u64, f32> = want.iter().map(|n| (n.id, n.logit)).collect();
    let mut hit = 0;
    let mut worst = 0f32;
    for f in found {
        if let Some(l) = ids.get(&f.id) {
            hit += 1;
            worst = worst.max((l - f.logit).abs());
        }
    }
    (hit, worst)
}

/// `--index DIR`: the engine of a whole index folder against an exact scan of its vectors.
fn index_mode(args: &[String]) -> Result<(), Error> {
    let dir = PathBuf::from(args.first().ok_or("--index needs a folder")?);
    let (mut n_queries, mut n_truth) = (1000usize, 200usize);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--queries" => n_queries = value()?.parse()?,
            "--truth" => n_truth = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let index = Index::open(&dir)?;
    let images: Vec<u64> = index
        .images()
        .map(|r| r.map(|(id, _)| id))
        .collect::<Result<_, _>>()?;
    let total = index.vector_count()?;
    if total == 0 {
        return Err(format!("{} holds no vectors", dir.display()).into());
    }
    // Pass 1: query bases spread over the index.
    let stride = (total / n_queries).max(1);
    let mut rng = Rng(0x9e37_79b9);
    let mut queries = Vec::with_capacity(n_queries);
    let mut seen = 0usize;
    'bases: for &image in &images {
        for (_, _, v) in index.proposals_of(image)? {
            if seen.is_multiple_of(stride) {
                queries.push(query_near(&mut rng, &v));
                if queries.len() == n_queries {
                    break 'bases;
                }
            }
            seen += 1;
        }
    }
    let n_truth = n_truth.min(queries.len());
    // Pass 2: exact truth over every stored vector.
    let started = Instant::now();
    let mut heaps: Vec<BinaryHeap<Kept>> = (0..n_truth).map(|_| BinaryHeap::new()).collect();
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(8192);
    let flush = |batch: &mut Vec<(u64, Vec<f32>)>, heaps: &mut [BinaryHeap<Kept>]| {
        std::thread::scope(|scope| {
            let per = heaps.len().div_ceil(2).max(1);
            for (qs, hs) in queries[..n_truth].chunks(per).zip(heaps.chunks_mut(per)) {
                let batch = &*batch;
                scope.spawn(move || {
                    for (q, heap) in qs.iter().zip(hs.iter_mut()) {
                        for (id, v) in batch {
                            keep_best(heap, v.iter().zip(q).map(|(a, b)| a * b).sum(), *id);
                        }
                    }
                });
            }
        });
        batch.clear();
    };
    for &image in &images {
        for (id, _, v) in index.proposals_of(image)? {
            batch.push((id, v));
        }
        if batch.len() >= 8192 {
            flush(&mut batch, &mut heaps);
        }
    }
    flush(&mut batch, &mut heaps);
    let truth = sorted_truth(heaps);
    let truth_seconds = started.elapsed().as_secs_f64();
    let server_ef = 2 * 101;
    let (mut hits, mut worst, mut latencies) = (0usize, 0f32, Vec::with_capacity(queries.len()));
    for (i, q) in queries.iter().enumerate() {
        let t = Instant::now();
        let found = index.search_vectors(q, 100, server_ef)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if i < n_truth {
            let (h, w) = recall_of(&found, &truth[i]);
            hits += h;
            worst = worst.max(w);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let recall = hits as f64 / (100 * n_truth) as f64;
    eprintln!(
        "{}: {total} vectors; recall@100 {recall:.4} (max logit error {worst:.2e}) over {n_truth} queries (exact scan {truth_seconds:.0} s); search p50/p90/p99 {:.2}/{:.2}/{:.2} ms\n  {}",
        dir.display(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        index.describe_vectors()
    );
    println!(
        "{}",
        serde_json::json!({
            "proposals": total,
            "recall_at_100": recall,
            "max_logit_error": worst,
            "ann_p50_ms": percentile(&latencies, 0.5),
            "ann_p90_ms": percentile(&latencies, 0.9),
            "ann_p99_ms": percentile(&latencies, 0.99),
            "queries": queries.len(),
            "truth_queries": n_truth,
        })
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--index") {
        return index_mode(&args[2..]);
    }
    if args.len() < 4 {
        eprintln!("usage: bench_volume SOURCE_INDEX N OUT_DIR [--engine ivf|hnsw] [--queries 1000] [--truth 200] [--jitter 0.15] [--probes 8,16,...]");
        std::process::exit(2);
    }
    let source = PathBuf::from(&args[1]);
    let n: usize = args[2].parse()?;
    let out = PathBuf::from(&args[3]);
    let (mut engine_kind, mut n_queries, mut n_truth, mut jitter) =
        ("ivf".to_string(), 1000usize, 200usize, 0.15f32);
    let mut one_bias = false;
    let mut ivf = IvfParams::default();
    let mut probes: Vec<usize> = vec![8, 16, 24, 32, 48, 64];
    let mut it = args[4..].iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--engine" => engine_kind = value()?,
            "--queries" => n_queries = value()?.parse()?,
            "--truth" => n_truth = value()?.parse()?,
            "--jitter" => jitter = value()?.parse()?,
            "--one-bias" => one_bias = true,
            "--train-at" => ivf.train_at = value()?.parse()?,
            "--probes" => {
                probes = value()?
                    .split(',')
                    .map(|x| x.parse())
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if out.exists() {
        return Err(format!("{} exists; remove it first", out.display()).into());
    }

    // Source proposals.
    let src = Index::open(&source)?;
    let mut sources: Vec<Vec<f32>> = Vec::new();
    for image in src.images() {
        for (_, _, v) in src.proposals_of(image?.0)? {
            sources.push(v);
        }
    }
    drop(src);
    if sources.is_empty() {
        return Err(format!("{} holds no proposals", source.display()).into());
    }
    let dim = sources[0].len();
    let d = dim - 1;
    let mut per_bias: Vec<(f32, usize)> = Vec::new();
    for v in &sources {
        match per_bias
            .iter_mut()
            .find(|(b, _)| b.to_bits() == v[d].to_bits())
        {
            Some((_, n)) => *n += 1,
            None => per_bias.push((v[d], 1)),
        }
    }
    eprintln!("source proposals per level bias: {per_bias:?}");
    if one_bias {
        // Every level competes in every query: the hard case for the index (the
        // reference-architecture package's biases are far apart, so one level wins).
        let mean = sources.iter().map(|v| v[d]).sum::<f32>() / sources.len() as f32;
        sources.iter_mut().for_each(|v| v[d] = mean);
    }
    let mut biases: Vec<f32> = sources.iter().map(|v| v[d]).collect();
    biases.sort_by(f32::total_cmp);
    biases.dedup();
    let norms: Vec<f32> = {
        let mut n: Vec<f32> = sources.iter().map(|v| norm(&v[..d])).collect();
        n.sort_by(f32::total_cmp);
        n
    };
    eprintln!(
        "source: {} proposals of {dim} values, biases {:?}, embedding norm p1/p50/p99 {:.3}/{:.3}/{:.3}",
        sources.len(),
        biases,
        percentile(&norms.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(), 0.01),
        percentile(&norms.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(), 0.5),
        percentile(&norms.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(), 0.99),
    );

    // Queries.
    let mut rng = Rng(0x9e37_79b9);
    let queries: Vec<Vec<f32>> = (0..n_queries)
        .map(|_| {
            let base = &sources[(rng.next().abs() * sources.len() as f32) as usize % sources.len()];
            query_near(&mut rng, base)
        })
        .collect();
    let n_truth = n_truth.min(n_queries);

    // SAFETY: as below.
    unsafe {
        libc::malloc_trim(0);
    }
    let rss_before = proc_status::kib("VmRSS:");
    let engine = Engine::open(&engine_kind, &out, dim, ivf)?;
    let mut truth: Vec<BinaryHeap<Kept>> = (0..n_truth).map(|_| BinaryHeap::new()).collect();
    let mut gen = Rng(0x5eed);
    let started = Instant::now();
    let mut insert_seconds = 0.0f64;
    let mut tail_seconds = 0.0f64;
    let tail_from = n - n / 10;
    let chunk = 2048usize;
    let mut made = 0usize;
    let mut last_report = Instant::now();
    while made < n {
        let take = chunk.min(n - made);
        let batch: Vec<VectorEntry> = (made..made + take)
            .map(|i| {
                let s = &sources[i % sources.len()];
                let round = i / sources.len();
                let mut v = s.clone();
                let sn = norm(&s[..d]);
                if round > 0 {
                    let amp = jitter * sn / (d as f32).sqrt();
                    v[..d].iter_mut().for_each(|x| *x += amp * gen.next());
                    let nn = norm(&v[..d]).max(1e-12);
                    v[..d].iter_mut().for_each(|x| *x *= sn / nn);
                }
                VectorEntry::bare(i as u64 + 1, v)
            })
            .collect();
        // Exact truth for the first queries (f32, the vectors as inserted).
        std::thread::scope(|scope| {
            let parts = 2;
            let per = truth.len().div_ceil(parts).max(1);
            for (qs, heaps) in queries[..n_truth].chunks(per).zip(truth.chunks_mut(per)) {
                let batch = &batch;
                scope.spawn(move || {
                    for (q, heap) in qs.iter().zip(heaps.iter_mut()) {
                        for e in batch {
                            let logit: f32 = e.vector.iter().zip(q).map(|(a, b)| a * b).sum();
                            keep_best(heap, logit, e.id);
                        }
                    }
                });
            }
        });
        let t = Instant::now();
        engine.index().insert(&batch)?;
        let dt = t.elapsed().as_secs_f64();
        insert_seconds += dt;
        if made >= tail_from {
            tail_seconds += dt;
        }
        made += take;
        if last_report.elapsed().as_secs() >= 30 {
            eprintln!(
                "  {made}/{n} inserted, {:.0} proposals/s so far ({:.0} s wall)",
                made as f64 / insert_seconds,
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let t = Instant::now();
    engine.index().persist()?;
    let persist_seconds = t.elapsed().as_secs_f64();
    drop(engine);
    drop(sources);
    let truth = sorted_truth(truth);
    // Hand freed memory back to the OS, so the reopened engine's RSS is its own.
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
    let t = Instant::now();
    let engine = Engine::open(&engine_kind, &out, dim, ivf)?;
    let open_seconds = t.elapsed().as_secs_f64();
    let index = engine.index();

    // The breadth the query server asks for k = 100 (`SearchEngine::run`: 2·(k + 1)).
    let server_ef = 2 * 101;
    let mut latencies = Vec::with_capacity(queries.len());
    let (mut hits, mut worst) = (0usize, 0f32);
    for (i, q) in queries.iter().enumerate() {
        let t = Instant::now();
        let found = index.search(q, 100, server_ef)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if i < n_truth {
            let (h, w) = recall_of(&found, &truth[i]);
            hits += h;
            worst = worst.max(w);
        }
    }
    let rss_after = proc_status::kib("VmRSS:");
    latencies.sort_by(f64::total_cmp);
    let recall = hits as f64 / (100 * n_truth) as f64;
    let disk = spotter_indexer::index::dir_size(&out);
    let ram = (rss_after.saturating_sub(rss_before)) * 1024;

    // Probe sweep (quantised engine only).
    let mut sweep = Vec::new();
    if let Engine::Ivf(ivf) = &engine {
        let sizes = ivf.list_sizes()?;
        eprintln!(
            "  list sizes: largest {:?}, median {}, empty {}",
            &sizes[..sizes.len().min(5)],
            sizes.get(sizes.len() / 2).copied().unwrap_or(0),
            sizes.iter().filter(|s| **s == 0).count()
        );
        for &p in &probes {
            let (mut h, mut lat) = (0usize, Vec::new());
            for (q, want) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let found = ivf.search_probing(q, 100, p)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                h += recall_of(&found, want).0;
            }
            lat.sort_by(f64::total_cmp);
            sweep.push(serde_json::json!({
                "probes": p,
                "recall_at_100": h as f64 / (100 * n_truth) as f64,
                "p50_ms": percentile(&lat, 0.5),
            }));
        }
    }

    let ingest = n as f64 / insert_seconds;
    let tail_rate = (n - tail_from) as f64 / tail_seconds.max(1e-9);
    eprintln!(
        "{engine_kind}: {n} proposals of {dim} floats\n  ingest {ingest:.0} proposals/s ({tail_rate:.0}/s over the last tenth), save {persist_seconds:.1} s, open {open_seconds:.1} s\n  RAM {:.0} B/proposal (RSS +{} MiB; peak {} MiB), disk {:.0} B/proposal ({} MiB)\n  recall@100 {recall:.4} (max logit error {worst:.2e}) over {n_truth} queries; search p50/p90/p99 {:.2}/{:.2}/{:.2} ms\n  {}",
        ram as f64 / n as f64,
        ram >> 20,
        proc_status::kib("VmHWM:") >> 10,
        disk as f64 / n as f64,
        disk >> 20,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        index.describe(),
    );
    for s in &sweep {
        eprintln!("  probes {s}");
    }
    println!(
        "{}",
        serde_json::json!({
            "engine": engine_kind,
            "proposals": n,
            "dim": dim,
            "ram_bytes_per_proposal": ram as f64 / n as f64,
            "disk_bytes_per_proposal": disk as f64 / n as f64,
            "recall_at_100": recall,
            "max_logit_error": worst,
            "ingest_proposals_per_s": ingest,
            "ingest_last_tenth_per_s": tail_rate,
            "ann_p50_ms": percentile(&latencies, 0.5),
            "ann_p90_ms": percentile(&latencies, 0.9),
            "ann_p99_ms": percentile(&latencies, 0.99),
            "save_seconds": persist_seconds,
            "open_seconds": open_seconds,
            "probe_sweep": sweep,
        })
    );
    Ok(())
}
