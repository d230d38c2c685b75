//! `spotter eval` on a labelled set the test builds from registry photos
//! (`scripts/make_eval_set.py`): a pipeline cross-check — `scripts/eval_reference.py` reruns the
//! model in Python (Pillow + onnxruntime) and scores with the same definitions, AP through
//! scikit-learn — and the starter model's figures do not regress. The metric definitions
//! themselves are checked against pycocotools and scikit-learn in `tests/eval_references.rs`.

mod common;

use common::*;

#[test]
fn eval_matches_the_python_reference_and_the_starter_baseline() {
    let root = scratch("eval");
    let set = root.join("set");
    run_python("make_eval_set.py", &[&set.display().to_string()]);
    let images = set.join("images");
    let annotations = set.join("annotations.json");
    let index = root.join("index");
    run_ok(&mut index_command(&images, &index));
    let ours = eval_json(&annotations, &images, &index); // threshold 0.2, the default

    let reference_out = root.join("reference.json");
    run_python(
        "eval_reference.py",
        &[
            "--annotations",
            &annotations.display().to_string(),
            "--images",
            &images.display().to_string(),
            "--model",
            &package_dir("starter").display().to_string(),
            "--threshold",
            "0.2",
            "--out",
            &reference_out.display().to_string(),
        ],
    );
    let reference = read_json(&reference_out);

    // Same categories, same counts; metrics equal up to JPEG-decoder differences between the
    // image crate and Pillow (a score near the threshold may flip one image).
    let theirs = reference["per_category"].as_object().unwrap();
    let mine = ours["per_category"].as_object().unwrap();
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, r) in theirs {
        let m = &mine[name];
        assert_eq!(m["positives"], r["positives"], "{name}");
        for key in ["precision", "recall", "f1", "ap", "box_top1"] {
            let (a, b) = (m[key].as_f64().unwrap(), r[key].as_f64().unwrap());
            assert!((a - b).abs() <= 0.1, "{name} {key}: {a} vs reference {b}");
        }
    }
    for (key, ours_key) in [
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1"),
    ] {
        let (a, b) = (
            ours["macro_avg"][ours_key].as_f64().unwrap(),
            reference["macro"][key].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 0.03, "macro {key}: {a} vs reference {b}");
    }

    // Regression: the starter model's figures on this set (measured when the set was made).
    let baseline = read_json(&repo_root().join("tests/data/starter_eval_baseline.json"));
    for key in [
        "macro_f1",
        "macro_recall",
        "mean_ap",
        "mean_box_top1",
        "ar_100",
    ] {
        let got = match key {
            "macro_f1" => ours["macro_avg"]["f1"].as_f64(),
            "macro_recall" => ours["macro_avg"]["recall"].as_f64(),
            other => ours[other].as_f64(),
        }
        .unwrap();
        let want = baseline[key].as_f64().unwrap();
        assert!((got - want).abs() <= 0.03, "{key}: {got}, baseline {want} (update tests/data/starter_eval_baseline.json only for an intended change)");
    }
}

/// `spotter eval` on an index a running server holds goes through `POST /api/proposals` and
/// prints exactly what it prints on the closed index, in text and in JSON, missing images
/// included.
#[test]
fn eval_on_a_served_index_prints_what_it_prints_on_a_closed_one() {
    let root = scratch("eval-served");
    let set = root.join("set");
    run_python("make_eval_set.py", &[&set.display().to_string()]);
    let images = set.join("images");
    let annotations = set.join("annotations.json");
    let index = root.join("index");
    run_ok(&mut index_command(&images, &index));
    // One labelled image that is not in the index: counted as having no proposals, with a
    // warning, on both paths.
    let mut coco = read_json(&annotations);
    let mut extra = coco["images"][0].clone();
    extra["id"] = serde_json::json!(987_654);
    extra["file_name"] = serde_json::json!("not-indexed.jpg");
    coco["images"].as_array_mut().unwrap().push(extra);
    let labels = root.join("labels.json");
    std::fs::write(&labels, coco.to_string()).unwrap();

    let eval = |json: bool| {
        let mut command = spotter();
        command
            .env("RUST_LOG", "error")
            .args(["eval", "--device", "cpu", "--annotations"])
            .arg(&labels)
            .arg("--images")
            .arg(&images)
            .arg("--index")
            .arg(&index);
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (out.stdout, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let closed = [eval(false), eval(true)];
    assert!(closed[0].1.contains("1 of"), "{}", closed[0].1);
    let server = common::http::start(&index, &[]);
    let served = [eval(false), eval(true)];
    for (c, s) in closed.iter().zip(&served) {
        assert_eq!(
            String::from_utf8_lossy(&c.0),
            String::from_utf8_lossy(&s.0),
            "served and closed reports differ"
        );
        assert_eq!(c.1, s.1);
    }
    // (The closed path cannot open an index a server holds: these went through the server.)
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}
