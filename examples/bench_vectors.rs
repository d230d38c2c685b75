//! Vector-index benchmark: build time, memory, recall against an exact inner-product scan, and
//! single-thread query speed of the embedded HNSW (`spotter_indexer::vectors::HnswVectors`).
//!
//! Two modes.
//!
//! *Synthetic* (no `--vectors`): vectors shaped like the starter model's stored vectors
//! (`[S·ê ; B]`, ê a unit mixture of 80 class directions) and like WeDetect's (norms varying with
//! the level scale), exact scan computed here. Numbers go to docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release --example bench_vectors -- [COUNT] [DIM] [M] [EF_CONSTRUCTION]
//! ```
//!
//! *Files*: stored vectors, queries and exact top-k ids from `.npy` files (float32 `(N, D)`,
//! float32 `(Q, D)`, int64 `(Q, K)`), as written by `scripts/bench/ann_compare.py`, so that the
//! same vectors can be given to other engines. Numbers go to docs/ann-comparison.md.
//!
//! ```sh
//! bench_vectors --vectors V.npy --queries Q.npy --ground-truth GT.npy \
//!     --m 16 --ef-construction 200 --ef 16,32,64,128,256 --k 10,100 \
//!     [--max-seconds 30] [--json] [--engine milvus://HOST:PORT/COLLECTION]
//! ```
//!
//! `--engine milvus://…` (build with `--features milvus`) measures a Milvus collection instead
//! (created, filled with upserts, flushed, indexed; queries are gRPC round trips, as Spotter
//! makes them); its memory is the server's, not this process's. A collection that already holds
//! exactly `N` vectors (an earlier run's, named again) is measured without rebuilding it.
//!
//! Vectors are inserted in chunks of 2048 (as the indexer does; hnsw_rs inserts a chunk on all
//! cores). Queries run one at a time on one thread. `--max-seconds` caps the time of one (ef, k)
//! setting: queries stop once it is spent (at least 50 are run) and recall is over those run.
//! Memory is the process's peak resident set (`VmHWM`) and its growth over the build.

#[path = "support/proc_status.rs"]
mod proc_status;

use std::time::Instant;

use spotter_indexer::vectors::{HnswParams, HnswVectors, VectorEntry, VectorIndex};

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

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a.starts_with("--")) {
        files_mode(&args)
    } else {
        synthetic_mode(&args)
    }
}

// ---------------------------------------------------------------------------------------------
// .npy files

/// A 2-d array read from a `.npy` file.
struct Array<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T> Array<T> {
    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Reads the header of a `.npy` file: dtype descriptor, shape, and where the data start.
/// Format: `\x93NUMPY`, major and minor version bytes, header length (u16 for version 1, u32 for
/// 2 and 3, little-endian), then a Python dict literal
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }` padded with spaces.
fn npy_header(bytes: &[u8], path: &str) -> Result<(String, Vec<usize>, usize), Error> {
    let bad =
        |why: &str| -> Error { format!("{path}: not a .npy file we can read ({why})").into() };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no magic string"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + len)
            .ok_or_else(|| bad("truncated header"))?,
    )?;
    let value_of = |key: &str| -> Result<&str, Error> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(&format!("no {key}")))?;
        let rest = &header[at + key.len() + 2..];
        let colon = rest.find(':').ok_or_else(|| bad("malformed header"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value_of("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad("malformed descr"))?
        .to_string();
    if value_of("fortran_order")?.starts_with("True") {
        return Err(bad("Fortran order"));
    }
    let shape = value_of("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()?;
    Ok((descr, shape, start + len))
}

/// Reads a 2-d little-endian `.npy` array whose dtype is `descr` (`<f4` or `<i8`).
fn read_npy<T, const N: usize>(
    path: &str,
    descr: &str,
    decode: fn([u8; N]) -> T,
) -> Result<Array<T>, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let (found, shape, start) = npy_header(&bytes, path)?;
    if found != descr {
        return Err(format!("{path}: dtype {found}, expected {descr}").into());
    }
    let (rows, cols) = match shape[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => return Err(format!("{path}: shape {shape:?}, expected 2 dimensions").into()),
    };
    let body = &bytes[start..];
    if body.len() < rows * cols * N {
        return Err(format!("{path}: truncated data").into());
    }
    let data = body[..rows * cols * N]
        .chunks_exact(N)
        .map(|c| decode(c.try_into().expect("chunk of N bytes")))
        .collect();
    Ok(Array { rows, cols, data })
}

// ---------------------------------------------------------------------------------------------
// Files mode

fn list(s: &str) -> Result<Vec<usize>, Error> {
    Ok(s.split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<_, _>>()?)
}

fn files_mode(args: &[String]) -> Result<(), Error> {
    let mut vectors = None;
    let mut queries = None;
    let mut truth = None;
    let mut m = 16usize;
    let mut ef_c = 200usize;
    let mut efs = vec![16usize, 32, 64, 128, 256];
    let mut ks = vec![10usize, 100];
    let mut json = false;
    let mut max_seconds = f64::INFINITY;
    let mut engine = "spotter-hnsw".to_string();
    let mut ivf = spotter_indexer::ivf::IvfParams::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| -> Error { format!("{a} needs a value").into() })
        };
        match a.as_str() {
            "--vectors" => vectors = Some(value()?),
            "--queries" => queries = Some(value()?),
            "--ground-truth" => truth = Some(value()?),
            "--m" => m = value()?.parse()?,
            "--ef-construction" => ef_c = value()?.parse()?,
            "--ef" => efs = list(&value()?)?,
            "--k" => ks = list(&value()?)?,
            "--max-seconds" => max_seconds = value()?.parse()?,
            "--json" => json = true,
            "--engine" => engine = value()?,
            "--train-at" => ivf.train_at = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (Some(vectors), Some(queries), Some(truth)) = (vectors, queries, truth) else {
        return Err("--vectors, --queries and --ground-truth are all needed".into());
    };
    let base: Array<f32> = read_npy(&vectors, "<f4", f32::from_le_bytes)?;
    let qs: Array<f32> = read_npy(&queries, "<f4", f32::from_le_bytes)?;
    let gt: Array<i64> = read_npy(&truth, "<i8", i64::from_le_bytes)?;
    if qs.cols != base.cols || gt.rows != qs.rows {
        return Err(format!(
            "shapes do not match: vectors {}x{}, queries {}x{}, ground truth {}x{}",
            base.rows, base.cols, qs.rows, qs.cols, gt.rows, gt.cols
        )
        .into());
    }
    if let Some(k) = ks.iter().find(|k| **k > gt.cols) {
        return Err(format!("k={k} but the ground truth holds {} ids", gt.cols).into());
    }
    let log = |s: String| {
        if json {
            eprintln!("{s}")
        } else {
            println!("{s}")
        }
    };

    let dir = std::env::temp_dir().join(format!("spotter-bench-vectors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rss_before_kib = proc_status::kib("VmRSS:");
    let params = HnswParams {
        m,
        ef_construction: ef_c,
    };
    // The embedded engine is kept by its own type, for its group count.
    let (embedded, remote): (Option<HnswVectors>, Option<Box<dyn VectorIndex>>) =
        match engine.as_str() {
            "spotter-hnsw" => (Some(HnswVectors::open(&dir, base.cols, params)?), None),
            "spotter-ivf" => (
                None,
                Some(Box::new(spotter_indexer::ivf::IvfVectors::open(
                    &dir, base.cols, ivf,
                )?)),
            ),
            _ => (None, Some(open_remote(&engine, base.cols, params)?)),
        };
    let index: &dyn VectorIndex = match (&embedded, &remote) {
        (Some(e), _) => e,
        (None, Some(r)) => r.as_ref(),
        (None, None) => unreachable!("one engine is always opened"),
    };
    let t = Instant::now();
    let mut chunk: Vec<VectorEntry> = Vec::with_capacity(2048);
    // A shared collection that already holds these vectors (an earlier run's, named again in
    // the URL) is measured as it is: building 1M vectors into Milvus takes this machine ~17 min.
    let reused = remote.is_some() && index.len()? == base.rows;
    if reused {
        log(format!(
            "{engine}: the collection already holds {} vectors: reused, not rebuilt",
            base.rows
        ));
    }
    for start in (0..base.rows).step_by(2048).filter(|_| !reused) {
        chunk.clear();
        chunk.extend((start..(start + 2048).min(base.rows)).map(|i| {
            let mut entry = VectorEntry::bare(i as u64, base.row(i).to_vec());
            if engine.starts_with("milvus://") {
                entry.payload = Some(bench_payload(i));
            }
            entry
        }));
        index.insert(&chunk)?;
    }
    drop(chunk);
    index.persist()?;
    let insert_s = t.elapsed().as_secs_f64();
    index.wait_until_indexed(std::time::Duration::from_secs(3600))?;
    let build_s = t.elapsed().as_secs_f64();
    let groups = match embedded.as_ref() {
        Some(e) => e.groups()?,
        None => 0,
    };
    let rss_after_kib = proc_status::kib("VmRSS:");
    let peak_kib = proc_status::kib("VmHWM:");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    log(format!(
        "{engine}: {} vectors of {} floats, M={m}, ef_construction={ef_c}: build {build_s:.1} s (inserts and save {insert_s:.1} s; {:.0} vectors/s, {threads} threads), {groups} group(s), peak RSS {:.0} MiB (+{:.0} MiB over the build)",
        base.rows,
        base.cols,
        base.rows as f64 / build_s,
        peak_kib as f64 / 1024.0,
        (rss_after_kib as f64 - rss_before_kib as f64) / 1024.0
    ));

    let mut results = Vec::new();
    for &ef in &efs {
        for &k in &ks {
            let t = Instant::now();
            let mut hit = 0usize;
            let mut done = 0usize;
            for qi in 0..qs.rows {
                let got = index.search(qs.row(qi), k, ef)?;
                let want = &gt.row(qi)[..k];
                hit += got.iter().filter(|n| want.contains(&(n.id as i64))).count();
                done += 1;
                if done >= 50 && t.elapsed().as_secs_f64() > max_seconds {
                    break;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let recall = hit as f64 / (k * done) as f64;
            let qps = done as f64 / secs;
            log(format!(
                "  ef={ef:<4} k={k:<3} recall {recall:.4}  {qps:.1} queries/s (1 thread, {done} queries)"
            ));
            results.push(serde_json::json!({
                "ef": ef, "k": k, "recall": recall, "qps": qps, "queries": done,
            }));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if json {
        let out = serde_json::json!({
            "engine": engine,
            "describe": index.describe(),
            "n": base.rows,
            "dim": base.cols,
            "m": m,
            "ef_construction": ef_c,
            "groups": groups,
            "build_s": build_s,
            "insert_s": insert_s,
            "build_threads": threads,
            "peak_rss_mib": peak_kib as f64 / 1024.0,
            "rss_delta_mib": (rss_after_kib as f64 - rss_before_kib as f64) / 1024.0,
            "input_mib": (base.data.len() * 4) as f64 / (1024.0 * 1024.0),
            "results": results,
        });
        println!("{out}");
    }
    Ok(())
}

/// A payload of realistic size for engines that keep one.
fn bench_payload(i: usize) -> spotter_indexer::vectors::HitPayload {
    spotter_indexer::vectors::HitPayload {
        image: (i / 20) as u64,
        root: "/srv/archive/photos".into(),
        path: format!("2024/album-{:03}/IMG_{:06}.jpg", i / 5000, i / 20).into(),
        width: 4032,
        height: 3024,
        bbox: [10.0, 20.0, 300.0, 400.0],
        objectness: 0.5,
        level: 0,
        photo: spotter_indexer::PhotoInfo {
            taken: Some(1_700_000_000 + i as i64),
            taken_offset_minutes: Some(60),
            taken_source: Some(spotter_indexer::TimeSource::Exif),
            camera: Some("Canon EOS 5D Mark IV".into()),
            gps: Some([48.8584, 2.2945]),
        },
    }
}

#[cfg(feature = "milvus")]
fn open_remote(
    engine: &str,
    dim: usize,
    params: HnswParams,
) -> Result<Box<dyn VectorIndex>, Error> {
    use spotter_indexer::backend::{MilvusIndex, VectorBackend};
    let VectorBackend::Milvus(mut config) = engine.parse::<VectorBackend>()? else {
        return Err(format!("--engine {engine}: expected a milvus:// URL").into());
    };
    if let MilvusIndex::Hnsw { .. } = config.index {
        config.index = MilvusIndex::Hnsw {
            m: params.m,
            ef_construction: params.ef_construction,
        };
    }
    let identity = spotter_indexer::milvus::CollectionIdentity {
        model: "bench".into(),
        manifest_hash: format!("bench-{dim}"),
        dim,
    };
    Ok(Box::new(spotter_indexer::milvus::MilvusVectors::open(
        &config,
        &identity,
        0..u64::MAX >> 1,
    )?))
}

#[cfg(not(feature = "milvus"))]
fn open_remote(
    engine: &str,
    _dim: usize,
    _params: HnswParams,
) -> Result<Box<dyn VectorIndex>, Error> {
    Err(format!("--engine {engine}: build this example with --features milvus").into())
}

// ---------------------------------------------------------------------------------------------
// Synthetic mode (docs/benchmarks.md)

fn synthetic_mode(args: &[String]) -> Result<(), Error> {
    let count: usize = args.first().map_or(Ok(20_000), |s| s.parse())?;
    let dim: usize = args.get(1).map_or(Ok(384), |s| s.parse())?;
    let m: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let ef_c: usize = args.get(3).map_or(Ok(200), |s| s.parse())?;
    let mut rng = Rng(7);
    // 80 class directions; each vector mixes its top-3 classes plus noise (clustered, like ConSE).
    let classes: Vec<Vec<f32>> = (0..80)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.next()).collect();
            normalise(&mut c);
            c
        })
        .collect();
    let levels = [(0.0609f32, -12.315f32), (0.1997, -10.934), (0.2794, -9.574)];
    for shape in ["starter", "wedetect-like"] {
        let items: Vec<(u64, Vec<f32>)> = (0..count)
            .map(|i| {
                let mut e = vec![0f32; dim];
                for k in 0..3 {
                    let c = &classes[(i * 7 + k * 13) % 80];
                    let w = [0.7, 0.2, 0.1][k];
                    e.iter_mut().zip(c).for_each(|(x, y)| *x += w * y);
                }
                e.iter_mut().for_each(|x| *x += 0.05 * rng.next());
                let v: Vec<f32> = if shape == "starter" {
                    normalise(&mut e);
                    let mut v: Vec<f32> = e.iter().map(|x| x * 12.0).collect();
                    v.push(-9.0);
                    v
                } else {
                    let (s, b) = levels[i % 3];
                    let norm = 20.0 + 30.0 * rng.next().abs();
                    normalise(&mut e);
                    let mut v: Vec<f32> = e.iter().map(|x| x * norm * s).collect();
                    v.push(b);
                    v
                };
                (i as u64, v)
            })
            .collect();
        let dir =
            std::env::temp_dir().join(format!("spotter-bench-vectors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let index = HnswVectors::open(
            &dir,
            dim + 1,
            HnswParams {
                m,
                ef_construction: ef_c,
            },
        )?;
        let t = Instant::now();
        for chunk in items.chunks(2048) {
            let entries: Vec<VectorEntry> = chunk
                .iter()
                .map(|(id, v)| VectorEntry::bare(*id, v.clone()))
                .collect();
            index.insert(&entries)?;
        }
        let build = t.elapsed().as_secs_f64();
        let queries: Vec<Vec<f32>> = (0..200)
            .map(|q| {
                let mut t: Vec<f32> = classes[q % 80]
                    .iter()
                    .map(|x| x + 0.1 * rng.next())
                    .collect();
                normalise(&mut t);
                t.push(1.0);
                t
            })
            .collect();
        let t = Instant::now();
        let exact: Vec<Vec<u64>> = queries
            .iter()
            .map(|q| {
                let mut s: Vec<(f32, u64)> = items
                    .iter()
                    .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
                    .collect();
                s.sort_by(|a, b| b.0.total_cmp(&a.0));
                s.into_iter().take(100).map(|(_, id)| id).collect()
            })
            .collect();
        let exact_qps = queries.len() as f64 / t.elapsed().as_secs_f64();
        println!("{shape}: {count} vectors of {} floats, M={m}, ef_construction={ef_c}: build {build:.1} s ({:.0} vectors/s); exact scan {exact_qps:.1} queries/s", dim + 1, count as f64 / build);
        for ef in [32usize, 64, 128, 256] {
            for k in [10usize, 100] {
                if ef < k {
                    continue;
                }
                let t = Instant::now();
                let mut hit = 0;
                for (q, want) in queries.iter().zip(&exact) {
                    let got = index.search(q, k, ef)?;
                    hit += got.iter().filter(|n| want[..k].contains(&n.id)).count();
                }
                let qps = queries.len() as f64 / t.elapsed().as_secs_f64();
                println!(
                    "  ef={ef:<4} recall@{k:<3} {:.3}  {qps:.0} queries/s (1 thread, {:.0}x exact)",
                    hit as f64 / (k * queries.len()) as f64,
                    qps / exact_qps
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
