//! A full disk mid-run (issue 10 keeps this guarantee tested): the run stops with a clear error,
//! what was committed stays consistent, and the same command resumes to the index an
//! uninterrupted run makes. The index lives on a small tmpfs, so this test needs root (as CI
//! has); elsewhere it says SKIPPED.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn search(index: &Path) -> String {
    String::from_utf8(run_ok(
        spotter()
            .env("RUST_LOG", "error")
            .args([
                "search",
                "cat, cup",
                "--json",
                "--device",
                "cpu",
                "--threshold",
                "0",
                "-k",
                "500",
                "--index",
            ])
            .arg(index),
    ))
    .unwrap()
}

#[test]
fn a_full_disk_stops_the_run_clearly_and_it_resumes_identically() {
    let dir = scratch("hardening_disk_full");
    let archive = dir.join("photos");
    distinct_photos(&archive, 120);
    let mount = dir.join("small-disk");
    std::fs::create_dir_all(&mount).unwrap();
    // The finished index takes about 210 KB (quantised vectors ~120 KB, sled ~90 KB); 120 KB
    // fills up mid-run.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=120k", "tmpfs"])
        .arg(&mount)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        return;
    }
    let guard = Mounted(mount.clone());
    let full = mount.join("index");
    let out = index_command(&archive, &full).output().unwrap();
    assert!(
        !out.status.success(),
        "the run should have hit the full disk"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");

    // Move what was written to a disk with room and run the same command again.
    let resumed = dir.join("resumed");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&full)
        .arg(&resumed)
        .status()
        .unwrap()
        .success());
    drop(guard);
    let report = index_json(&archive, &resumed);
    let (unchanged, indexed) = (
        report["unchanged"].as_u64().unwrap(),
        report["indexed"].as_u64().unwrap(),
    );
    assert!(
        unchanged > 0 && indexed > 0,
        "work before the full disk kept: {report}"
    );
    assert_eq!(unchanged + indexed, 120, "{report}");

    let reference = dir.join("reference");
    run_ok(&mut index_command(&archive, &reference));
    let stats = |index: &Path| -> (u64, u64, u64) {
        let v: serde_json::Value = serde_json::from_slice(&run_ok(
            spotter().args(["stats", "--json", "--index"]).arg(index),
        ))
        .unwrap();
        (
            v["images"].as_u64().unwrap(),
            v["proposals"].as_u64().unwrap(),
            v["vectors"].as_u64().unwrap(),
        )
    };
    assert_eq!(stats(&resumed), stats(&reference));
    // Same hits, scores and boxes (ids differ: the resumed index numbered its images in another
    // order), so compare without them.
    let strip = |text: String| -> Vec<serde_json::Value> {
        let mut hits: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for key in ["proposal", "image"] {
                    v.as_object_mut().unwrap().remove(key);
                }
                v
            })
            .collect();
        hits.sort_by_key(|h| h.to_string());
        hits
    };
    assert_eq!(strip(search(&resumed)), strip(search(&reference)));
}
