//! Builds a large index for load tests and scaling figures from a real one: every proposal of
//! SOURCE is repeated with its embedding direction jittered (norm and level bias kept), pointing
//! at the same image files, until TARGET holds COUNT proposals. The vectors keep the real
//! distribution (clusters per class, real norms) while the index reaches sizes the 2-core test
//! machine cannot index from photos in reasonable time.
//!
//! cargo run --release --example make_fixture -- SOURCE_INDEX TARGET_INDEX COUNT

use std::path::Path;
use std::time::Instant;

use spotter_indexer::records::{ProposalRecord, StoredVector};
use spotter_indexer::store::Store;
use spotter_indexer::Index;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: make_fixture SOURCE_INDEX TARGET_INDEX COUNT");
        std::process::exit(2);
    }
    let (source, target, count): (&Path, &Path, usize) =
        (Path::new(&args[1]), Path::new(&args[2]), args[3].parse()?);
    if target.exists() {
        return Err(format!("{} exists; remove it first", target.display()).into());
    }
    let src = Index::open(source)?;
    let images: Vec<_> = src.store().images().collect::<Result<_, _>>()?;
    let roots = src.store().roots()?;
    let meta = src.meta().clone();
    let store = Store::open(target)?;
    store.set_meta(&meta)?;
    for (_, root) in &roots {
        store.root_id(root)?;
    }
    let mut seed = 0x5eed_u64;
    let mut noise = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let started = Instant::now();
    let (mut written, mut round) = (0usize, 0u32);
    'outer: loop {
        for (id, record) in &images {
            let props = src.store().proposals_of(*id)?;
            if props.is_empty() {
                continue;
            }
            let new_id = store.new_image_id()?;
            let jittered: Vec<ProposalRecord> = props
                .into_iter()
                .map(|(_, p)| {
                    let mut v = p.vector.to_f32();
                    let d = v.len() - 1;
                    let norm = v[..d].iter().map(|x| x * x).sum::<f32>().sqrt();
                    let amp = if round == 0 {
                        0.0
                    } else {
                        0.15 * norm / (d as f32).sqrt()
                    };
                    v[..d].iter_mut().for_each(|x| *x += amp * noise());
                    let new_norm = v[..d].iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v[..d].iter_mut().for_each(|x| *x *= norm / new_norm);
                    ProposalRecord {
                        image: new_id,
                        vector: StoredVector::new(&v, meta.half_precision),
                        ..p
                    }
                })
                .collect();
            let mut rec = record.clone();
            rec.proposals = jittered.len() as u32;
            store.put_image(new_id, &rec, &jittered, None)?;
            written += jittered.len();
            if written >= count {
                break 'outer;
            }
        }
        round += 1;
    }
    store.flush()?;
    drop(store);
    drop(src);
    println!(
        "wrote {written} proposals in {:.1} s; building the vector index…",
        started.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let index = Index::open(target)?; // reconcile inserts every proposal into the HNSW and saves it
    let live = index.vectors().len()?;
    println!(
        "vector index: {live} vectors in {:.1} s ({:.0} vectors/s)",
        t.elapsed().as_secs_f64(),
        live as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
