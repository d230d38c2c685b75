//! The `spotter` binary as a user runs it: `models`, and `detect` on the bundled cat photo.

mod common;

use common::*;

#[test]
fn detect_scores_the_cat_as_cat_not_car() {
    let out_png = scratch("cli-detect").join("annotated.png");
    let stdout = run_ok(
        spotter()
            .args([
                "detect",
                &sample("chelsea.png").display().to_string(),
                "--text",
                "cat,car",
                "--json",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(&out_png),
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "no detection printed");
    let top = &lines[0];
    assert_eq!(top["label"], "cat");
    let cat = top["scores"]["cat"].as_f64().unwrap();
    let car = top["scores"]["car"].as_f64().unwrap();
    assert!(cat > 0.5 && cat > car + 0.3, "cat {cat} vs car {car}");
    // The box covers most of the 451×300 photo, where the cat is.
    let b: Vec<f64> = top["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(b[2] - b[0] > 300.0 && b[3] - b[1] > 200.0, "{b:?}");
    let annotated = image::open(&out_png).unwrap();
    assert_eq!((annotated.width(), annotated.height()), (451, 300));
}

#[test]
fn detect_explains_bad_input() {
    let output = spotter()
        .args(["detect", "/nonexistent.jpg", "--text", "cat"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("/nonexistent.jpg"), "{err}");
    let output = spotter()
        .args([
            "detect",
            &sample("chelsea.png").display().to_string(),
            "--text",
            " , ",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least one"));
    let output = spotter()
        .args([
            "detect",
            &sample("chelsea.png").display().to_string(),
            "--text",
            "cat",
            "--model",
            "no-such-model",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("'no-such-model' not found"));
}

#[test]
fn models_lists_the_installed_packages() {
    let output = spotter().args(["models", "--json"]).output().unwrap();
    assert!(output.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["manifest"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(names.contains(&"starter".to_string()), "{names:?}");
    assert!(
        names.contains(&"wedetect-synthetic".to_string()),
        "{names:?}"
    );
}
