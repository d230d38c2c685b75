//! The image graph: letterboxed pixels in, proposals (box, objectness, level, stored vector) out.

use std::sync::Mutex;

use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor;

use crate::error::{ModelError, Result};
use crate::manifest::{Layout, ModelPackage};
use crate::postprocess::{select, ProposalParams};
use crate::preprocess::{Letterbox, Preprocessor};
use crate::runtime::{build_session, ActiveDevice, RuntimeOptions};
use crate::scoring::Scoring;

/// One kept proposal, with its box in original (displayed) image pixels.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    /// `x1, y1, x2, y2` in original image pixels.
    pub bbox: [f32; 4],
    /// Objectness probability.
    pub objectness: f32,
    /// Scoring level index.
    pub level: u32,
    /// The stored vector `[scale_l · e ; bias_l]` (`D + 1` floats).
    pub vector: Vec<f32>,
}

/// An image turned into graph input, with the letterbox needed to map boxes back.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `3 × H × W` floats in the graph's layout.
    pub tensor: Vec<f32>,
    /// Geometry of the letterbox.
    pub letterbox: Letterbox,
}

/// Raw image-graph outputs for a batch, before post-processing.
#[derive(Debug, Clone)]
pub struct RawOutputs {
    /// Images in the batch.
    pub batch: usize,
    /// Candidates per image.
    pub candidates: usize,
    /// `[B·N]` boxes in input pixels.
    pub boxes: Vec<[f32; 4]>,
    /// `[B·N]` objectness.
    pub objectness: Vec<f32>,
    /// `[B·N·D]` embeddings.
    pub embeddings: Vec<f32>,
    /// `[B·N]` level indices.
    pub levels: Vec<u32>,
}

/// A loaded image graph.
pub struct ImageTower {
    package: ModelPackage,
    session: Mutex<Session>,
    device: ActiveDevice,
    scoring: Scoring,
}

impl ImageTower {
    /// Loads the package's image graph on the requested device.
    pub fn load(package: &ModelPackage, options: &RuntimeOptions) -> Result<Self> {
        let (session, device) = build_session(&package.image_graph_path(), options)?;
        let tower = ImageTower {
            package: package.clone(),
            session: Mutex::new(session),
            device,
            scoring: Scoring::new(&package.manifest.scoring),
        };
        tower.check_signature()?;
        Ok(tower)
    }

    fn check_signature(&self) -> Result<()> {
        let m = &self.package.manifest.image;
        let session = self.lock()?;
        if !session.inputs().iter().any(|i| i.name() == m.input) {
            return Err(ModelError::GraphOutput {
                name: m.input.clone(),
                message: format!(
                    "the image graph has no input of that name (it has: {})",
                    session
                        .inputs()
                        .iter()
                        .map(|i| i.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let wanted = [
            Some(&m.outputs.boxes),
            Some(&m.outputs.objectness),
            Some(&m.outputs.embeddings),
            m.outputs.levels.as_ref(),
        ];
        for name in wanted.into_iter().flatten() {
            if !outputs.contains(&name.as_str()) {
                return Err(ModelError::GraphOutput {
                    name: name.clone(),
                    message: format!(
                        "missing from the image graph (it has: {})",
                        outputs.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session
            .lock()
            .map_err(|_| ModelError::Invalid("image session poisoned by an earlier panic".into()))
    }

    /// The device the graph runs on.
    pub fn device(&self) -> ActiveDevice {
        self.device
    }

    /// The package this tower belongs to.
    pub fn package(&self) -> &ModelPackage {
        &self.package
    }

    /// The scoring rule.
    pub fn scoring(&self) -> &Scoring {
        &self.scoring
    }

    /// The fixed batch size of the graph, if it has one.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.package.manifest.image.batch_size
    }

    /// A new preprocessor for this graph (one per thread).
    pub fn preprocessor(&self) -> Preprocessor {
        Preprocessor::new(&self.package.manifest.image)
    }

    /// Convenience: letterboxes one image with a fresh preprocessor.
    pub fn prepare(&self, image: &RgbImage) -> Result<PreparedImage> {
        let pre = self.preprocessor();
        let mut tensor = vec![0f32; pre.tensor_len()];
        let letterbox = pre.letterbox_into(image, &mut tensor)?;
        Ok(PreparedImage { tensor, letterbox })
    }

    /// Runs the graph on prepared images and post-processes each image's candidates.
    pub fn detect(
        &self,
        images: &[PreparedImage],
        params: &ProposalParams,
    ) -> Result<Vec<Vec<Proposal>>> {
        let per_image = self.package.manifest.image.input_size;
        let len = 3 * per_image[0] as usize * per_image[1] as usize;
        let chunk = self.fixed_batch().unwrap_or(images.len().max(1));
        let mut results = Vec::with_capacity(images.len());
        for group in images.chunks(chunk) {
            let mut input = Vec::with_capacity(len * chunk.max(group.len()));
            for image in group {
                input.extend_from_slice(&image.tensor);
            }
            let raw = self.run_raw(&mut input, group.len())?;
            for (b, image) in group.iter().enumerate() {
                results.push(self.proposals_of(&raw, b, &image.letterbox, params));
            }
        }
        Ok(results)
    }

    /// Turns one image's raw candidates into proposals.
    pub fn proposals_of(
        &self,
        raw: &RawOutputs,
        index: usize,
        letterbox: &Letterbox,
        params: &ProposalParams,
    ) -> Vec<Proposal> {
        let n = raw.candidates;
        let d = self.package.manifest.embedding_dim;
        let boxes = &raw.boxes[index * n..(index + 1) * n];
        let objectness = &raw.objectness[index * n..(index + 1) * n];
        select(boxes, objectness, params)
            .into_iter()
            .map(|i| {
                let level = raw.levels[index * n + i];
                let start = (index * n + i) * d;
                Proposal {
                    bbox: letterbox.to_original(boxes[i]),
                    objectness: objectness[i],
                    level,
                    vector: self
                        .scoring
                        .stored_vector(&raw.embeddings[start..start + d], level as usize),
                }
            })
            .collect()
    }

    /// Runs the graph on `batch` images packed in `input` (padded to the fixed batch when the
    /// graph has one) and returns the raw outputs of those `batch` images.
    pub fn run_raw(&self, input: &mut Vec<f32>, batch: usize) -> Result<RawOutputs> {
        let m = &self.package.manifest.image;
        let [h, w] = m.input_size;
        let per_image = 3 * h as usize * w as usize;
        if input.len() != per_image * batch {
            return Err(ModelError::Invalid(format!(
                "input has {} floats, expected {} for {batch} images",
                input.len(),
                per_image * batch
            )));
        }
        let run_batch = match self.fixed_batch() {
            Some(fixed) if batch > fixed => {
                return Err(ModelError::Invalid(format!(
                    "batch of {batch} exceeds the graph's fixed batch {fixed}"
                )))
            }
            Some(fixed) => fixed,
            None => batch,
        };
        input.resize(per_image * run_batch, 0.0);
        let shape: Vec<i64> = match m.layout {
            Layout::Nchw => vec![run_batch as i64, 3, h as i64, w as i64],
            Layout::Nhwc => vec![run_batch as i64, h as i64, w as i64, 3],
        };
        let tensor = Tensor::from_array((shape, std::mem::take(input)))
            .map_err(|e| ModelError::ort("building the image tensor", e))?;
        let mut session = self.lock()?;
        let outputs = session
            .run(ort::inputs![m.input.as_str() => tensor])
            .map_err(|e| ModelError::ort("running the image graph", e))?;

        let d = self.package.manifest.embedding_dim;
        let (boxes_shape, boxes) = extract_f32(&outputs, &m.outputs.boxes)?;
        let n = candidates_of(&m.outputs.boxes, boxes_shape, run_batch, Some(4))?;
        let (obj_shape, objectness) = extract_f32(&outputs, &m.outputs.objectness)?;
        if candidates_of(&m.outputs.objectness, obj_shape, run_batch, None)? != n
            || objectness.len() != run_batch * n
        {
            return Err(shape_error(
                &m.outputs.objectness,
                obj_shape,
                "[B,N] matching boxes",
            ));
        }
        let (emb_shape, embeddings) = extract_f32(&outputs, &m.outputs.embeddings)?;
        if candidates_of(&m.outputs.embeddings, emb_shape, run_batch, Some(d))? != n {
            return Err(shape_error(
                &m.outputs.embeddings,
                emb_shape,
                "[B,N,D] matching boxes",
            ));
        }
        let levels = match &m.outputs.levels {
            None => vec![0u32; batch * n],
            Some(name) => extract_levels(&outputs, name, run_batch * n)?[..batch * n].to_vec(),
        };
        let max_level = self.scoring.levels() as u32;
        if let Some(bad) = levels.iter().find(|&&l| l >= max_level) {
            return Err(ModelError::GraphOutput {
                name: m.outputs.levels.clone().unwrap_or_default(),
                message: format!("level {bad} but the manifest lists {max_level} scoring levels"),
            });
        }
        Ok(RawOutputs {
            batch,
            candidates: n,
            boxes: boxes[..batch * n * 4]
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            objectness: objectness[..batch * n].to_vec(),
            embeddings: embeddings[..batch * n * d].to_vec(),
            levels,
        })
    }
}

fn shape_error(name: &str, shape: &[i64], expected: &str) -> ModelError {
    ModelError::GraphOutput {
        name: name.to_string(),
        message: format!("shape {shape:?}, expected {expected}"),
    }
}

/// Checks `[B, N, last?]` (a trailing 1 is accepted when `last` is None) and returns N.
fn candidates_of(name: &str, shape: &[i64], batch: usize, last: Option<usize>) -> Result<usize> {
    let ok_batch = shape.first() == Some(&(batch as i64));
    let n = shape.get(1).copied().unwrap_or(-1);
    let ok_rest = match last {
        Some(last) => shape.len() == 3 && shape[2] == last as i64,
        None => shape.len() == 2 || (shape.len() == 3 && shape[2] == 1),
    };
    if !ok_batch || !ok_rest || n < 0 {
        let expected = match last {
            Some(last) => format!("[{batch}, N, {last}]"),
            None => format!("[{batch}, N]"),
        };
        return Err(shape_error(name, shape, &expected));
    }
    Ok(n as usize)
}

fn extract_f32<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    name: &str,
) -> Result<(&'a [i64], &'a [f32])> {
    let value = outputs.get(name).ok_or_else(|| ModelError::GraphOutput {
        name: name.to_string(),
        message: "not produced by the graph".into(),
    })?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ModelError::GraphOutput {
            name: name.to_string(),
            message: format!("expected a float32 tensor: {e}"),
        })?;
    Ok((shape, data))
}

fn extract_levels(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    expected: usize,
) -> Result<Vec<u32>> {
    let value = outputs.get(name).ok_or_else(|| ModelError::GraphOutput {
        name: name.to_string(),
        message: "not produced by the graph".into(),
    })?;
    let levels: Vec<u32> = if let Ok((_, data)) = value.try_extract_tensor::<i64>() {
        data.iter().map(|&v| v.max(0) as u32).collect()
    } else if let Ok((_, data)) = value.try_extract_tensor::<i32>() {
        data.iter().map(|&v| v.max(0) as u32).collect()
    } else if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
        data.iter().map(|&v| v.max(0.0).round() as u32).collect()
    } else {
        return Err(ModelError::GraphOutput {
            name: name.to_string(),
            message: "expected an int64, int32 or float32 tensor".into(),
        });
    };
    if levels.len() != expected {
        return Err(ModelError::GraphOutput {
            name: name.to_string(),
            message: format!("{} values, expected {expected}", levels.len()),
        });
    }
    Ok(levels)
}
