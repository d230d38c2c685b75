//! The model contract: `model.json`, the manifest of a model package.
//!
//! See `docs/model-contract.md` for the format. This module is the only place in Spotter that
//! knows what a model looks like; everything else asks it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The manifest format version this engine reads.
pub const FORMAT_VERSION: u32 = 1;

/// The parsed `model.json` of a model package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (must equal [`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Short package name.
    pub name: String,
    /// Free text for `spotter models`.
    #[serde(default)]
    pub description: String,
    /// Licence of the weights.
    #[serde(default)]
    pub license: String,
    /// Size `D` of image and text embeddings.
    pub embedding_dim: usize,
    /// The image graph.
    pub image: ImageSpec,
    /// The text graph.
    pub text: TextSpec,
    /// Post-processing defaults.
    pub proposals: ProposalDefaults,
    /// How a proposal is scored against a text.
    pub scoring: ScoringSpec,
}

/// Tensor layout of the image input.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Layout {
    /// Batch, channels, height, width.
    #[serde(rename = "NCHW")]
    Nchw,
    /// Batch, height, width, channels.
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Channel order of the image input.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[serde(rename = "RGB")]
    Rgb,
    /// Blue, green, red.
    #[serde(rename = "BGR")]
    Bgr,
}

/// Resampling filter of the letterbox resize.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle) convolution, as Pillow's `BILINEAR`.
    Bilinear,
    /// Catmull-Rom bicubic, as Pillow's `BICUBIC`.
    CatmullRom,
    /// Lanczos with a=3, as Pillow's `LANCZOS`.
    Lanczos3,
}

/// How the image is padded to the input size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LetterboxSpec {
    /// Pad value in 0..=255, the same in every channel.
    pub pad_value: u8,
    /// Centre the image (true) or place it top-left (false).
    pub centered: bool,
}

/// Output tensor names of the image graph.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageOutputs {
    /// `[B,N,4]` boxes, xyxy in letterboxed input pixels.
    pub boxes: String,
    /// `[B,N]` objectness probabilities.
    pub objectness: String,
    /// `[B,N,D]` embeddings.
    pub embeddings: String,
    /// `[B,N]` scoring level of each candidate; `None` for single-level models.
    #[serde(default)]
    pub levels: Option<String>,
}

/// The image graph and its pixel pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Graph file, relative to the package folder.
    pub graph: String,
    /// Input tensor name.
    pub input: String,
    /// `[height, width]` of the input.
    pub input_size: [u32; 2],
    /// Fixed batch size, or `None` when the batch dimension is dynamic.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Tensor layout.
    pub layout: Layout,
    /// Channel order.
    pub channel_order: ChannelOrder,
    /// Multiplier applied to 0..255 pixel values before mean/std.
    pub scale: f32,
    /// Per-channel mean (graph channel order, scaled unit).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (graph channel order, scaled unit).
    pub std: [f32; 3],
    /// Letterbox padding.
    pub letterbox: LetterboxSpec,
    /// Resize filter.
    pub resize_filter: ResizeFilter,
    /// Output names.
    pub outputs: ImageOutputs,
    /// How the graph computes its objectness output (recorded by the exporter; informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectness: Option<ObjectnessSpec>,
}

/// The rule a WeDetect-Uni graph's objectness follows, fixed at export.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ObjectnessRule {
    /// The maximum over all learned prompts, used raw (WeDetect's `eval_recall.py`).
    MaxOverPrompts,
    /// Prompt 0, raw (`generate_proposal.py`, the reference deploy model).
    Prompt0,
    /// Prompt 0, L2-normalised (as training scores it).
    Prompt0Normalised,
}

/// `image.objectness` of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectnessSpec {
    /// The rule.
    pub rule: ObjectnessRule,
    /// Number of learned prompts in the checkpoint.
    pub prompts: usize,
    /// Norm of prompt 0 (training normalises it; the reference inference does not).
    pub prompt0_norm: f32,
}

/// The text graph and its tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Graph file, relative to the package folder.
    pub graph: String,
    /// Hugging Face `tokenizer.json`, relative to the package folder.
    pub tokenizer: String,
    /// Name of the token id input.
    pub input_ids: String,
    /// Name of the attention mask input.
    pub attention_mask: String,
    /// Name of the token type input, if the graph has one (filled with zeros).
    #[serde(default)]
    pub token_type_ids: Option<String>,
    /// Token id used for padding.
    pub pad_id: i64,
    /// Maximum tokens per text (longer texts are truncated).
    pub max_length: usize,
    /// Output tensor name (`[K,D]` or `[1,K,D]`, L2-normalised).
    pub output: String,
    /// Template a user query is put into before embedding; `{}` marks the query.
    #[serde(default = "default_template")]
    pub query_template: String,
}

fn default_template() -> String {
    "{}".to_string()
}

/// Defaults of the proposal post-processing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProposalDefaults {
    /// Minimum objectness probability.
    pub objectness_threshold: f32,
    /// Class-agnostic NMS IoU threshold.
    pub nms_iou: f32,
    /// Maximum proposals kept per image.
    pub max_per_image: usize,
}

/// Final non-linearity that turns a logit into the probability shown to users.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// The logit is the score.
    Identity,
}

/// Scale and bias of one scoring level (one pyramid level for WeDetect).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LevelScoring {
    /// Feature stride of the level (informative).
    #[serde(default)]
    pub stride: Option<u32>,
    /// Multiplier of the inner product (`exp(logit_scale)` for WeDetect).
    pub scale: f32,
    /// Added to the scaled inner product.
    pub bias: f32,
}

/// The scoring rule: `prob = activation(scale_l · <e, t̂> + bias_l)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoringSpec {
    /// Non-linearity.
    pub activation: Activation,
    /// One entry per level; candidates carry a level index into this list.
    pub levels: Vec<LevelScoring>,
    /// Default minimum probability for a hit to be shown.
    pub default_threshold: f32,
}

impl Manifest {
    /// Parses and validates a manifest from JSON text; `path` is only used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|message| ModelError::Manifest {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(manifest)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this Spotter reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.embedding_dim == 0 {
            return Err("embedding_dim must be positive".into());
        }
        let [h, w] = self.image.input_size;
        if h == 0 || w == 0 {
            return Err("image.input_size must be positive".into());
        }
        if self.image.batch_size == Some(0) {
            return Err("image.batch_size must be positive or null".into());
        }
        if self.image.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err("image.std must be finite and non-zero".into());
        }
        if self.scoring.levels.is_empty() {
            return Err("scoring.levels must list at least one level".into());
        }
        if self.scoring.levels.len() > 1 && self.image.outputs.levels.is_none() {
            return Err("scoring has several levels but image.outputs.levels is null".into());
        }
        if !(0.0..=1.0).contains(&self.proposals.nms_iou) {
            return Err("proposals.nms_iou must be in [0, 1]".into());
        }
        if self.proposals.max_per_image == 0 {
            return Err("proposals.max_per_image must be positive".into());
        }
        if self.text.max_length < 2 {
            return Err("text.max_length must be at least 2".into());
        }
        if !self.text.query_template.contains("{}") {
            return Err("text.query_template must contain {}".into());
        }
        Ok(())
    }
}

/// A model package on disk: its folder and parsed manifest.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    /// The package folder.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
}

/// Name of the manifest file inside a package folder.
pub const MANIFEST_FILE: &str = "model.json";

impl ModelPackage {
    /// Opens the package in `dir` (reads and validates `model.json`, checks the graph files exist).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::from_json(&text, &path)?;
        let package = ModelPackage { dir, manifest };
        for file in [
            package.image_graph_path(),
            package.text_graph_path(),
            package.tokenizer_path(),
        ] {
            if !file.is_file() {
                return Err(ModelError::Manifest {
                    path,
                    message: format!("{} is missing", file.display()),
                });
            }
        }
        Ok(package)
    }

    /// Resolves `name_or_path`: an existing folder, or a package name inside one of `search_dirs`.
    pub fn find(name_or_path: &str, search_dirs: &[PathBuf]) -> Result<Self> {
        let direct = Path::new(name_or_path);
        if direct.join(MANIFEST_FILE).is_file() {
            return Self::open(direct);
        }
        for dir in search_dirs {
            let candidate = dir.join(name_or_path);
            if candidate.join(MANIFEST_FILE).is_file() {
                return Self::open(candidate);
            }
        }
        Err(ModelError::PackageNotFound {
            name: name_or_path.to_string(),
            searched: search_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Lists the packages (folders with a `model.json`) directly inside `dir`, sorted by name.
    /// Packages that fail to open are returned as errors so callers can report them.
    pub fn list(dir: &Path) -> Vec<Result<Self>> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
        dirs.sort();
        dirs.into_iter().map(Self::open).collect()
    }

    /// Path of the image graph.
    pub fn image_graph_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.image.graph)
    }

    /// Path of the text graph.
    pub fn text_graph_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.text.graph)
    }

    /// Path of the tokenizer file.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.text.tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = include_str!("../tests/data/example_manifest.json");

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::from_json(EXAMPLE, Path::new("example")).unwrap();
        assert_eq!(m.image.input_size, [416, 416]);
        assert_eq!(m.image.channel_order, ChannelOrder::Bgr);
        assert_eq!(m.image.batch_size, None);
        assert_eq!(m.scoring.activation, Activation::Sigmoid);
        assert_eq!(m.text.query_template, "{}");
    }

    #[test]
    fn rejects_unknown_version_with_a_clear_message() {
        let text = EXAMPLE.replace("\"format_version\": 1", "\"format_version\": 7");
        let err = Manifest::from_json(&text, Path::new("m.json")).unwrap_err();
        assert!(
            err.to_string()
                .contains("format_version 7 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn rejects_multi_level_scoring_without_level_output() {
        let mut m = Manifest::from_json(EXAMPLE, Path::new("x")).unwrap();
        m.scoring.levels.push(m.scoring.levels[0]);
        let text = serde_json::to_string(&m).unwrap();
        let err = Manifest::from_json(&text, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("levels is null"), "{err}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let text = EXAMPLE.replacen("\"name\"", "\"nmae\": 1, \"name\"", 1);
        assert!(Manifest::from_json(&text, Path::new("x")).is_err());
    }
}
