//! `spotter search`: text query against an index, from the terminal.

use std::path::PathBuf;

use clap::Args;
use spotter_indexer::Index;
use spotter_model::{ModelPackage, Scoring, TextTower};

use super::ModelArgs;
use crate::error::{Result, SpotterError};

/// Arguments of `spotter search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, e.g. "red car".
    pub query: String,
    /// Index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Number of objects to return.
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Minimum score (the model's probability; default: the manifest's).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// HNSW search breadth (higher: better recall, slower).
    #[arg(long, default_value_t = 128)]
    pub ef: usize,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `spotter search`.
pub fn run(args: &SearchArgs) -> Result<()> {
    let query = args.query.trim();
    if query.is_empty() {
        return Err(SpotterError::Usage("the query is empty".into()));
    }
    if args.k == 0 {
        return Err(SpotterError::Usage("-k must be at least 1".into()));
    }
    let index = Index::open(&args.index)?;
    let mut model = args.model.clone();
    model.model = index.meta().model.clone();
    let package: ModelPackage = model.package()?;
    let text = TextTower::load(&package, &model.runtime())?;
    let scoring = Scoring::new(&package.manifest.scoring);
    let q = scoring.query_vector(&text.embed_queries(&[query])?[0]);
    let threshold = args
        .threshold
        .unwrap_or(package.manifest.scoring.default_threshold);
    let hits = index.search(&q, args.k, args.ef.max(args.k))?;
    let mut shown = 0;
    for hit in hits {
        let score = scoring.probability(hit.logit);
        if score < threshold {
            break;
        }
        shown += 1;
        let path = index.image_path(&hit.image)?;
        let b = hit.proposal.bbox;
        if args.json {
            let line = serde_json::json!({
                "score": score, "path": path, "box": b, "objectness": hit.proposal.objectness,
                "proposal": hit.proposal_id, "image": hit.image_id,
            });
            println!("{line}");
        } else {
            println!(
                "{score:.3}  {}  ({:.0}, {:.0}, {:.0}, {:.0})",
                path.display(),
                b[0],
                b[1],
                b[2],
                b[3]
            );
        }
    }
    if shown == 0 && !args.json {
        eprintln!("no object scored {threshold} or more for {query:?}; try --threshold 0.1");
    }
    Ok(())
}
