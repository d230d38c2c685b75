//! `spotter eval`: retrieval quality and proposal recall against COCO-format labels, of an index
//! or of a file of proposals in COCO's results format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use spotter_indexer::Index;
use spotter_model::{Scoring, TextTower};

use super::ModelArgs;
use crate::error::{Result, SpotterError};
use crate::eval::{evaluate, Coco, CrowdRule, EvalImage, EvalProposal, EvalReport, TruthBox};

/// Arguments of `spotter eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// COCO-format annotation file (images, annotations, categories).
    #[arg(long, value_name = "FILE")]
    pub annotations: PathBuf,
    /// Folder the annotation file's `file_name`s are relative to (index it first).
    #[arg(long, value_name = "DIR", required_unless_present = "proposals")]
    pub images: Option<PathBuf>,
    /// Index built from that folder.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "proposals",
        conflicts_with = "proposals"
    )]
    pub index: Option<PathBuf>,
    /// Evaluate proposals from a file instead of an index: COCO's results format, a JSON list
    /// of `{"image_id", "bbox": [x, y, w, h], "score"}` (score = objectness), each optionally
    /// with `"category_scores": {"<category id>": probability}` for the retrieval metrics.
    #[arg(long, value_name = "FILE")]
    pub proposals: Option<PathBuf>,
    /// Probability above which an image counts as retrieved (WeDetect's README uses 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f32,
    /// Whether an image whose only boxes of a category are crowd regions is a positive of that
    /// category: `count` (WeDetect's retrieval metric, `COCO.getImgIds(catIds=…)`) or `exclude`.
    #[arg(long, value_enum, default_value_t = CrowdArg::Count)]
    pub crowd: CrowdArg,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--crowd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrowdArg {
    /// Crowd regions make positives (WeDetect).
    Count,
    /// Only non-crowd boxes make positives.
    Exclude,
}

impl From<CrowdArg> for CrowdRule {
    fn from(arg: CrowdArg) -> Self {
        match arg {
            CrowdArg::Count => CrowdRule::Count,
            CrowdArg::Exclude => CrowdRule::Exclude,
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| SpotterError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| SpotterError::Usage(format!("{}: not {what}: {e}", path.display())))
}

/// One entry of a COCO results file.
#[derive(Debug, Deserialize)]
struct ResultEntry {
    image_id: u64,
    bbox: [f64; 4],
    score: f32,
    #[serde(default)]
    category_scores: Option<HashMap<String, f32>>,
}

fn truth_of(coco: &Coco) -> HashMap<u64, Vec<TruthBox>> {
    let mut truth: HashMap<u64, Vec<TruthBox>> = HashMap::new();
    for a in &coco.annotations {
        truth
            .entry(a.image_id)
            .or_default()
            .push(TruthBox::from_annotation(a));
    }
    truth
}

/// The images of `coco` with the proposals of a results file; `false` when no entry carries
/// category scores.
fn from_results(coco: &Coco, path: &Path) -> Result<(Vec<EvalImage>, bool)> {
    let entries: Vec<ResultEntry> = read_json(path, "a COCO results file")?;
    let mut truth = truth_of(coco);
    let column: HashMap<String, usize> = coco
        .categories
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.to_string(), i))
        .collect();
    let known: HashMap<u64, usize> = coco
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.id, i))
        .collect();
    let mut images: Vec<EvalImage> = coco
        .images
        .iter()
        .map(|im| EvalImage {
            truth: truth.remove(&im.id).unwrap_or_default(),
            proposals: Vec::new(),
        })
        .collect();
    let mut scored = false;
    for (n, e) in entries.into_iter().enumerate() {
        let Some(&i) = known.get(&e.image_id) else {
            return Err(SpotterError::Usage(format!(
                "{}: entry {n} names image {}, which the annotation file does not list",
                path.display(),
                e.image_id
            )));
        };
        let mut probs = vec![0.0; coco.categories.len()];
        if let Some(scores) = &e.category_scores {
            scored = true;
            for (id, p) in scores {
                let Some(&c) = column.get(id) else {
                    return Err(SpotterError::Usage(format!(
                        "{}: entry {n} scores category {id}, which the annotation file does not list",
                        path.display()
                    )));
                };
                probs[c] = *p;
            }
        }
        let [x, y, w, h] = e.bbox;
        images[i].proposals.push(EvalProposal {
            bbox: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
            objectness: e.score,
            probs,
        });
    }
    Ok((images, scored))
}

/// The images of `coco` with their proposals from an index, scored against the category names.
fn from_index(
    args: &EvalArgs,
    coco: &Coco,
    index_dir: &Path,
    images_dir: &Path,
) -> Result<Vec<EvalImage>> {
    let index = Arc::new(Index::open(index_dir)?);
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

    let images_dir = images_dir
        .canonicalize()
        .map_err(|source| SpotterError::Io {
            path: images_dir.to_path_buf(),
            source,
        })?;
    let mut truth = truth_of(coco);
    let mut evaluated = Vec::with_capacity(coco.images.len());
    let mut missing = Vec::new();
    for image in &coco.images {
        let path = images_dir.join(&image.file_name);
        let found = index.image_at(&path)?;
        let mut proposals = Vec::new();
        match found {
            Some((id, _)) => {
                for (_, p, v) in index.proposals_of(id)? {
                    let probs = queries.iter().map(|q| scoring.score(q, &v)).collect();
                    proposals.push(EvalProposal {
                        bbox: p.bbox,
                        objectness: p.objectness,
                        probs,
                    });
                }
            }
            None => missing.push(image.file_name.clone()),
        }
        evaluated.push(EvalImage {
            truth: truth.remove(&image.id).unwrap_or_default(),
            proposals,
        });
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
    Ok(evaluated)
}

/// Runs `spotter eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let coco: Coco = read_json(&args.annotations, "a COCO annotation file")?;
    let (images, retrieval, source) = match (&args.proposals, &args.index, &args.images) {
        (Some(file), _, _) => {
            let (images, scored) = from_results(&coco, file)?;
            (images, scored, file.display().to_string())
        }
        (None, Some(index), Some(dir)) => {
            let images = from_index(args, &coco, index, dir)?;
            (images, true, format!("index {}", index.display()))
        }
        _ => {
            return Err(SpotterError::Usage(
                "give --index and --images, or --proposals".into(),
            ))
        }
    };
    let report = evaluate(&images, &coco.categories, args.threshold, args.crowd.into());
    if args.json {
        return super::print_json(&report);
    }
    print_report(&report, &source, retrieval);
    Ok(())
}

fn print_report(report: &EvalReport, source: &str, retrieval: bool) {
    println!(
        "{} images, {source}, threshold {}, crowd regions {}",
        report.images,
        report.threshold,
        match report.crowd {
            CrowdRule::Count => "count as positives",
            CrowdRule::Exclude => "do not count as positives",
        }
    );
    if retrieval {
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
    } else {
        println!("(no category_scores in the proposals file: retrieval metrics skipped)");
    }
    println!(
        "proposal recall (class-agnostic, one-to-one, IoU 0.5:0.95): AR@100 {:.4}, AR@300 {:.4} (WeDetect's eval_recalls); {:.4}, {:.4} (COCOeval, useCats=0)",
        report.ar_100, report.ar_300, report.coco_ar_100, report.coco_ar_300
    );
    println!(
        "proposals per image: mean {:.1}, max {}",
        report.mean_proposals_per_image, report.max_proposals_per_image
    );
    if report.max_proposals_per_image <= 100 {
        println!(
            "note: no image has more than 100 proposals, so AR@300 = AR@100; index with --proposal-profile reference-eval (300 per image, no objectness threshold, as WeDetect's evaluation) to measure AR@300"
        );
    }
    if retrieval {
        println!("threshold sweep (macro P / R / F1):");
        for s in &report.sweep {
            println!(
                "  {:>4.2}: {:.3} / {:.3} / {:.3}",
                s.threshold, s.precision, s.recall, s.f1
            );
        }
    }
}
