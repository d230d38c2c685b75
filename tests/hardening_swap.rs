//! Files swapped under a running indexer (issue 10): a FIFO and a symbolic link to `/dev/zero`
//! put in place of photos after the walk listed them must be reported as failures at once, not
//! hang the run or fill memory.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_fifo_or_device_swapped_in_after_the_walk_fails_fast() {
    let dir = scratch("hardening_swap_indexer");
    let archive = dir.join("photos");
    distinct_photos(&archive, 40);
    let mut child = index_command(&archive, &dir.join("index"))
        .args(["--threads", "1", "--batch", "1", "--json"])
        .env("RUST_LOG", "spotter=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut committed = 0;
    while committed < 3 {
        let line = lines.next().expect("the run ended early").unwrap();
        if line.contains("file committed") {
            committed += 1;
        }
    }
    // The last two files, listed by the walk and not read yet, become a FIFO and a link to an
    // endless device.
    let fifo = archive.join("p038.png");
    std::fs::remove_file(&fifo).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let link = archive.join("p039.png");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    // Drain stderr so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || for _ in lines {});
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the indexer hung on a swapped file");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    drain.join().unwrap();
    assert!(status.success(), "{status}");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["indexed"], 38, "{report}");
    let failed = report["failed"].as_array().unwrap();
    let reason = |name: &str| {
        failed
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not reported: {report}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("p038.png").contains("FIFO"), "{report}");
    assert!(reason("p039.png").contains("symbolic link"), "{report}");
}
