//! Vector-index benchmark: build time, recall against an exact inner-product scan, and query
//! speed of the embedded HNSW, on vectors shaped like the starter model's stored vectors
//! (`[S·ê ; B]`, ê a unit mixture of 80 class directions) and like WeDetect's (norms varying with
//! the level scale). Numbers go to docs/benchmarks.md.
//!
//! cargo run --release --example bench_vectors -- [COUNT] [DIM] [M] [EF_CONSTRUCTION]

use std::time::Instant;

use spotter_indexer::vectors::{HnswParams, HnswVectors, VectorIndex};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let dim: usize = args.get(2).map_or(Ok(384), |s| s.parse())?;
    let m: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let ef_c: usize = args.get(4).map_or(Ok(200), |s| s.parse())?;
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
            index.insert(chunk)?;
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
