//! End-to-end hardening of indexing (issue 10): fresh vectors searchable during a run, transient
//! faults that must not delete records, non-UTF-8 file names, persisted walk problems and safe
//! text output, `touch` without a content change, and one model-package rule for every command.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::Value;
use spotter_indexer::{Index, IndexRequest, IndexSettings, Progress};
use spotter_model::ProposalParams;

const PHOTOS: [&str; 6] = [
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "astronaut.png",
    "camera.png",
];

/// Writes `count` distinct images (crops and flips of the sample photos) under `dir`.
fn make_archive(dir: &Path, count: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("{:02}/img_{i:03}.png", i / 10));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        variant(i).save(&path).unwrap();
        out.push(path);
    }
    out
}

fn variant(i: usize) -> image::DynamicImage {
    let src = image::open(sample(PHOTOS[i % PHOTOS.len()])).unwrap();
    let cut = (i / PHOTOS.len()) as u32 * 7;
    let img = src.crop_imm(cut, cut / 2, src.width() - cut, src.height() - cut);
    if i % 2 == 1 {
        img.fliph()
    } else {
        img
    }
}

/// `spotter index --json ...` (must succeed); the report.
fn index_json(archives: &[&Path], index: &Path, extra: &[&str]) -> Value {
    let mut cmd = spotter();
    cmd.env("RUST_LOG", "error")
        .args(["index", "--quiet", "--json", "--device", "cpu", "--index"])
        .arg(index)
        .args(archives)
        .args(extra);
    serde_json::from_slice(&run_ok(&mut cmd)).expect("index --json prints one JSON report")
}

/// `spotter stats --json --index DIR`.
fn stats_json(index: &Path) -> Value {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["stats", "--json", "--index"])
            .arg(index),
    );
    serde_json::from_slice(&out).expect("stats --json prints one JSON document")
}

/// `spotter search QUERY --json --threshold 0 -k K`: one JSON value per hit.
fn search_json(index: &Path, query: &str, k: usize) -> Vec<Value> {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args([
                "search",
                query,
                "--json",
                "--device",
                "cpu",
                "--threshold",
                "0",
            ])
            .args(["-k", &k.to_string(), "--index"])
            .arg(index),
    );
    String::from_utf8(out)
        .expect("search --json prints UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// Records, after each committed file, how many vectors the index could search.
struct Probe<'a> {
    index: &'a Index,
    seen: Mutex<Vec<usize>>,
}

impl Progress for Probe<'_> {
    fn file_done(&self, _path: &Path, _proposals: usize, _failed: bool) {
        // A slow archive: each file takes 250 ms, so a run of 12 files lasts 3 s.
        std::thread::sleep(Duration::from_millis(250));
        let live = self.index.vector_count().expect("count vectors");
        self.seen.lock().unwrap().push(live);
    }
}

// (8) Vectors of committed files become searchable within about a second, not at the end.
#[test]
fn vectors_become_searchable_during_a_slow_run() {
    let root = scratch("hardening-fresh-vectors");
    let archive = root.join("archive");
    make_archive(&archive, 12);
    let (package, tower) = starter();
    let index =
        Index::open_for_model(&root.join("index"), &package, &IndexSettings::default()).unwrap();
    let mut request = IndexRequest::new(
        vec![archive.clone()],
        ProposalParams::from(&package.manifest.proposals),
    );
    request.decode_threads = 2;
    let probe = Probe {
        index: &index,
        seen: Mutex::new(Vec::new()),
    };
    let report = spotter_indexer::run(&index, &tower, &request, &probe).unwrap();
    assert_eq!(report.indexed, 12, "{report:?}");
    assert!(report.proposals_added > 0);
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 12);
    // After 8 files (2 s into the run) earlier files' vectors must be searchable.
    assert!(
        seen[7] > 0,
        "no vector was searchable after 8 of 12 files (2 s): {seen:?}"
    );
}

// (9) A root replaced by an empty folder (unmounted NAS) keeps its records; restored, nothing
// is re-run through the model.
#[test]
fn an_emptied_root_keeps_its_records_and_a_restore_reruns_nothing() {
    let root = scratch("hardening-empty-root");
    let (archive, away, dir) = (root.join("archive"), root.join("away"), root.join("index"));
    make_archive(&archive, 20);
    let first = index_json(&[&archive], &dir, &[]);
    assert_eq!(n(&first, "indexed"), 20, "{first}");
    let proposals = n(&stats_json(&dir), "proposals");

    std::fs::rename(&archive, &away).unwrap();
    std::fs::create_dir(&archive).unwrap();
    let empty = index_json(&[&archive], &dir, &[]);
    assert_eq!(n(&empty, "deleted"), 0, "{empty}");
    assert_eq!(n(&empty, "deletions_skipped"), 20, "{empty}");
    let problems = empty["walk_problems"].to_string();
    assert!(problems.contains("--allow-deletions"), "{problems}");
    let stats = stats_json(&dir);
    assert_eq!(
        (n(&stats, "images"), n(&stats, "proposals")),
        (20, proposals)
    );

    std::fs::remove_dir(&archive).unwrap();
    std::fs::rename(&away, &archive).unwrap();
    let restored = index_json(&[&archive], &dir, &[]);
    assert_eq!(
        (n(&restored, "indexed"), n(&restored, "unchanged")),
        (0, 20),
        "{restored}"
    );
}

// (9) A missing root is skipped with a warning, its records kept, the other roots indexed.
#[test]
fn a_missing_root_is_skipped_and_its_records_kept() {
    let root = scratch("hardening-missing-root");
    let (archive, other, away, dir) = (
        root.join("archive"),
        root.join("other"),
        root.join("away"),
        root.join("index"),
    );
    make_archive(&archive, 12);
    make_archive(&other, 2);
    index_json(&[&archive], &dir, &[]);
    std::fs::rename(&archive, &away).unwrap();
    let report = index_json(&[&archive, &other], &dir, &[]);
    assert_eq!(n(&report, "deleted"), 0, "{report}");
    assert_eq!(
        n(&report, "indexed") + n(&report, "copied"),
        2,
        "the other root is still indexed: {report}"
    );
    let problems = report["walk_problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["path"].as_str() == Some(archive.to_str().unwrap())),
        "{report}"
    );
    assert_eq!(n(&stats_json(&dir), "images"), 14);
    // The text report says so too.
    let out = run_ok(&mut index_command(&archive, &dir));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains(archive.to_str().unwrap()), "{text}");
}

// (9) Deleting most of a root is suspicious: kept with a warning unless --allow-deletions.
#[test]
fn mass_deletions_need_allow_deletions() {
    let root = scratch("hardening-mass-delete");
    let (archive, dir) = (root.join("archive"), root.join("index"));
    let files = make_archive(&archive, 20);
    index_json(&[&archive], &dir, &[]);
    for f in &files[..12] {
        std::fs::remove_file(f).unwrap();
    }
    let kept = index_json(&[&archive], &dir, &[]);
    assert_eq!(
        (n(&kept, "deleted"), n(&kept, "deletions_skipped")),
        (0, 12),
        "{kept}"
    );
    assert!(
        kept["walk_problems"]
            .to_string()
            .contains("--allow-deletions"),
        "{kept}"
    );
    assert_eq!(n(&stats_json(&dir), "images"), 20);
    // The text output explains it.
    let out = run_ok(&mut index_command(&archive, &dir));
    assert!(
        String::from_utf8_lossy(&out).contains("--allow-deletions"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let allowed = index_json(&[&archive], &dir, &["--allow-deletions"]);
    assert_eq!(n(&allowed, "deleted"), 12, "{allowed}");
    assert_eq!(n(&stats_json(&dir), "images"), 8);
}

// (9) Files under a folder the walk cannot read are not deleted.
#[test]
fn files_under_an_unreadable_folder_are_kept() {
    let root = scratch("hardening-unreadable-folder");
    let (archive, elsewhere, dir) = (
        root.join("archive"),
        root.join("elsewhere"),
        root.join("index"),
    );
    make_archive(&archive, 20);
    let linked = root.join("linked");
    make_archive(&linked, 3);
    std::os::unix::fs::symlink(&linked, archive.join("nas")).unwrap();
    let first = index_json(&[&archive], &dir, &["--follow-symlinks"]);
    assert_eq!(n(&first, "files_found"), 23, "{first}");
    // The linked folder goes away (an unmounted share): the link dangles, the walk cannot enter.
    std::fs::rename(&linked, &elsewhere).unwrap();
    let report = index_json(&[&archive], &dir, &["--follow-symlinks"]);
    assert_eq!(n(&report, "deleted"), 0, "{report}");
    assert!(
        report["walk_problems"].to_string().contains("nas"),
        "{report}"
    );
    assert_eq!(n(&stats_json(&dir), "images"), 23);
}

// (10) File names that are not UTF-8 are kept byte for byte.
#[test]
fn non_utf8_file_names_are_distinct_records() {
    let root = scratch("hardening-non-utf8");
    let (archive, dir) = (root.join("archive"), root.join("index"));
    std::fs::create_dir_all(&archive).unwrap();
    let names: [&[u8]; 2] = [b"\xff\xfe.jpg", b"\xfe\xff.jpg"];
    for (i, name) in names.iter().enumerate() {
        let path = archive.join(std::ffi::OsStr::from_bytes(name));
        variant(i * 2 + 1)
            .to_rgb8()
            .save_with_format(&path, image::ImageFormat::Jpeg)
            .unwrap();
    }
    let first = index_json(&[&archive], &dir, &[]);
    assert_eq!(
        (
            n(&first, "indexed"),
            first["failed"].as_array().unwrap().len()
        ),
        (2, 0),
        "{first}"
    );
    assert_eq!(n(&stats_json(&dir), "images"), 2);
    let again = index_json(&[&archive], &dir, &[]);
    assert_eq!(
        (n(&again, "indexed"), n(&again, "unchanged")),
        (0, 2),
        "{again}"
    );

    let hits = search_json(&dir, "cat", 200);
    let mut paths: Vec<String> = hits
        .iter()
        .map(|h| h["path"].as_str().expect("path").to_string())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 2, "both files found, distinct: {paths:?}");

    // The full path the server opens is the real file.
    let index = Index::open(&dir).unwrap();
    let mut found = Vec::new();
    for image in index.images() {
        let (id, _) = image.unwrap();
        let info = index.image_info(id).unwrap().expect("indexed image");
        assert!(info.path.is_file(), "{}", info.path.display());
        found.push(info.path.file_name().unwrap().as_bytes().to_vec());
    }
    found.sort();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(found, want);
}

fn control_bytes_except_newlines(text: &[u8]) -> Vec<u8> {
    text.iter()
        .copied()
        .filter(|b| *b < 0x20 && *b != b'\n')
        .collect()
}

// (13) Walk problems are persisted and listed by `stats --failures`; JSON output is one document;
// text output escapes control characters of file names.
#[test]
fn stats_failures_lists_walk_problems_as_one_json_document_and_escapes_names() {
    let root = scratch("hardening-failures");
    let (archive, dir) = (root.join("archive"), root.join("index"));
    std::fs::create_dir_all(archive.join("x")).unwrap();
    variant(0).save(archive.join("a\nb.png")).unwrap();
    variant(3).save(archive.join("\x1b[31mred.png")).unwrap();
    std::fs::write(archive.join("bad\x1b[31m\n.jpg"), b"not an image").unwrap();
    std::os::unix::fs::symlink(&archive, archive.join("x/loop")).unwrap();
    let report = index_json(&[&archive], &dir, &["--follow-symlinks"]);
    assert_eq!(report["failed"].as_array().unwrap().len(), 1, "{report}");
    assert!(!report["walk_problems"].as_array().unwrap().is_empty());

    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["stats", "--json", "--failures", "--index"])
            .arg(&dir),
    );
    let text = String::from_utf8(out).unwrap();
    let doc: Value =
        serde_json::from_str(&text).expect("stats --json --failures is one JSON value");
    let failures = doc["failures"].to_string();
    assert!(failures.contains("bad\\u001b[31m\\n.jpg"), "{doc}");
    let problems = doc["walk_problems"].to_string();
    assert!(problems.contains("loop"), "{doc}");

    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["stats", "--failures", "--index"])
            .arg(&dir),
    );
    assert_eq!(control_bytes_except_newlines(&out), b"", "{out:?}");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("bad") && l.contains(".jpg")),
        "the failed name is on one line: {text}"
    );
    assert!(text.contains("loop"), "{text}");

    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args([
                "search",
                "cat",
                "--device",
                "cpu",
                "--threshold",
                "0",
                "-k",
                "50",
            ])
            .arg("--index")
            .arg(&dir),
    );
    assert_eq!(control_bytes_except_newlines(&out), b"", "{out:?}");
    let text = String::from_utf8(out).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(
            line.len() > 6 && line.as_bytes()[1] == b'.' && line[6..].starts_with(' '),
            "every line is one hit: {line:?} in {text}"
        );
    }
}

// (14) `touch` without a content change does not run the model or churn vectors.
#[test]
fn touch_without_change_runs_no_model() {
    let root = scratch("hardening-touch");
    let (archive, dir) = (root.join("archive"), root.join("index"));
    let files = make_archive(&archive, 6);
    index_json(&[&archive], &dir, &[]);
    let before = stats_json(&dir);
    let hits_before = search_json(&dir, "cat", 20);
    std::thread::sleep(Duration::from_millis(20));
    let status = Command::new("touch").args(&files).status().unwrap();
    assert!(status.success());
    let again = index_json(&[&archive], &dir, &[]);
    assert_eq!(n(&again, "indexed"), 0, "{again}");
    assert_eq!(n(&again, "touched"), 6, "{again}");
    assert_eq!(n(&again, "proposals_added"), 0, "{again}");
    let after = stats_json(&dir);
    for key in ["images", "proposals", "vectors", "tombstones"] {
        assert_eq!(
            n(&after, key),
            n(&before, key),
            "{key}: {before} vs {after}"
        );
    }
    // The same hits; only a photo's file-time capture time follows the touch.
    let without_photo = |hits: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        hits.into_iter()
            .map(|mut h| {
                h.as_object_mut().unwrap().remove("photo");
                h
            })
            .collect()
    };
    assert_eq!(
        without_photo(search_json(&dir, "cat", 20)),
        without_photo(hits_before)
    );
    // A third run sees the new times as unchanged.
    let third = index_json(&[&archive], &dir, &[]);
    assert_eq!(n(&third, "unchanged"), 6, "{third}");
}

// One rule decides whether a package matches an index: the manifest hash, at every command
// that embeds text or runs the model.
#[test]
fn search_refuses_a_rebuilt_package_with_the_same_name() {
    let root = scratch("hardening-manifest");
    let (archive, dir, models) = (
        root.join("archive"),
        root.join("index"),
        root.join("models"),
    );
    make_archive(&archive, 2);
    index_json(&[&archive], &dir, &[]);

    let original = package_dir("starter");
    let copy = models.join("starter");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["image.onnx", "text.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(original.join(file), copy.join(file)).unwrap();
    }
    let mut manifest = read_json(&original.join("model.json"));
    manifest["scoring"]["default_threshold"] = serde_json::json!(0.35);
    std::fs::write(copy.join("model.json"), manifest.to_string()).unwrap();

    let output = spotter()
        .env("RUST_LOG", "error")
        .env("SPOTTER_MODELS", &models)
        .args(["search", "cat", "--device", "cpu", "--index"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "search used a different package: {err}"
    );
    assert!(err.contains("manifest hash"), "{err}");
    assert!(err.contains(copy.to_str().unwrap()), "{err}");
    assert!(err.contains("re-index"), "{err}");

    // Stats needs no package.
    let stats = run_ok(
        spotter()
            .env("SPOTTER_MODELS", &models)
            .args(["stats", "--index"])
            .arg(&dir),
    );
    assert!(!stats.is_empty());
    // The original package still works.
    assert!(!search_json(&dir, "cat", 5).is_empty());
}
