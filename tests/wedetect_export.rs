//! The WeDetect-Uni export cannot write a useless tokenizer and report success
//! (`scripts/wedetect/export_wedetect_uni.py`, `scripts/wedetect/xlmr_tokenizer.py`).
//!
//! These run without torch: the export checks its files and builds and proves the tokenizer
//! before it imports anything heavy, so every failure here is the real entry point failing for
//! the right reason. The tokenizer is proven against the `sentencepiece` library on a small
//! XLM-R-like model trained by that library (`train_test_sentencepiece.py`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn script(name: &str) -> PathBuf {
    repo_root().join("scripts/wedetect").join(name)
}

fn py(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(python())
        .args(args)
        .output()
        .expect("spawn python")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that the script succeeded; returns what it printed.
fn succeeded(out: &Output) -> String {
    let said = text(out);
    assert!(out.status.success(), "{said}");
    said
}

/// Asserts that the script exited 1 saying `reason`; returns what it printed.
fn failed_with(out: &Output, reason: &str) -> String {
    let said = text(out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(reason), "expected {reason:?} in:\n{said}");
    said
}

/// A checkout-shaped folder: an (unused) models.py, checkpoints of plausible size, the XLM-R
/// config; the tokenizer files are the test's to add.
fn checkout(root: &Path) -> PathBuf {
    let repo = root.join("WeDetect");
    std::fs::create_dir_all(repo.join("wedetect_anything")).unwrap();
    std::fs::create_dir_all(repo.join("xlm-roberta-base")).unwrap();
    std::fs::write(
        repo.join("wedetect_anything/models.py"),
        "raise SystemExit('not reached')\n",
    )
    .unwrap();
    std::fs::write(repo.join("xlm-roberta-base/config.json"), "{}").unwrap();
    for name in ["wedetect_base_uni.pth", "wedetect_base.pth"] {
        std::fs::write(root.join(name), vec![0u8; 2 << 20]).unwrap();
    }
    repo
}

fn export(root: &Path, repo: &Path) -> Output {
    let out = root.join("package");
    py(&[
        script("export_wedetect_uni.py").as_os_str(),
        "--wedetect-repo".as_ref(),
        repo.as_os_str(),
        "--uni-checkpoint".as_ref(),
        root.join("wedetect_base_uni.pth").as_os_str(),
        "--text-checkpoint".as_ref(),
        root.join("wedetect_base.pth").as_os_str(),
        "--size".as_ref(),
        "base".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

fn train_spm(dir: &Path) {
    succeeded(&py(&[
        script("train_test_sentencepiece.py").as_os_str(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]));
}

fn no_package_left(root: &Path) {
    let left: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("package"))
        .collect();
    assert!(left.is_empty(), "a failed export left {left:?}");
}

#[test]
fn export_without_the_sentencepiece_model_fails_and_says_why() {
    let root = scratch("wedetect-export-missing");
    let repo = checkout(&root);
    let said = failed_with(&export(&root, &repo), "sentencepiece.bpe.model is missing");
    assert!(!said.contains("done"), "{said}");
    no_package_left(&root);
}

#[test]
fn export_with_a_stand_in_tokenizer_fails_on_its_vocabulary() {
    let root = scratch("wedetect-export-vocab");
    let repo = checkout(&root);
    let xlmr = repo.join("xlm-roberta-base");
    // The reported failure: a 5-token tokenizer.json standing in for XLM-R's.
    let stand_in = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "Unigram", "unk_id": 3, "byte_fallback": false,
                  "vocab": [["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["<mask>", 0.0]]}
    });
    std::fs::write(xlmr.join("tokenizer.json"), stand_in.to_string()).unwrap();
    train_spm(&xlmr);
    failed_with(
        &export(&root, &repo),
        "vocabulary of 5 tokens, expected 250002",
    );
    no_package_left(&root);

    // A genuine conversion of a SentencePiece model that is not XLM-R's (2,002 ids).
    std::fs::remove_file(xlmr.join("tokenizer.json")).unwrap();
    failed_with(
        &export(&root, &repo),
        "vocabulary of 2002 tokens, expected 250002",
    );
    no_package_left(&root);
}

#[test]
fn tokenizer_is_proven_against_sentencepiece_from_either_source() {
    let root = scratch("wedetect-tokenizer");
    let xlmr = root.join("xlm-roberta-base");
    train_spm(&xlmr);
    let write = |out: &Path| {
        py(&[
            script("xlmr_tokenizer.py").as_os_str(),
            "--xlmr-dir".as_ref(),
            xlmr.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--vocab-size".as_ref(),
            "2002".as_ref(),
        ])
    };
    // 1. Converted from sentencepiece.bpe.model, equal on >= 2,000 strings, written 0644.
    let converted = root.join("converted.json");
    let said = succeeded(&write(&converted));
    assert!(said.contains("converted from the checkout's"), "{said}");
    assert!(said.contains("on 2000 strings"), "{said}");
    let mode = std::fs::metadata(&converted).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // 2. A committed tokenizer.json is preferred, and checked the same way.
    std::fs::copy(&converted, xlmr.join("tokenizer.json")).unwrap();
    let said = succeeded(&write(&root.join("committed.json")));
    assert!(
        said.contains("the checkout's") && said.contains("tokenizer.json"),
        "{said}"
    );

    // 3. A committed tokenizer.json that segments differently (one piece's score changed) is
    //    caught by the comparison with the sentencepiece library.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&converted).unwrap()).unwrap();
    let vocab = doc["model"]["vocab"].as_array_mut().unwrap();
    let longest = (4..vocab.len() - 1)
        .max_by_key(|&i| vocab[i][0].as_str().unwrap().chars().count())
        .unwrap();
    vocab[longest][1] = serde_json::json!(-1000.0);
    std::fs::write(xlmr.join("tokenizer.json"), doc.to_string()).unwrap();
    failed_with(
        &write(&root.join("tampered.json")),
        "ids differ from SentencePiece's",
    );
    assert!(!root.join("tampered.json").exists());
}
