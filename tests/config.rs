//! The configuration file (issue 13) against the real binary: settings fill what the command
//! line leaves out, flags and environment variables win, unknown keys are errors naming them.

mod common;

use std::path::Path;
use std::process::Output;

use common::{run_ok, spotter};

fn with_config(config: &Path, args: &[&str]) -> Output {
    spotter()
        .env("RUST_LOG", "error")
        .env_remove("SPOTTER_MODEL")
        .env_remove("SPOTTER_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn lines(output: &Output) -> usize {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).lines().count()
}

#[test]
fn settings_come_from_the_file_unless_a_flag_or_the_environment_gives_them() {
    let dir = common::scratch("config-file");
    let index = dir.join("index");
    run_ok(&mut common::index_command(
        &common::repo_root().join("data/samples"),
        &index,
    ));
    let config = dir.join("spotter.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\nindex = {:?}\ndevice = \"cpu\"\n\n[search]\nk = 2\nthreshold = 0\n\n[stats]\njson = true\n",
            index.display().to_string()
        ),
    )
    .unwrap();

    // No --index, no -k: both from the file; the flag wins over the file.
    assert_eq!(lines(&with_config(&config, &["search", "person"])), 2);
    assert_eq!(
        lines(&with_config(&config, &["search", "person", "-k", "3"])),
        3
    );
    let stats = with_config(&config, &["stats"]);
    assert!(stats.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("json = true");
    assert_eq!(doc["indexed"], 7);

    // $SPOTTER_CONFIG names the file when --config does not.
    let by_env = spotter()
        .env("RUST_LOG", "error")
        .env("SPOTTER_CONFIG", &config)
        .args(["search", "cat"])
        .output()
        .unwrap();
    assert_eq!(lines(&by_env), 2);

    // An environment variable beats the file, a flag beats both: the file names a model that
    // does not exist, SPOTTER_MODEL / --model one that does.
    std::fs::write(
        &config,
        "[detect]\nmodel = \"no-such-model\"\ndevice = \"cpu\"\ntext = \"cat\"\n",
    )
    .unwrap();
    let photo = common::sample("chelsea.png");
    let photo = photo.to_str().unwrap();
    let from_file = with_config(&config, &["detect", photo]);
    assert!(!from_file.status.success());
    assert!(String::from_utf8_lossy(&from_file.stderr).contains("no-such-model"));
    let env_wins = spotter()
        .env("RUST_LOG", "error")
        .env("SPOTTER_MODEL", "starter")
        .arg("--config")
        .arg(&config)
        .args(["detect", photo])
        .output()
        .unwrap();
    assert!(
        env_wins.status.success(),
        "{}",
        String::from_utf8_lossy(&env_wins.stderr)
    );
    assert!(String::from_utf8_lossy(&env_wins.stdout).contains("cat"));
    let flag_wins = with_config(&config, &["detect", photo, "--model", "starter"]);
    assert!(flag_wins.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_keys_sections_and_files_are_errors_that_say_which() {
    let dir = common::scratch("config-errors");
    let config = dir.join("spotter.toml");
    for (text, named) in [
        ("[serve]\nadress = \"0.0.0.0:80\"\n", "'adress'"),
        ("[sevre]\naddr = \"0.0.0.0:80\"\n", "[sevre]"),
        ("[defaults]\ncolour = \"red\"\n", "'colour'"),
        ("index = \"/top\"\n", "[defaults]"),
        ("[serve\n", "not valid TOML"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = with_config(&config, &["stats", "--index", "/nowhere"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(named) && err.contains("spotter.toml"),
            "{text}: {err}"
        );
    }
    let missing = with_config(&dir.join("missing.toml"), &["stats", "--index", "/nowhere"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.toml"));
    assert!(!missing.status.success());
    // --help still works with a file present.
    std::fs::write(&config, "[serve]\naddr = \"127.0.0.1:9\"\n").unwrap();
    let help = with_config(&config, &["serve", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--addr"));
    let _ = std::fs::remove_dir_all(&dir);
}
