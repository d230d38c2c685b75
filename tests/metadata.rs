//! Photo metadata against the real binary: EXIF written into copies of the sample photos by
//! Pillow (`scripts/write_exif.py`, an independent writer), indexed with `spotter index`, read
//! back through `spotter stats --json` and `spotter_indexer::Index` after the process has
//! exited; and an index made by Spotter before record format 2 (`tests/data/index_v1`),
//! migrated when it is opened, without the model, its search results unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{index_json, repo_root, run_ok, run_python, sample, scratch, spotter};
use serde_json::Value;
use spotter_indexer::{Index, PhotoInfo, TimeSource};

/// Writes `dst` from sample `src` at `width` pixels with the EXIF `tags` (write_exif.py flags).
fn photo(src: &str, dst: &Path, tags: &[&str]) {
    let (src, dst) = (sample(src), dst.to_str().unwrap().to_string());
    let mut args = vec![src.to_str().unwrap(), &dst, "--width", "400"];
    args.extend_from_slice(tags);
    run_python("write_exif.py", &args);
}

/// Sets a file's modification time (`touch -d`, RFC 3339).
fn touch(path: &Path, when: &str) {
    run_ok(Command::new("touch").arg("-d").arg(when).arg(path));
}

/// `spotter stats --json` of `index`, with its log at info level.
fn stats(index: &Path) -> (Value, String) {
    let out = spotter()
        .env("RUST_LOG", "info")
        .args(["stats", "--json", "--index"])
        .arg(index)
        .output()
        .expect("spawn spotter stats");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "spotter stats failed:\n{log}");
    (
        serde_json::from_slice(&out.stdout).expect("stats --json"),
        log,
    )
}

/// The photo metadata of the image at `path`, read through the library from a closed index.
fn info_of(index: &Index, path: &Path) -> PhotoInfo {
    let (id, _) = index
        .image_at(path)
        .unwrap()
        .unwrap_or_else(|| panic!("{} is not indexed", path.display()));
    index.image_info(id).unwrap().expect("indexed image").photo
}

fn assert_gps(info: &PhotoInfo, lat: f64, lon: f64) {
    let [got_lat, got_lon] = info.gps.expect("a GPS position");
    assert!(
        (got_lat - lat).abs() < 1e-6 && (got_lon - lon).abs() < 1e-6,
        "GPS {got_lat}, {got_lon}, expected {lat}, {lon}"
    );
}

fn file_time(seconds: i64) -> PhotoInfo {
    PhotoInfo {
        taken: Some(seconds),
        taken_offset_minutes: Some(0),
        taken_source: Some(TimeSource::FileModified),
        camera: None,
        gps: None,
    }
}

#[test]
fn exif_is_recorded_at_index_time_and_photos_without_it_get_their_file_time() {
    let dir = scratch("metadata-exif");
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // Full EXIF in a JPEG: time with offset, make and model (the make repeated), GPS south-west.
    photo(
        "astronaut.png",
        &archive.join("full.jpg"),
        &[
            "--datetime",
            "2021:07:04 15:30:00",
            "--offset=+02:00",
            "--make",
            "Canon",
            "--model",
            "Canon EOS 5D",
            "--gps=-33.8568,-151.2153",
        ],
    );
    // A PNG eXIf chunk: local time without offset, a maker's company name, GPS north-east.
    photo(
        "chelsea.png",
        &archive.join("tagged.png"),
        &[
            "--datetime",
            "2019:12:31 23:59:58",
            "--make",
            "NIKON CORPORATION",
            "--model",
            "NIKON D750",
            "--gps",
            "48.8584,2.2945",
        ],
    );
    // A WebP EXIF chunk (after the image data) with a western offset; a TIFF with a camera but no
    // time.
    photo(
        "coffee.png",
        &archive.join("phone.webp"),
        &[
            "--datetime",
            "2020:02:29 12:00:00",
            "--offset=-05:00",
            "--make",
            "Apple",
            "--model",
            "iPhone 12",
        ],
    );
    photo(
        "camera.png",
        &archive.join("scan.tif"),
        &["--make", "EPSON", "--model", "Perfection V600"],
    );
    // No EXIF at all: a JPEG and a PNG.
    photo("rocket.jpg", &archive.join("plain.jpg"), &[]);
    photo("motorcycle_left.png", &archive.join("plain.png"), &[]);
    for (name, when) in [
        ("full.jpg", "2022-01-01T00:00:00Z"),
        ("tagged.png", "2022-01-01T00:00:00Z"),
        ("phone.webp", "2022-01-01T00:00:00Z"),
        ("scan.tif", "2013-03-03T03:03:03Z"),
        ("plain.jpg", "2011-11-11T11:11:11Z"),
        ("plain.png", "2012-12-12T12:12:12Z"),
    ] {
        touch(&archive.join(name), when);
    }
    let index_dir = dir.join("index");
    let report = index_json(&archive, &index_dir);
    assert_eq!(report["indexed"], 6, "{report}");
    assert_eq!(
        report["failed"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    let (doc, _) = stats(&index_dir);
    assert_eq!(
        doc["photos"],
        serde_json::json!({"exif_time": 3, "file_time": 3, "camera": 4, "gps": 2}),
        "{doc}"
    );

    let root = archive.canonicalize().unwrap();
    {
        let index = Index::open(&index_dir).unwrap();
        let full = info_of(&index, &root.join("full.jpg"));
        assert_eq!(
            full.taken,
            Some(1_625_412_600),
            "2021-07-04 15:30:00 as read"
        );
        assert_eq!(full.taken_offset_minutes, Some(120));
        assert_eq!(full.taken_utc(), Some(1_625_412_600 - 2 * 3600));
        assert_eq!(full.taken_source, Some(TimeSource::Exif));
        assert_eq!(full.camera.as_deref(), Some("Canon EOS 5D"));
        assert_gps(&full, -33.8568, -151.2153);

        let tagged = info_of(&index, &root.join("tagged.png"));
        assert_eq!(tagged.taken, Some(1_577_836_798), "2019-12-31 23:59:58");
        assert_eq!(
            tagged.taken_offset_minutes, None,
            "a local time of unknown zone"
        );
        assert_eq!(tagged.taken_utc(), None);
        assert_eq!(tagged.camera.as_deref(), Some("NIKON D750"));
        assert_gps(&tagged, 48.8584, 2.2945);

        let phone = info_of(&index, &root.join("phone.webp"));
        assert_eq!(
            (phone.taken, phone.taken_offset_minutes),
            (Some(1_582_977_600), Some(-300))
        );
        assert_eq!(phone.camera.as_deref(), Some("Apple iPhone 12"));
        assert_eq!(phone.gps, None);

        let scan = info_of(&index, &root.join("scan.tif"));
        assert_eq!(scan.camera.as_deref(), Some("EPSON Perfection V600"));
        assert_eq!(scan.taken_source, Some(TimeSource::FileModified));
        assert_eq!(scan.taken, Some(1_362_279_783));

        assert_eq!(
            info_of(&index, &root.join("plain.jpg")),
            file_time(1_321_009_871)
        );
        assert_eq!(
            info_of(&index, &root.join("plain.png")),
            file_time(1_355_314_332)
        );

        // Search hits carry the metadata of their image.
        let (id, _) = index.image_at(&root.join("full.jpg")).unwrap().unwrap();
        let ids: Vec<u64> = index
            .proposals_of(id)
            .unwrap()
            .iter()
            .map(|p| p.0)
            .collect();
        assert!(!ids.is_empty(), "the astronaut has proposals");
        for hit in index.hit_records(&ids).unwrap() {
            assert_eq!(hit.photo, full);
        }
    }

    // A later run: a touched file without EXIF takes its new time, a renamed photo keeps its
    // EXIF values, and neither goes through the model.
    touch(&archive.join("plain.jpg"), "2014-04-04T04:04:04Z");
    touch(&archive.join("full.jpg"), "2023-01-01T00:00:00Z");
    std::fs::rename(archive.join("tagged.png"), archive.join("renamed.png")).unwrap();
    let report = index_json(&archive, &index_dir);
    assert_eq!(
        (&report["indexed"], &report["touched"], &report["moved"]),
        (&Value::from(0), &Value::from(2), &Value::from(1)),
        "{report}"
    );
    let index = Index::open(&index_dir).unwrap();
    assert_eq!(
        info_of(&index, &root.join("plain.jpg")).taken,
        Some(1_396_584_244)
    );
    assert_eq!(
        info_of(&index, &root.join("full.jpg")).taken,
        Some(1_625_412_600)
    );
    let renamed = info_of(&index, &root.join("renamed.png"));
    assert_eq!(renamed.camera.as_deref(), Some("NIKON D750"));
    assert_eq!(renamed.taken, Some(1_577_836_798));
}

/// Where the format-1 fixture's archive was when its index was made (roots are stored
/// absolute): the test puts the archive back there.
const FIXTURE_ROOT: &str = "/tmp/spotter-index-v1-fixture/archive";

/// What a search result line of the fixture's search says, without fields added since.
fn hit_key(line: &Value) -> (String, String, String, Vec<f64>, String) {
    let text = |k: &str| line[k].as_str().unwrap_or_default().to_string();
    let bbox = line["box"]
        .as_array()
        .expect("box")
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (
        text("concept"),
        text("proposal"),
        text("image"),
        bbox,
        text("path"),
    )
}

fn search_lines(index: &Path, query: &str) -> Vec<Value> {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args(["search", "--json", "--device", "cpu", "--threshold", "0"])
            .args(["-k", "20", "--index"])
            .arg(index)
            .arg(query),
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn file_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn an_index_of_record_format_1_migrates_on_open_without_the_model() {
    // The fixture: an index made by Spotter before format 2 (tests/data/index_v1/README.md).
    let data = repo_root().join("tests/data/index_v1");
    let archive = PathBuf::from(FIXTURE_ROOT);
    let _ = std::fs::remove_dir_all(&archive);
    std::fs::create_dir_all(&archive).unwrap();
    // With the modification times they had when they were indexed (git keeps none).
    for (name, when) in [
        ("exif.jpg", "2016-08-09T10:00:00Z"),
        ("plain.png", "2020-01-02T03:04:05Z"),
        ("broken.jpg", "2015-05-05T05:05:05Z"),
    ] {
        std::fs::copy(data.join("archive").join(name), archive.join(name)).unwrap();
        touch(&archive.join(name), when);
    }
    // gone.jpg (indexed, with EXIF) is not put back: its record keeps its file time.
    let dir = scratch("metadata-migration");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(data.join("index.tar.gz"))
            .arg("-C")
            .arg(&dir),
    );
    let index_dir = dir.join("index");
    let vectors_before = file_bytes(&index_dir.join("vectors/ivf"));

    // Any command that opens the index migrates it: stats loads no model.
    let (doc, log) = stats(&index_dir);
    assert!(
        log.contains("migrating 4 image records to record format 2"),
        "the migration says what it does:\n{log}"
    );
    assert_eq!(
        (
            &doc["images"],
            &doc["indexed"],
            &doc["failed"],
            &doc["proposals"]
        ),
        (
            &Value::from(4),
            &Value::from(3),
            &Value::from(1),
            &Value::from(6)
        ),
        "{doc}"
    );
    assert_eq!(
        doc["photos"],
        serde_json::json!({"exif_time": 1, "file_time": 2, "camera": 1, "gps": 1}),
        "{doc}"
    );
    assert_eq!(
        file_bytes(&index_dir.join("vectors/ivf")),
        vectors_before,
        "the vectors are not rewritten"
    );
    let (_, log) = stats(&index_dir);
    assert!(!log.contains("migrating"), "migrated once:\n{log}");

    {
        let index = Index::open(&index_dir).unwrap();
        let exif = info_of(&index, &archive.join("exif.jpg"));
        assert_eq!(exif.taken, Some(1_470_561_011), "2016-08-07 09:10:11");
        assert_eq!(exif.taken_offset_minutes, Some(-180));
        assert_eq!(exif.taken_source, Some(TimeSource::Exif));
        assert_eq!(exif.camera.as_deref(), Some("NIKON D750"));
        assert_gps(&exif, -22.9519, -43.2105);
        // No EXIF: the recorded modification time; the file gone: the same, nothing else known.
        assert_eq!(
            info_of(&index, &archive.join("plain.png")),
            file_time(1_577_934_245)
        );
        assert_eq!(
            info_of(&index, &archive.join("gone.jpg")),
            file_time(1_520_139_967)
        );
        let (_, broken) = index
            .image_at(&archive.join("broken.jpg"))
            .unwrap()
            .unwrap();
        assert_eq!(broken.photo.taken.unwrap().seconds, 1_430_802_305);
    }

    // Search results are those the format-1 binary gave on this index.
    let before: Vec<Value> = std::fs::read_to_string(data.join("search_before.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let after: Vec<Value> = ["cat", "cup", "person"]
        .iter()
        .flat_map(|q| search_lines(&index_dir, q))
        .collect();
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(hit_key(a), hit_key(b));
        let (sa, sb) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((sa - sb).abs() < 1e-5, "score {sa} was {sb}");
    }

    // The next run is incremental as before: nothing re-read, the gone file's record dropped.
    let report = index_json(&archive, &index_dir);
    assert_eq!(
        (&report["unchanged"], &report["indexed"], &report["deleted"]),
        (&Value::from(3), &Value::from(0), &Value::from(1)),
        "{report}"
    );
}

/// The photos `spotter search --json` returns (file names), in order.
fn searched(index: &Path, args: &[&str]) -> Vec<String> {
    let out = run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args([
                "search",
                "--device",
                "cpu",
                "--json",
                "-k",
                "100",
                "--threshold",
                "0",
            ])
            .args(args)
            .arg("--index")
            .arg(index),
    );
    let mut seen = Vec::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let hit: Value = serde_json::from_str(line).unwrap();
        let name = Path::new(hit["path"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen
}

#[test]
fn date_camera_filters_and_time_order_follow_the_exif_written_into_the_photos() {
    let dir = scratch("metadata-filters");
    let (archive, index) = (dir.join("photos"), dir.join("index"));
    std::fs::create_dir_all(&archive).unwrap();
    // (file, EXIF capture time, camera model); every photo shows something "person"-like.
    let photos = [
        ("a.jpg", "2019:06:15 14:30:05", "Canon EOS 5D"),
        ("b.jpg", "2021:01:02 08:00:00", "NIKON D750"),
        ("c.jpg", "2021:12:31 23:59:59", "Canon EOS R5"),
        ("d.jpg", "2023:03:04 10:00:00", "NIKON Z 6"),
    ];
    for (name, when, model) in photos {
        let make = model.split(' ').next().unwrap();
        photo(
            "astronaut.png",
            &archive.join(name),
            &["--datetime", when, "--make", make, "--model", model],
        );
    }
    run_ok(&mut common::index_command(&archive, &index));
    let all = searched(&index, &["person"]);
    assert_eq!(all.len(), 4, "{all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    // Each filter against the photos whose written EXIF passes it.
    assert_eq!(
        searched(
            &index,
            &["person", "--after", "2021-01-01", "--before", "2022-01-01"]
        )
        .len(),
        2
    );
    let mut in_2021 = searched(
        &index,
        &["person", "--after", "2021-01-01", "--before", "2022-01-01"],
    );
    in_2021.sort();
    assert_eq!(in_2021, ["b.jpg", "c.jpg"]);
    // The boundary: at or after `after`, strictly before `before`, by the photo's own clock.
    let mut edge = searched(
        &index,
        &[
            "person",
            "--after",
            "2021-12-31T23:59:59",
            "--before",
            "2023-03-04T10:00:00",
        ],
    );
    edge.sort();
    assert_eq!(edge, ["c.jpg"]);
    let mut canon = searched(&index, &["person", "--camera", "canon eos"]);
    canon.sort();
    assert_eq!(canon, ["a.jpg", "c.jpg"]);
    assert_eq!(
        searched(&index, &["person", "--camera", "leica"]),
        Vec::<String>::new()
    );
    // Newest first.
    assert_eq!(
        searched(&index, &["person", "--sort", "time"]),
        ["d.jpg", "c.jpg", "b.jpg", "a.jpg"]
    );
    // The same through a server holding the index, and on the API.
    let server = common::http::start(&index, &[]);
    assert_eq!(
        searched(&index, &["person", "--sort", "time", "--camera", "nikon"]),
        ["d.jpg", "b.jpg"]
    );
    let (status, page) = common::http::json(
        &server.base,
        "/api/search?q=person&threshold=0&group=images&sort=time&after=2020-01-01",
    );
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d.jpg", "c.jpg", "b.jpg"]);
    assert_eq!(page["images"][0]["photo"]["camera"], "NIKON Z 6");
    assert_eq!(page["images"][0]["photo"]["taken_source"], "exif");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
