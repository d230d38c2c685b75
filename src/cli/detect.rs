//! `spotter detect`: the model demo on one image.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use spotter_model::{decode_file, DecodeLimits, ImageTower, TextTower};

use super::{ModelArgs, ProposalArgs};
use crate::draw::{draw_box, PALETTE};
use crate::error::{Result, SpotterError};

/// Arguments of `spotter detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The image (jpg, png, webp, bmp, tiff, gif).
    pub image: PathBuf,
    /// Comma-separated texts to look for, e.g. "cat,red car,cup".
    #[arg(long, short)]
    pub text: String,
    /// Minimum score (the model's probability) to report (default: the manifest's).
    #[arg(long)]
    pub threshold: Option<f32>,
    #[command(flatten)]
    pub proposals: ProposalArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --json: add each proposal's embedding as the image graph gave it (the stored vector
    /// divided by its level's scale), for comparisons with other implementations.
    #[arg(long, requires = "json")]
    pub embeddings: bool,
    /// Save a copy of the image with the reported boxes drawn on it (PNG or JPEG by extension).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// One reported detection.
#[derive(Debug, Serialize)]
pub struct Detection {
    /// The text that scored best.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Scores against every text, in the order given.
    pub scores: Vec<f32>,
    /// Objectness of the proposal.
    pub objectness: f32,
    /// `x1, y1, x2, y2` in image pixels (displayed orientation).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The graph's embedding (only with `--embeddings`).
    pub embedding: Option<Vec<f32>>,
}

/// Parses "a, b,,c" into ["a", "b", "c"].
pub fn split_texts(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs `spotter detect`.
pub fn run(args: &DetectArgs) -> Result<()> {
    let texts = split_texts(&args.text);
    if texts.is_empty() {
        return Err(SpotterError::Usage(
            "--text needs at least one non-empty text".into(),
        ));
    }
    let package = args.model.package()?;
    let manifest = &package.manifest;
    let options = args.model.runtime();
    let image = decode_file(&args.image, DecodeLimits::default())?;
    let image_tower = ImageTower::load(&package, &options)?;
    let text_tower = TextTower::load(&package, &options)?;
    tracing::info!(model = %manifest.name, image_device = %image_tower.device(), text_device = %text_tower.device(), "model loaded");

    let params = args.proposals.params(&package);
    let threshold = args.threshold.unwrap_or(manifest.scoring.default_threshold);

    let prepared = image_tower.prepare(&image)?;
    let proposals = image_tower
        .detect(std::slice::from_ref(&prepared), &params)?
        .pop()
        .unwrap_or_default();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scoring = image_tower.scoring();
    let queries: Vec<Vec<f32>> = text_tower
        .embed_queries(&refs)?
        .iter()
        .map(|t| scoring.query_vector(t))
        .collect();

    let mut detections: Vec<Detection> = proposals
        .iter()
        .map(|p| {
            let scores: Vec<f32> = queries
                .iter()
                .map(|q| scoring.score(q, &p.vector))
                .collect();
            let best = (0..scores.len())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap_or(0);
            let embedding = args
                .embeddings
                .then(|| scoring.embedding_of(&p.vector, p.level as usize));
            Detection {
                label: texts[best].clone(),
                score: scores[best],
                scores,
                objectness: p.objectness,
                bbox: p.bbox,
                embedding,
            }
        })
        .filter(|d| d.score >= threshold)
        .collect();
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));

    if args.json {
        for d in &detections {
            let mut line = serde_json::json!({
                "image": args.image, "label": d.label, "score": d.score,
                "scores": texts.iter().zip(&d.scores).collect::<std::collections::BTreeMap<_, _>>(),
                "objectness": d.objectness, "box": d.bbox,
            });
            if let Some(e) = &d.embedding {
                line["embedding"] = serde_json::json!(e);
            }
            println!("{line}");
        }
    } else {
        print_table(args, &image, proposals.len(), threshold, &detections);
    }

    if let Some(out) = &args.out {
        let mut canvas = image.clone();
        let thickness = (image.width().max(image.height()) / 250).clamp(2, 8);
        for d in detections.iter().rev() {
            let color =
                PALETTE[texts.iter().position(|t| *t == d.label).unwrap_or(0) % PALETTE.len()];
            draw_box(&mut canvas, d.bbox, color, thickness);
        }
        canvas.save(out).map_err(|e| SpotterError::Encode {
            path: out.clone(),
            message: e.to_string(),
        })?;
        if !args.json {
            println!("annotated image: {}", out.display());
        }
    }
    Ok(())
}

fn print_table(
    args: &DetectArgs,
    image: &image::RgbImage,
    proposals: usize,
    threshold: f32,
    detections: &[Detection],
) {
    println!(
        "{} ({}x{}): {} proposals, {} with a score >= {threshold}",
        args.image.display(),
        image.width(),
        image.height(),
        proposals,
        detections.len()
    );
    if detections.is_empty() {
        println!("  nothing matched; lower --threshold to see weaker matches");
        return;
    }
    let width = detections
        .iter()
        .map(|d| d.label.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "  {:<width$}  {:>6}  {:>10}  box (x1, y1, x2, y2)",
        "label", "score", "objectness"
    );
    for d in detections {
        println!(
            "  {:<width$}  {:>6.3}  {:>10.3}  ({:.0}, {:.0}, {:.0}, {:.0})",
            d.label, d.score, d.objectness, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_split_on_commas_and_trimmed() {
        assert_eq!(
            split_texts(" cat, red car ,,cup "),
            vec!["cat", "red car", "cup"]
        );
        assert!(split_texts(" , ").is_empty());
    }
}
