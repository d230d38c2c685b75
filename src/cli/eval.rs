//! `spotter eval`: retrieval quality and proposal recall against COCO-format labels, of an index
//! or of a file of proposals in COCO's results format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use spotter_indexer::Index;

use super::ModelArgs;
use crate::engine::{Cancel, SearchEngine, MAX_SCORED_IMAGES};
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

/// The images of `coco` with their proposals from an index, scored against the category
/// names: through the server when one holds the index (the same numbers, computed by the same
/// code), directly otherwise.
fn from_index(
    args: &EvalArgs,
    coco: &Coco,
    index_dir: &Path,
    images_dir: &Path,
) -> Result<Vec<EvalImage>> {
    let images_dir = images_dir
        .canonicalize()
        .map_err(|source| SpotterError::Io {
            path: images_dir.to_path_buf(),
            source,
        })?;
    let paths: Vec<PathBuf> = coco
        .images
        .iter()
        .map(|image| images_dir.join(&image.file_name))
        .collect();
    let names: Vec<String> = coco.categories.iter().map(|c| c.name.clone()).collect();
    let scored = match crate::served::find(index_dir)? {
        Some(server) => served_proposals(&server, &paths, &names)?,
        None => {
            let index = Arc::new(Index::open(index_dir)?);
            let mut model = args.model.clone();
            model.model = index.meta().model.clone();
            let engine = SearchEngine::new(index, model.package()?, &model.runtime(), 1)?;
            let mut scored = Vec::with_capacity(paths.len());
            for batch in paths.chunks(MAX_SCORED_IMAGES) {
                scored.extend(engine.score_images(batch, &names, &Cancel::new())?);
            }
            scored
        }
    };

    let mut truth = truth_of(coco);
    let mut evaluated = Vec::with_capacity(coco.images.len());
    let mut missing = Vec::new();
    for (image, proposals) in coco.images.iter().zip(scored) {
        if proposals.is_none() {
            missing.push(image.file_name.clone());
        }
        evaluated.push(EvalImage {
            truth: truth.remove(&image.id).unwrap_or_default(),
            proposals: proposals.unwrap_or_default(),
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

/// The scored proposals of `paths` from the server holding the index, in batches whose answers
/// stay well under the client's 10 MB limit (sized from the index's proposals per image).
fn served_proposals(
    server: &crate::served::ServedIndex,
    paths: &[PathBuf],
    names: &[String],
) -> Result<Vec<Option<Vec<EvalProposal>>>> {
    let stats = server.get("/api/stats")?;
    let per_image = stats["proposals"].as_f64().unwrap_or(0.0)
        / stats["indexed"].as_f64().unwrap_or(1.0).max(1.0);
    // ~12 bytes per score, ~100 per proposal around them.
    let bytes_per_image = per_image.max(1.0) * (12.0 * names.len() as f64 + 100.0);
    let batch = ((ANSWER_BUDGET_BYTES / bytes_per_image) as usize).clamp(1, MAX_SCORED_IMAGES);
    let mut scored = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch) {
        let texts = chunk
            .iter()
            .map(|p| {
                p.to_str().map(str::to_string).ok_or_else(|| {
                    SpotterError::Usage(format!(
                        "{} is not UTF-8 text, which a served index cannot be asked about; stop \
                         the server to evaluate this folder",
                        p.display()
                    ))
                })
            })
            .collect::<Result<Vec<String>>>()?;
        let body = serde_json::json!({ "paths": texts, "concepts": names });
        let answer: ProposalsAnswer = serde_json::from_value(server.post("/api/proposals", &body)?)
            .map_err(|e| {
                SpotterError::Internal(format!(
                    "the server at {} sent proposals it did not describe: {e}",
                    server.url()
                ))
            })?;
        if answer.images.len() != chunk.len() {
            return Err(SpotterError::Internal(format!(
                "the server at {} answered {} images for {} paths",
                server.url(),
                answer.images.len(),
                chunk.len()
            )));
        }
        scored.extend(answer.images);
    }
    Ok(scored)
}

/// Bytes a served batch's answer aims at.
const ANSWER_BUDGET_BYTES: f64 = 4_000_000.0;

/// `POST /api/proposals`'s answer, as this client reads it.
#[derive(Deserialize)]
struct ProposalsAnswer {
    images: Vec<Option<Vec<EvalProposal>>>,
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
