//! `spotter models`: list installed model packages.

use std::path::PathBuf;

use clap::Args;
use spotter_model::ModelPackage;

use crate::error::Result;

/// Arguments of `spotter models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Extra folder to search for model packages.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Print each manifest as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Lists packages found in the model folders.
pub fn run(args: &ModelsArgs) -> Result<()> {
    let mut dirs: Vec<PathBuf> = args.models_dir.iter().cloned().collect();
    dirs.extend(spotter_model::default_model_dirs());
    if dirs.is_empty() {
        eprintln!("No model folders found: run scripts/setup.sh, or pass --models-dir.");
        return Ok(());
    }
    let mut found = 0;
    for dir in &dirs {
        for package in ModelPackage::list(dir) {
            found += 1;
            match package {
                Ok(p) if args.json => {
                    let line = serde_json::json!({"path": p.dir, "manifest": p.manifest});
                    println!("{line}");
                }
                Ok(p) => print_package(&p),
                Err(e) => eprintln!("warning: {e}"),
            }
        }
    }
    if found == 0 && !args.json {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        eprintln!(
            "No model packages in {}. Run scripts/setup.sh to build the starter model.",
            list.join(", ")
        );
    }
    Ok(())
}

fn print_package(p: &ModelPackage) {
    let m = &p.manifest;
    println!("{}  ({})", m.name, p.dir.display());
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!(
        "  image: {}x{} {:?} {:?}, batch {}, embedding {}-d, {} scoring level(s), {:?}",
        m.image.input_size[1],
        m.image.input_size[0],
        m.image.layout,
        m.image.channel_order,
        m.image
            .batch_size
            .map_or("dynamic".to_string(), |b| b.to_string()),
        m.embedding_dim,
        m.scoring.levels.len(),
        m.scoring.activation,
    );
    println!(
        "  proposals: objectness >= {}, NMS IoU {}, at most {} per image; default score threshold {}",
        m.proposals.objectness_threshold,
        m.proposals.nms_iou,
        m.proposals.max_per_image,
        m.scoring.default_threshold
    );
    if let Some(o) = &m.image.objectness {
        println!(
            "  objectness rule: {:?} ({} learned prompts, |p0| = {:.4})",
            o.rule, o.prompts, o.prompt0_norm
        );
    }
    println!(
        "  text: query template {:?}, max {} tokens",
        m.text.query_template, m.text.max_length
    );
    if !m.license.is_empty() {
        println!("  licence: {}", m.license);
    }
}
