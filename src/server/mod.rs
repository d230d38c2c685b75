//! The HTTP server: JSON API over the search engine, thumbnails, originals by id, and the
//! embedded web page. Every route answers errors as JSON `{"error": "..."}`.

mod params;
mod thumbs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::engine::SearchEngine;
use crate::error::SpotterError;
use params::{parse_search, RawParams};
use thumbs::ThumbCache;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address (127.0.0.1 by default: nothing is exposed unless asked).
    pub addr: SocketAddr,
    /// Bearer token required on every route when set.
    pub token: Option<String>,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Longest thumbnail side in pixels.
    pub thumb_size: u32,
    /// Thumbnails kept in memory.
    pub thumb_cache_entries: usize,
}

struct AppState {
    engine: Arc<SearchEngine>,
    token: Option<String>,
    thumbs: ThumbCache,
}

/// A JSON error response.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<SpotterError> for ApiError {
    fn from(e: SpotterError) -> Self {
        let status = match &e {
            SpotterError::Usage(_) => StatusCode::BAD_REQUEST,
            SpotterError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
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

/// Builds the router (public for tests that drive it in-process).
pub fn router(engine: Arc<SearchEngine>, config: &ServerConfig) -> Router {
    let state = Arc::new(AppState {
        engine,
        token: config.token.clone(),
        thumbs: ThumbCache::new(config.thumb_size, config.thumb_cache_entries),
    });
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/api/health", get(health))
        .route("/api/stats", get(stats))
        .route("/api/search", get(search))
        .route("/api/similar/{proposal}", get(similar))
        .route("/api/images/{id}", get(original))
        .route("/api/thumbs/{id}", get(thumbnail))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024))
        .with_state(state)
}

/// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
pub async fn serve(engine: Arc<SearchEngine>, config: ServerConfig) -> crate::error::Result<()> {
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
    println!("Spotter is serving on http://{local}/ (Ctrl-C to stop)");
    axum::serve(listener, router(engine, &config))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| SpotterError::Io {
            path: local.to_string().into(),
            source,
        })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("shutting down");
}

fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let given = token_of(request.headers(), request.uri().query());
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "this server needs a token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
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

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn stats(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let engine = state.engine.clone();
    let stats = blocking(move || Ok(engine.index().stats()?)).await?;
    let mut value = serde_json::to_value(stats).unwrap_or_default();
    value["default_threshold"] = serde_json::json!(state.engine.scoring().default_threshold());
    value["text_cache"] = serde_json::json!(state.engine.text_cache_stats());
    Ok(Json(value))
}

async fn search(
    State(state): State<Arc<AppState>>,
    Query(raw): Query<RawParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let (query, params, group_images) =
        parse_search(&raw, true).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let query =
        query.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing parameter q".into()))?;
    let engine = state.engine.clone();
    let parsed = serde_json::to_value(&query).unwrap_or_default();
    let mut value = blocking(move || {
        Ok(if group_images {
            serde_json::to_value(engine.search_images(&query, &params)?).unwrap_or_default()
        } else {
            serde_json::to_value(engine.search(&query, &params)?).unwrap_or_default()
        })
    })
    .await?;
    value["query"] = parsed;
    Ok(Json(value))
}

async fn similar(
    State(state): State<Arc<AppState>>,
    Path(proposal): Path<String>,
    Query(raw): Query<RawParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let proposal: u64 = proposal.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{proposal}' is not a proposal id"),
        )
    })?;
    let (_, params, group_images) =
        parse_search(&raw, false).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let engine = state.engine.clone();
    let value = blocking(move || {
        let result = engine.similar(proposal, &params)?;
        Ok(if group_images {
            serde_json::to_value(crate::engine::group_by_image(result)).unwrap_or_default()
        } else {
            serde_json::to_value(result).unwrap_or_default()
        })
    })
    .await?;
    Ok(Json(value))
}

fn parse_id(id: &str) -> ApiResult<u64> {
    id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("'{id}' is not an image id"),
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

async fn original(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let engine = state.engine.clone();
    let (bytes, kind) = blocking(move || {
        let path = engine
            .index()
            .image_info(id)?
            .ok_or_else(|| SpotterError::NotFound(format!("no image {id}")))?
            .path;
        let bytes = std::fs::read(&path)
            .map_err(|_| SpotterError::NotFound(format!("image {id} is no longer on disk")))?;
        Ok((bytes, content_type(&path)))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let st = state.clone();
    let jpeg = blocking(move || st.thumbs.get(st.engine.index(), id)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        (*jpeg).clone(),
    )
        .into_response())
}
