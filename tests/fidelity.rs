//! Fidelity: the Rust pipeline reproduces the Python/onnxruntime reference
//! (`scripts/reference_pipeline.py`) on the same package and images: same proposals in the same
//! order, boxes within 0.5 px, stored vectors with cosine ≥ 0.9999, text embeddings and scores
//! within float tolerance.

mod common;

use common::*;
use spotter_model::{
    decode_file, ImageTower, ModelPackage, ProposalParams, RuntimeOptions, TextTower,
};

const TEXTS: &str = "cat,car,a mug of coffee,person";

fn check_package(name: &str, images: &[std::path::PathBuf]) {
    let dir = package_dir(name);
    let out = scratch(&format!("fidelity-{name}")).join("reference.json");
    let mut args: Vec<String> = vec![
        "--model".into(),
        dir.display().to_string(),
        "--texts".into(),
        TEXTS.into(),
        "--out".into(),
        out.display().to_string(),
        "--images".into(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    run_python(
        "reference_pipeline.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let reference = read_json(&out);

    let package = ModelPackage::open(&dir).unwrap();
    let options = RuntimeOptions::default().with_device(spotter_model::Device::Cpu);
    let image_tower = ImageTower::load(&package, &options).unwrap();
    let text_tower = TextTower::load(&package, &options).unwrap();
    let scoring = image_tower.scoring();
    let params = ProposalParams::from(&package.manifest.proposals);

    // Text tower: same token ids, same embeddings.
    let texts: Vec<&str> = TEXTS.split(',').collect();
    let embedded = text_tower.embed_queries(&texts).unwrap();
    let ref_texts = reference["texts"].as_array().unwrap();
    assert_eq!(ref_texts.len(), texts.len());
    for (i, rt) in ref_texts.iter().enumerate() {
        let batch = text_tower
            .tokenize(&[&text_tower.apply_template(texts[i])])
            .unwrap();
        let ids: Vec<i64> = rt["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(batch.ids, ids, "token ids of {:?}", texts[i]);
        let want = floats(&rt["embedding"]);
        let max_diff = want
            .iter()
            .zip(&embedded[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 1e-4,
            "{name}: text {:?} embedding differs by {max_diff}",
            texts[i]
        );
    }
    let queries: Vec<Vec<f32>> = embedded.iter().map(|t| scoring.query_vector(t)).collect();

    let threshold = params.objectness_threshold;
    for (img_path, ref_img) in images.iter().zip(reference["images"].as_array().unwrap()) {
        let image = decode_file(img_path, Default::default()).unwrap();
        assert_eq!(image.width() as u64, ref_img["width"].as_u64().unwrap());
        assert_eq!(image.height() as u64, ref_img["height"].as_u64().unwrap());
        let prepared = image_tower.prepare(&image).unwrap();
        let ours = image_tower
            .detect(&[prepared], &params)
            .unwrap()
            .pop()
            .unwrap();
        let theirs = ref_img["proposals"].as_array().unwrap();
        let label = format!("{name}/{}", img_path.file_name().unwrap().to_string_lossy());
        assert!(
            !theirs.is_empty(),
            "{label}: the reference kept no proposal; pick another image"
        );
        // Proposals whose objectness sits on the threshold may flip either way; nothing else may.
        let common = ours.len().min(theirs.len());
        for extra in ours.iter().skip(common).map(|p| p.objectness).chain(
            theirs
                .iter()
                .skip(common)
                .map(|p| p["objectness"].as_f64().unwrap() as f32),
        ) {
            assert!(
                (extra - threshold).abs() < 1e-3,
                "{label}: {} vs {} proposals",
                ours.len(),
                theirs.len()
            );
        }
        for (k, (p, r)) in ours.iter().zip(theirs).enumerate() {
            let rbox = floats(&r["box"]);
            for c in 0..4 {
                assert!(
                    (p.bbox[c] - rbox[c]).abs() <= 0.5,
                    "{label} proposal {k}: box {:?} vs {:?}",
                    p.bbox,
                    rbox
                );
            }
            let robj = r["objectness"].as_f64().unwrap() as f32;
            assert!(
                (p.objectness - robj).abs() < 1e-3,
                "{label} proposal {k}: objectness {} vs {robj}",
                p.objectness
            );
            assert_eq!(
                u64::from(p.level),
                r["level"].as_u64().unwrap(),
                "{label} proposal {k}: level"
            );
            let cos = cosine(&p.vector, &floats(&r["vector"]));
            assert!(
                cos >= 0.9999,
                "{label} proposal {k}: stored vector cosine {cos}"
            );
            for (t, q) in texts.iter().zip(&queries) {
                let ours = scoring.score(q, &p.vector);
                let want = r["scores"][*t].as_f64().unwrap() as f32;
                assert!(
                    (ours - want).abs() < 1e-3,
                    "{label} proposal {k}: score({t}) {ours} vs {want}"
                );
            }
        }
    }
}

#[test]
fn starter_model_matches_the_python_reference_on_sample_photos() {
    let images: Vec<_> = [
        "chelsea.png",
        "coffee.png",
        "motorcycle_left.png",
        "astronaut.png",
        "motorcycle_right.png",
    ]
    .iter()
    .map(|n| sample(n))
    .collect();
    check_package("starter", &images);
}

#[test]
fn wedetect_shaped_model_scores_equal_the_reference_formula() {
    // The synthetic package has WeDetect-Uni's exact signature (3 levels, BN-ed embeddings,
    // per-level scale/bias); the reference checks <q,v> against sigmoid(s_l·<e,t̂>+b_l) itself.
    let images: Vec<_> = ["chelsea.png", "motorcycle_right.png", "camera.png"]
        .iter()
        .map(|n| sample(n))
        .collect();
    check_package("wedetect-synthetic", &images);
}

#[test]
fn resampling_is_bit_exact_with_pillow() {
    let dir = scratch("pillow-resize");
    let photo = sample("astronaut.png"); // 512×512
    let image = decode_file(&photo, Default::default()).unwrap();
    use spotter_model::manifest::ResizeFilter::*;
    for (filter, name) in [
        (Bilinear, "bilinear"),
        (CatmullRom, "catmull_rom"),
        (Lanczos3, "lanczos3"),
    ] {
        for (w, h) in [(416u32, 416u32), (160, 97), (640, 603), (3, 700)] {
            let out = dir.join(format!("{name}-{w}x{h}.png"));
            run_python(
                "pillow_resize.py",
                &[
                    &photo.display().to_string(),
                    &w.to_string(),
                    &h.to_string(),
                    name,
                    &out.display().to_string(),
                ],
            );
            let pillow = image::open(&out).unwrap().to_rgb8();
            let ours = spotter_model::resize::resize_rgb(&image, w, h, filter);
            let diff = pillow
                .as_raw()
                .iter()
                .zip(&ours)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{name} {w}x{h}: {diff} values differ from Pillow");
        }
    }
}
