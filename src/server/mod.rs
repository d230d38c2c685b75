//! The HTTP server: JSON API over the search engine, thumbnails, originals by id, and the
//! embedded web page. Every error a route or layer produces is JSON `{"error": "..."}` (requests
//! hyper rejects while parsing get its empty replies); every response carries
//! security headers. Connections are served by hyper directly (not `axum::serve`) so that slow
//! or stalled clients are cut off by a header-read timeout, a send timeout and a connection
//! limit, and a stop
//! (Ctrl-C, SIGTERM) ends within a bounded time.

mod api;
mod files;
mod params;
mod protect;
mod stall;
mod thumbs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use spotter_model::DecodeLimits;
use tokio::sync::Semaphore;

use crate::engine::{Cancel, SearchEngine};
use crate::error::SpotterError;
use files::VerifiedFiles;
pub use params::parse_wall_clock;
use params::{parse_search, RawParams};
pub use protect::{allowed_host_name, HostPolicy};
use thumbs::ThumbCache;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address (127.0.0.1 by default: nothing is exposed unless asked).
    pub addr: SocketAddr,
    /// Bearer token required on every route when set.
    pub token: Option<String>,
    /// Extra host names a server without a token answers for (besides localhost names and its
    /// own address).
    pub allowed_hosts: Vec<String>,
    /// Longest a request may take; its work is cancelled then.
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers (also the idle keep-alive limit).
    pub header_timeout: Duration,
    /// Longest a response write may make no progress (a client that stopped reading) before
    /// the connection is dropped.
    pub send_timeout: Duration,
    /// Most connections served at once (more wait in the kernel's backlog).
    pub max_connections: usize,
    /// Longest side of thumbnails in pixels.
    pub thumb_size: u32,
    /// Thumbnails kept in memory.
    pub thumb_cache_entries: usize,
    /// Decoder limits for thumbnails.
    pub decode_limits: DecodeLimits,
}

/// Most file operations (originals, thumbnails) running at once; more requests wait (bounded by
/// the request timeout), so a stalled disk can hold at most this many blocking threads.
const MAX_FILE_WORK: usize = 32;
/// Largest `POST /api/proposals` body (every other body is limited to 16 KiB).
const MAX_PROPOSALS_BODY: usize = 1024 * 1024;
/// How long a stop waits for requests in flight before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct AppState {
    engine: Arc<SearchEngine>,
    /// The index's background jobs (none in servers built without them, e.g. tests).
    jobs: Option<crate::jobs::Jobs>,
    token: Option<String>,
    hosts: Option<HostPolicy>,
    request_timeout: Duration,
    thumbs: ThumbCache,
    files: VerifiedFiles,
    file_work: Arc<Semaphore>,
    decode_limits: DecodeLimits,
}

/// A JSON error response.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(api::ErrorBody { error: self.1 })).into_response()
    }
}

impl From<SpotterError> for ApiError {
    fn from(e: SpotterError) -> Self {
        let status = match &e {
            SpotterError::Usage(_) => StatusCode::BAD_REQUEST,
            SpotterError::NotFound(_) => StatusCode::NOT_FOUND,
            SpotterError::Cancelled => StatusCode::REQUEST_TIMEOUT,
            SpotterError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("worker failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// Runs file work (opening, hashing, decoding) on the blocking pool under the file-work limit;
/// the permit is held until the work ends, even if the request has gone.
async fn file_work<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let permit =
        state.file_work.clone().acquire_owned().await.map_err(|_| {
            ApiError::from(SpotterError::Busy("the server is shutting down".into()))
        })?;
    blocking(move || {
        let _permit = permit;
        f()
    })
    .await
}

/// Builds the router (public for tests that drive it in-process).
pub fn router(
    engine: Arc<SearchEngine>,
    jobs: Option<crate::jobs::Jobs>,
    config: &ServerConfig,
) -> Router {
    let state = Arc::new(AppState {
        engine,
        jobs,
        token: config.token.clone(),
        hosts: Some(HostPolicy {
            bound: config.addr.ip(),
            names: config
                .allowed_hosts
                .iter()
                .filter_map(|h| protect::allowed_host_name(h))
                .collect(),
        }),
        request_timeout: config.request_timeout,
        thumbs: ThumbCache::new(
            config.thumb_size,
            config.thumb_cache_entries,
            config.decode_limits,
        ),
        files: VerifiedFiles::new(config.thumb_cache_entries.max(1024)),
        file_work: Arc::new(Semaphore::new(MAX_FILE_WORK)),
        decode_limits: config.decode_limits,
    });
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/stats", get(stats))
        .route("/api/failures", get(failures))
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", axum::routing::post(cancel_job))
        .route("/api/search", get(search))
        .route("/api/similar/{proposal}", get(similar))
        .route("/api/images/{id}", get(original))
        .route("/api/thumbs/{id}", get(thumbnail))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024))
        // A list of paths and concepts (an evaluation's batch) is larger than any other body.
        .route(
            "/api/proposals",
            axum::routing::post(proposals).layer(tower_http::limit::RequestBodyLimitLayer::new(
                MAX_PROPOSALS_BODY,
            )),
        )
        .route(
            "/api/search/image",
            axum::routing::post(search_by_image).layer(
                tower_http::limit::RequestBodyLimitLayer::new(
                    crate::image_query::MAX_EXAMPLE_BYTES + 64 * 1024,
                ),
            ),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::deadline,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::check_host,
        ))
        .layer(middleware::from_fn(protect::header_limits))
        .layer(middleware::from_fn(protect::harden))
        .with_state(state)
}

/// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight (for at most
/// [`SHUTDOWN_GRACE`]).
pub async fn serve(
    engine: Arc<SearchEngine>,
    jobs: Option<crate::jobs::Jobs>,
    config: ServerConfig,
) -> crate::error::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| SpotterError::Io {
            path: config.addr.to_string().into(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| SpotterError::Io {
        path: config.addr.to_string().into(),
        source,
    })?;
    let stop = shutdown_signal()?;
    // Other commands on this index find the server here (removed again when serving ends).
    let _record = crate::served::publish(engine.index().dir(), local, config.token.as_deref())?;
    println!("Spotter is serving on http://{local}/ (Ctrl-C to stop)");
    let app = router(engine, jobs, &config);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(256 * 1024)
        .max_headers(1000);
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for routes that only this machine may use without a token.
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone()
                .layer(Extension(axum::extract::ConnectInfo(peer))),
        );
        let stream = stall::StallTimeout::new(stream, config.send_timeout);
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    let second_stop = shutdown_signal()?;
    eprintln!(
        "shutting down (waiting up to {} s for requests in flight)",
        SHUTDOWN_GRACE.as_secs()
    );
    tokio::select! {
        finished = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()) => {
            if finished.is_err() {
                eprintln!(
                    "requests still running after {} s: stopping anyway",
                    SHUTDOWN_GRACE.as_secs()
                );
            }
        }
        _ = second_stop => eprintln!("second stop signal: stopping now"),
    }
    Ok(())
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called (not when the future is
/// first polled), so a stop that arrives right after the server announced itself is not lost.
fn shutdown_signal() -> crate::error::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind| {
        signal(kind).map_err(|e| {
            SpotterError::Internal(format!("cannot install the stop-signal handlers: {e}"))
        })
    };
    let (mut interrupt, mut terminate) = (
        install(SignalKind::interrupt())?,
        install(SignalKind::terminate())?,
    );
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

async fn page_html() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

#[utoipa::path(get, path = "/api/health", tag = "server",
    responses((status = 200, description = "The server answers", body = api::Health)))]
async fn health() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = Object, content_type = "application/json")))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        api::document(),
    )
}

/// The index's counts and sizes, the default threshold and the query-text cache's use.
#[utoipa::path(get, path = "/api/stats", tag = "index",
    responses((status = 200, description = "Index statistics", body = api::StatsResponse)))]
async fn stats(State(state): State<Arc<AppState>>) -> ApiResult<Json<api::StatsResponse>> {
    let engine = state.engine.clone();
    let index = blocking(move || Ok(engine.index().stats()?)).await?;
    Ok(Json(api::StatsResponse {
        index,
        default_threshold: state.engine.scoring().default_threshold(),
        text_cache: state.engine.text_cache_stats(),
    }))
}

/// Every file that failed to index, with its reason (what `spotter stats --failures` lists).
#[utoipa::path(get, path = "/api/failures", tag = "index",
    responses((status = 200, description = "The files that failed", body = Vec<spotter_indexer::pipeline::Failure>)))]
async fn failures(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<Vec<spotter_indexer::pipeline::Failure>>> {
    let engine = state.engine.clone();
    let failures = blocking(move || Ok(engine.index().failures()?)).await?;
    Ok(Json(failures))
}

fn jobs_of(state: &AppState) -> ApiResult<&crate::jobs::Jobs> {
    state
        .jobs
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "this server runs no jobs".into()))
}

/// Starting and cancelling jobs changes the index: with a token every route already needs it;
/// without one, only this machine may do it.
fn admin(state: &AppState, peer: SocketAddr) -> ApiResult<()> {
    if state.token.is_some() || peer.ip().is_loopback() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "jobs can be started and cancelled from this machine only, unless the server has a \
             token (--token-file)"
                .into(),
        ))
    }
}

fn job_id(text: &str) -> ApiResult<u64> {
    text.parse()
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("no job {text}")))
}

/// Every job kept, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    responses((status = 200, description = "The jobs", body = api::JobList)))]
async fn list_jobs(State(state): State<Arc<AppState>>) -> ApiResult<Json<api::JobList>> {
    let jobs = jobs_of(&state)?.list()?;
    Ok(Json(api::JobList { jobs }))
}

/// One job.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path, description = "The job's number")),
    responses(
        (status = 200, description = "The job", body = crate::jobs::Job),
        (status = 404, description = "No such job", body = api::ErrorBody),
    ))]
async fn job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::jobs::Job>> {
    Ok(Json(jobs_of(&state)?.job(job_id(&id)?)?))
}

/// Queues a job. Jobs run one at a time; one interrupted by a stop or a crash runs again when
/// the server is back.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs",
    request_body = crate::jobs::JobSpec,
    responses(
        (status = 202, description = "Queued", body = crate::jobs::Job),
        (status = 400, description = "Not a job this server can run", body = api::ErrorBody),
        (status = 403, description = "From another machine, and the server has no token", body = api::ErrorBody),
    ))]
async fn submit_job(
    State(state): State<Arc<AppState>>,
    Extension(axum::extract::ConnectInfo(peer)): Extension<axum::extract::ConnectInfo<SocketAddr>>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<crate::jobs::Job>)> {
    admin(&state, peer)?;
    // Parsed here rather than by axum's extractor, so that a wrong body gets serde's precise
    // message ("unknown variant `scan`, expected one of ...") instead of a bare status.
    let spec: crate::jobs::JobSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a job ({e}); see /api/openapi.json, schema JobSpec"),
        )
    })?;
    let job = jobs_of(&state)?.submit(spec)?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Cancels a queued job, or stops a running one between two files (what it wrote is kept, no
/// record is deleted).
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs",
    params(("id" = u64, Path, description = "The job's number")),
    responses(
        (status = 200, description = "The job: cancelled if it was queued, stopping if it was running", body = crate::jobs::Job),
        (status = 400, description = "The job has already ended", body = api::ErrorBody),
        (status = 403, description = "From another machine, and the server has no token", body = api::ErrorBody),
        (status = 404, description = "No such job", body = api::ErrorBody),
    ))]
async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Extension(axum::extract::ConnectInfo(peer)): Extension<axum::extract::ConnectInfo<SocketAddr>>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::jobs::Job>> {
    admin(&state, peer)?;
    Ok(Json(jobs_of(&state)?.cancel(job_id(&id)?)?))
}

/// Objects matching a text query, best first (or images with their boxes, `group=images`).
#[utoipa::path(get, path = "/api/search", tag = "search",
    params(api::SearchParameters, api::PageParameters),
    responses(
        (status = 200, description = "A page of hits", body = api::SearchResponse),
        (status = 400, description = "A bad parameter", body = api::ErrorBody),
    ))]
async fn search(
    State(state): State<Arc<AppState>>,
    Extension(cancel): Extension<Cancel>,
    Query(raw): Query<RawParams>,
) -> ApiResult<Json<api::SearchResponse>> {
    let (query, mut params, group_images) =
        parse_search(&raw, true).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let query =
        query.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing parameter q".into()))?;
    params.cancel = cancel;
    let engine = state.engine.clone();
    let parsed = query.clone();
    let page = blocking(move || {
        Ok(if group_images {
            api::SearchPage::Images(engine.search_images(&query, &params)?)
        } else {
            api::SearchPage::Objects(engine.search(&query, &params)?)
        })
    })
    .await?;
    Ok(Json(api::SearchResponse {
        page,
        query: parsed,
    }))
}

/// "More like this": objects like one indexed proposal, using its own embedding as the query.
#[utoipa::path(get, path = "/api/similar/{proposal}", tag = "search",
    params(("proposal" = String, Path, description = "A proposal id (decimal)"), api::PageParameters),
    responses(
        (status = 200, description = "A page of hits", body = api::SearchPage),
        (status = 400, description = "A bad parameter or id", body = api::ErrorBody),
        (status = 404, description = "No such proposal", body = api::ErrorBody),
    ))]
async fn similar(
    State(state): State<Arc<AppState>>,
    Extension(cancel): Extension<Cancel>,
    Path(proposal): Path<String>,
    Query(raw): Query<RawParams>,
) -> ApiResult<Json<api::SearchPage>> {
    let proposal = canonical_id(&proposal).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{}' is not a proposal id", proposal.escape_debug()),
        )
    })?;
    let (_, mut params, group_images) =
        parse_search(&raw, false).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    params.cancel = cancel;
    let engine = state.engine.clone();
    let page = blocking(move || {
        let result = engine.similar(proposal, &params)?;
        Ok(if group_images {
            api::SearchPage::Images(crate::engine::group_by_image(result))
        } else {
            api::SearchPage::Objects(result)
        })
    })
    .await?;
    Ok(Json(page))
}

/// Objects like an example photo, or like a region of it (`box`), optionally mixed with text
/// (`q`); scored as "more like this" is. The upload is never written anywhere.
#[utoipa::path(post, path = "/api/search/image", tag = "search",
    params(api::PageParameters),
    request_body(content = api::ExampleUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "A page of hits", body = api::SearchPage),
        (status = 400, description = "No image, not an image, a bad box or parameter, or no object in it", body = api::ErrorBody),
        (status = 413, description = "An upload over 32 MiB", body = api::ErrorBody),
    ))]
async fn search_by_image(
    State(state): State<Arc<AppState>>,
    Extension(cancel): Extension<Cancel>,
    Query(mut raw): Query<RawParams>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Json<api::SearchPage>> {
    let bad = |message: String| ApiError(StatusCode::BAD_REQUEST, message);
    let mut multipart = multipart.map_err(|e| {
        bad(format!(
            "send the example as multipart/form-data with a field named image ({e})"
        ))
    })?;
    let mut image: Option<axum::body::Bytes> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(upload_error(e)),
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" => image = Some(field.bytes().await.map_err(upload_error)?),
            "box" | "q" | "weight" => {
                let text = field.text().await.map_err(upload_error)?;
                raw.entry(name).or_insert(text);
            }
            other => {
                return Err(bad(format!(
                    "unknown form field '{}': send image, and optionally box, q and weight",
                    other.escape_debug()
                )))
            }
        }
    }
    let image = image.ok_or_else(|| bad("no form field named image (the example photo)".into()))?;
    let region = match raw.get("box").map(|b| b.trim()).filter(|b| !b.is_empty()) {
        Some(text) => Some(crate::image_query::parse_box(text).map_err(bad)?),
        None => None,
    };
    let query = match raw.get("q").map(|q| q.trim()).filter(|q| !q.is_empty()) {
        Some(text) => crate::query::parse(text).map_err(bad)?,
        None => crate::query::Query {
            positives: Vec::new(),
            negatives: Vec::new(),
            together: Vec::new(),
        },
    };
    let weight = match raw
        .get("weight")
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
    {
        None => 1.0,
        Some(text) => crate::image_query::parse_weight(text).map_err(bad)?,
    };
    let (_, mut params, group_images) = parse_search(&raw, false).map_err(bad)?;
    params.cancel = cancel;
    let (engine, limits) = (state.engine.clone(), state.decode_limits);
    let page = blocking(move || {
        let mut examples = engine.example_concepts(&image, region, limits)?;
        examples.iter_mut().for_each(|c| c.weight = weight);
        params.cancel.check()?;
        Ok(if group_images {
            api::SearchPage::Images(engine.search_images_mixed(&query, &examples, &params)?)
        } else {
            api::SearchPage::Objects(engine.search_mixed(&query, &examples, &params)?)
        })
    })
    .await?;
    Ok(Json(page))
}

/// A multipart upload that could not be read: too large (413) or malformed (400).
fn upload_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError(
        status,
        format!("the upload could not be read: {}", e.body_text()),
    )
}

/// Every proposal of the given indexed images, with the model's probability for each concept
/// (what `spotter eval` reads from a served index).
#[utoipa::path(post, path = "/api/proposals", tag = "search",
    request_body = api::ProposalsRequest,
    responses(
        (status = 200, description = "The proposals, one entry per path", body = api::ProposalsResponse),
        (status = 400, description = "Not such a request, or over its limits", body = api::ErrorBody),
        (status = 413, description = "A body over 1 MiB", body = api::ErrorBody),
    ))]
async fn proposals(
    State(state): State<Arc<AppState>>,
    Extension(cancel): Extension<Cancel>,
    body: axum::body::Bytes,
) -> ApiResult<Json<api::ProposalsResponse>> {
    let request: api::ProposalsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a proposals request ({e}); see /api/openapi.json"),
        )
    })?;
    let paths: Vec<std::path::PathBuf> = request.paths.iter().map(Into::into).collect();
    if let Some(relative) = paths.iter().find(|p| !p.is_absolute()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "paths must be absolute, not {:?}",
                relative.display().to_string()
            ),
        ));
    }
    let engine = state.engine.clone();
    let images = blocking(move || engine.score_images(&paths, &request.concepts, &cancel)).await?;
    Ok(Json(api::ProposalsResponse { images }))
}

/// An id in its one canonical spelling: decimal digits, no sign, no leading zero.
fn canonical_id(id: &str) -> Option<u64> {
    let canonical = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    canonical.then(|| id.parse().ok()).flatten()
}

fn parse_id(id: &str) -> ApiResult<u64> {
    canonical_id(id).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{}' is not an image id", id.escape_debug()),
        )
    })
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg" | "jpe") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// The original file, streamed. Only the indexed image is ever served: it must be a regular
/// file whose content hashes to the indexed BLAKE3.
#[utoipa::path(get, path = "/api/images/{id}", tag = "images",
    params(("id" = String, Path, description = "An image id (decimal)")),
    responses(
        (status = 200, description = "The file's bytes, typed by its extension", content(("image/*"), ("application/octet-stream"))),
        (status = 400, description = "Not an image id", body = api::ErrorBody),
        (status = 404, description = "No such image, or its file is gone or changed", body = api::ErrorBody),
    ))]
async fn original(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let st = state.clone();
    let (file, identity, kind) = file_work(&state, move || {
        let (file, info) = st.files.open(st.engine.index(), id)?;
        let identity = file.identity();
        let file = file
            .into_file()
            .map_err(|e| SpotterError::NotFound(format!("image {id} cannot be read: {e}")))?;
        Ok((file, identity, content_type(&info.path)))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(identity.size)),
        ],
        Body::from_stream(verified_stream(file, identity)),
    )
        .into_response())
}

/// The bytes of a verified file, streamed (memory stays flat however large it is). After each
/// chunk is read the file's identity is checked again, so a file written in place while it is
/// being sent ends the response (the client sees a short body) instead of sending the new bytes.
fn verified_stream(
    file: std::fs::File,
    verified: spotter_model::FileIdentity,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> + Send {
    const CHUNK: u64 = 64 * 1024;
    let file = tokio::fs::File::from_std(file);
    futures_util::stream::unfold(
        (file, verified.size),
        move |(mut file, remaining)| async move {
            use tokio::io::AsyncReadExt;
            if remaining == 0 {
                return None;
            }
            let mut buf = vec![0u8; CHUNK.min(remaining) as usize];
            let error = match file.read(&mut buf).await {
                Ok(0) => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ),
                Ok(n) => match file.metadata().await {
                    Ok(meta) if spotter_model::FileIdentity::of(&meta) == verified => {
                        buf.truncate(n);
                        return Some((Ok(buf.into()), (file, remaining - n as u64)));
                    }
                    Ok(_) => std::io::Error::other("the file changed while it was being sent"),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            tracing::warn!(error = %error, "an original download was stopped");
            Some((Err(error), (file, 0)))
        },
    )
}

/// A JPEG thumbnail in displayed orientation (longest side `--thumb-size`).
#[utoipa::path(get, path = "/api/thumbs/{id}", tag = "images",
    params(("id" = String, Path, description = "An image id (decimal)")),
    responses(
        (status = 200, description = "A JPEG", content_type = "image/jpeg"),
        (status = 400, description = "Not an image id", body = api::ErrorBody),
        (status = 404, description = "No such image, or its file is gone or changed", body = api::ErrorBody),
    ))]
async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let st = state.clone();
    let jpeg = file_work(&state, move || {
        st.thumbs.get(&st.files, st.engine.index(), id)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        Body::from(jpeg.as_ref().clone()),
    )
        .into_response())
}
