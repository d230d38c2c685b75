//! `spotter search`: text query against an index, from the terminal.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use spotter_indexer::Index;

use super::ModelArgs;
use crate::engine::{Filters, SearchEngine, SearchParams, MAX_K};
use crate::error::{Result, SpotterError};

/// Arguments of `spotter search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for: `cat`, `"red car"`, `cat, dog`, `cat -dog`, `2:cat, dog`.
    pub query: String,
    /// Index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Number of objects to return.
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Skip this many results (paging).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Minimum score (the model's probability; default: the manifest's).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// HNSW search breadth (higher: better recall, slower; default adapts to k).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Only images whose path inside the archive starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `spotter search`.
pub fn run(args: &SearchArgs) -> Result<()> {
    let query = crate::query::parse(&args.query).map_err(SpotterError::Usage)?;
    if args.k == 0 || args.k > MAX_K {
        return Err(SpotterError::Usage(format!(
            "-k must be between 1 and {MAX_K}"
        )));
    }
    if let Some(t) = args.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(SpotterError::Usage(
                "--threshold must be between 0 and 1".into(),
            ));
        }
    }
    let index = Arc::new(Index::open(&args.index)?);
    let mut model = args.model.clone();
    model.model = index.meta().model.clone();
    let engine = SearchEngine::new(index.clone(), model.package()?, &model.runtime(), 1)?;
    let params = SearchParams {
        k: args.k,
        offset: args.offset,
        threshold: args.threshold,
        ef: args.ef,
        filters: Filters {
            path_prefix: args.path.clone(),
            ..Default::default()
        },
        cancel: crate::engine::Cancel::new(),
    };
    let result = engine.search(&query, &params)?;
    for hit in &result.hits {
        // The full path for people: bytes that are not UTF-8 as `\xNN` (lossless, unlike
        // `to_string_lossy`); the text output also escapes control characters.
        let path = match index.image_info(hit.image)? {
            Some(info) => spotter_indexer::relpath::display_path(&info.path),
            None => hit.path.clone(),
        };
        let b = hit.bbox;
        if args.json {
            let mut line = serde_json::to_value(hit)
                .map_err(|e| SpotterError::Usage(format!("cannot print a hit as JSON: {e}")))?;
            line["path"] = serde_json::Value::String(path);
            println!("{line}");
        } else {
            println!(
                "{:.3}  {}  ({:.0}, {:.0}, {:.0}, {:.0})  {}",
                hit.score,
                super::terminal_safe(&path),
                b[0],
                b[1],
                b[2],
                b[3],
                super::terminal_safe(&hit.concept)
            );
        }
    }
    if result.hits.is_empty() && !args.json {
        eprintln!(
            "no object scored {} or more; try a lower --threshold",
            result.threshold
        );
    } else if let Some(next) = result.next_offset {
        if !args.json {
            eprintln!("more results: --offset {next}");
        }
    }
    Ok(())
}
