//! The query server under attack and faults (issue 10), end to end against the real binary:
//! aborted downloads and pipelined early closes, FIFOs and symbolic links swapped in for indexed
//! files, blocking-pool exhaustion, concurrent decompression-bomb thumbnails under the decode
//! memory budget, cancelled timeouts, slow headers, JSON errors, security headers, the Host
//! allow-list and every token form.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;

/// Copies `names` of the sample photos into `dir/photos` and indexes them into `dir/index`.
fn index_photos(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    for name in names {
        std::fs::copy(sample(name), archive.join(name)).unwrap();
    }
    let index = dir.join("index");
    run_ok(&mut index_command(&archive, &index));
    (archive, index)
}

/// The image id of the top hit for `q`, and its path.
fn top_image(base: &str, q: &str) -> (u64, String) {
    let (status, body) = json(base, &format!("/api/search?q={q}&k=1&threshold=0"));
    assert_eq!(status, 200, "{body}");
    let hit = &body["hits"][0];
    (
        id_of(&hit["image"]),
        hit["path"].as_str().unwrap().to_string(),
    )
}

/// An id from JSON (a string; numbers are accepted so that these tests can run against an
/// older build, whose failures should be the faults tested, not the id format).
fn id_of(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an id: {v}"))
}

/// The image id whose relative path is `path` (searching broadly).
fn image_id_of(base: &str, path: &str) -> u64 {
    let (status, body) = json(base, "/api/search?q=thing&k=1000&threshold=0&group=images");
    assert_eq!(status, 200, "{body}");
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == path)
        .map(|i| id_of(&i["image"]))
        .unwrap_or_else(|| panic!("{path} not in the index: {body}"))
}

/// A large original that the model still finds a cat in: the sample cat upscaled with noise
/// added, which does not compress (~10 MB at 2255×1500), so that a download is many writes.
fn write_large_cat(path: &Path, width: u32, height: u32) {
    let cat = image::open(sample("chelsea.png")).unwrap().to_rgb8();
    let mut noise =
        image::imageops::resize(&cat, width, height, image::imageops::FilterType::Triangle);
    let mut x: u32 = 12345;
    for p in noise.pixels_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        for c in p.0.iter_mut() {
            *c = c.saturating_add(((x >> 24) & 15) as u8);
        }
    }
    noise.save(path).unwrap();
}

/// Opens a connection with a small receive buffer and asks for `path` without reading.
fn stalled_request(host: &str, path: &str) -> TcpStream {
    use std::os::fd::AsRawFd;
    let s = TcpStream::connect(host).unwrap();
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a c_int option value of the right length.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    (&s).write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    s
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The status of `GET /api/health` sent with `Host: host` and `extra` header lines.
fn status_for_host(base: &str, host: &str, extra: &str) -> u16 {
    let mut s = TcpStream::connect(addr(base)).unwrap();
    s.write_all(
        format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn alive(server: &mut Server) -> bool {
    server.child.try_wait().unwrap().is_none()
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Peak and current resident memory of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn aborted_downloads_and_pipelined_early_closes_do_not_kill_the_server() {
    let dir = scratch("hardening_abort");
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::copy(sample("chelsea.png"), archive.join("chelsea.png")).unwrap();
    write_large_cat(&archive.join("noise.png"), 2255, 1500);
    let index = dir.join("index");
    run_ok(&mut index_command(&archive, &index));
    for token in [None, Some("s3cret")] {
        let mut extra = vec![];
        if let Some(t) = token {
            extra = vec!["--token", t];
        }
        let mut server = start(&index, &extra);
        let host = addr(&server.base);
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let noise_id = if token.is_none() {
            Some(image_id_of(&server.base, "noise.png"))
        } else {
            None
        };
        let mut paths = vec!["/api/search?q=cat&k=1000&threshold=0".to_string()];
        if let Some(id) = noise_id {
            paths.push(format!("/api/images/{id}"));
        } else {
            paths.push("/api/images/1".to_string()); // 401 replies
        }
        for round in 0..30 {
            for path in &paths {
                // Pipelined requests; then close at once, or after reading 100 bytes.
                let mut s = TcpStream::connect(&host).unwrap();
                let mut batch = String::new();
                for _ in 0..(1 + round % 10 * 5) {
                    batch.push_str(&format!(
                        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n"
                    ));
                }
                s.write_all(batch.as_bytes()).unwrap();
                if round % 2 == 1 {
                    let mut buf = [0u8; 100];
                    let _ = s.read(&mut buf);
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                alive(&mut server),
                "the server died in round {round} (token {token:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(alive(&mut server), "the server died (token {token:?})");
        let bearer = format!("Bearer {}", token.unwrap_or(""));
        let headers: Vec<(&str, &str)> = match token {
            Some(_) => vec![("Authorization", bearer.as_str())],
            None => vec![],
        };
        let (status, _, _) = get(&server.base, "/api/health", &headers);
        assert_eq!(status, 200);
        if let Some(id) = noise_id {
            // Downloads are streamed whole and byte-exact.
            let (status, head, body) = get(&server.base, &format!("/api/images/{id}"), &[]);
            assert_eq!(status, 200, "{head}");
            assert_eq!(body, std::fs::read(archive.join("noise.png")).unwrap());
        }
    }
}

#[test]
fn a_fifo_swapped_in_is_refused_at_once_and_cannot_exhaust_the_server() {
    let dir = scratch("hardening_fifo");
    let (archive, index) = index_photos(&dir, &["chelsea.png", "coffee.png", "rocket.jpg"]);
    let mut server = start(&index, &["--request-timeout", "1"]);
    let (cat, path) = top_image(&server.base, "cat");
    assert_eq!(path, "chelsea.png");
    std::fs::remove_file(archive.join("chelsea.png")).unwrap();
    mkfifo(&archive.join("chelsea.png"));
    // 640 requests for the FIFO's original and thumbnail, 16 at a time: each is refused at once.
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..16 {
            let base = server.base.clone();
            s.spawn(move || {
                for i in 0..40 {
                    let route = if (t + i) % 2 == 0 { "images" } else { "thumbs" };
                    let (status, _, body) = get(&base, &format!("/api/{route}/{cat}"), &[]);
                    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert!(v["error"].as_str().unwrap().contains("no longer on disk"));
                }
            });
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "FIFO requests were not refused promptly ({:?})",
        started.elapsed()
    );
    // Everything else still answers.
    let (status, body) = json(&server.base, "/api/search?q=coffee");
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = get(
        &server.base,
        &format!("/api/thumbs/{}", top_image(&server.base, "coffee").0),
        &[],
    );
    assert_eq!(status, 200);
    // SIGTERM ends the process within the shutdown grace period.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while alive(&mut server) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_swapped_file_never_serves_anything_but_the_indexed_image() {
    let dir = scratch("hardening_swap");
    let (archive, index) = index_photos(&dir, &["chelsea.png", "coffee.png"]);
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-CONTENT\n".repeat(100)).unwrap();
    let server = start(&index, &[]);
    let (cat, _) = top_image(&server.base, "cat");
    let original = std::fs::read(archive.join("chelsea.png")).unwrap();
    let (status, _, body) = get(&server.base, &format!("/api/images/{cat}"), &[]);
    assert_eq!((status, body == original), (200, true));
    std::fs::rename(archive.join("chelsea.png"), dir.join("chelsea.keep")).unwrap();
    // A symbolic link to a secret, to another (unindexed) image, and a replaced file.
    std::fs::copy(sample("astronaut.png"), dir.join("other.png")).unwrap();
    for (kind, target) in [
        ("symlink to a text file", Some(secret.clone())),
        ("symlink to another image", Some(dir.join("other.png"))),
        ("another image in place", None),
    ] {
        let at = archive.join("chelsea.png");
        let _ = std::fs::remove_file(&at);
        match &target {
            Some(t) => std::os::unix::fs::symlink(t, &at).unwrap(),
            None => {
                std::fs::copy(sample("astronaut.png"), &at).unwrap();
            }
        }
        for route in ["images", "thumbs"] {
            let (status, head, body) = get(&server.base, &format!("/api/{route}/{cat}"), &[]);
            assert_eq!(status, 404, "{kind} /api/{route}: {head}");
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("TOP-SECRET"), "{kind}: leaked {text}");
            assert!(text.contains("changed on disk"), "{kind}: {text}");
        }
    }
    // The indexed image back in place is served again.
    std::fs::remove_file(archive.join("chelsea.png")).unwrap();
    std::fs::rename(dir.join("chelsea.keep"), archive.join("chelsea.png")).unwrap();
    let (status, _, body) = get(&server.base, &format!("/api/images/{cat}"), &[]);
    assert_eq!((status, body == original), (200, true));
    let (status, _, _) = get(&server.base, &format!("/api/thumbs/{cat}"), &[]);
    assert_eq!(status, 200);
}

#[test]
fn concurrent_bomb_thumbnails_stay_within_the_decode_memory_budget() {
    let dir = scratch("hardening_bomb");
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    // A 24-megapixel 16-bit RGBA PNG (192 MB of decoded pixels; a few MB on disk), and copies
    // (distinct image ids, so the thumbnails cannot share one decode).
    let (w, h) = (6000u32, 4000u32);
    let big = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(w, h, |x, y| {
        image::Rgba([
            (x * 10) as u16,
            (y * 16) as u16,
            ((x + y) * 5) as u16,
            65535,
        ])
    });
    big.save(archive.join("big0.png")).unwrap();
    drop(big);
    for i in 1..4 {
        std::fs::copy(
            archive.join("big0.png"),
            archive.join(format!("big{i}.png")),
        )
        .unwrap();
    }
    let index = dir.join("index");
    run_ok(&mut index_command(&archive, &index));
    let budget_mib = 512u64;
    let server = start(&index, &["--decode-memory", &budget_mib.to_string()]);
    let ids: Vec<u64> = (0..4)
        .map(|i| image_id_of(&server.base, &format!("big{i}.png")))
        .collect();
    let (_, before) = memory_of(server.child.id());
    std::thread::scope(|s| {
        for k in 0..8 {
            let base = server.base.clone();
            let id = ids[k % 4];
            s.spawn(move || {
                let (status, _, body) = get(&base, &format!("/api/thumbs/{id}"), &[]);
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            });
        }
    });
    let (peak, _) = memory_of(server.child.id());
    let growth = peak.saturating_sub(before);
    // One decode's estimate is 24 MP × 19 bytes = 456 MB, so the 512 MiB budget admits one at
    // a time; eight unbounded decodes would take several GB.
    let bound = (budget_mib << 20) + (budget_mib << 20) / 2;
    assert!(
        growth < bound,
        "thumbnails grew the server by {} MB, over the bound {} MB",
        growth >> 20,
        bound >> 20
    );
    drop(server);
    // --max-pixels applies to thumbnails too.
    let server = start(&index, &["--max-pixels", "1000000"]);
    let (status, _, body) = get(&server.base, &format!("/api/thumbs/{}", ids[0]), &[]);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("over the limit"));
}

#[test]
fn a_timed_out_search_stops_its_work_and_every_error_is_json() {
    let dir = scratch("hardening_timeout");
    let (_, index) = index_photos(&dir, &["chelsea.png", "coffee.png"]);
    let server = start(&index, &["--request-timeout", "1"]);
    // Twelve heavy queries (130 distinct concepts each) at once: seconds of text-tower work.
    let started = Instant::now();
    std::thread::scope(|s| {
        for q in 0..12 {
            let base = server.base.clone();
            s.spawn(move || {
                let concepts: Vec<String> = (0..130).map(|i| format!("{q}_{i}")).collect();
                let query = concepts.join(",");
                let (status, body) = json(&base, &format!("/api/search?q={query}"));
                assert_eq!(status, 408, "{body}");
                assert!(body["error"].as_str().unwrap().contains("took longer"));
            });
        }
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let computed = |base: &str| {
        json(base, "/api/stats").1["text_cache"]["computed"]
            .as_u64()
            .unwrap()
    };
    let first = computed(&server.base);
    std::thread::sleep(Duration::from_secs(2));
    let later = computed(&server.base);
    assert!(
        later <= first + 1,
        "text-tower runs went on after the timeout: {first} -> {later}"
    );
    assert!(
        first < 12 * 130,
        "every concept was embedded: nothing was cancelled"
    );

    // 405, 413, 431 and 404 answer JSON with security headers.
    let host = addr(&server.base);
    let raw = |request: String| -> (u16, String, serde_json::Value) {
        let mut s = TcpStream::connect(&host).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&out[..split]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = serde_json::from_slice(&out[split + 4..]).unwrap_or_else(|_| {
            panic!(
                "not JSON: {head}\n{}",
                String::from_utf8_lossy(&out[split + 4..])
            )
        });
        (status, head.to_ascii_lowercase(), body)
    };
    let cases = [
        (
            405,
            format!("POST /api/search?q=cat HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        ),
        (
            413,
            format!("GET /api/search?q=cat HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"),
        ),
        (
            431,
            format!(
                "GET /api/search?q=cat HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(40_000)
            ),
        ),
        (
            404,
            format!("GET /nothing HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        ),
    ];
    for (want, request) in cases {
        let (status, head, body) = raw(request);
        assert_eq!(status, want, "{head}");
        assert!(body["error"].is_string(), "{want}: {body}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("frame-ancestors 'none'"), "{head}");
    }
    for path in ["/", "/api/health"] {
        let (_, head, _) = get(&server.base, path, &[]);
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        assert!(head.contains("content-security-policy:"), "{path}: {head}");
    }
}

#[test]
fn slow_headers_are_cut_off() {
    let dir = scratch("hardening_slow");
    let (_, index) = index_photos(&dir, &["coffee.png"]);
    let server = start(&index, &["--header-timeout", "2"]);
    let host = addr(&server.base);
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&host).unwrap();
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 512];
        // The server answers 408 or just closes: either way the connection ends.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a slow connection was held open: {e}"),
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(8));
    let (status, _, _) = get(&server.base, "/api/health", &[]);
    assert_eq!(status, 200);
}

#[test]
fn tokens_work_in_every_form_and_hosts_are_checked_without_one() {
    let dir = scratch("hardening_token");
    let (_, index) = index_photos(&dir, &["chelsea.png"]);
    let token = "a+b/c==&x";
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let server = start(&index, &["--token-file", file.to_str().unwrap()]);
    // Ids travel as strings (64-bit ids pass JavaScript's 2^53).
    let (_, found) = json(
        &server.base,
        &format!(
            "/api/search?q=cat&threshold=0&token={}",
            "a%2Bb%2Fc%3D%3D%26x"
        ),
    );
    let hit = &found["hits"][0];
    assert!(
        hit["proposal"].is_string() && hit["image"].is_string(),
        "{hit}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(token));
    let encoded = "a%2Bb%2Fc%3D%3D%26x";
    let (status, _, _) = get(&server.base, &format!("/api/health?token={encoded}"), &[]);
    assert_eq!(status, 200, "percent-encoded ?token=");
    for auth in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER   {token}"),
    ] {
        let (status, _, _) = get(&server.base, "/api/health", &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{auth}");
    }
    let bearer = format!("Bearer {token}");
    let (status, _, _) = get(
        &server.base,
        "/api/health",
        &[
            ("Authorization", "Basic Zm9vOmJhcg=="),
            ("Authorization", &bearer),
        ],
    );
    assert_eq!(status, 200, "a second Authorization header");
    let (status, _, body) = get(&server.base, "/api/health?token=wrong", &[]);
    assert_eq!(status, 401);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"].is_string());
    // With a token, any Host is fine (the token is the guard).
    assert_eq!(
        status_for_host(
            &server.base,
            "photos.example",
            &format!("Authorization: {bearer}\r\n")
        ),
        200
    );
    drop(server);

    // Without a token: only this server's own names (DNS-rebinding guard).
    let server = start(&index, &["--allow-host", "photos.lan"]);
    let port = server
        .base
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let host_get = |host: &str| status_for_host(&server.base, host, "");
    for ok in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("photos.lan:{port}"),
    ] {
        assert_eq!(host_get(&ok), 200, "{ok}");
    }
    for bad in [format!("rebind.example:{port}"), "evil.example".to_string()] {
        assert_eq!(host_get(&bad), 421, "{bad}");
    }
}

#[test]
fn non_utf8_file_names_are_served_by_id() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch("hardening_non_utf8");
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    let a = archive.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.png"));
    let b = archive.join(std::ffi::OsStr::from_bytes(b"\xfe\xff.png"));
    std::fs::copy(sample("chelsea.png"), &a).unwrap();
    std::fs::copy(sample("coffee.png"), &b).unwrap();
    let index = dir.join("index");
    run_ok(&mut index_command(&archive, &index));
    let server = start(&index, &[]);
    let (status, body) = json(
        &server.base,
        "/api/search?q=thing&k=100&threshold=0&group=images",
    );
    assert_eq!(status, 200, "{body}");
    let mut served: Vec<Vec<u8>> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let id = id_of(&i["image"]);
            let (status, _, bytes) = get(&server.base, &format!("/api/images/{id}"), &[]);
            assert_eq!(status, 200, "original of {id}");
            let (status, _, _) = get(&server.base, &format!("/api/thumbs/{id}"), &[]);
            assert_eq!(status, 200, "thumbnail of {id}");
            bytes
        })
        .collect();
    let mut want = vec![std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()];
    served.sort();
    want.sort();
    assert_eq!(served, want, "both files, each served as itself");
}

#[test]
fn search_finds_new_photos_while_serve_indexes_in_the_background() {
    let dir = scratch("hardening_background");
    let archive = dir.join("photos");
    let count = 160;
    distinct_photos(&archive, count);
    let index = dir.join("index");
    let server = start(&index, &["--archive", archive.to_str().unwrap()]);
    // Mid-run (some but not all photos stored), what is stored must be searchable.
    let started = Instant::now();
    let mut checked_mid_run = 0;
    loop {
        let (_, stats) = json(&server.base, "/api/stats");
        let images = stats["indexed"].as_u64().unwrap();
        if images as usize >= count {
            break;
        }
        if images >= 20 {
            // Vectors follow their records within about a second.
            std::thread::sleep(Duration::from_millis(1500));
            let (_, later) = json(&server.base, "/api/stats");
            if (later["indexed"].as_u64().unwrap() as usize) < count {
                assert!(
                    later["vectors"].as_u64().unwrap() > 0,
                    "{images} photos stored but no vector searchable: {later}"
                );
                let (status, found) = json(&server.base, "/api/search?q=cat&threshold=0&k=5");
                assert_eq!(status, 200);
                assert!(!found["hits"].as_array().unwrap().is_empty(), "{found}");
                checked_mid_run += 1;
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "indexing stalled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        checked_mid_run > 0,
        "the run ended before it could be observed mid-way (a faster machine: use more photos)"
    );
}

#[test]
fn clients_that_stop_reading_are_dropped_and_in_place_writes_end_a_download() {
    let dir = scratch("hardening_stalled");
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    write_large_cat(&archive.join("big.png"), 3000, 2000);
    std::fs::copy(sample("coffee.png"), archive.join("coffee.png")).unwrap();
    let index = dir.join("index");
    run_ok(&mut index_command(&archive, &index));
    let server = start(&index, &["--max-connections", "4", "--send-timeout", "2"]);
    let host = addr(&server.base);
    let big = image_id_of(&server.base, "big.png");
    let size = std::fs::metadata(archive.join("big.png")).unwrap().len() as usize;

    // Six downloads that are never read, against a limit of four connections.
    let stalled: Vec<TcpStream> = (0..6)
        .map(|_| stalled_request(&host, &format!("/api/images/{big}")))
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let t = Instant::now();
    let (status, _, _) = get(&server.base, "/api/health", &[]);
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "health waited {:?}",
        t.elapsed()
    );
    // (Four connection slots were held by non-reading clients: only dropping them let the health
    // check in.)
    drop(stalled);

    // A file written in place while it is being sent ends the download.
    let mut s = TcpStream::connect(&host).unwrap();
    s.write_all(format!("GET /api/images/{big} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    s.read_exact(&mut first).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(archive.join("big.png"))
            .unwrap();
        f.write_all_at(&vec![b'A'; 1 << 20], size as u64 - (1 << 20))
            .unwrap();
    }
    let mut got = first;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(got.len() < size, "the rewritten file was sent whole");
    assert!(
        !got.windows(4096).any(|w| w.iter().all(|&b| b == b'A')),
        "the new bytes were sent"
    );
}

#[test]
fn cached_thumbnails_of_deleted_photos_are_not_served() {
    let dir = scratch("hardening_thumb_cache");
    let (archive, index) = index_photos(&dir, &["chelsea.png", "coffee.png"]);
    let server = start(&index, &[]);
    let (cat, _) = top_image(&server.base, "cat");
    let (status, _, _) = get(&server.base, &format!("/api/thumbs/{cat}"), &[]);
    assert_eq!(status, 200);
    std::fs::remove_file(archive.join("chelsea.png")).unwrap();
    let (status, _, _) = get(&server.base, &format!("/api/thumbs/{cat}"), &[]);
    assert_eq!(status, 404, "a deleted photo's cached thumbnail was served");
}

#[test]
fn odd_hosts_ids_and_token_spellings() {
    let dir = scratch("hardening_odd");
    let (_, index) = index_photos(&dir, &["chelsea.png"]);
    let server = start(&index, &["--allow-host", "Photos.LAN:7878"]);
    let host = addr(&server.base);
    let raw = |request: String| -> u16 {
        let mut s = TcpStream::connect(&host).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(status_for_host(&server.base, "photos.lan", ""), 200);
    assert_eq!(status_for_host(&server.base, "[::1]evil.example", ""), 421);
    assert_eq!(
        raw("GET http://evil.example/api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()),
        421
    );
    assert_eq!(
        raw("GET /api/health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n".into()),
        400
    );
    for id in ["+1", "01", "1%20"] {
        let (status, _, _) = get(&server.base, &format!("/api/images/{id}"), &[]);
        assert_eq!(status, 400, "{id}");
    }
    drop(server);
    let out = spotter()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--allow-host",
            ".",
            "--index",
        ])
        .arg(&index)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-host"));

    // A token from the environment with a stray space works in a header.
    let server = start_with_env(&index, &[], &[("SPOTTER_TOKEN", "abc123 \r")]);
    let (status, _, _) = get(
        &server.base,
        "/api/health",
        &[("Authorization", "Bearer abc123")],
    );
    assert_eq!(status, 200);
}
