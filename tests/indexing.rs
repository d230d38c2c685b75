//! End-to-end indexing: incremental runs, moves and copies without model work, deletions,
//! several roots, and kill -9 at any moment followed by a resume that equals an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::*;
use spotter_indexer::{Index, IndexRequest, IndexSettings, NoProgress, RunReport};
use spotter_model::{ImageTower, ModelPackage, ProposalParams};

const PHOTOS: [&str; 6] = [
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "astronaut.png",
    "camera.png",
];

/// Writes `count` distinct images (crops and flips of the sample photos) under `dir`.
fn make_archive(dir: &Path, count: usize) {
    for i in 0..count {
        let src = image::open(sample(PHOTOS[i % PHOTOS.len()])).unwrap();
        let cut = (i / PHOTOS.len()) as u32 * 7;
        let mut img = src.crop_imm(cut, cut / 2, src.width() - cut, src.height() - cut);
        if i % 2 == 1 {
            img = img.fliph();
        }
        let path = dir.join(format!("{:02}/img_{i:03}.png", i / 10));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(&path).unwrap();
    }
}

fn request(package: &ModelPackage, roots: &[&Path]) -> IndexRequest {
    let mut request = IndexRequest::new(
        roots.iter().map(|p| p.to_path_buf()).collect(),
        ProposalParams::from(&package.manifest.proposals),
    );
    request.decode_threads = 2;
    request
}

fn index_once(
    dir: &Path,
    roots: &[&Path],
    package: &ModelPackage,
    tower: &ImageTower,
) -> RunReport {
    let index = Index::open_for_model(dir, package, &IndexSettings::default()).unwrap();
    spotter_indexer::run(&index, tower, &request(package, roots), &NoProgress).unwrap()
}

/// Everything an index says about its archive: path → sorted (box, objectness) list, rounded.
fn content(dir: &Path) -> BTreeMap<String, Vec<[i64; 5]>> {
    let index = Index::open(dir).unwrap();
    let mut out = BTreeMap::new();
    for image in index.images() {
        let (id, record) = image.unwrap();
        let mut props: Vec<[i64; 5]> = index
            .proposals_of(id)
            .unwrap()
            .into_iter()
            .map(|(_, p, _)| {
                let b = p.bbox;
                [b[0], b[1], b[2], b[3], p.objectness * 100.0]
                    .map(|v| (v * 10.0).round() as i64 / 10)
            })
            .collect();
        props.sort();
        assert_eq!(props.len() as u32, record.proposals);
        let old = out.insert(
            index.image_path(&record).unwrap().display().to_string(),
            props,
        );
        assert!(old.is_none(), "two records for one path");
    }
    // No lost and no duplicated vectors.
    assert_eq!(
        index.vector_count().unwrap(),
        index.record_counts().1,
        "vectors vs stored proposals"
    );
    out
}

#[test]
fn incremental_runs_recognise_unchanged_moved_copied_changed_and_deleted_files() {
    let root = scratch("incremental");
    let (archive, other, dir) = (root.join("archive"), root.join("other"), root.join("index"));
    make_archive(&archive, 8);
    make_archive(&other, 2);
    let (package, tower) = starter();

    let first = index_once(&dir, &[&archive], &package, &tower);
    assert_eq!(
        (first.files_found, first.indexed, first.failed.len()),
        (8, 8, 0)
    );
    assert!(first.proposals_added > 0);

    let again = index_once(&dir, &[&archive], &package, &tower);
    assert_eq!(
        (again.indexed, again.unchanged),
        (0, 8),
        "second run must do no model work"
    );

    // Move + rename, copy, change, delete.
    std::fs::create_dir_all(archive.join("moved")).unwrap();
    std::fs::rename(
        archive.join("00/img_000.png"),
        archive.join("moved/renamed cat.png"),
    )
    .unwrap();
    std::fs::copy(
        archive.join("00/img_001.png"),
        archive.join("moved/copy.png"),
    )
    .unwrap();
    std::fs::remove_file(archive.join("00/img_002.png")).unwrap();
    image::open(sample("astronaut.png"))
        .unwrap()
        .rotate90()
        .save(archive.join("00/img_003.png"))
        .unwrap();
    let before = content(&dir);
    let third = index_once(&dir, &[&archive], &package, &tower);
    assert_eq!(
        (
            third.indexed,
            third.moved,
            third.copied,
            third.deleted,
            third.unchanged
        ),
        (1, 1, 1, 1, 5),
        "{third:?}"
    );
    let after = content(&dir);
    let old_cat = &before[&archive.join("00/img_000.png").display().to_string()];
    assert_eq!(
        &after[&archive.join("moved/renamed cat.png").display().to_string()],
        old_cat
    );
    assert_eq!(
        after[&archive.join("moved/copy.png").display().to_string()],
        before[&archive.join("00/img_001.png").display().to_string()]
    );
    assert!(!after.contains_key(&archive.join("00/img_002.png").display().to_string()));

    // A second root in the same index; the first root is left alone.
    let fourth = index_once(&dir, &[&other], &package, &tower);
    assert_eq!((fourth.indexed + fourth.copied, fourth.deleted), (2, 0));
    let index = Index::open(&dir).unwrap();
    let stats = index.stats().unwrap();
    assert_eq!((stats.images, stats.roots.len()), (10, 2));
    assert_eq!(stats.vectors, stats.proposals);
    assert!(
        stats.tombstones > 0,
        "deleted and changed files leave tombstones"
    );
    index.compact().unwrap();
    assert_eq!(index.deleted_vectors().unwrap(), 0);
    drop(index);
    assert_eq!(content(&dir).len(), 10);
}

#[test]
fn an_index_refuses_another_model() {
    let root = scratch("other-model");
    make_archive(&root.join("a"), 1);
    let (package, tower) = starter();
    index_once(&root.join("index"), &[&root.join("a")], &package, &tower);
    let synthetic = ModelPackage::open(package_dir("wedetect-synthetic")).unwrap();
    let err = Index::open_for_model(&root.join("index"), &synthetic, &IndexSettings::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("was built with model 'starter'"),
        "{err}"
    );
}

#[test]
fn kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run() {
    const IMAGES: usize = 48;
    let root = scratch("kill9");
    let archive = root.join("archive");
    make_archive(&archive, IMAGES);
    let reference = root.join("reference");
    let status = index_command(&archive, &reference).status().unwrap();
    assert!(status.success());
    let want = content(&reference);
    assert_eq!(want.len(), IMAGES);

    // Kill after the k-th file was committed (the indexer logs each commit at debug level), so
    // every kill lands mid-run however fast or slow this machine is; k = 0 kills during start-up.
    let mut resumed_with_work_kept = 0;
    for (round, commits_before_kill) in [0usize, 5, 18, 27, 38].into_iter().enumerate() {
        let dir = root.join(format!("killed-{round}"));
        let mut child = index_command(&archive, &dir)
            .env("RUST_LOG", "spotter=debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Keep reading end open until the kill, so the child never sees a closed pipe.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut committed = 0;
        while committed < commits_before_kill {
            let line = lines
                .next()
                .expect("the run ended before the kill")
                .unwrap();
            if line.contains("file committed") {
                committed += 1;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the run ended before the kill"
        );
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        drop(lines);
        // Resume: the same command, to completion.
        let report = index_json(&archive, &dir);
        let (unchanged, indexed) = (
            report["unchanged"].as_u64().unwrap(),
            report["indexed"].as_u64().unwrap(),
        );
        assert_eq!(
            unchanged + indexed,
            IMAGES as u64,
            "round {round}: {report}"
        );
        eprintln!("round {round}: killed after {committed}+ commits; resume kept {unchanged}, redid {indexed}");
        if unchanged > 0 {
            resumed_with_work_kept += 1;
        }
        let got = content(&dir);
        assert_eq!(got.len(), want.len(), "round {round}: image count");
        for (path, props) in &want {
            let rel = Path::new(path).strip_prefix(&archive).unwrap();
            let theirs = &got[&archive.join(rel).display().to_string()];
            assert_eq!(theirs, props, "round {round}: {path}");
        }
    }
    // sled makes commits durable within 500 ms, so late kills must keep earlier work.
    assert!(
        resumed_with_work_kept > 0,
        "no resumed run kept any work done before its kill"
    );
}

#[test]
fn a_second_process_on_the_same_index_gets_a_clear_message() {
    let root = scratch("locked");
    make_archive(&root.join("a"), 1);
    let (package, tower) = starter();
    let dir = root.join("index");
    index_once(&dir, &[&root.join("a")], &package, &tower);
    let _held = Index::open(&dir).unwrap();
    let output = spotter()
        .args(["stats", "--index"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("open in another Spotter process"), "{err}");
}
