//! What every request goes through before and after its route: security headers, JSON error
//! bodies, header limits, the Host allow-list, the token, and the request deadline (which also
//! cancels the request's work).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::engine::Cancel;

/// Most request headers accepted (more: 431).
pub const MAX_HEADERS: usize = 100;
/// Largest total size of request headers in bytes (more: 431).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Which `Host:` headers a server without a token answers (DNS-rebinding guard).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The address the server is bound to.
    pub bound: IpAddr,
    /// Extra host names allowed (`--allow-host`), lower case, without port.
    pub names: Vec<String>,
}

impl HostPolicy {
    /// Whether a request naming `host` (as in the `Host:` header, maybe with a port) is allowed:
    /// `localhost` and `*.localhost`, the bound IP address, loopback addresses, any IP address
    /// literal when bound to all interfaces, and the configured names.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some(name) = host_name(&host) else {
            return false;
        };
        let name = name.trim_end_matches('.');
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip == self.bound || ip.is_loopback() || self.bound.is_unspecified();
        }
        self.names.iter().any(|n| n == name)
    }
}

/// The name in a `Host:` value (`name`, `name:port`, `[v6]`, `[v6]:port`), or `None` when the
/// value is malformed.
fn host_name(host: &str) -> Option<&str> {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let fine = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return fine.then_some(inside);
    }
    match host.split_once(':') {
        None => Some(host),
        Some((name, port)) if port_ok(port) => Some(name),
        Some(_) => None,
    }
}

/// Normalises an `--allow-host` value: lower case, without a port or trailing dot; `None` when
/// nothing is left.
pub fn allowed_host_name(given: &str) -> Option<String> {
    let lower = given.trim().to_ascii_lowercase();
    let name = host_name(&lower)?.trim_end_matches('.');
    (!name.is_empty()).then(|| name.to_string())
}

/// Security headers on every response, and a JSON body on every error response that lacks one
/// (timeouts, wrong methods, over-large bodies are answered by layers that write plain text or
/// nothing).
pub async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                "method not allowed: routes answer GET (POST to start and cancel jobs)".into()
            }
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large".into(),
            StatusCode::REQUEST_TIMEOUT => "the request took too long".into(),
            other => other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_ascii_lowercase(),
        };
        let allow = response.headers().get(header::ALLOW).cloned();
        response = ApiError(status, message).into_response();
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Refuses requests with too many or too large headers (431, JSON).
pub async fn header_limits(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "request headers too large: at most {MAX_HEADERS} headers and {} KiB",
                MAX_HEADER_BYTES / 1024
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// The DNS-rebinding guard of a server without a token: the `Host:` header must name this
/// server (see [`HostPolicy::allows`]).
pub async fn check_host(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.token.is_none() {
        if let Some(policy) = &state.hosts {
            if request.headers().get_all(header::HOST).iter().count() > 1 {
                return ApiError(StatusCode::BAD_REQUEST, "more than one Host header".into())
                    .into_response();
            }
            // An absolute-form target's authority wins over the Host header (RFC 9112 3.2.2).
            let authority = request.uri().authority().map(|a| a.as_str().to_string());
            let host = authority.as_deref().or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            });
            if let Some(host) = host {
                if !policy.allows(host) {
                    return ApiError(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "this server does not answer for host '{}': start it with \
                             --allow-host NAME to allow that name, or with a token",
                            host.escape_debug()
                        ),
                    )
                    .into_response();
                }
            }
        }
    }
    next.run(request).await
}

/// Every token a request offers: each `Authorization: Bearer …` header (the scheme in any
/// case) and each percent-decoded `token` query parameter.
fn tokens_of(headers: &HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut tokens: Vec<String> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let v = v.trim();
            let (scheme, rest) = v.split_once(char::is_whitespace)?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        })
        .collect();
    if let Some(query) = query {
        // Percent-decoded (the page sends encodeURIComponent(token)); '+' stays '+', since
        // encodeURIComponent never writes '+' for a space and tokens may contain '+'.
        tokens.extend(
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| *k == "token")
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                }),
        );
    }
    tokens
}

/// The bearer token check of every route (when the server has a token).
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.token {
        let offered = tokens_of(request.headers(), request.uri().query());
        let ok = offered
            .iter()
            .any(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())));
        if !ok {
            let mut response = ApiError(
                StatusCode::UNAUTHORIZED,
                "this server needs a token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN"
                    .into(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Cancels the request's work when dropped (the deadline passed or the client went away).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The request deadline: the route gets a [`Cancel`] in its extensions, cancelled when the
/// deadline passes or the connection goes away, so searches stop instead of running on.
pub async fn deadline(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let cancel = Cancel::new();
    request.extensions_mut().insert(cancel.clone());
    let _guard = CancelOnDrop(cancel);
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than the server's limit of {} s and was stopped",
                state.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_policy() {
        let p = HostPolicy {
            bound: "127.0.0.1".parse().unwrap(),
            names: vec!["photos.lan".into()],
        };
        for ok in [
            "localhost",
            "localhost:7878",
            "LOCALHOST:1",
            "app.localhost",
            "127.0.0.1:7878",
            "127.0.0.2",
            "[::1]:7878",
            "photos.lan:7878",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "10.0.0.1",
            "localhost.evil.example",
            "",
        ] {
            assert!(!p.allows(bad), "{bad}");
        }
        let any = HostPolicy {
            bound: "0.0.0.0".parse().unwrap(),
            names: vec![],
        };
        assert!(any.allows("192.168.1.5:7878"));
        assert!(!any.allows("rebind.example"));
    }

    #[test]
    fn allowed_host_names_are_normalised() {
        assert_eq!(
            allowed_host_name("Photos.LAN:7878").as_deref(),
            Some("photos.lan")
        );
        assert_eq!(
            allowed_host_name("photos.lan.").as_deref(),
            Some("photos.lan")
        );
        assert_eq!(allowed_host_name(""), None);
        assert_eq!(allowed_host_name("."), None);
    }

    #[test]
    fn tokens_are_found_in_every_form() {
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  a+b/c= "),
        );
        let t = tokens_of(&h, Some("x=1&token=a%2Bb%2Fc%3D"));
        assert_eq!(t, vec!["a+b/c=".to_string(), "a+b/c=".to_string()]);
    }
}
