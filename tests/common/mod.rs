//! Helpers shared by the end-to-end tests: locating the repository, its set-up products and the
//! Python reference tools. Missing set-up is a test failure with the fix in the message, never a
//! silent skip.
#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A model package built by `scripts/setup.sh`.
pub fn package_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("exported_onnx").join(name);
    assert!(
        dir.join("model.json").is_file(),
        "model package {} is missing: run scripts/setup.sh first",
        dir.display()
    );
    dir
}

/// The sample photos fetched by `scripts/setup.sh`.
pub fn sample(name: &str) -> PathBuf {
    let path = repo_root().join("data/samples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh first",
        path.display()
    );
    path
}

/// The project's Python (with numpy, onnxruntime, Pillow, tokenizers).
pub fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/setup.sh first",
        py.display()
    );
    py
}

/// The starter package and its image tower on the CPU (for tests that drive the library).
pub fn starter() -> (spotter_model::ModelPackage, spotter_model::ImageTower) {
    let package = spotter_model::ModelPackage::open(package_dir("starter")).unwrap();
    let tower = spotter_model::ImageTower::load(
        &package,
        &spotter_model::RuntimeOptions::default().with_device(spotter_model::Device::Cpu),
    )
    .unwrap();
    (package, tower)
}

/// Writes `count` distinct photos `p000.png`, `p001.png`, … into `dir`: the sample photos in
/// turn, each with one pixel changed, so that none is a copy of another and every one goes
/// through the model.
pub fn distinct_photos(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let photos: Vec<image::RgbImage> = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
        .iter()
        .map(|n| image::open(sample(n)).unwrap().to_rgb8())
        .collect();
    for i in 0..count {
        let mut img = photos[i % photos.len()].clone();
        img.put_pixel(0, 0, image::Rgb([(i % 256) as u8, (i / 256) as u8, 5]));
        img.save(dir.join(format!("p{i:03}.png"))).unwrap();
    }
}

/// A fresh scratch folder under target/ for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = repo_root().join("target/test-scratch").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Runs a Python script of `scripts/` and panics with its output when it fails.
pub fn run_python(script: &str, args: &[&str]) {
    let out = Command::new(python())
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .output()
        .expect("spawn python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read json");
    serde_json::from_str(&text).expect("parse json")
}

/// The built `spotter` binary, or the one named by `SPOTTER_TEST_BIN` (to check that a test
/// fails on an older build: `SPOTTER_TEST_BIN=/path/to/old/spotter cargo test ...`).
pub fn spotter() -> Command {
    let mut cmd = Command::new(spotter_bin());
    // Hermetic: no configuration file of the user running the tests.
    cmd.env("XDG_CONFIG_HOME", repo_root().join("target/test-no-config"))
        .env_remove("SPOTTER_CONFIG");
    cmd
}

/// The binary under test: `SPOTTER_TEST_BIN` when set, else this build's.
pub fn spotter_bin() -> PathBuf {
    std::env::var_os("SPOTTER_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spotter").into())
}

/// `spotter index --json` of `archive` into `index` (the common test flags), its report parsed.
pub fn index_json(archive: &Path, index: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(index_command(archive, index).arg("--json")))
        .expect("index --json prints JSON")
}

/// `spotter eval --json` of an index against COCO labels, parsed.
pub fn eval_json(annotations: &Path, images: &Path, index: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(
        spotter()
            .args(["eval", "--json", "--device", "cpu", "--annotations"])
            .arg(annotations)
            .arg("--images")
            .arg(images)
            .arg("--index")
            .arg(index),
    ))
    .expect("eval --json prints JSON")
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Runs a command, asserts it succeeded (showing its stderr otherwise) and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let output = cmd.output().expect("spawn");
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `spotter index --quiet --device cpu --index INDEX ARCHIVE`, logs off.
pub fn index_command(archive: &Path, index: &Path) -> Command {
    let mut cmd = spotter();
    cmd.env("RUST_LOG", "error")
        .args(["index", "--quiet", "--device", "cpu", "--index"])
        .arg(index)
        .arg(archive);
    cmd
}
