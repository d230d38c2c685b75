//! `spotter serve`: the HTTP API and the web page over an index (optionally indexing archives
//! in the background of the same process, since an index is opened by one process at a time).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use spotter_indexer::{Index, IndexRequest, IndexSettings};
use spotter_model::ProposalParams;

use super::ModelArgs;
use crate::engine::SearchEngine;
use crate::error::{Result, SpotterError};
use crate::image_query::LazyImageTower;
use crate::server::{serve, ServerConfig};

/// Arguments of `spotter serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Index folder.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Address to listen on; the default only accepts connections from this machine.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,
    /// Require this bearer token on every request (also accepted as ?token=). A token on the
    /// command line is visible to every local user in `ps`: prefer --token-file or the
    /// SPOTTER_TOKEN environment variable.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the bearer token from this file (first line; keep it readable only by you).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Without a token, also answer requests whose Host header names NAME (repeatable); by
    /// default only localhost names and the listening address are answered, which keeps web
    /// pages elsewhere from reaching the server through DNS rebinding.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Archives to index in the background while serving (the index grows as you search).
    #[arg(long = "archive", value_name = "DIR")]
    pub archives: Vec<PathBuf>,
    /// Re-scan the archives every N minutes (0: once at start; fractions work, 0.5 is 30 s).
    #[arg(long, default_value_t = 0.0, value_parser = minutes)]
    pub rescan_minutes: f64,
    /// Follow file-system events under the archive roots (--archive, else every root the index
    /// knows) and index new, changed, moved and deleted photos within seconds. Roots on network
    /// mounts, or past the inotify watch limit, are rescanned every --rescan-minutes (15 when
    /// that is 0) instead.
    #[arg(long)]
    pub watch: bool,
    /// Longest time a request may take, in seconds (its work is stopped then).
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Longest time a client may take to send a request's headers, in seconds; idle
    /// keep-alive connections are closed after it too.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Longest time, in seconds, a response may wait on a client that does not read it before
    /// the connection is dropped.
    #[arg(long, default_value_t = 30)]
    pub send_timeout: u64,
    /// Most connections served at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest image (width × height) decoded for a thumbnail or by background indexing.
    #[arg(long, default_value_t = spotter_model::preprocess::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Memory for decoded pixels shared by all concurrent decodes, in MiB (one image larger
    /// than this still decodes, alone).
    #[arg(long, default_value_t = spotter_model::DEFAULT_DECODE_BUDGET >> 20)]
    pub decode_memory: u64,
    /// Longest side of thumbnails in pixels.
    #[arg(long, default_value_t = 320)]
    pub thumb_size: u32,
    /// Thumbnails kept in memory.
    #[arg(long, default_value_t = 2000)]
    pub thumb_cache: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The token from `--token`, `--token-file` or `SPOTTER_TOKEN` (empty means none).
fn token_of(args: &ServeArgs) -> Result<Option<String>> {
    let token = if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| SpotterError::Io {
            path: path.clone(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(SpotterError::Usage(format!(
                "the token file {} is empty: write the token on its first line",
                path.display()
            )));
        }
        Some(token)
    } else if let Some(token) = &args.token {
        tracing::warn!("a token given with --token is visible to other local users (ps); prefer --token-file FILE or SPOTTER_TOKEN");
        Some(token.clone())
    } else {
        std::env::var("SPOTTER_TOKEN").ok()
    };
    // Every source is trimmed alike (a CRLF file or a stray space must not lock the header out).
    Ok(token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// What the server's jobs do: index runs through the indexer (the image tower is loaded at the
/// first one and kept), compaction through the index.
fn job_runner(
    index: Arc<Index>,
    package: spotter_model::ModelPackage,
    towers: Arc<LazyImageTower>,
    limits: spotter_model::DecodeLimits,
) -> Box<crate::jobs::Runner> {
    use crate::jobs::JobSpec;
    Box::new(move |spec, control| {
        let (roots, retry_failed, allow_deletions, walk) = match spec {
            JobSpec::Compact => {
                let dropped = index.deleted_vectors()?;
                index.compact()?;
                return job_result(crate::jobs::JobResult::Compact(
                    crate::jobs::CompactReport {
                        dropped,
                        live: index.vector_count()?,
                    },
                ));
            }
            JobSpec::Index {
                roots,
                retry_failed,
                allow_deletions,
                include,
                exclude,
                follow_symlinks,
                include_hidden,
            } => (
                roots.clone(),
                *retry_failed,
                *allow_deletions,
                spotter_indexer::walk::WalkOptions {
                    follow_symlinks: *follow_symlinks,
                    include_hidden: *include_hidden,
                    include: include.clone(),
                    exclude: exclude.clone(),
                },
            ),
            JobSpec::Rescan | JobSpec::RetryFailed => (
                index.roots()?.into_iter().map(|(_, p)| p).collect(),
                *spec == JobSpec::RetryFailed,
                false,
                Default::default(),
            ),
        };
        if !towers.is_loaded() {
            control.report(crate::jobs::JobProgress {
                message: "loading the image model".into(),
                ..Default::default()
            });
        }
        let tower = towers.get()?;
        let mut request =
            IndexRequest::new(roots, ProposalParams::from(&package.manifest.proposals));
        request.batch = tower.fixed_batch().unwrap_or(request.batch);
        request.limits = limits;
        request.walk = walk;
        request.retry_failed = retry_failed;
        request.allow_deletions = allow_deletions;
        request.cancel = Some(control.cancel_flag());
        let progress = crate::jobs::IndexProgress::new(control);
        let report = spotter_indexer::run(&index, &tower, &request, &progress)?;
        for p in &report.walk_problems {
            tracing::warn!(path = %spotter_indexer::relpath::display_path(&p.path), reason = %p.reason, "not walked");
        }
        job_result(crate::jobs::JobResult::Index(report))
    })
}

fn job_result(result: crate::jobs::JobResult) -> Result<serde_json::Value> {
    serde_json::to_value(&result)
        .map_err(|e| SpotterError::Internal(format!("cannot encode the job's result: {e}")))
}

/// `--rescan-minutes`: a finite number of minutes, 0 or at least one second, at most a year.
fn minutes(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of minutes"))?;
    if value == 0.0 || (value.is_finite() && (1.0 / 60.0..=525_600.0).contains(&value)) {
        Ok(value)
    } else {
        Err("give 0 (no periodic rescan) or between 1/60 (one second) and 525600 minutes".into())
    }
}

/// Runs `spotter serve`.
pub fn run(args: &ServeArgs) -> Result<()> {
    let token = token_of(args)?;
    for host in &args.allowed_hosts {
        if crate::server::allowed_host_name(host).is_none() {
            return Err(SpotterError::Usage(format!(
                "--allow-host '{}' is not a host name (give a name such as photos.lan)",
                host.escape_debug()
            )));
        }
    }
    spotter_model::DecodeBudget::global().set_capacity(args.decode_memory.saturating_mul(1 << 20));
    let limits = spotter_model::DecodeLimits {
        max_pixels: args.max_pixels,
    };
    let mut model = args.model.clone();
    let index = if args.archives.is_empty() {
        Arc::new(Index::open(&args.index)?)
    } else {
        let package = model.package()?;
        Arc::new(Index::open_for_model(
            &args.index,
            &package,
            &IndexSettings::default(),
        )?)
    };
    model.model = index.meta().model.clone();
    let package = model.package()?;
    // A few text sessions so concurrent cold queries do not queue behind one.
    let sessions = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    // One image tower, loaded at the first index job or example-image search.
    let towers = Arc::new(LazyImageTower::new(package.clone(), model.runtime()));
    let engine = Arc::new(
        SearchEngine::new(index.clone(), package.clone(), &model.runtime(), sessions)?
            .with_image_tower(towers.clone()),
    );

    let jobs = crate::jobs::Jobs::start(
        &args.index,
        job_runner(index.clone(), package.clone(), towers, limits),
    )?;
    if !args.archives.is_empty() {
        let roots = args
            .archives
            .iter()
            .map(|a| std::path::absolute(a).unwrap_or_else(|_| a.clone()))
            .collect();
        let spec = crate::jobs::JobSpec::index(roots);
        jobs.submit(spec.clone())?;
        if args.rescan_minutes > 0.0 {
            let (jobs, every) = (
                jobs.clone(),
                Duration::from_secs_f64(args.rescan_minutes * 60.0),
            );
            std::thread::Builder::new()
                .name("spotter-rescan".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    let busy = jobs.list().is_ok_and(|list| {
                        list.iter().any(|j| {
                            j.spec == spec
                                && matches!(
                                    j.state,
                                    crate::jobs::JobState::Queued | crate::jobs::JobState::Running
                                )
                        })
                    });
                    if !busy {
                        if let Err(e) = jobs.submit(spec.clone()) {
                            tracing::error!(error = %e, "cannot queue the periodic rescan");
                        }
                    }
                })
                .map_err(|e| {
                    SpotterError::Internal(format!("cannot start the rescan thread: {e}"))
                })?;
        }
    }

    let _watching = if args.watch {
        let roots: Vec<PathBuf> = if args.archives.is_empty() {
            index.roots()?.into_iter().map(|(_, p)| p).collect()
        } else {
            args.archives
                .iter()
                .map(|a| std::path::absolute(a).unwrap_or_else(|_| a.clone()))
                .collect()
        };
        if roots.is_empty() {
            return Err(SpotterError::Usage(
                "--watch needs archive roots: give --archive DIR, or index one first".into(),
            ));
        }
        let minutes = if args.rescan_minutes == 0.0 {
            15.0
        } else {
            args.rescan_minutes
        };
        Some(crate::watch::start(
            jobs.clone(),
            crate::watch::WatchOptions {
                roots,
                debounce: Duration::from_secs(2),
                max_delay: Duration::from_secs(10),
                fallback_every: Duration::from_secs_f64(minutes * 60.0),
                index_dir: args.index.clone(),
            },
        )?)
    } else {
        None
    };
    let config = ServerConfig {
        addr: args.addr,
        token,
        allowed_hosts: args.allowed_hosts.clone(),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        send_timeout: Duration::from_secs(args.send_timeout.max(1)),
        max_connections: args.max_connections,
        thumb_size: args.thumb_size,
        thumb_cache_entries: args.thumb_cache,
        decode_limits: limits,
    };
    if !config.addr.ip().is_loopback() && config.token.is_none() {
        tracing::warn!("listening on {} without --token: anyone who can reach this address can search and download your images", config.addr);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SpotterError::Internal(format!("cannot start the server runtime: {e}")))?;
    let result = runtime.block_on(serve(engine, Some(jobs.clone()), config));
    jobs.stop();
    // Work stuck in the blocking pool (a hung network mount) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
