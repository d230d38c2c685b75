//! Spotter as a service (issue 13): commands on an index that a running `spotter serve` holds
//! reach that server and print what they print on a closed index; a killed server's record is
//! recognised as stale.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{http, run_ok, spotter};

/// The outputs compared between a closed and a served index.
fn outputs(index: &Path) -> Vec<(String, Vec<u8>)> {
    let cases: [&[&str]; 6] = [
        &["search", "cat", "-k", "5"],
        &[
            "search",
            "person, motorcycle",
            "--json",
            "-k",
            "20",
            "--threshold",
            "0",
        ],
        &[
            "search",
            "motorcycle",
            "-k",
            "2",
            "--offset",
            "1",
            "--path",
            "motorcycle_",
            "--threshold",
            "0",
        ],
        &["stats"],
        &["stats", "--json"],
        &["stats", "--failures"],
    ];
    cases
        .iter()
        .map(|args| {
            let mut cmd = spotter();
            cmd.env("RUST_LOG", "error")
                .args(*args)
                .args(["--index"])
                .arg(index);
            if args[0] == "search" {
                cmd.args(["--device", "cpu"]);
            }
            (args.join(" "), run_ok(&mut cmd))
        })
        .collect()
}

fn assert_same(closed: &[(String, Vec<u8>)], served: &[(String, Vec<u8>)]) {
    for ((name, want), (_, got)) in closed.iter().zip(served) {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "`spotter {name}` on the served index"
        );
        assert!(!want.is_empty(), "`spotter {name}` printed nothing");
    }
}

#[test]
fn search_and_stats_on_a_served_index_print_what_they_print_on_a_closed_one() {
    let dir = common::scratch("service-commands");
    let index = dir.join("index");
    run_ok(&mut common::index_command(
        &common::repo_root().join("data/samples"),
        &index,
    ));
    let closed = outputs(&index);
    let record = index.join("serve.json");

    // Before: the commands would have failed with "open in another Spotter process".
    let server = http::start(&index, &[]);
    let mode = std::fs::metadata(&record)
        .expect("the server records itself")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the record may hold a token: owner only"
    );
    assert_same(&closed, &outputs(&index));
    drop(server); // SIGKILL: the record stays behind, stale

    // A stale record (its process is gone) is ignored and removed; the index opens directly.
    assert!(record.exists());
    assert_same(&closed, &outputs(&index));
    assert!(!record.exists(), "a dead server's record is removed");

    // A server with a token: the record carries it, so the owner's commands get through.
    let server = http::start_with_env(&index, &[], &[("SPOTTER_TOKEN", "s3cret-token")]);
    let (status, _) = http::json(&server.base, "/api/stats");
    assert_eq!(status, 401, "the API itself still wants the token");
    assert_same(&closed, &outputs(&index));
    drop(server);

    // A server stopped normally removes its record.
    let mut server = http::start(&index, &[]);
    assert!(record.exists());
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.child.wait().unwrap().success());
    assert!(!record.exists(), "a stopped server removes its record");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The job `id` once it reached a state other than queued and running (at most ~2 minutes).
fn finished_job(base: &str, id: u64) -> serde_json::Value {
    for _ in 0..1200 {
        let (status, job) = http::json(base, &format!("/api/jobs/{id}"));
        assert_eq!(status, 200, "{job}");
        if !matches!(job["state"].as_str(), Some("queued" | "running")) {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("job {id} did not end");
}

/// Waits until job `id` has done at least one file.
fn job_started(base: &str, id: u64) {
    for _ in 0..1200 {
        let (_, job) = http::json(base, &format!("/api/jobs/{id}"));
        if job["progress"]["files_done"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("job {id} never started");
}

fn images_in(index: &Path) -> u64 {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["stats", "--json", "--index"])
            .arg(index),
    );
    let stats: serde_json::Value = serde_json::from_slice(&out).unwrap();
    stats["indexed"].as_u64().unwrap()
}

fn detached_index(archive: &Path, index: &Path) -> u64 {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["index", "--detach", "--index"])
            .arg(index)
            .arg(archive),
    );
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {text:?}"))
}

#[test]
fn index_and_compact_on_a_served_index_run_as_jobs_that_cancel_and_survive_a_kill() {
    let dir = common::scratch("service-jobs");
    let index = dir.join("index");
    let first = dir.join("first");
    common::distinct_photos(&first, 3);
    run_ok(&mut common::index_command(&first, &index));
    let mut server = http::start(&index, &[]);

    // `spotter index` on the served index: a job, followed to its end, the usual report.
    let more = dir.join("more");
    common::distinct_photos(&more, 4);
    std::fs::rename(more.join("p000.png"), more.join("new-0.png")).unwrap();
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["index", "--quiet", "--index"])
            .arg(&index)
            .arg(&more),
    );
    let report = String::from_utf8_lossy(&out);
    assert!(
        report.starts_with(
            "4 images found: 1 indexed, 0 unchanged, 0 touched (same content), 0 moved, 3 copies"
        ),
        "{report}"
    );
    assert_eq!(images_in(&index), 7);
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["compact", "--index"])
            .arg(&index),
    );
    assert!(String::from_utf8_lossy(&out).starts_with("dropped 0 deleted vectors; "));
    let (_, list) = http::json(&server.base, "/api/jobs");
    let kinds: Vec<(&str, &str)> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["spec"]["kind"].as_str().unwrap(),
                j["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("compact", "done"), ("index", "done")],
        "newest first"
    );

    // A cancelled job stops between files, keeps what it wrote and deletes nothing.
    let big = dir.join("big");
    common::distinct_photos(&big, 120);
    let id = detached_index(&big, &index);
    job_started(&server.base, id);
    let (status, _) = http::post_json(
        &server.base,
        &format!("/api/jobs/{id}/cancel"),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200);
    let job = finished_job(&server.base, id);
    assert_eq!(job["state"], "cancelled", "{job}");
    let result = &job["result"];
    let done = result["indexed"].as_u64().unwrap() + result["copied"].as_u64().unwrap();
    assert!(done < 120, "cancelled after {done} of 120");
    assert_eq!(job["result"]["cancelled"], true);
    assert_eq!(images_in(&index), 7 + done);

    // kill -9 in the middle of a job: the next server runs it again, to the end.
    let id = detached_index(&big, &index);
    job_started(&server.base, id);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = http::start(&index, &[]);
    let job = finished_job(&server.base, id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(images_in(&index), 7 + 120);

    // Bad jobs are refused with the reason.
    let (status, answer) = http::post_json(
        &server.base,
        "/api/jobs",
        &serde_json::json!({"kind": "index", "roots": ["relative/photos"]}),
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = http::post_json(
        &server.base,
        "/api/jobs",
        &serde_json::json!({"kind": "explode"}),
    );
    assert!((400..500).contains(&status), "{answer}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_watch_indexes_new_changed_moved_and_deleted_photos_within_seconds() {
    let dir = common::scratch("service-watch");
    let (archive, index) = (dir.join("archive"), dir.join("index"));
    common::distinct_photos(&archive, 2);
    run_ok(&mut common::index_command(&archive, &index));
    let server = http::start(&index, &["--watch"]);
    // The image id recorded for `path` (inside the archive), if any.
    let image_of = |path: &str| -> Option<String> {
        let (_, hits) = http::json(&server.base, "/api/search?q=cat&k=1000&threshold=0");
        hits["hits"]
            .as_array()?
            .iter()
            .find(|h| h["path"] == path)
            .and_then(|h| h["image"].as_str().map(str::to_string))
    };
    let wait_until = |what: &str, ok: &dyn Fn() -> bool| {
        for _ in 0..300 {
            if ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{what}: not seen within 30 s");
    };
    let photos = dir.join("photos");
    common::distinct_photos(&photos, 8);
    // Create.
    std::fs::copy(photos.join("p005.png"), archive.join("new.png")).unwrap();
    wait_until("a new photo", &|| image_of("new.png").is_some());
    let created = image_of("new.png").unwrap();
    // Modify: other content under the same name becomes a new record.
    std::fs::copy(photos.join("p006.png"), archive.join("new.png")).unwrap();
    wait_until("a changed photo", &|| {
        image_of("new.png").is_some_and(|id| id != created)
    });
    let changed = image_of("new.png").unwrap();
    // Move into a subfolder: the same record at its new path (no model run).
    std::fs::create_dir(archive.join("sub")).unwrap();
    std::fs::rename(archive.join("new.png"), archive.join("sub/moved.png")).unwrap();
    wait_until("a moved photo", &|| {
        image_of("sub/moved.png").as_ref() == Some(&changed) && image_of("new.png").is_none()
    });
    // Delete.
    std::fs::remove_file(archive.join("sub/moved.png")).unwrap();
    wait_until("a deleted photo", &|| image_of("sub/moved.png").is_none());
    let (_, stats) = http::json(&server.base, "/api/stats");
    assert_eq!(stats["indexed"], 2, "{stats}");
    let (_, jobs) = http::json(&server.base, "/api/jobs");
    let kinds: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert!(kinds.len() >= 4 && !kinds.contains(&"failed"), "{jobs}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn own_lan_address() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

#[test]
fn without_a_token_only_this_machine_may_start_or_cancel_jobs() {
    let Some(lan) = own_lan_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address");
        return;
    };
    let dir = common::scratch("service-remote-admin");
    let index = dir.join("index");
    run_ok(&mut common::index_command(
        &common::repo_root().join("data/samples"),
        &index,
    ));
    let server = http::start_on(&index, "0.0.0.0:0", &[], &[]);
    let port = server
        .base
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let (remote, local) = (
        format!("http://{lan}:{port}"),
        format!("http://127.0.0.1:{port}"),
    );
    let rescan = serde_json::json!({"kind": "rescan"});
    // From the LAN address (the connection's source is not loopback): reading yes, changing no.
    let (status, answer) = http::post_json(&remote, "/api/jobs", &rescan);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("token"),
        "{answer}"
    );
    let (status, _) = http::json(&remote, "/api/jobs");
    assert_eq!(status, 200);
    let (status, job) = http::post_json(&local, "/api/jobs", &rescan);
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let (status, _) = http::post_json(
        &remote,
        &format!("/api/jobs/{id}/cancel"),
        &serde_json::json!({}),
    );
    assert_eq!(status, 403);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records exchanges with a live server for `scripts/check_openapi.py`.
struct Recorder {
    base: String,
    exchanges: Vec<serde_json::Value>,
}

impl Recorder {
    /// Records one answer under its documented `route` and returns its JSON body (if JSON).
    fn record(
        &mut self,
        method: &str,
        route: &str,
        (status, head, body): (u16, String, Vec<u8>),
    ) -> serde_json::Value {
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let json = if content_type.starts_with("application/json") {
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{route}: {e}"))
        } else {
            serde_json::Value::Null
        };
        self.exchanges.push(serde_json::json!({
            "method": method, "route": route, "status": status,
            "content_type": content_type, "body": json,
        }));
        json
    }

    fn get(&mut self, path: &str, route: &str) -> serde_json::Value {
        let answer = http::get(&self.base, path, &[]);
        self.record("get", route, answer)
    }

    fn post(&mut self, path: &str, route: &str, body: &str) -> serde_json::Value {
        let answer = http::post(&self.base, path, "application/json", body.as_bytes());
        self.record("post", route, answer)
    }

    fn status_of_last(&self) -> u64 {
        self.exchanges.last().unwrap()["status"].as_u64().unwrap()
    }
}

#[test]
fn the_openapi_document_is_valid_and_describes_every_live_answer() {
    let dir = common::scratch("service-openapi");
    let (index, archive, more) = (dir.join("index"), dir.join("archive"), dir.join("more"));
    common::distinct_photos(&archive, 4);
    std::fs::write(archive.join("broken.jpg"), b"not a JPEG at all").unwrap();
    run_ok(&mut common::index_command(&archive, &index));
    common::distinct_photos(&more, 24);
    let server = http::start(&index, &[]);
    let mut api = Recorder {
        base: server.base.trim_end_matches('/').to_string(),
        exchanges: Vec::new(),
    };

    let spec = api.get("/api/openapi.json", "/api/openapi.json");
    let objects = api.get("/api/search?q=cat&threshold=0", "/api/search");
    assert!(!objects["hits"].as_array().unwrap().is_empty(), "{objects}");
    let proposal = objects["hits"][0]["proposal"].as_str().unwrap().to_string();
    let image = objects["hits"][0]["image"].as_str().unwrap().to_string();
    api.get("/api/search?q=cat,-dog&group=images&k=2", "/api/search");
    api.get("/api/search?q=cat&k=0", "/api/search");
    api.get(
        &format!("/api/similar/{proposal}"),
        "/api/similar/{proposal}",
    );
    api.get(
        &format!("/api/similar/{proposal}?group=images"),
        "/api/similar/{proposal}",
    );
    api.get("/api/similar/x1", "/api/similar/{proposal}");
    api.get("/api/similar/123456789", "/api/similar/{proposal}");
    api.get(&format!("/api/images/{image}"), "/api/images/{id}");
    api.get("/api/images/01", "/api/images/{id}");
    api.get("/api/images/987654321", "/api/images/{id}");
    api.get(&format!("/api/thumbs/{image}"), "/api/thumbs/{id}");
    api.get("/api/thumbs/987654321", "/api/thumbs/{id}");
    let archive_path = archive.canonicalize().unwrap();
    let scored = api.post(
        "/api/proposals",
        "/api/proposals",
        &serde_json::json!({
            "paths": [archive_path.join("p000.png"), archive_path.join("nowhere.png")],
            "concepts": ["cat", "coffee cup"],
        })
        .to_string(),
    );
    assert_eq!(
        scored["images"][0][0]["scores"].as_array().unwrap().len(),
        2
    );
    assert!(scored["images"][1].is_null(), "{scored}");
    api.post(
        "/api/proposals",
        "/api/proposals",
        r#"{"paths": ["relative.png"], "concepts": ["cat"]}"#,
    );
    assert_eq!(api.status_of_last(), 400);
    let photo = std::fs::read(common::sample("motorcycle_left.png")).unwrap();
    for (query, fields) in [
        ("?group=images&threshold=0", vec![("image", &photo[..])]),
        ("?box=100,70,690,455&k=3", vec![("image", &photo[..])]),
        ("", vec![("image", &b"not an image"[..])]),
    ] {
        let (content_type, body) = http::multipart(&fields);
        let answer = http::post(
            &api.base,
            &format!("/api/search/image{query}"),
            &content_type,
            &body,
        );
        api.record("post", "/api/search/image", answer);
    }
    let stats = api.get("/api/stats", "/api/stats");
    assert_eq!(stats["failed"], 1, "{stats}");
    api.get("/api/failures", "/api/failures");
    api.get("/api/health", "/api/health");

    // Jobs: an index job (its result is the indexer's report), a queued job cancelled, a
    // compaction (its own result), a finished job that cannot be cancelled, bad bodies.
    let roots = serde_json::json!({ "kind": "index", "roots": [more] }).to_string();
    let running = api.post("/api/jobs", "/api/jobs", &roots)["id"]
        .as_u64()
        .unwrap();
    let queued = api.post("/api/jobs", "/api/jobs", r#"{"kind": "rescan"}"#)["id"]
        .as_u64()
        .unwrap();
    api.post(
        &format!("/api/jobs/{queued}/cancel"),
        "/api/jobs/{id}/cancel",
        "",
    );
    assert_eq!(api.status_of_last(), 200);
    let compact = api.post("/api/jobs", "/api/jobs", r#"{"kind": "compact"}"#)["id"]
        .as_u64()
        .unwrap();
    let bad = api.post("/api/jobs", "/api/jobs", r#"{"kind": "scan"}"#);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `scan`"),
        "{bad}"
    );
    api.post("/api/jobs", "/api/jobs", "not json");
    for id in [running, compact] {
        assert_eq!(finished_job(&api.base, id)["state"], "done");
        api.get(&format!("/api/jobs/{id}"), "/api/jobs/{id}");
    }
    api.post(
        &format!("/api/jobs/{running}/cancel"),
        "/api/jobs/{id}/cancel",
        "",
    );
    assert_eq!(api.status_of_last(), 400);
    api.get("/api/jobs/4242", "/api/jobs/{id}");
    api.post("/api/jobs/4242/cancel", "/api/jobs/{id}/cancel", "");
    let list = api.get("/api/jobs", "/api/jobs");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");
    drop(server);

    // 401 is documented on every route: a server with a token, asked without it.
    let server = http::start_with_env(&index, &[], &[("SPOTTER_TOKEN", "openapi-token")]);
    api.base = server.base.trim_end_matches('/').to_string();
    api.get("/api/stats", "/api/stats");
    assert_eq!(api.status_of_last(), 401);
    drop(server);

    let spec_file = dir.join("openapi.json");
    let exchanges_file = dir.join("exchanges.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    std::fs::write(
        &exchanges_file,
        serde_json::to_vec_pretty(&api.exchanges).unwrap(),
    )
    .unwrap();
    common::run_python(
        "check_openapi.py",
        &[
            spec_file.to_str().unwrap(),
            exchanges_file.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FUSE mount (bindfs) of a folder, unmounted when dropped.
struct FuseMount(std::path::PathBuf);

impl FuseMount {
    /// Mounts `source` at `target` with bindfs, or says why it cannot.
    fn bind(source: &Path, target: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(target).unwrap();
        let out = Command::new("bindfs")
            .arg(source)
            .arg(target)
            .output()
            .map_err(|e| format!("bindfs cannot run here ({e}); install the bindfs package"))?;
        if !out.status.success() {
            return Err(format!(
                "bindfs could not mount (FUSE unavailable?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(FuseMount(target.to_path_buf()))
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.0).status();
    }
}

#[test]
fn serve_watch_rescans_a_network_mount_periodically_and_says_so_once() {
    let dir = common::scratch("service-watch-fuse");
    let (source, mount, index) = (dir.join("source"), dir.join("mount"), dir.join("index"));
    common::distinct_photos(&source, 2);
    let _mount = match FuseMount::bind(&source, &mount) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // The mount is a root of the index; no --archive, so the only periodic rescans are the
    // watcher's fallback for roots it cannot watch.
    run_ok(&mut common::index_command(&mount, &index));
    let log = dir.join("serve.log");
    let mut child = spotter()
        .env("RUST_LOG", "warn")
        .args([
            "serve",
            "--device",
            "cpu",
            "--addr",
            "127.0.0.1:0",
            "--index",
        ])
        .arg(&index)
        .args(["--watch", "--rescan-minutes", "0.05"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let indexed = || {
        http::json(&base, "/api/stats").1["indexed"]
            .as_u64()
            .unwrap()
    };
    let wait_for = |count: u64| {
        for _ in 0..300 {
            if indexed() == count {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "{count} images not indexed within 30 s (have {})",
            indexed()
        );
    };
    wait_for(2);
    // Written beside the mount, as another machine would: no event reaches this one, the
    // periodic rescan (every 3 s here) finds it.
    let photos = dir.join("photos");
    common::distinct_photos(&photos, 4);
    std::fs::copy(photos.join("p003.png"), source.join("from-elsewhere.png")).unwrap();
    wait_for(3);
    std::thread::sleep(std::time::Duration::from_secs(4)); // at least one more rescan
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("network mount"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once, not at every rescan:\n{text}");
    assert!(
        warnings[0].contains("fuse") && warnings[0].contains("every 3 seconds"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
