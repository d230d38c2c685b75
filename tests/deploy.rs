//! The deployment files in `deploy/` (issue 13): the systemd unit verifies with systemd's own
//! tools and is locked down; the example configuration is one Spotter accepts.

mod common;

use std::process::Command;

use common::spotter;

fn systemd_analyze() -> Option<Command> {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| Command::new("systemd-analyze"))
}

#[test]
fn the_systemd_unit_verifies_and_is_locked_down() {
    let unit = std::fs::read_to_string(common::repo_root().join("deploy/systemd/spotter.service"))
        .expect("deploy/systemd/spotter.service");
    for directive in [
        "User=spotter",
        "ProtectSystem=strict",
        "StateDirectory=spotter",
        "NoNewPrivileges=true",
        "ExecStart=/usr/local/bin/spotter serve",
    ] {
        assert!(
            unit.lines().any(|l| l == directive),
            "the unit lacks {directive}"
        );
    }
    let Some(_) = systemd_analyze() else {
        eprintln!("SKIPPED: systemd-analyze is not installed here");
        return;
    };
    // The unit as installed, pointing at this build (verify checks that the binary exists).
    let dir = common::scratch("deploy-systemd");
    let path = dir.join("spotter.service");
    let bin = common::spotter_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/spotter", bin.to_str().unwrap()),
    )
    .unwrap();
    let verify = systemd_analyze()
        .unwrap()
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = systemd_analyze()
        .unwrap()
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for spotter.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(exposure <= 2.0, "exposure {exposure}: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_service_configuration_is_accepted() {
    // The whole file is checked before the command runs: unknown keys would fail with status 2.
    let out = spotter()
        .arg("--config")
        .arg(common::repo_root().join("deploy/systemd/config.toml"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
