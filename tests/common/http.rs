//! A real `spotter serve` for end-to-end tests, and a raw HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};

use super::spotter;

/// A running `spotter serve`, killed when dropped.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spotter serve` on `index` at a free port (extra arguments appended).
pub fn start(index: &Path, extra: &[&str]) -> Server {
    start_with_env(index, extra, &[])
}

/// [`start`] with extra environment variables.
pub fn start_with_env(index: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    start_on(index, "127.0.0.1:0", extra, env)
}

/// [`start_with_env`] listening on `addr` (`base` is what the server prints, e.g.
/// `http://0.0.0.0:PORT/` for a wildcard address).
pub fn start_on(index: &Path, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = spotter()
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .args(["serve", "--device", "cpu", "--addr", addr, "--index"])
        .arg(index)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, base }
}

/// A raw HTTP/1.1 GET (so that paths are sent exactly as written, `..` included).
pub fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = TcpStream::connect(host).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    exchange(stream, request.as_bytes())
}

/// Sends `request` on `stream` and reads the whole response: status, head, de-chunked body.
fn exchange(mut stream: TcpStream, request: &[u8]) -> (u16, String, Vec<u8>) {
    // A server may answer (413) and close before a large body is all sent: read its answer.
    if let Err(e) = stream.write_all(request) {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty(),
            "{e}"
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

/// A raw HTTP/1.1 POST of `body`: status, head, de-chunked body.
pub fn post(base: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = TcpStream::connect(host).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(stream, &request)
}

/// A multipart/form-data body of `fields` (name, file bytes or text) and its content type.
pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----spotter-test-boundary-7d1c";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.bin\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A raw HTTP/1.1 POST of a JSON body; the status and the JSON answer.
pub fn post_json(base: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, answer) = post(base, path, "application/json", body.to_string().as_bytes());
    let value = serde_json::from_slice(&answer)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&answer)));
    (status, value)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// GET returning the status and the JSON body.
pub fn json(base: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = get(base, path, &[]);
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&body))),
    )
}
