//! The API's typed answers and its OpenAPI 3 document, generated from the route handlers'
//! annotations and these types (served at `/api/openapi.json`).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::engine::{ImageResult, SearchResult};
use crate::jobs::Job;
use crate::query::Query;
use crate::text_cache::TextCacheStats;
use spotter_indexer::index::IndexStats;

/// Every error: what went wrong, in words a person can act on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /api/stats`: the index's counts and sizes, and how the server is scoring.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    /// The index.
    #[serde(flatten)]
    pub index: IndexStats,
    /// The score threshold searches use when none is given (the model's).
    pub default_threshold: f32,
    /// How the query-text cache has been used since the server started.
    pub text_cache: TextCacheStats,
}

/// A page of a search: objects, or images with their boxes (`group=images`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SearchPage {
    /// One hit per object (the default).
    Objects(SearchResult),
    /// One hit per image, holding its matching boxes.
    Images(ImageResult),
}

/// `GET /api/search`: a page of hits and the query as it was understood.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// The page.
    #[serde(flatten)]
    pub page: SearchPage,
    /// The parsed query.
    pub query: Query,
}

/// `GET /api/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Every job kept, newest first.
    pub jobs: Vec<Job>,
}

/// `POST /api/proposals`: which images, scored against which concepts.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalsRequest {
    /// Absolute paths of indexed images, as the index holds them (at most 1000).
    pub paths: Vec<String>,
    /// Texts to score every proposal against, embedded together (at most 2000, each 1–1000
    /// bytes).
    pub concepts: Vec<String>,
}

/// `POST /api/proposals`: for each requested path, in order, every proposal of that image with
/// its probability for each concept, or `null` when the index does not hold the image.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ProposalsResponse {
    /// One entry per path.
    pub images: Vec<Option<Vec<crate::eval::EvalProposal>>>,
}

/// `POST /api/search/image`'s multipart form (`box`, `q` and `weight` may be in the query
/// string instead).
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: the route reads the fields from the multipart stream.
pub struct ExampleUpload {
    /// The example photo (JPEG, PNG, WebP, …; at most 32 MiB and the server's pixel limit).
    /// It is held in memory for the request only, never written to disk or the index.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// `x1,y1,x2,y2` in the example's displayed pixels: search for the object the model sees
    /// there (the proposal that covers it best). Without it, the example's three most
    /// object-like proposals are searched for, each as its own concept.
    #[schema(example = "40,30,400,290")]
    r#box: Option<String>,
    /// Text to mix in (`red car -truck`): its concepts are alternatives beside the example's,
    /// its negatives apply to all. `&` queries cannot be mixed with an example.
    q: Option<String>,
    /// The example's ranking weight beside the text's concepts (as `2:` weighs a text concept;
    /// above 0, at most 100; default 1).
    #[schema(example = 2.0)]
    weight: Option<f32>,
}

/// The text parameter of `GET /api/search` (with [`PageParameters`]; read by
/// `params::parse_search`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the route reads these through `parse_search`.
pub struct SearchParameters {
    /// What to find: concepts separated by commas (either), `-concept` to drop objects that
    /// look more like it, `2:concept` to weight one (README, "Query language"). At most 1000
    /// bytes.
    #[param(example = "red car, 2:bicycle -motorbike")]
    q: String,
}

/// The query-string parameters shared by `GET /api/search` and `GET /api/similar/{proposal}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the routes read these through `parse_search`.
pub struct PageParameters {
    /// Hits (or images) per page, 1–1000; default 40.
    #[param(minimum = 1, maximum = 1000)]
    k: Option<u32>,
    /// Hits to skip (the previous page's `next_offset`), at most 1 000 000.
    #[param(minimum = 0, maximum = 1_000_000)]
    offset: Option<u32>,
    /// Lowest score returned, 0–1; default the model's threshold (`/api/stats`).
    #[param(minimum = 0.0, maximum = 1.0)]
    threshold: Option<f32>,
    /// Search breadth of the vector index, 1–10000 (larger: slower, more exact).
    #[param(minimum = 1, maximum = 10_000)]
    ef: Option<u32>,
    /// `objects` (default) or `images` (one hit per image with all its boxes).
    #[param(pattern = "^(objects|images)$")]
    group: Option<String>,
    /// Only images whose path inside their archive root starts with this.
    path: Option<String>,
    /// Only images of this archive root (its id).
    root: Option<u32>,
    /// Only images at least this wide (displayed pixels).
    min_width: Option<u32>,
    /// Only images at least this tall (displayed pixels).
    min_height: Option<u32>,
    /// Only photos taken at or after this: an RFC 3339 date (`2024-05-01`) or date-time
    /// (`2024-05-01T18:30:00`), compared with the photo's own clock (EXIF times rarely carry a
    /// zone, so an offset given here is not applied). Photos with no known time are left out.
    #[param(example = "2024-05-01")]
    after: Option<String>,
    /// Only photos taken before this (same form as `after`).
    #[param(example = "2024-06-01T00:00:00")]
    before: Option<String>,
    /// Only photos whose camera (EXIF make and model, e.g. "Canon EOS 5D") contains this,
    /// ignoring case.
    #[param(example = "canon")]
    camera: Option<String>,
    /// `score` (default: best match first) or `time` (newest capture time first, photos with
    /// no known time last; every match above the threshold is gathered, so broad queries
    /// cost more).
    #[param(pattern = "^(score|time)$")]
    sort: Option<String>,
}

/// The names of the parameters documented for the search routes (tests check that
/// `parse_search` reads each of them).
#[cfg(test)]
pub fn documented_search_parameters() -> Vec<String> {
    SearchParameters::into_params(|| None)
        .into_iter()
        .chain(PageParameters::into_params(|| None))
        .map(|p| p.name)
        .collect()
}

/// Errors any route may answer, added to every operation.
const COMMON_ERRORS: [(&str, &str); 5] = [
    ("401", "The server has a token and the request lacks it"),
    (
        "408",
        "The request took longer than --request-timeout; its work was stopped",
    ),
    (
        "421",
        "A `Host:` this server does not answer for (no token; see the README)",
    ),
    ("500", "An internal failure (also logged)"),
    ("503", "The server is shutting down"),
];

struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in COMMON_ERRORS {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response.into());
                }
            }
        }
    }
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Needed on every route when the server has a token (--token-file, \
                         SPOTTER_TOKEN); `?token=` works too",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spotter",
        description = "Object search in image archives by text. Ids travel as decimal strings. \
                       Errors are JSON `{\"error\": \"...\"}`. With a token every route needs \
                       `Authorization: Bearer TOKEN`; without one, only this machine may start \
                       or cancel jobs.",
        license(name = "GPL-3.0-or-later", identifier = "GPL-3.0-or-later"),
    ),
    paths(
        super::search,
        super::similar,
        super::search_by_image,
        super::proposals,
        super::original,
        super::thumbnail,
        super::stats,
        super::failures,
        super::list_jobs,
        super::submit_job,
        super::job,
        super::cancel_job,
        super::health,
        super::openapi_json,
    ),
    components(schemas(ErrorBody, crate::jobs::JobResult)),
    modifiers(&BearerToken, &CommonErrors),
    security((), ("token" = [])),
)]
struct ApiDoc;

/// The OpenAPI document, as JSON.
pub fn document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the API document: {e}\"}}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_search_parameter_is_read() {
        use crate::server::params::{parse_search, RawParams};
        let names = documented_search_parameters();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            // A value no parameter accepts must be refused naming the parameter, unless the
            // parameter takes any text.
            let mut raw = RawParams::new();
            raw.insert("q".into(), "cat".into());
            raw.insert(name.clone(), "not-a-value".into());
            match parse_search(&raw, true) {
                Err(message) => assert!(message.contains(&name), "{name}: {message}"),
                Ok((query, params, _)) => match name.as_str() {
                    "q" => assert_eq!(query.unwrap().positives[0].text, "not-a-value"),
                    "path" => {
                        assert_eq!(params.filters.path_prefix.as_deref(), Some("not-a-value"))
                    }
                    "camera" => assert_eq!(params.filters.camera.as_deref(), Some("not-a-value")),
                    _ => panic!("parameter {name} is documented but not read"),
                },
            }
        }
    }

    #[test]
    fn document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for route in [
            "/api/search",
            "/api/similar/{proposal}",
            "/api/search/image",
            "/api/proposals",
            "/api/images/{id}",
            "/api/thumbs/{id}",
            "/api/stats",
            "/api/failures",
            "/api/jobs",
            "/api/jobs/{id}",
            "/api/jobs/{id}/cancel",
            "/api/health",
            "/api/openapi.json",
        ] {
            assert!(paths.contains(&route), "{route} missing from {paths:?}");
        }
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}
