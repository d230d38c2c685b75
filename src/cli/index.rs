//! `spotter index`, `spotter stats`, `spotter compact`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use spotter_indexer::{HnswParams, Index, IndexRequest, IndexSettings, Progress};
use spotter_model::{DecodeLimits, ImageTower};

use super::{ModelArgs, ProposalArgs};
use crate::error::{Result, SpotterError};

/// Arguments of `spotter index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Archive folders to index (several roots can share one index). None with --vectors:
    /// make DIR a search-only folder of that shared collection (for a query server).
    #[arg(value_name = "ARCHIVE", required_unless_present = "vectors")]
    pub archives: Vec<PathBuf>,
    /// Index folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Where vectors live: `embedded` (default, in DIR) or a Milvus collection shared by
    /// several machines, `milvus://HOST[:PORT]/COLLECTION[?index=hnsw&m=16&ef_construction=200]`
    /// (needs a build with `--features milvus`). Only when creating the index.
    #[arg(long, value_name = "URL")]
    pub vectors: Option<spotter_indexer::VectorBackend>,
    /// With a shared collection: index only shard I of N of the archive (a file's shard depends
    /// on its path), so N machines index one archive in parallel; each needs its own DIR.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<spotter_indexer::Shard>,
    /// Images per inference batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[command(flatten)]
    pub proposals: ProposalArgs,
    /// Follow symbolic links (loops are detected and reported).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Also index hidden (dot) and system folders (@eaDir, $RECYCLE.BIN, ...).
    #[arg(long)]
    pub include_hidden: bool,
    /// Only index paths (relative to the archive) matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip paths matching this glob, e.g. "**/thumbs/**"; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = spotter_model::preprocess::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Memory for decoded pixels shared by all decoding threads, in MiB (a decode waits for
    /// room; one image larger than this still decodes, alone).
    #[arg(long, default_value_t = spotter_model::DEFAULT_DECODE_BUDGET >> 20)]
    pub decode_memory: u64,
    /// Retry files that failed before even if they did not change.
    #[arg(long)]
    pub retry_failed: bool,
    /// Delete the records of gone files even when more than half of a root's files (and at
    /// least 10) are gone at once. Without it those deletions are skipped with a warning, because
    /// an unmounted or half-synced archive looks the same as a deleted one.
    #[arg(long)]
    pub allow_deletions: bool,
    /// Embedded vector engine, only when creating the index: `quantised` (default: int8 codes
    /// in memory, ~0.8 KB of RAM and ~1.65 KB of disk per proposal for 768-d models, exact scores
    /// after re-ranking) or `hnsw` (f32 graphs, several KB of RAM per proposal; what indexes
    /// made before version 0.2 use).
    #[arg(long, value_name = "ENGINE")]
    pub vector_engine: Option<spotter_indexer::EmbeddedEngine>,
    /// With `--vector-engine hnsw`: store vectors as 16-bit floats (half the disk; only when
    /// creating the index).
    #[arg(long)]
    pub f16: bool,
    /// With `--vector-engine hnsw`: max connections per node (only when creating the index).
    #[arg(long, default_value_t = 16)]
    pub hnsw_m: usize,
    /// With `--vector-engine hnsw`: construction breadth (only when creating the index).
    #[arg(long, default_value_t = 200)]
    pub hnsw_ef_construction: usize,
    /// Threads reading and decoding images (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub decode_threads: usize,
    /// Print the final report as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// On an index a running server holds: queue the job there and return at once (without
    /// it, the command follows the job's progress; Ctrl-C stops following, not the job).
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

struct Bar {
    bar: ProgressBar,
    proposals: AtomicUsize,
    failed: AtomicUsize,
    unchanged: AtomicUsize,
}

impl Progress for Bar {
    fn planned(&self, found: usize, to_process: usize) {
        self.unchanged.store(found - to_process, Ordering::Relaxed);
        self.bar.set_length(to_process as u64);
        self.bar.set_message(format!(
            "{found} images found, {} unchanged",
            found - to_process
        ));
        self.bar.reset_eta();
    }
    fn file_done(&self, path: &std::path::Path, proposals: usize, failed: bool) {
        let total = self.proposals.fetch_add(proposals, Ordering::Relaxed) + proposals;
        let failures = self
            .failed
            .fetch_add(usize::from(failed), Ordering::Relaxed)
            + usize::from(failed);
        if failed {
            self.bar.println(format!(
                "skipped (unreadable): {}",
                super::terminal_path(path)
            ));
        }
        tracing::debug!(path = %path.display(), proposals, failed, "file committed");
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{total} objects ({:.1}/s), {failures} failed",
            total as f64 / secs
        ));
        self.bar.inc(1);
    }
    fn note(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
}

/// Runs `spotter index` (as a job of the server that holds the index, when one does).
pub fn run(args: &IndexArgs) -> Result<()> {
    if !args.archives.is_empty() {
        if let Some(server) = crate::served::find(&args.index)? {
            return served_index(args, &server);
        }
    }
    let package = args.model.package()?;
    if args.archives.is_empty() {
        let vectors = args.vectors.clone().unwrap_or_default();
        if args.shard.is_some() {
            return Err(SpotterError::Usage(
                "--shard needs ARCHIVE folders to index".into(),
            ));
        }
        let index = Index::attach(&args.index, &package, &vectors)?;
        println!(
            "{} searches {} ({} vectors); serve it with: spotter serve --index {}",
            args.index.display(),
            index.backend().vectors,
            index.vector_count()?,
            args.index.display()
        );
        return Ok(());
    }
    if args.f16 && args.vector_engine != Some(spotter_indexer::EmbeddedEngine::Hnsw) {
        return Err(SpotterError::Usage(
            "--f16 applies to --vector-engine hnsw only: the default quantised engine already \
             keeps int8 codes, finer than f16 once re-ranked"
                .into(),
        ));
    }
    let settings = IndexSettings {
        embedded_engine: args.vector_engine,
        half_precision: args.f16,
        hnsw: HnswParams {
            m: args.hnsw_m.max(2),
            ef_construction: args.hnsw_ef_construction.max(8),
        },
        vectors: args.vectors.clone(),
        shard: args.shard,
        search_only: false,
    };
    let index = Index::open_for_model(&args.index, &package, &settings)?;
    let tower = ImageTower::load(&package, &args.model.runtime())?;
    spotter_model::DecodeBudget::global().set_capacity(args.decode_memory.saturating_mul(1 << 20));
    let params = args.proposals.params(&package);
    let request = IndexRequest {
        roots: args.archives.clone(),
        walk: spotter_indexer::walk::WalkOptions {
            follow_symlinks: args.follow_symlinks,
            include_hidden: args.include_hidden,
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        },
        batch: match tower.fixed_batch() {
            Some(fixed) => fixed,
            None => args.batch.max(1),
        },
        params,
        limits: DecodeLimits {
            max_pixels: args.max_pixels,
        },
        retry_failed: args.retry_failed,
        decode_threads: args.decode_threads,
        checkpoint_every: Duration::from_secs(300),
        allow_deletions: args.allow_deletions,
        cancel: None,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({per_sec}, ETA {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = Bar {
        bar,
        proposals: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        unchanged: AtomicUsize::new(0),
    };
    tracing::info!(model = %package.manifest.name, device = %tower.device(), index = %args.index.display(), "indexing");
    let report = spotter_indexer::run(&index, &tower, &request, &progress)?;
    progress.bar.finish_and_clear();

    print_report(&json_of(&report)?, args.json)
}

/// `spotter index` on a served index: the same run as a job of the server, followed with a
/// progress bar; the same report at the end.
fn served_index(args: &IndexArgs, server: &crate::served::ServedIndex) -> Result<()> {
    let fixed = [
        (args.vectors.is_some(), "--vectors"),
        (args.shard.is_some(), "--shard"),
        (args.vector_engine.is_some(), "--vector-engine"),
        (args.f16, "--f16"),
    ];
    if let Some((_, flag)) = fixed.iter().find(|(given, _)| *given) {
        return Err(SpotterError::Usage(format!(
            "{flag} is chosen when an index is created; {} is served by {} (stop the server to \
             create an index with it)",
            args.index.display(),
            server.url()
        )));
    }
    let roots = args
        .archives
        .iter()
        .map(|a| a.canonicalize().or_else(|_| std::path::absolute(a)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| SpotterError::Io {
            path: args.archives[0].clone(),
            source,
        })?;
    let spec = crate::jobs::JobSpec::Index {
        roots,
        retry_failed: args.retry_failed,
        allow_deletions: args.allow_deletions,
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        follow_symlinks: args.follow_symlinks,
        include_hidden: args.include_hidden,
    };
    let bar = if args.quiet || args.detach {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images (ETA {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    if !args.quiet && !args.detach {
        eprintln!(
            "{} is served by {}: indexing there as a job (Ctrl-C stops following it, not the job)",
            args.index.display(),
            server.url()
        );
    }
    let job = server.run_job(&spec, args.detach, |job| {
        let p = &job.progress;
        if let Some(total) = p.files_total {
            bar.set_length(total as u64);
        }
        bar.set_position(p.files_done as u64);
        let state = match job.state {
            crate::jobs::JobState::Queued => "queued behind other jobs".to_string(),
            _ if p.files_total.is_some() => format!(
                "{} objects ({:.1} images/s), {} failed",
                p.proposals, p.files_per_second, p.failures
            ),
            _ => p.message.clone(),
        };
        bar.set_message(state);
    })?;
    bar.finish_and_clear();
    finish_job(args.detach, server, &job, |result| {
        print_report(result, args.json)
    })
}

/// What a followed job ends with: its result printed by `print`, or its failure as the error.
fn finish_job(
    detached: bool,
    server: &crate::served::ServedIndex,
    job: &crate::jobs::Job,
    print: impl FnOnce(&serde_json::Value) -> Result<()>,
) -> Result<()> {
    use crate::jobs::JobState;
    match job.state {
        JobState::Queued | JobState::Running if detached => {
            println!(
                "job {} queued; follow it at {}/api/jobs/{}",
                job.id,
                server.url(),
                job.id
            );
            Ok(())
        }
        JobState::Done => print(job.result.as_ref().unwrap_or(&serde_json::Value::Null)),
        JobState::Cancelled => {
            if let Some(result) = &job.result {
                print(result)?;
            }
            Err(SpotterError::Usage(format!(
                "job {} was cancelled (what it wrote is kept; run again to go on)",
                job.id
            )))
        }
        JobState::Failed => Err(SpotterError::Internal(format!(
            "job {} failed in the server: {}",
            job.id,
            job.error.as_deref().unwrap_or("no reason given")
        ))),
        JobState::Queued | JobState::Running => Err(SpotterError::Internal(format!(
            "job {} is still {:?}",
            job.id, job.state
        ))),
    }
}

/// The end-of-run report (a `RunReport` as JSON, from this process or a server's job).
fn print_report(report: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        return super::print_json(report);
    }
    let n = |key: &str| report[key].as_u64().unwrap_or(0);
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    println!(
        "{} images found: {} indexed, {} unchanged, {} touched (same content), {} moved, {} copies, {} deleted, {} deletions skipped, {} failed ({:.1} s, {:.2} images/s on {}, {} proposals added)",
        n("files_found"),
        n("indexed"),
        n("unchanged"),
        n("touched"),
        n("moved"),
        n("copied"),
        n("deleted"),
        n("deletions_skipped"),
        list("failed").len(),
        report["seconds"].as_f64().unwrap_or(0.0),
        report["images_per_second"].as_f64().unwrap_or(0.0),
        report["device"].as_str().unwrap_or("?"),
        n("proposals_added")
    );
    let text =
        |v: &serde_json::Value, key: &str| super::terminal_safe(v[key].as_str().unwrap_or(""));
    for f in list("failed") {
        println!("  failed: {}: {}", text(&f, "path"), text(&f, "reason"));
    }
    for f in list("walk_problems") {
        println!("  not walked: {}: {}", text(&f, "path"), text(&f, "reason"));
    }
    if report["cancelled"].as_bool() == Some(true) {
        println!("  cancelled before every file was read; no records were deleted");
    }
    Ok(())
}

/// Arguments of `spotter stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List every failed file with its reason, and what the last run of each archive could not
    /// walk (with --json: `failures` and `walk_problems` in the one JSON document).
    #[arg(long)]
    pub failures: bool,
}

/// Runs `spotter stats` (on the server that holds the index, when one does).
pub fn stats(args: &StatsArgs) -> Result<()> {
    let (mut doc, failures) = match crate::served::find(&args.index)? {
        Some(server) => {
            let mut doc = server.get("/api/stats")?;
            if let Some(map) = doc.as_object_mut() {
                // What the server adds about itself.
                map.remove("default_threshold");
                map.remove("text_cache");
            }
            let failures = match args.failures {
                true => Some(server.get("/api/failures")?),
                false => None,
            };
            (doc, failures)
        }
        None => {
            let index = Index::open(&args.index)?;
            let doc = json_of(&index.stats()?)?;
            let failures = match args.failures {
                true => Some(json_of(&index.failures()?)?),
                false => None,
            };
            (doc, failures)
        }
    };
    // The folder as this command was given it (a server may have been started elsewhere).
    doc["dir"] = serde_json::Value::String(spotter_indexer::relpath::display_path(&args.index));
    if args.json {
        if let Some(failures) = failures {
            doc["failures"] = failures;
        }
        return super::print_json(&doc);
    }
    let stats: StatsView = serde_json::from_value(doc)
        .map_err(|e| SpotterError::Internal(format!("unexpected index statistics: {e}")))?;
    let failures: Vec<ProblemView> = match failures {
        Some(f) => serde_json::from_value(f)
            .map_err(|e| SpotterError::Internal(format!("unexpected failure list: {e}")))?,
        None => Vec::new(),
    };
    print_stats(&stats, args.failures.then_some(&failures[..]))
}

fn json_of<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| SpotterError::Internal(format!("cannot encode as JSON: {e}")))
}

/// `IndexStats` as its JSON document says it (paths as displayed), for printing the same text
/// from a local index and from a server's answer.
#[derive(serde::Deserialize)]
struct StatsView {
    dir: String,
    model: String,
    roots: Vec<String>,
    images: usize,
    indexed: usize,
    failed: usize,
    proposals: usize,
    vectors: usize,
    tombstones: usize,
    vector_dim: usize,
    vector_storage: String,
    vector_engine: String,
    backend: String,
    shard: Option<String>,
    disk_bytes: u64,
    walk_problems: Vec<ProblemView>,
}

/// A failed file or a walk problem as JSON says it (`root` only for walk problems).
#[derive(serde::Deserialize)]
struct ProblemView {
    #[serde(default)]
    root: String,
    path: String,
    reason: String,
}

fn print_stats(stats: &StatsView, failures: Option<&[ProblemView]>) -> Result<()> {
    use super::terminal_safe as safe;
    println!("index       {}", safe(&stats.dir));
    println!("model       {}", safe(&stats.model));
    for root in &stats.roots {
        println!("archive     {}", safe(root));
    }
    println!(
        "images      {} ({} indexed, {} failed)",
        stats.images, stats.indexed, stats.failed
    );
    println!("proposals   {}", stats.proposals);
    if stats.backend == "embedded" {
        println!(
            "vectors     {} live, {} deleted (spotter compact drops them)",
            stats.vectors, stats.tombstones
        );
    } else {
        println!(
            "vectors     {} in the shared collection (every shard's)",
            stats.vectors
        );
    }
    println!(
        "vector      {} floats, stored as {}",
        stats.vector_dim, stats.vector_storage
    );
    println!("engine      {}", stats.vector_engine);
    println!("backend     {}", stats.backend);
    if let Some(shard) = &stats.shard {
        println!("shard       {shard} (of the archive, by path)");
    }
    println!(
        "disk        {:.1} MiB",
        stats.disk_bytes as f64 / (1024.0 * 1024.0)
    );
    if !stats.walk_problems.is_empty() {
        println!(
            "not walked  {} problem(s) in the last run (spotter stats --failures lists them)",
            stats.walk_problems.len()
        );
    }
    if let Some(failures) = failures {
        for f in failures {
            println!("failed: {}: {}", safe(&f.path), safe(&f.reason));
        }
        for p in &stats.walk_problems {
            println!(
                "not walked: {}: {} (archive {})",
                safe(&p.path),
                safe(&p.reason),
                safe(&p.root)
            );
        }
    }
    Ok(())
}

/// Arguments of `spotter compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
}

/// Runs `spotter compact`.
pub fn compact(args: &CompactArgs) -> Result<()> {
    if let Some(server) = crate::served::find(&args.index)? {
        let job = server.run_job(&crate::jobs::JobSpec::Compact, false, |_| {})?;
        return finish_job(false, &server, &job, |result| {
            println!(
                "dropped {} deleted vectors; {} live",
                result["dropped"].as_u64().unwrap_or(0),
                result["live"].as_u64().unwrap_or(0)
            );
            Ok(())
        });
    }
    let index = Index::open(&args.index)?;
    let before = index.deleted_vectors()?;
    index.compact()?;
    println!(
        "dropped {before} deleted vectors; {} live",
        index.vector_count()?
    );
    Ok(())
}

impl From<spotter_indexer::IndexError> for SpotterError {
    fn from(e: spotter_indexer::IndexError) -> Self {
        SpotterError::Index(e)
    }
}
