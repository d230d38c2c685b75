//! The query server end to end: a real `spotter serve` over an index of the sample photos, its
//! HTTP API (including every bad-parameter path and traversal attempts), and the web page in a
//! real headless Chromium (`web/tests/search.mjs`), with screenshots kept in
//! `target/test-artifacts/browser/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::http::*;
use common::*;

fn index_samples(dir: &Path) {
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    for name in [
        "chelsea.png",
        "coffee.png",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "astronaut.png",
        "rocket.jpg",
        "camera.png",
    ] {
        std::fs::copy(sample(name), archive.join(name)).unwrap();
    }
    run_ok(&mut index_command(&archive, &dir.join("index")));
}

#[test]
fn api_answers_queries_and_explains_every_bad_request() {
    let dir = scratch("server-api");
    index_samples(&dir);
    let server = start(&dir.join("index"), &[]);
    let base = &server.base;

    let (status, health) = json(base, "/api/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (_, stats) = json(base, "/api/stats");
    assert_eq!(stats["images"], 7);

    let (status, result) = json(base, "/api/search?q=cat&k=5");
    assert_eq!(status, 200);
    let top = &result["hits"][0];
    assert_eq!(top["path"], "chelsea.png");
    assert!(top["score"].as_f64().unwrap() > 0.5);
    for key in ["text_ms", "ann_ms", "meta_ms"] {
        assert!(result["timings"][key].is_number());
    }
    // Synonyms, OR, negatives, weights, grouping, paging.
    assert_eq!(
        json(base, "/api/search?q=kitty").1["hits"][0]["path"],
        "chelsea.png"
    );
    let (_, either) = json(base, "/api/search?q=cat,%20motorbike&k=10");
    let paths: Vec<&str> = either["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"chelsea.png") && paths.iter().any(|p| p.starts_with("motorcycle")),
        "{paths:?}"
    );
    let (_, neg) = json(base, "/api/search?q=kitty%20-cat");
    assert!(
        neg["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["path"] != "chelsea.png"),
        "{neg}"
    );
    let (_, weighted) = json(base, "/api/search?q=cat,%203:motorbike&k=10");
    assert!(
        weighted["hits"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("motorcycle"),
        "{weighted}"
    );
    let (_, grouped) = json(base, "/api/search?q=motorbike&group=images");
    assert!(!grouped["images"][0]["boxes"].as_array().unwrap().is_empty());
    let (_, page1) = json(base, "/api/search?q=person&k=1&threshold=0.05");
    let next = page1["next_offset"]
        .as_u64()
        .expect("more than one person-ish object");
    let (_, page2) = json(
        base,
        &format!("/api/search?q=person&k=1&threshold=0.05&offset={next}"),
    );
    assert_ne!(page1["hits"][0]["proposal"], page2["hits"][0]["proposal"]);
    let (_, filtered) = json(base, "/api/search?q=motorbike&path=motorcycle_left");
    assert!(filtered["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["path"] == "motorcycle_left.png"));

    // Many clients asking at once for a text nobody asked before share one text-tower run.
    let cache_before = json(base, "/api/stats").1["text_cache"].clone();
    let barrier = std::sync::Barrier::new(12);
    let first_hits: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    json(base, "/api/search?q=a%20striped%20zebra%20crossing&k=3").1
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap()["hits"].clone())
            .collect()
    });
    assert!(first_hits.iter().all(|h| h == &first_hits[0]));
    let cache_after = json(base, "/api/stats").1["text_cache"].clone();
    let delta =
        |key: &str| cache_after[key].as_u64().unwrap() - cache_before[key].as_u64().unwrap();
    assert_eq!(delta("computed"), 1, "{cache_before} -> {cache_after}");
    assert_eq!(
        delta("hits") + delta("shared"),
        11,
        "{cache_before} -> {cache_after}"
    );

    // More like this.
    let proposal = top["proposal"].as_str().unwrap().parse::<u64>().unwrap();
    let (status, similar) = json(base, &format!("/api/similar/{proposal}?k=3"));
    assert_eq!(status, 200);
    assert!(similar["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["proposal"].as_str() != Some(proposal.to_string().as_str())));

    // Originals and thumbnails by id only.
    let image = top["image"].as_str().unwrap().parse::<u64>().unwrap();
    let (status, head, body) = get(base, &format!("/api/images/{image}"), &[]);
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: image/png"));
    assert_eq!(body, std::fs::read(sample("chelsea.png")).unwrap());
    let (status, _, thumb) = get(base, &format!("/api/thumbs/{image}"), &[]);
    assert_eq!(status, 200);
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert!(thumb.width() <= 320 && thumb.height() <= 320);

    // Every bad parameter gets a JSON error with a message.
    let long = "x".repeat(10_000);
    for (path, status, needle) in [
        ("/api/search", 400, "missing parameter q"),
        ("/api/search?q=", 400, "empty"),
        ("/api/search?q=cat&k=0", 400, "k must be"),
        ("/api/search?q=cat&k=1000000", 400, "k must be"),
        ("/api/search?q=cat&threshold=NaN", 400, "threshold"),
        ("/api/search?q=cat&threshold=-1", 400, "threshold"),
        ("/api/search?q=cat&offset=abc", 400, "not a valid number"),
        (&format!("/api/search?q={long}"), 400, "limit"),
        ("/api/similar/abc", 400, "not a proposal id"),
        ("/api/similar/999999999", 404, "no proposal"),
        ("/api/images/999999", 404, "no image"),
        ("/api/images/abc", 400, "not an image id"),
        ("/api/thumbs/-1", 400, "not an image id"),
        ("/api/nothing", 404, "no such route"),
    ] {
        let (got, body) = json(base, path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    // No path traversal, no directory listing.
    for path in [
        "/../../../../etc/passwd",
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/../../etc/passwd",
        "/web/",
        "/api/",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let (status, _, body) = get(base, path, &[]);
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(
            !String::from_utf8_lossy(&body).contains("root:"),
            "{path} leaked a file"
        );
    }
}

#[test]
fn a_token_guards_every_route() {
    let dir = scratch("server-token");
    index_samples(&dir);
    let server = start(&dir.join("index"), &["--token", "s3cret"]);
    for path in ["/", "/api/health", "/api/search?q=cat", "/api/images/1"] {
        let (status, _, _) = get(&server.base, path, &[]);
        assert_eq!(status, 401, "{path}");
        let (status, _, _) = get(&server.base, path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(status, 401, "{path}");
    }
    let (status, _, _) = get(
        &server.base,
        "/api/health",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    let (status, _, _) = get(&server.base, "/api/search?q=cat&token=s3cret", &[]);
    assert_eq!(status, 200);

    // Graceful shutdown on SIGTERM: the process exits cleanly.
    let mut server = server;
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

#[test]
fn the_page_finds_the_cat_in_a_real_browser() {
    let dir = scratch("server-browser");
    index_samples(&dir);
    let server = start(&dir.join("index"), &[]);
    let script = repo_root().join("web/tests/search.mjs");
    assert!(
        repo_root()
            .join("web/tests/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is missing: run scripts/setup.sh"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/setup.sh (it installs Debian's chromium)"
    );
    let artifacts = repo_root().join("target/test-artifacts/browser");
    let output = Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .arg(&artifacts)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for shot in [
        "1-search-cat.png",
        "2-viewer.png",
        "3-more-like-this.png",
        "4-empty.png",
        "5-jobs.png",
        "6-phone.png",
    ] {
        assert!(artifacts.join(shot).is_file(), "{shot} missing");
    }
}

#[test]
fn serve_can_index_an_archive_in_the_background_while_answering() {
    let dir = scratch("server-archive");
    let archive = dir.join("photos");
    std::fs::create_dir_all(&archive).unwrap();
    for name in ["chelsea.png", "coffee.png", "motorcycle_left.png"] {
        std::fs::copy(sample(name), archive.join(name)).unwrap();
    }
    let server = start(
        &dir.join("index"),
        &["--archive", &archive.display().to_string()],
    );
    // The server answers at once (empty index), then the background pass fills it.
    let (status, _) = json(&server.base, "/api/health");
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, stats) = json(&server.base, "/api/stats");
        if stats["indexed"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background indexing did not finish: {stats}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (_, result) = json(&server.base, "/api/search?q=cat");
    assert_eq!(result["hits"][0]["path"], "chelsea.png");
}

/// The best weakest match of photo `boxes` (each box's scores, one per concept) over every
/// choice of distinct boxes for the concepts, at or above `threshold`.
fn best_weakest(boxes: &[Vec<f64>], k: usize, threshold: f64) -> Option<f64> {
    fn go(
        r: usize,
        k: usize,
        boxes: &[Vec<f64>],
        used: &mut Vec<usize>,
        low: f64,
        t: f64,
    ) -> Option<f64> {
        if r == k {
            return Some(low);
        }
        let mut best: Option<f64> = None;
        for b in 0..boxes.len() {
            if used.contains(&b) || boxes[b][r] < t {
                continue;
            }
            used.push(b);
            if let Some(v) = go(r + 1, k, boxes, used, low.min(boxes[b][r]), t) {
                best = Some(best.map_or(v, |x: f64| x.max(v)));
            }
            used.pop();
        }
        best
    }
    go(0, k, boxes, &mut Vec::new(), f64::INFINITY, threshold)
}

#[test]
fn objects_together_find_the_photos_that_hold_every_concept_by_its_own_box() {
    let dir = scratch("server-together");
    index_samples(&dir);
    let server = start(&dir.join("index"), &[]);
    let base = &server.base;
    let photos = dir.join("photos").canonicalize().unwrap();
    let names: Vec<String> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    for (query, concepts, threshold) in [
        (
            "person%20%26%20motorcycle",
            vec!["person", "motorcycle"],
            0.3,
        ),
        ("person%20%26%20person", vec!["person", "person"], 0.3),
        (
            "cat%20%26%20person%20%26%20motorcycle",
            vec!["cat", "person", "motorcycle"],
            0.05,
        ),
    ] {
        // The exact answer, per photo from every one of its proposals' scores.
        let body = serde_json::json!({
            "paths": names.iter().map(|n| photos.join(n)).collect::<Vec<_>>(),
            "concepts": concepts,
        });
        let (status, scored) = post_json(base, "/api/proposals", &body);
        assert_eq!(status, 200, "{scored}");
        let mut want: Vec<(String, f64)> = names
            .iter()
            .zip(scored["images"].as_array().unwrap())
            .filter_map(|(name, boxes)| {
                let boxes: Vec<Vec<f64>> = boxes
                    .as_array()?
                    .iter()
                    .map(|b| floats(&b["scores"]).iter().map(|&x| x as f64).collect())
                    .collect();
                best_weakest(&boxes, concepts.len(), threshold).map(|v| (name.clone(), v))
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));

        let (status, found) = json(
            base,
            &format!("/api/search?q={query}&group=images&threshold={threshold}&k=100"),
        );
        assert_eq!(status, 200, "{found}");
        let got: Vec<(String, f64)> = found["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["path"].as_str().unwrap().to_string(),
                    i["score"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got.iter().map(|g| &g.0).collect::<Vec<_>>(),
            want.iter().map(|w| &w.0).collect::<Vec<_>>(),
            "{query}: {found}"
        );
        for ((_, g), (_, w)) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{query}: score {g} vs exact {w}");
        }
        for image in found["images"].as_array().unwrap() {
            let boxes = image["boxes"].as_array().unwrap();
            assert_eq!(boxes.len(), concepts.len(), "one box per concept: {image}");
            let mut ids: Vec<&str> = boxes
                .iter()
                .map(|b| b["proposal"].as_str().unwrap())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(
                ids.len(),
                concepts.len(),
                "each concept has its own box: {image}"
            );
        }
        // Objects mode pages over the same boxes, photo by photo.
        let (_, objects) = json(
            base,
            &format!("/api/search?q={query}&threshold={threshold}&k=1000"),
        );
        assert_eq!(
            objects["hits"].as_array().unwrap().len(),
            want.len() * concepts.len(),
            "{objects}"
        );
        assert_eq!(
            objects["query"]["together"].as_array().unwrap().len(),
            concepts.len()
        );
    }
    // The two motorcycle photos each hold a person and a motorcycle; a photo with one person
    // cannot answer "person & person".
    let (_, found) = json(base, "/api/search?q=person%20%26%20motorcycle&group=images");
    let paths: Vec<&str> = found["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"motorcycle_left.png") && paths.contains(&"motorcycle_right.png"),
        "{found}"
    );
    assert!(!paths.contains(&"chelsea.png"), "{found}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_images_and_regions_find_the_same_kind_of_object_and_are_never_kept() {
    let dir = scratch("server-example");
    index_samples(&dir);
    let index = dir.join("index");
    let files_before = dir_listing(&index);
    let server = start(&index, &[]);
    let base = &server.base;
    let search = |query: &str, fields: &[(&str, &[u8])]| {
        let (content_type, body) = multipart(fields);
        let (status, _, answer) = post(
            base,
            &format!("/api/search/image{query}"),
            &content_type,
            &body,
        );
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&answer).unwrap(),
        )
    };
    let order = |found: &serde_json::Value| -> Vec<String> {
        found["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap().to_string())
            .collect()
    };
    let rank = |paths: &[String], name: &str| paths.iter().position(|p| p == name);
    let unrelated = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

    // A region around the motorcycle of one photo finds the other photo's motorcycle above
    // every photo without one.
    let left = std::fs::read(sample("motorcycle_left.png")).unwrap();
    let (status, found) = search(
        "?group=images&threshold=0&box=100,70,690,455",
        &[("image", &left)],
    );
    assert_eq!(status, 200, "{found}");
    let paths = order(&found);
    let other = rank(&paths, "motorcycle_right.png").expect("the other motorcycle photo");
    for name in unrelated {
        assert!(
            rank(&paths, name).is_none_or(|r| r > other),
            "{name} above the other motorcycle: {paths:?}"
        );
    }
    assert_eq!(found["images"][0]["boxes"][0]["concept"], "like the region");

    // A crop of the cat, with no box: the cat photo comes first.
    let cat = image::open(sample("chelsea.png"))
        .unwrap()
        .crop_imm(40, 10, 340, 280);
    let mut png = std::io::Cursor::new(Vec::new());
    cat.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let (status, found) = search("?group=images&threshold=0", &[("image", png.get_ref())]);
    assert_eq!(status, 200, "{found}");
    assert_eq!(order(&found)[0], "chelsea.png", "{found}");

    // Mixed with text, the weights decide which side ranks first; an & query cannot be mixed.
    let region = "group=images&threshold=0.3&box=100,70,690,455";
    let (status, found) = search(&format!("?q=cat&weight=0.01&{region}"), &[("image", &left)]);
    assert_eq!(status, 200, "{found}");
    assert_eq!(order(&found)[0], "chelsea.png", "text weighs more: {found}");
    let (_, found) = search(&format!("?q=cat&weight=3&{region}"), &[("image", &left)]);
    assert!(
        order(&found)[0].starts_with("motorcycle_"),
        "the example weighs more: {found}"
    );
    assert!(
        order(&found).contains(&"chelsea.png".to_string()),
        "{found}"
    );
    let (status, found) = search("?q=motorcycle%20-cat&threshold=0.3", &[("image", &left)]);
    assert_eq!(status, 200, "{found}");
    let (status, found) = search("?weight=0", &[("image", &left)]);
    assert_eq!(status, 400, "{found}");
    let (status, found) = search("?q=cat%20%26%20dog", &[("image", &left)]);
    assert_eq!(status, 400, "{found}");

    // Bad uploads get reasons.
    for (query, fields, status, words) in [
        ("", vec![("photo", &left[..])], 400, "unknown form field"),
        ("", vec![], 400, "no form field named image"),
        (
            "",
            vec![("image", &b"GIF89a-not-really"[..])],
            400,
            "not an image",
        ),
        ("?box=5,5,1,1", vec![("image", &left[..])], 400, "x2 > x1"),
        (
            "?box=5000,5000,6000,6000",
            vec![("image", &left[..])],
            400,
            "outside",
        ),
    ] {
        let (got, answer) = search(query, &fields);
        assert_eq!(got, status, "{query}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{answer}"
        );
    }
    let huge = vec![0u8; 33 * 1024 * 1024];
    let (content_type, body) = multipart(&[("image", &huge)]);
    let (status, _, _) = post(base, "/api/search/image", &content_type, &body);
    assert_eq!(status, 413);

    // Nothing uploaded went into the index.
    let (_, stats) = json(base, "/api/stats");
    assert_eq!(stats["images"], 7, "{stats}");
    drop(server);
    assert_eq!(
        dir_listing(&index),
        files_before,
        "the index folder changed"
    );

    // The command line does the same, on a closed and on a served index alike.
    let cli = || {
        run_ok(
            spotter()
                .env("RUST_LOG", "error")
                .args([
                    "search",
                    "--device",
                    "cpu",
                    "--threshold",
                    "0",
                    "-k",
                    "5",
                    "--box",
                    "100,70,690,455",
                    "--image",
                ])
                .arg(sample("motorcycle_left.png"))
                .arg("--index")
                .arg(&index),
        )
    };
    let closed = cli();
    let server = start(&index, &[]);
    assert_eq!(
        String::from_utf8_lossy(&cli()),
        String::from_utf8_lossy(&closed)
    );
    drop(server);
    assert!(String::from_utf8_lossy(&closed).contains("motorcycle_right.png"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The files of a folder (names and sizes, recursively), sorted; sled's files (`db/`), the
/// server record and the jobs file excepted, since serving rewrites them.
fn dir_listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == "db" || rel == "serve.json" || rel.starts_with("jobs") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(format!("{rel} {}", entry.metadata().unwrap().len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
