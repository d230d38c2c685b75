//! The Milvus vector engine end to end, against a real Milvus server (`scripts/milvus.sh start`;
//! `scripts/test.sh` starts one and sets `SPOTTER_TEST_MILVUS=127.0.0.1:19530`): the same hits as
//! the embedded engine, sharded indexing into one collection, idempotent re-runs, deletes and
//! moves reaching Milvus, the query server on a search-only folder, and clear errors.
#![cfg(feature = "milvus")]

mod common;

use std::path::{Path, PathBuf};

use common::http::{get, json, start};
use common::*;

/// `milvus://HOST:PORT/COLLECTION` for a fresh collection, or `None` (with the reason printed)
/// when no server was given.
fn collection(name: &str) -> Option<String> {
    match std::env::var("SPOTTER_TEST_MILVUS") {
        Ok(address) if !address.is_empty() => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            // Strong: each step must see the previous process's writes at once.
            Some(format!(
                "milvus://{address}/t_{name}_{}_{nanos}?consistency=strong",
                std::process::id()
            ))
        }
        _ => {
            eprintln!(
                "SKIPPED: no Milvus server for this test; run `scripts/milvus.sh start` and set SPOTTER_TEST_MILVUS=127.0.0.1:19530 (scripts/test.sh does both)"
            );
            None
        }
    }
}

/// A scratch archive with the sample photos in two albums.
fn archive(root: &Path) -> PathBuf {
    let archive = root.join("archive");
    for (album, names) in [
        (
            "a",
            ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].as_slice(),
        ),
        (
            "b",
            [
                "motorcycle_left.png",
                "motorcycle_right.png",
                "camera.png",
                "chelsea.png",
            ]
            .as_slice(),
        ),
    ] {
        std::fs::create_dir_all(archive.join(album)).unwrap();
        for name in names {
            std::fs::copy(sample(name), archive.join(album).join(name)).unwrap();
        }
    }
    archive
}

fn index(archive: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&run_ok(
        index_command(archive, dir).arg("--json").args(extra),
    ))
    .unwrap()
}

/// Hits of `query` as (score to 4 places, absolute path, box to the pixel), best first; equal
/// scores (the two copies of a photo) by path, since engines number proposals differently.
fn hits(dir: &Path, query: &str, extra: &[&str]) -> Vec<(String, String, Vec<i64>)> {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args([
                "search",
                query,
                "--device",
                "cpu",
                "--json",
                "--threshold",
                "0.01",
                "-k",
                "50",
                "--index",
            ])
            .arg(dir)
            .args(extra),
    );
    let mut hits: Vec<(String, String, Vec<i64>)> = String::from_utf8_lossy(&out)
        .lines()
        .map(|line| {
            let hit: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                format!("{:.4}", hit["score"].as_f64().unwrap()),
                hit["path"].as_str().unwrap().to_string(),
                floats(&hit["box"])
                    .iter()
                    .map(|x| x.round() as i64)
                    .collect(),
            )
        })
        .collect();
    // Runs of equal scores in path order; everything else stays in the engine's order.
    let mut start = 0;
    while start < hits.len() {
        let end = start
            + hits[start..]
                .iter()
                .take_while(|h| h.0 == hits[start].0)
                .count();
        hits[start..end].sort();
        start = end;
    }
    drop_cut_ties(&mut hits, 50, |h| h.0.as_str());
    hits
}

/// On a full page, drops the hits tied with the last one: which of several equal scores make
/// the cut (copies of one photo score the same) is the engines' free choice.
fn drop_cut_ties<T>(hits: &mut Vec<T>, page: usize, score: impl Fn(&T) -> &str) {
    if hits.len() == page {
        let last = score(&hits[page - 1]).to_string();
        hits.retain(|h| score(h) != last);
    }
}

/// The embedded engine whose scores are f32 inner products, like Milvus's re-scoring: the
/// default quantised engine's differ from them by ~1e-6, which can round to another 4th
/// decimal, the precision these tests compare.
const EXACT_EMBEDDED: &[&str] = &["--vector-engine", "hnsw"];

const QUERIES: [&str; 5] = [
    "cat",
    "person",
    "cup, mug",
    "motorcycle -person",
    "2:cat, dog",
];

fn assert_same_hits(want: &Path, got: &Path, context: &str) {
    for query in QUERIES {
        let (a, b) = (hits(want, query, &[]), hits(got, query, &[]));
        assert!(!a.is_empty(), "{context}: no hits for {query}");
        assert_eq!(a, b, "{context}: {query}");
    }
}

/// `spotter index --vectors URL --index DIR` without an archive: a query server's folder.
fn search_only_folder(url: &str, dir: &Path) {
    run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["index", "--vectors", url, "--index"])
            .arg(dir),
    );
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["stats", "--json", "--index"])
            .arg(dir),
    ))
    .unwrap()
}

#[test]
fn milvus_returns_the_embedded_hits_in_the_same_order() {
    let Some(url) = collection("same") else {
        return;
    };
    let root = scratch("milvus-same");
    let archive = archive(&root);
    let embedded = root.join("embedded");
    let milvus = root.join("milvus");
    index(&archive, &embedded, EXACT_EMBEDDED);
    let report = index(&archive, &milvus, &["--vectors", &url]);
    assert_eq!(report["indexed"], 8);
    assert_same_hits(&embedded, &milvus, "one machine");
    // Pages and filters too.
    for extra in [["--offset", "2"], ["--path", "b/"]] {
        assert_eq!(
            hits(&embedded, "person", &extra),
            hits(&milvus, "person", &extra),
            "{extra:?}"
        );
    }
    let s = stats(&milvus);
    let (collection_url, _) = url.split_once('?').unwrap();
    assert!(
        s["backend"].as_str().unwrap().starts_with(collection_url),
        "{s}"
    );
    assert!(
        s["backend"]
            .as_str()
            .unwrap()
            .ends_with("consistency=strong"),
        "{s}"
    );
    assert_eq!(s["shard"], "0/1");
    assert_eq!(s["vectors"], s["proposals"]);
    assert!(
        s["vector_engine"].as_str().unwrap().contains("Milvus"),
        "{s}"
    );
    // A second run changes nothing, in the store or in Milvus.
    let again = index(&archive, &milvus, &[]);
    assert_eq!(
        (again["indexed"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(8))
    );
    assert_eq!(stats(&milvus)["vectors"], s["vectors"]);
    // A moved file keeps its vectors; its new path reaches Milvus's payloads.
    std::fs::create_dir_all(archive.join("a/people")).unwrap();
    std::fs::rename(
        archive.join("a/astronaut.png"),
        archive.join("a/people/astronaut-2.png"),
    )
    .unwrap();
    let moved = index(&archive, &milvus, &[]);
    assert_eq!(
        (moved["moved"].as_u64(), moved["indexed"].as_u64()),
        (Some(1), Some(0))
    );
    let people = hits(&milvus, "person", &[]);
    assert!(
        people
            .iter()
            .any(|(_, p, _)| p.ends_with("a/people/astronaut-2.png")),
        "{people:?}"
    );
    assert!(!people
        .iter()
        .any(|(_, p, _)| p.ends_with("a/astronaut.png")));
}

#[test]
fn shards_index_one_archive_into_one_collection_idempotently() {
    let Some(url) = collection("shards") else {
        return;
    };
    let root = scratch("milvus-shards");
    let archive = archive(&root);
    let shard_dir = |i: usize| root.join(format!("shard-{i}"));
    let run_shard = |i: usize| {
        index(
            &archive,
            &shard_dir(i),
            &["--vectors", &url, "--shard", &format!("{i}/3")],
        )
    };
    // The three machines start at the same moment (they race to create the collection).
    let found: u64 = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3).map(|i| scope.spawn(move || run_shard(i))).collect();
        runs.into_iter()
            .map(|run| run.join().unwrap()["files_found"].as_u64().unwrap())
            .sum()
    });
    assert_eq!(found, 8, "the shards split the archive exactly");
    let server = root.join("server");
    search_only_folder(&url, &server);
    let embedded = root.join("embedded");
    index(&archive, &embedded, EXACT_EMBEDDED);
    assert_same_hits(&embedded, &server, "three shards");
    let total = stats(&server)["vectors"].clone();
    assert_eq!(total, stats(&embedded)["proposals"]);

    // Re-running a shard, even from a lost folder, adds nothing twice.
    assert_eq!(run_shard(1)["indexed"], 0);
    std::fs::remove_dir_all(shard_dir(2)).unwrap();
    run_shard(2);
    assert_eq!(stats(&server)["vectors"], total);
    assert_same_hits(&embedded, &server, "after re-runs");

    // Deletes and moves reach Milvus.
    std::fs::remove_file(archive.join("a/coffee.png")).unwrap();
    std::fs::create_dir_all(archive.join("b/renamed")).unwrap();
    std::fs::rename(
        archive.join("b/camera.png"),
        archive.join("b/renamed/photographer.png"),
    )
    .unwrap();
    for i in 0..3 {
        run_shard(i);
    }
    let fresh = root.join("embedded-after");
    index(&archive, &fresh, EXACT_EMBEDDED);
    assert_same_hits(&fresh, &server, "after a delete and a move");
    assert_eq!(stats(&server)["vectors"], stats(&fresh)["proposals"]);
    let people = hits(&server, "person", &[]);
    assert!(
        people
            .iter()
            .any(|(_, p, _)| p.ends_with("b/renamed/photographer.png")),
        "{people:?}"
    );
    assert!(
        !people.iter().any(|(_, p, _)| p.ends_with("b/camera.png")),
        "{people:?}"
    );
}

#[test]
fn the_server_answers_from_a_search_only_folder() {
    let Some(url) = collection("serve") else {
        return;
    };
    let root = scratch("milvus-serve");
    let archive = archive(&root);
    // Two indexing processes fill one collection at the same time.
    std::thread::scope(|scope| {
        for i in 0..2 {
            let (archive, root, url) = (&archive, &root, &url);
            scope.spawn(move || {
                index(
                    archive,
                    &root.join(format!("indexer-{i}")),
                    &["--vectors", url, "--shard", &format!("{i}/2")],
                )
            });
        }
    });
    let folder = root.join("server");
    search_only_folder(&url, &folder);
    let embedded = root.join("embedded");
    index(&archive, &embedded, EXACT_EMBEDDED);
    let server = start(&folder, &[]);
    // The server's top hits are the embedded index's.
    for query in ["person", "motorcycle"] {
        let (status, result) = json(
            &server.base,
            &format!("/api/search?q={query}&threshold=0.01&k=10"),
        );
        assert_eq!(status, 200, "{result}");
        let served: Vec<(String, String)> = result["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    format!("{:.4}", h["score"].as_f64().unwrap()),
                    archive
                        .join(h["path"].as_str().unwrap())
                        .display()
                        .to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = hits(&embedded, query, &[])
            .into_iter()
            .take(10)
            .map(|(score, path, _)| (score, path))
            .collect();
        let mut served_sorted = served.clone();
        served_sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut want_sorted = want.clone();
        want_sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        drop_cut_ties(&mut served_sorted, 10, |h| h.0.as_str());
        drop_cut_ties(&mut want_sorted, 10, |h| h.0.as_str());
        assert_eq!(served_sorted, want_sorted, "{query}");
    }
    let (status, result) = json(&server.base, "/api/search?q=cat");
    assert_eq!(status, 200, "{result}");
    let top = &result["hits"][0];
    assert!(
        top["path"].as_str().unwrap().ends_with("chelsea.png"),
        "{result}"
    );
    let image = top["image"].as_str().unwrap().parse::<u64>().unwrap();
    let (status, _, bytes) = get(&server.base, &format!("/api/images/{image}"), &[]);
    assert_eq!(status, 200);
    let file = archive.join(top["path"].as_str().unwrap());
    assert_eq!(bytes, std::fs::read(file).unwrap());
    let (status, head, _) = get(&server.base, &format!("/api/thumbs/{image}"), &[]);
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("image/jpeg"), "{head}");
    let (status, similar) = json(
        &server.base,
        &format!("/api/similar/{}", top["proposal"].as_str().unwrap()),
    );
    assert_eq!(status, 200, "{similar}");
    assert!(
        similar["hits"].as_array().is_some_and(|h| !h.is_empty()),
        "{similar}"
    );
    let (_, stats) = json(&server.base, "/api/stats");
    assert!(
        stats["backend"].as_str().unwrap().starts_with("milvus://"),
        "{stats}"
    );
    let (status, _) = json(&server.base, "/api/images/999999999");
    assert_eq!(status, 404);
}

fn failure(args: &[&str], dir: &Path) -> String {
    let output = spotter()
        .env("RUST_LOG", "error")
        .args(args)
        .arg("--index")
        .arg(dir)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn multi_level_vectors_spread_over_partitions_and_match_the_embedded_engine() {
    // The synthetic WeDetect-Uni package: three scoring levels and varied norms, so the
    // vectors land in several partitions (one per level and norm band).
    let Some(url) = collection("levels") else {
        return;
    };
    let root = scratch("milvus-levels");
    let archive = archive(&root);
    let model = ["--model", "wedetect-synthetic"];
    let (embedded, milvus) = (root.join("embedded"), root.join("milvus"));
    index(&archive, &embedded, &[&model[..], EXACT_EMBEDDED].concat());
    index(
        &archive,
        &milvus,
        &[&model[..], &["--vectors", url.as_str()]].concat(),
    );
    for query in ["cat", "person, car"] {
        let (a, b) = (hits(&embedded, query, &[]), hits(&milvus, query, &[]));
        assert!(!a.is_empty(), "no hits for {query}");
        assert_eq!(a, b, "{query}");
    }
    assert_eq!(stats(&milvus)["vectors"], stats(&embedded)["proposals"]);
}

#[test]
fn mistakes_get_clear_errors() {
    let root = scratch("milvus-errors");
    let archive = archive(&root);
    let a = archive.display().to_string();
    // No server at that address (runs without one).
    let err = failure(
        &["index", &a, "--vectors", "milvus://127.0.0.1:1/x"],
        &root.join("i1"),
    );
    assert!(
        err.contains("Milvus at 127.0.0.1:1") && err.contains("scripts/milvus.sh start"),
        "{err}"
    );
    let err = failure(&["index", &a, "--shard", "0/2"], &root.join("i2"));
    assert!(
        err.contains("--shard") && err.contains("milvus://"),
        "{err}"
    );
    let err = failure(
        &["index", &a, "--vectors", "milvus://h/bad-name"],
        &root.join("i3"),
    );
    assert!(err.contains("collection name"), "{err}");

    let Some(url) = collection("errors") else {
        return;
    };
    index(
        &archive,
        &root.join("i4"),
        &["--vectors", &url, "--shard", "1/2"],
    );
    let err = failure(&["index", &a, "--shard", "0/2"], &root.join("i4"));
    assert!(err.contains("indexes shard 1/2"), "{err}");
    let err = failure(
        &[
            "index",
            &a,
            "--device",
            "cpu",
            "--model",
            "wedetect-synthetic",
            "--vectors",
            &url,
        ],
        &root.join("i5"),
    );
    assert!(err.contains("holds vectors of model 'starter'"), "{err}");
}
