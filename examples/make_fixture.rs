//! Builds a large index for load tests and scaling figures from a real one: every proposal of
//! SOURCE is repeated with its embedding direction jittered (norm and level bias kept), pointing
//! at the same image files, until TARGET holds COUNT proposals. The vectors keep the real
//! distribution (clusters per class, real norms) while the index reaches sizes the 2-core test
//! machine cannot index from photos in reasonable time.
//!
//! The target uses the default (quantised) vector engine; `SPOTTER_FIXTURE_ENGINE=hnsw` picks
//! the HNSW one.
//!
//! cargo run --release --example make_fixture -- SOURCE_INDEX TARGET_INDEX COUNT

use std::path::Path;
use std::time::Instant;

use spotter_indexer::records::ProposalRecord;
use spotter_indexer::{EmbeddedEngine, Index};

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
    let engine = match std::env::var("SPOTTER_FIXTURE_ENGINE") {
        Ok(name) => name.parse()?,
        Err(_) => EmbeddedEngine::default(),
    };
    let src = Index::open(source)?;
    let images: Vec<_> = src.images().collect::<Result<_, _>>()?;
    let index = Index::create_like(target, &src, engine)?;
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
            let props = src.proposals_of(*id)?;
            if props.is_empty() {
                continue;
            }
            let new_id = index.new_image_id()?;
            let jittered: Vec<(ProposalRecord, Vec<f32>)> = props
                .into_iter()
                .map(|(_, p, mut v)| {
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
                    (p, v)
                })
                .collect();
            let mut rec = record.clone();
            rec.proposals = jittered.len() as u32;
            index.commit_image(new_id, &rec, &jittered, None)?;
            written += jittered.len();
            if written >= count {
                break 'outer;
            }
        }
        round += 1;
    }
    index.persist()?;
    let live = index.vector_count()?;
    println!(
        "wrote {written} proposals ({live} vectors, {} engine) in {:.1} s ({:.0} proposals/s)",
        engine.name(),
        started.elapsed().as_secs_f64(),
        written as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
