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
    let mut child = spotter()
        .env("RUST_LOG", "error")
        .args([
            "serve",
            "--device",
            "cpu",
            "--addr",
            "127.0.0.1:0",
            "--index",
        ])
        .arg(&index)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(record.exists(), "{line}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    assert!(!record.exists(), "a stopped server removes its record");
    let _ = std::fs::remove_dir_all(&dir);
}
