//! Model-alone throughput: the image graph on pre-letterboxed tensors, same batch and threads as
//! `spotter index`, no decoding and no writing. The denominator of the indexing-efficiency ratio
//! in docs/benchmarks.md.
//!
//! cargo run --release --example bench_model -- MODEL_DIR IMAGES_DIR BATCH COUNT

use std::time::Instant;

use spotter_model::{
    decode_file, Device, ImageTower, ModelPackage, ProposalParams, RuntimeOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench_model MODEL_DIR IMAGES_DIR BATCH COUNT");
        std::process::exit(2);
    }
    let package = ModelPackage::open(&args[1])?;
    let batch: usize = args[3].parse()?;
    let count: usize = args[4].parse()?;
    let tower = ImageTower::load(
        &package,
        &RuntimeOptions::default().with_device(Device::Auto),
    )?;
    let params = ProposalParams::from(&package.manifest.proposals);
    let mut photos = Vec::new();
    for entry in std::fs::read_dir(&args[2])? {
        let path = entry?.path();
        if let Ok(img) = decode_file(&path, Default::default()) {
            photos.push(tower.prepare(&img)?);
        }
    }
    if photos.is_empty() {
        return Err("no decodable image in IMAGES_DIR".into());
    }
    let inputs: Vec<_> = (0..count)
        .map(|i| photos[i % photos.len()].clone())
        .collect();
    // Warm-up.
    tower.detect(&inputs[..batch.min(inputs.len())], &params)?;
    let started = Instant::now();
    let mut proposals = 0;
    for chunk in inputs.chunks(batch) {
        proposals += tower
            .detect(chunk, &params)?
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {count}, \"batch\": {batch}, \"seconds\": {secs:.3}, \"images_per_second\": {:.3}, \"proposals\": {proposals}, \"device\": \"{}\"}}",
        count as f64 / secs,
        tower.device()
    );
    Ok(())
}
