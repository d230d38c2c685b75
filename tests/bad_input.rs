//! Bad input gets a clear error and loses nothing: every broken file of a generated corpus is
//! reported and skipped, the run finishes, everything else is indexed; EXIF orientation puts
//! boxes on the object as displayed.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use spotter_indexer::records::ImageStatus;
use spotter_indexer::{Index, IndexRequest, IndexSettings, Progress};
use spotter_model::{
    decode_file, Device, ImageTower, ModelPackage, ProposalParams, RuntimeOptions,
};

/// Deletes a file after the walk and before it is read: "a file deleted mid-run".
struct DeleteAfterWalk<'a>(&'a Path);
impl Progress for DeleteAfterWalk<'_> {
    fn planned(&self, _found: usize, _to_process: usize) {
        std::fs::remove_file(self.0).unwrap();
    }
}

#[test]
fn broken_files_are_reported_and_skipped_and_the_rest_is_indexed() {
    let root = scratch("bad-input");
    let corpus = root.join("corpus");
    run_python(
        "make_test_corpus.py",
        &["bad", &corpus.display().to_string()],
    );
    let manifest = read_json(&corpus.join("manifest.json"));
    let expect: HashMap<String, String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["expect"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Extra hazards: a symlink loop, a file that vanishes mid-run, an unreadable file.
    #[cfg(unix)]
    std::os::unix::fs::symlink(&corpus, corpus.join("good/loop")).unwrap();
    let doomed = corpus.join("doomed.png");
    std::fs::copy(corpus.join("tiny_1x1.png"), &doomed).unwrap();
    let locked = corpus.join("locked.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([9, 99, 199]))
        .save(&locked)
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    }

    let package = ModelPackage::open(package_dir("starter")).unwrap();
    let tower = ImageTower::load(
        &package,
        &RuntimeOptions::default().with_device(Device::Cpu),
    )
    .unwrap();
    let index =
        Index::open_for_model(&root.join("index"), &package, &IndexSettings::default()).unwrap();
    let mut request = IndexRequest::new(
        vec![corpus.clone()],
        ProposalParams::from(&package.manifest.proposals),
    );
    request.walk.follow_symlinks = true;
    request.decode_threads = 2;
    let report = spotter_indexer::run(&index, &tower, &request, &DeleteAfterWalk(&doomed)).unwrap();

    assert_eq!(report.vanished, 1, "{report:?}");
    assert!(
        report
            .walk_problems
            .iter()
            .any(|p| p.reason.contains("loop")),
        "{:?}",
        report.walk_problems
    );
    let failed: HashMap<String, String> = report
        .failed
        .iter()
        .map(|f| {
            (
                f.path.strip_prefix(&corpus).unwrap().display().to_string(),
                f.reason.clone(),
            )
        })
        .collect();
    let mut statuses: HashMap<String, ImageStatus> = HashMap::new();
    for image in index.images() {
        let (_, record) = image.unwrap();
        statuses.insert(record.rel_path.display(), record.status.clone());
    }
    for (name, want) in &expect {
        let status = statuses
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no record; report: {report:?}"));
        match want.as_str() {
            "indexed" => assert_eq!(status, &ImageStatus::Indexed, "{name}"),
            "failed" => {
                assert!(
                    matches!(status, ImageStatus::Failed(_)),
                    "{name} should fail, got {status:?}"
                );
                assert!(!failed[name].is_empty());
            }
            _ => {}
        }
    }
    assert!(
        failed["bomb.png"].contains("over the limit"),
        "{}",
        failed["bomb.png"]
    );
    assert!(
        failed["text.jpg"].contains("not a recognised image format"),
        "{}",
        failed["text.jpg"]
    );
    // Root reads mode-000 files; anyone else gets a reported permission error.
    match &statuses["locked.png"] {
        ImageStatus::Indexed => {}
        ImageStatus::Failed(reason) => assert!(reason.contains("ermission"), "{reason}"),
    }
    // Sizes are the displayed ones.
    let wide = index
        .image_by_path(0, &"wide_20000x300.png".into())
        .unwrap()
        .unwrap()
        .1;
    assert_eq!((wide.width, wide.height), (20000, 300));
    let good: Vec<_> = statuses.keys().filter(|k| k.starts_with("good/")).collect();
    assert!(good.len() >= 3, "{good:?}");
    // A second run does nothing: failures are remembered, not retried.
    let again =
        spotter_indexer::run(&index, &tower, &request, &spotter_indexer::NoProgress).unwrap();
    assert_eq!((again.indexed, again.failed.len()), (0, 0), "{again:?}");
}

fn iou(a: &[f32], b: &[f32]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn exif_rotated_photos_get_boxes_on_the_object_as_displayed() {
    let dir = scratch("exif");
    run_python("make_test_corpus.py", &["exif", &dir.display().to_string()]);
    let manifest = read_json(&dir.join("manifest.json"));
    let object: Vec<f32> = floats(&manifest["object_box"]);
    let package = ModelPackage::open(package_dir("starter")).unwrap();
    let tower = ImageTower::load(
        &package,
        &RuntimeOptions::default().with_device(Device::Cpu),
    )
    .unwrap();
    let params = ProposalParams::from(&package.manifest.proposals);
    let mut names = vec!["upright.jpg".to_string()];
    names.extend((2..=8).map(|n| format!("orientation_{n}.jpg")));
    for name in names {
        let image = decode_file(&dir.join(&name), Default::default()).unwrap();
        assert_eq!(
            (image.width(), image.height()),
            (900, 600),
            "{name}: displayed size"
        );
        let proposals = tower
            .detect(&[tower.prepare(&image).unwrap()], &params)
            .unwrap()
            .pop()
            .unwrap();
        let best = proposals
            .iter()
            .map(|p| iou(&p.bbox, &object))
            .fold(0f32, f32::max);
        assert!(
            best >= 0.8,
            "{name}: best IoU with the cat {best}; proposals {:?}",
            proposals.iter().map(|p| p.bbox).collect::<Vec<_>>()
        );
    }
}
