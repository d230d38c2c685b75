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
    /// What to look for: `cat`, `"red car"`, `cat, dog`, `cat -dog`, `2:cat, dog`,
    /// `cat & sofa` (optional with --image: then mixed in).
    #[arg(required_unless_present = "image")]
    pub query: Option<String>,
    /// Search by example: objects like the ones the model sees in this photo (its three most
    /// object-like, each as its own concept), or with --box like the one in that region. The
    /// photo is only read, never indexed.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// With --image: `x1,y1,x2,y2` in the photo's displayed pixels (after EXIF rotation).
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2", requires = "image", value_parser = crate::image_query::parse_box)]
    pub region: Option<[f32; 4]>,
    /// With --image: its ranking weight beside the text query's concepts (as `2:` weighs one).
    #[arg(long, value_name = "W", requires = "image", value_parser = crate::image_query::parse_weight)]
    pub image_weight: Option<f32>,
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
    /// Only photos taken at or after this date (2024-05-01) or date-time (2024-05-01T18:30:00),
    /// by the photo's own clock (EXIF, else the file's modification time).
    #[arg(long, value_name = "DATE", value_parser = wall_clock)]
    pub after: Option<String>,
    /// Only photos taken before this date or date-time.
    #[arg(long, value_name = "DATE", value_parser = wall_clock)]
    pub before: Option<String>,
    /// Only photos whose camera (EXIF make and model) contains this, ignoring case.
    #[arg(long, value_name = "TEXT")]
    pub camera: Option<String>,
    /// Order: `score` (best first) or `time` (newest capture time first; gathers every match
    /// above the threshold first).
    #[arg(long, value_enum, default_value_t = SortArg::Score)]
    pub sort: SortArg,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `spotter search`.
pub fn run(args: &SearchArgs) -> Result<()> {
    let query = match &args.query {
        Some(text) => crate::query::parse(text).map_err(SpotterError::Usage)?,
        None => crate::query::Query {
            positives: Vec::new(),
            negatives: Vec::new(),
            together: Vec::new(),
        },
    };
    let example = args.image.as_deref().map(read_example).transpose()?;
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
    if let Some(server) = crate::served::find(&args.index)? {
        return print_hits(args, &served_search(args, &server, example.as_deref())?);
    }
    let index = Arc::new(Index::open(&args.index)?);
    let mut model = args.model.clone();
    model.model = index.meta().model.clone();
    let package = model.package()?;
    let engine = SearchEngine::new(index.clone(), package.clone(), &model.runtime(), 1)?
        .with_image_tower(Arc::new(crate::image_query::LazyImageTower::new(
            package,
            model.runtime(),
        )));
    let mut examples = match &example {
        Some(bytes) => engine.example_concepts(bytes, args.region, Default::default())?,
        None => Vec::new(),
    };
    if let Some(w) = args.image_weight {
        examples.iter_mut().for_each(|c| c.weight = w);
    }
    let params = SearchParams {
        k: args.k,
        offset: args.offset,
        threshold: args.threshold,
        ef: args.ef,
        filters: Filters {
            path_prefix: args.path.clone(),
            taken_after: args
                .after
                .as_deref()
                .and_then(crate::server::parse_wall_clock),
            taken_before: args
                .before
                .as_deref()
                .and_then(crate::server::parse_wall_clock),
            camera: args.camera.clone().filter(|c| !c.trim().is_empty()),
            ..Default::default()
        },
        sort: match args.sort {
            SortArg::Score => crate::engine::SortOrder::Score,
            SortArg::Time => crate::engine::SortOrder::Time,
        },
        cancel: crate::engine::Cancel::new(),
    };
    let result = engine.search_mixed(&query, &examples, &params)?;
    let mut hits = Vec::with_capacity(result.hits.len());
    for hit in &result.hits {
        // The full path for people: bytes that are not UTF-8 as `\xNN` (lossless, unlike
        // `to_string_lossy`); the text output also escapes control characters.
        let path = match index.image_info(hit.image)? {
            Some(info) => spotter_indexer::relpath::display_path(&info.path),
            None => hit.path.clone(),
        };
        // Through text, as a served index's hits come: an f32 then prints in its shortest
        // form (`0.95198464`), not as the f64 it widens to (`0.9519846439361572`).
        let mut json: serde_json::Value = serde_json::to_string(hit)
            .and_then(|text| serde_json::from_str(&text))
            .map_err(|e| SpotterError::Internal(format!("cannot encode a hit as JSON: {e}")))?;
        json["path"] = serde_json::Value::String(path);
        hits.push(json);
    }
    let page = Page {
        hits,
        threshold: result.threshold,
        next_offset: result.next_offset,
    };
    print_hits(args, &page)
}

/// `--sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortArg {
    /// Best match first.
    Score,
    /// Newest capture time first.
    Time,
}

/// The bytes of an example photo (`--image`), refused past the server's upload limit.
fn read_example(path: &std::path::Path) -> Result<Vec<u8>> {
    let io = |source| SpotterError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    let limit = crate::image_query::MAX_EXAMPLE_BYTES as u64;
    if size > limit {
        return Err(SpotterError::Usage(format!(
            "{} is {size} bytes; an example image may have at most {limit}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io)
}

/// `--after` / `--before`: checked here, kept as given (the server parses it the same way).
fn wall_clock(text: &str) -> std::result::Result<String, String> {
    crate::server::parse_wall_clock(text)
        .map(|_| text.to_string())
        .ok_or_else(|| "give a date (2024-05-01) or a date-time (2024-05-01T18:30:00)".into())
}

/// One page of hits as the API sends them, each `path` the image's full path (as displayed).
struct Page {
    hits: Vec<serde_json::Value>,
    threshold: f32,
    next_offset: Option<usize>,
}

/// The same search on the server that holds the index: its page, with full paths made from
/// the server's archive roots (`roots[hit.root]`) and the hits' paths inside them.
fn served_search(
    args: &SearchArgs,
    server: &crate::served::ServedIndex,
    example: Option<&[u8]>,
) -> Result<Page> {
    use crate::served::encode;
    let route = if example.is_some() {
        "/api/search/image"
    } else {
        "/api/search"
    };
    let mut query = format!("{route}?k={}&offset={}", args.k, args.offset);
    if let Some(text) = &args.query {
        query.push_str(&format!("&q={}", encode(text)));
    }
    if let Some(b) = args.region {
        query.push_str(&format!("&box={},{},{},{}", b[0], b[1], b[2], b[3]));
    }
    if let Some(w) = args.image_weight {
        query.push_str(&format!("&weight={w}"));
    }
    if let Some(t) = args.threshold {
        query.push_str(&format!("&threshold={t}"));
    }
    if let Some(ef) = args.ef {
        query.push_str(&format!("&ef={ef}"));
    }
    if let Some(prefix) = &args.path {
        query.push_str(&format!("&path={}", encode(prefix)));
    }
    if args.sort == SortArg::Time {
        query.push_str("&sort=time");
    }
    for (name, value) in [
        ("after", &args.after),
        ("before", &args.before),
        ("camera", &args.camera),
    ] {
        if let Some(value) = value {
            query.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    let answer = match example {
        Some(bytes) => server.post_file(&query, "image", bytes)?,
        None => server.get(&query)?,
    };
    let stats = server.get("/api/stats")?;
    let roots: Vec<&str> = stats["roots"]
        .as_array()
        .map(|r| r.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    let bad = |what: &str| {
        SpotterError::Internal(format!(
            "the server at {} sent a search answer without {what}",
            server.url()
        ))
    };
    let mut hits = answer["hits"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad("hits"))?;
    for hit in &mut hits {
        let root = hit["root"].as_u64().and_then(|r| roots.get(r as usize));
        let inside = hit["path"].as_str().ok_or_else(|| bad("a hit's path"))?;
        if let Some(root) = root {
            let full = format!("{}/{inside}", root.trim_end_matches('/'));
            hit["path"] = serde_json::Value::String(full);
        }
    }
    Ok(Page {
        hits,
        threshold: answer["threshold"]
            .as_f64()
            .ok_or_else(|| bad("its threshold"))? as f32,
        next_offset: answer["next_offset"].as_u64().map(|n| n as usize),
    })
}

fn print_hits(args: &SearchArgs, page: &Page) -> Result<()> {
    for hit in &page.hits {
        if args.json {
            println!("{hit}");
            continue;
        }
        let b: Vec<f64> = hit["box"]
            .as_array()
            .map(|b| b.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        let [x1, y1, x2, y2] = b[..] else {
            return Err(SpotterError::Internal(format!(
                "a hit without its box: {hit}"
            )));
        };
        println!(
            "{:.3}  {}  ({x1:.0}, {y1:.0}, {x2:.0}, {y2:.0})  {}",
            hit["score"].as_f64().unwrap_or(f64::NAN),
            super::terminal_safe(hit["path"].as_str().unwrap_or("")),
            super::terminal_safe(hit["concept"].as_str().unwrap_or(""))
        );
    }
    if page.hits.is_empty() && !args.json {
        let filtered = args.path.is_some()
            || args.after.is_some()
            || args.before.is_some()
            || args.camera.is_some();
        eprintln!(
            "no object scored {} or more{}; try a lower --threshold",
            page.threshold,
            if filtered {
                " in the photos the filters keep (--path, --after, --before, --camera)"
            } else {
                ""
            }
        );
    } else if let Some(next) = page.next_offset {
        if !args.json {
            eprintln!("more results: --offset {next}");
        }
    }
    Ok(())
}
