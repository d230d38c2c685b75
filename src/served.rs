//! A running server's record in its index folder, and the client other commands reach it with.
//!
//! An index is opened by one process at a time. `spotter serve` writes `serve.json` into the
//! index folder once it listens (readable only by its owner: it holds the token when there is
//! one) and removes it when it stops. A command given a served index finds the record, checks
//! that the server is alive (its process exists and answers `/api/health`) and sends its work
//! there; a record left by a server that was killed is recognised as stale and ignored.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpotterError};

/// The record's file name inside the index folder.
pub const RECORD_FILE: &str = spotter_indexer::index::SERVER_RECORD;

/// How long a command waits for a served index's health answer before treating it as stale.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one forwarded request may take (the server's own request timeout is shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What `serve.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerRecord {
    /// Base URL a command on this machine reaches the server at (`http://127.0.0.1:7878`).
    pub url: String,
    /// The server's process id (a record whose process is gone is stale).
    pub pid: u32,
    /// The bearer token the server requires, if any.
    pub token: Option<String>,
}

/// Removes the record when the server stops (a killed server leaves it; it is then stale).
#[derive(Debug)]
pub struct RecordGuard {
    path: PathBuf,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The URL a local command reaches a server bound to `bound` at: a wildcard address is
/// reached through loopback.
pub fn local_url(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

/// Writes the record of this process's server, listening at `bound`, into index folder `dir`
/// (mode 0600, written beside and renamed into place so a reader never sees half of it).
pub fn publish(dir: &Path, bound: SocketAddr, token: Option<&str>) -> Result<RecordGuard> {
    let record = ServerRecord {
        url: local_url(bound),
        pid: std::process::id(),
        token: token.map(str::to_string),
    };
    let path = dir.join(RECORD_FILE);
    let temp = dir.join(format!("{RECORD_FILE}.{}.tmp", std::process::id()));
    let io = |source| SpotterError::Io {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(&record)
        .map_err(|e| SpotterError::Internal(format!("cannot encode the server record: {e}")))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temp, &path).map_err(io)?;
    Ok(RecordGuard { path })
}

/// The live server holding index folder `dir`, if there is one. A record whose process is gone
/// or that does not answer is stale: it is ignored (and removed when its process is gone).
pub fn find(dir: &Path) -> Result<Option<ServedIndex>> {
    let path = dir.join(RECORD_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SpotterError::Io { path, source }),
    };
    let record: ServerRecord = match serde_json::from_slice(&text) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable server record");
            return Ok(None);
        }
    };
    if !process_exists(record.pid) {
        tracing::info!(file = %path.display(), pid = record.pid, "removing the record of a server that is gone");
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let served = ServedIndex::new(record);
    match served.health() {
        Ok(()) => Ok(Some(served)),
        Err(e) => {
            tracing::warn!(url = %served.record.url, error = %e, "the server recorded in the index folder does not answer; opening the index directly");
            Ok(None)
        }
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 checks for the process without sending anything.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An index held by a running server, reached over its HTTP API.
pub struct ServedIndex {
    record: ServerRecord,
    agent: ureq::Agent,
}

impl ServedIndex {
    fn new(record: ServerRecord) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        ServedIndex { record, agent }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.record.url
    }

    fn health(&self) -> Result<()> {
        let url = format!("{}/api/health", self.record.url);
        let mut request = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(HEALTH_TIMEOUT))
            .build();
        if let Some(token) = &self.record.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call().map_err(|source| SpotterError::Unreachable {
            url: url.clone(),
            source: Box::new(source),
        })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SpotterError::Usage(format!(
                "{url} answered {}",
                response.status()
            )))
        }
    }

    /// `GET path` (with its query string, already encoded) as JSON; an error answer becomes the
    /// error it reports.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.record.url);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.record.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call().map_err(|source| SpotterError::Unreachable {
            url: url.clone(),
            source: Box::new(source),
        })?;
        answer(&url, response)
    }
}

impl ServedIndex {
    /// `POST path` with a JSON body; the answer as [`ServedIndex::get`] gives it.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.record.url);
        let mut request = self.agent.post(&url);
        if let Some(token) = &self.record.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request
            .send_json(body)
            .map_err(|source| SpotterError::Unreachable {
                url: url.clone(),
                source: Box::new(source),
            })?;
        answer(&url, response)
    }

    /// `POST path` of a multipart form holding one file field `name` with `bytes`; the
    /// answer as [`ServedIndex::get`] gives it.
    pub fn post_file(&self, path: &str, name: &str, bytes: &[u8]) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.record.url);
        // A boundary that does not occur in the file.
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let boundary = loop {
            let candidate = format!("----spotter-{seed:016x}");
            if !bytes
                .windows(candidate.len())
                .any(|w| w == candidate.as_bytes())
            {
                break candidate;
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        };
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"example\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut request = self.agent.post(&url).header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        );
        if let Some(token) = &self.record.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request
            .send(&body[..])
            .map_err(|source| SpotterError::Unreachable {
                url: url.clone(),
                source: Box::new(source),
            })?;
        answer(&url, response)
    }

    /// Submits `spec` as a job and, unless `detach`, follows it until it ends, calling
    /// `progress` with each new state; returns the last state.
    pub fn run_job(
        &self,
        spec: &crate::jobs::JobSpec,
        detach: bool,
        mut progress: impl FnMut(&crate::jobs::Job),
    ) -> Result<crate::jobs::Job> {
        let body = serde_json::to_value(spec)
            .map_err(|e| SpotterError::Internal(format!("cannot encode the job: {e}")))?;
        let mut job = job_of(self.post("/api/jobs", &body)?)?;
        while !detach
            && matches!(
                job.state,
                crate::jobs::JobState::Queued | crate::jobs::JobState::Running
            )
        {
            progress(&job);
            std::thread::sleep(Duration::from_millis(250));
            job = job_of(self.get(&format!("/api/jobs/{}", job.id))?)?;
        }
        progress(&job);
        Ok(job)
    }
}

fn job_of(value: serde_json::Value) -> Result<crate::jobs::Job> {
    serde_json::from_value(value).map_err(|e| {
        SpotterError::Internal(format!("the server sent a job it did not describe: {e}"))
    })
}

/// A response's JSON body, or the error its status and `{"error": …}` body say.
fn answer(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value =
        response
            .body_mut()
            .read_json()
            .map_err(|source| SpotterError::Unreachable {
                url: url.to_string(),
                source: Box::new(source),
            })?;
    if status.is_success() {
        return Ok(body);
    }
    let message = body
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no reason given")
        .to_string();
    Err(match status.as_u16() {
        400 => SpotterError::Usage(message),
        404 => SpotterError::NotFound(message),
        503 => SpotterError::Busy(message),
        408 => SpotterError::Cancelled,
        _ => SpotterError::Internal(format!("the server at {url} answered {status}: {message}")),
    })
}

/// Percent-encodes a query-string value.
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_reached_through_loopback() {
        assert_eq!(
            local_url("0.0.0.0:7878".parse().unwrap()),
            "http://127.0.0.1:7878"
        );
        assert_eq!(local_url("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(
            local_url("192.168.1.5:9".parse().unwrap()),
            "http://192.168.1.5:9"
        );
    }

    #[test]
    fn the_record_is_private_and_a_dead_servers_record_is_stale() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let guard = publish(dir.path(), "127.0.0.1:1".parse().unwrap(), Some("secret")).unwrap();
        let path = dir.path().join(RECORD_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let record: ServerRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(record.token.as_deref(), Some("secret"));
        assert_eq!(record.pid, std::process::id());
        // This process is alive but nothing answers at port 1: stale, the file stays.
        assert!(find(dir.path()).unwrap().is_none());
        assert!(path.exists());
        drop(guard);
        assert!(!path.exists(), "removed when the server stops");
        // A record of a process that is gone is removed.
        let gone = ServerRecord {
            url: "http://127.0.0.1:1".into(),
            pid: i32::MAX as u32,
            token: None,
        };
        std::fs::write(&path, serde_json::to_vec(&gone).unwrap()).unwrap();
        assert!(find(dir.path()).unwrap().is_none());
        assert!(!path.exists());
    }
}
