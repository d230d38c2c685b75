//! The starter model's text tower, run by the engine (tokenizers crate + ONNX Runtime), equals
//! golden embeddings computed by an independent numpy implementation of all-MiniLM-L6-v2
//! (`scripts/starter/minilm_reference.py`), token ids included.

use std::path::PathBuf;

use spotter_model::{Device, ModelPackage, RuntimeOptions, TextTower};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn starter_text_embeddings_match_the_numpy_reference() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("model/tests/data/starter_text_golden.json")).unwrap(),
    )
    .unwrap();
    let dir = repo().join("exported_onnx/starter");
    assert!(
        dir.join("model.json").is_file(),
        "{} missing: run scripts/setup.sh",
        dir.display()
    );
    let package = ModelPackage::open(&dir).unwrap();
    let tower = TextTower::load(
        &package,
        &RuntimeOptions::default().with_device(Device::Cpu),
    )
    .unwrap();
    let texts: Vec<&str> = golden["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let tolerance = golden["tolerance"].as_f64().unwrap() as f32;

    // Embedded as one padded batch: padding must not change any text's embedding.
    let embeddings = tower.embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let ids: Vec<i64> = golden["token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let ours = tower.tokenize(&[text]).unwrap();
        assert_eq!(ours.ids, ids, "token ids of {text:?}");
        let want: Vec<f32> = golden["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(embeddings[i].len(), want.len());
        let diff = embeddings[i]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < tolerance, "{text:?}: max abs diff {diff}");
        let norm: f32 = embeddings[i].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?} not normalised: {norm}");
    }
}

#[test]
fn query_template_is_applied_once() {
    let package = ModelPackage::open(repo().join("exported_onnx/starter")).unwrap();
    let tower = TextTower::load(
        &package,
        &RuntimeOptions::default().with_device(Device::Cpu),
    )
    .unwrap();
    assert_eq!(tower.apply_template("red car"), "a photo of a red car");
    let a = tower.embed_queries(&["cat"]).unwrap();
    let b = tower.embed(&["a photo of a cat"]).unwrap();
    assert_eq!(a, b);
}
