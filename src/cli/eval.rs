//! `spotter eval`: retrieval quality of an index against COCO-format labels.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use spotter_indexer::Index;
use spotter_model::{Scoring, TextTower};

use super::ModelArgs;
use crate::error::{Result, SpotterError};
use crate::eval::{evaluate, Coco, EvalImage};

/// Arguments of `spotter eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// COCO-format annotation file (images, annotations, categories).
    #[arg(long, value_name = "FILE")]
    pub annotations: PathBuf,
    /// Folder the annotation file's `file_name`s are relative to (index it first).
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Index built from that folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Probability above which an image counts as retrieved (WeDetect's README uses 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn read_coco(path: &PathBuf) -> Result<Coco> {
    let text = std::fs::read_to_string(path).map_err(|source| SpotterError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        SpotterError::Usage(format!(
            "{}: not a COCO annotation file: {e}",
            path.display()
        ))
    })
}

/// Runs `spotter eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let coco = read_coco(&args.annotations)?;
    let index = Arc::new(Index::open(&args.index)?);
    let mut model = args.model.clone();
    model.model = index.meta().model.clone();
    let package = model.package()?;
    index.check_model(&package)?;
    let text = TextTower::load(&package, &model.runtime())?;
    let scoring = Scoring::new(&package.manifest.scoring);
    let names: Vec<&str> = coco.categories.iter().map(|c| c.name.as_str()).collect();
    let queries: Vec<Vec<f32>> = text
        .embed_queries(&names)?
        .iter()
        .map(|t| scoring.query_vector(t))
        .collect();

    let images_dir = args
        .images
        .canonicalize()
        .map_err(|source| SpotterError::Io {
            path: args.images.clone(),
            source,
        })?;
    let roots = index.store().roots()?;
    let mut evaluated = Vec::with_capacity(coco.images.len());
    let mut missing = Vec::new();
    for image in &coco.images {
        let path = images_dir.join(&image.file_name);
        let found = roots.iter().find_map(|(id, root)| {
            let rel = path.strip_prefix(root).ok()?;
            let rel = spotter_indexer::RelPath::from_relative(rel);
            index.store().image_by_path(*id, &rel).ok().flatten()
        });
        let truth: Vec<(u64, [f32; 4])> = coco
            .annotations
            .iter()
            .filter(|a| a.image_id == image.id && a.iscrowd == 0)
            .map(|a| {
                (
                    a.category_id,
                    [
                        a.bbox[0],
                        a.bbox[1],
                        a.bbox[0] + a.bbox[2],
                        a.bbox[1] + a.bbox[3],
                    ],
                )
            })
            .collect();
        let mut proposals = Vec::new();
        match found {
            Some((id, _)) => {
                for (_, p) in index.store().proposals_of(id)? {
                    let v = p.vector.to_f32();
                    let probs = queries.iter().map(|q| scoring.score(q, &v)).collect();
                    proposals.push((p.bbox, p.objectness, probs));
                }
            }
            None => missing.push(image.file_name.clone()),
        }
        evaluated.push(EvalImage { truth, proposals });
    }
    if !missing.is_empty() {
        eprintln!(
            "warning: {} of {} images are not in the index (counted as having no proposals), e.g. {}; index {} first",
            missing.len(),
            coco.images.len(),
            missing[0],
            images_dir.display()
        );
    }
    let report = evaluate(&evaluated, &coco.categories, args.threshold);
    if args.json {
        super::print_json(&report)?;
        return Ok(());
    }
    println!(
        "{} images, model {}, threshold {}",
        report.images,
        index.meta().model,
        report.threshold
    );
    println!(
        "{:<16} {:>4} {:>9} {:>6} {:>6} {:>6} {:>6} {:>8}",
        "category", "pos", "retrieved", "P", "R", "F1", "AP", "box top1"
    );
    for (name, m) in &report.per_category {
        println!(
            "{name:<16} {:>4} {:>9} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>8.3}",
            m.positives, m.retrieved, m.precision, m.recall, m.f1, m.ap, m.box_top1
        );
    }
    let m = &report.macro_avg;
    println!(
        "{:<16} {:>4} {:>9} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>8.3}",
        "macro", "", "", m.precision, m.recall, m.f1, report.mean_ap, report.mean_box_top1
    );
    println!(
        "proposal recall (class-agnostic, IoU 0.5:0.95): AR@100 {:.3}, AR@300 {:.3}",
        report.ar_100, report.ar_300
    );
    println!("threshold sweep (macro P / R / F1):");
    for s in &report.sweep {
        println!(
            "  {:>4.2}: {:.3} / {:.3} / {:.3}",
            s.threshold, s.precision, s.recall, s.f1
        );
    }
    Ok(())
}
