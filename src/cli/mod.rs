//! The `spotter` command line: argument definitions and dispatch.

pub mod config;
pub mod detect;
pub mod eval;
pub mod index;
pub mod models;
pub mod search;
pub mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use spotter_model::{Device, ModelPackage, RuntimeOptions};

use crate::error::Result;

/// Spotter finds objects in image archives by text.
///
/// Typical use: `spotter index ~/Pictures --index ~/.spotter` indexes an archive (run it again
/// after changes: only new and changed files are read); `spotter search "red car" --index
/// ~/.spotter` searches it; `spotter serve --index ~/.spotter` opens the search page on
/// http://127.0.0.1:7878/. `spotter detect photo.jpg --text "cat,car"` tries a model on one
/// image; `spotter models` lists installed model packages.
#[derive(Debug, Parser)]
#[command(name = "spotter", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Settings file (TOML: a section per command, keys are long flag names; flags on the
    /// command line win). Default: $SPOTTER_CONFIG, else ~/.config/spotter/config.toml when it
    /// exists. See the README, "Configuration".
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Spotter's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Index image archives (incremental: unchanged files are not read again).
    ///
    /// Walks each ARCHIVE, runs the model on new and changed images, stores every kept
    /// proposal in the index folder, recognises moved and copied files by content and removes
    /// deleted ones. Interrupt it at any time: the next run continues where it stopped.
    Index(index::IndexArgs),
    /// Search an index by text or by an example image and print the best matching objects.
    ///
    /// Query language: `cat`; `"red car"`; `cat, dog` (either); `cat -dog` (drop objects that
    /// look more like a dog); `2:cat, dog` (rank cat matches higher); `cat & sofa` (photos
    /// holding both, each by its own box). By example: `--image photo.jpg [--box x1,y1,x2,y2]`.
    /// Narrow with `--after`, `--before`, `--camera`, `--path`; `--sort time` for newest first.
    Search(search::SearchArgs),
    /// Serve the search page and the HTTP API over an index.
    ///
    /// Open http://127.0.0.1:7878/ after starting it. With --archive, the archives are indexed
    /// in the background while the server answers.
    Serve(serve::ServeArgs),
    /// Show what an index holds.
    Stats(index::StatsArgs),
    /// Rebuild the vector index without deleted entries.
    Compact(index::CompactArgs),
    /// Measure retrieval quality against COCO-format labels (WeDetect's metric, plus AP,
    /// box top-1 and proposal recall).
    ///
    /// For each category name (as a text query) an image is retrieved when its best proposal's
    /// probability exceeds --threshold; ground truth = images with at least one box of the
    /// category, crowd regions included unless --crowd exclude; per-category
    /// precision/recall/F1, macro-averaged, and a threshold sweep. AP ranks images by that best
    /// probability (tied images are one step, as scikit-learn's average_precision_score). Box top-1: the best proposal of a positive image
    /// overlaps a true box at IoU >= 0.5. AR@100/@300: class-agnostic recall of true boxes by
    /// the most objective proposals, matched one-to-one, averaged over IoU 0.50:0.05:0.95, as
    /// WeDetect's eval_recalls and (coco_ar_*) as pycocotools' COCOeval with useCats=0. Index
    /// with --proposal-profile reference-eval for AR@300. --proposals evaluates a COCO results
    /// file instead of an index.
    Eval(eval::EvalArgs),
    /// Detect and score objects in one image against texts (the model demo).
    ///
    /// Every proposal of the image is scored against each comma-separated text with the
    /// model's own rule; proposals whose best score passes --threshold are printed (and drawn
    /// with --out).
    Detect(detect::DetectArgs),
    /// List installed model packages and their manifests.
    Models(models::ModelsArgs),
}

impl Command {
    /// True for commands that run the HTTP server.
    pub fn is_server(&self) -> bool {
        matches!(self, Command::Serve(_))
    }
}

/// Options shared by every command that loads a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model package: a name inside a models folder, or a path to a package folder.
    #[arg(long, default_value = "starter", env = "SPOTTER_MODEL")]
    pub model: String,
    /// Extra folder to search for model packages (default: exported_onnx/ and $SPOTTER_MODELS).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Execution provider: auto (CUDA if it works, else CPU), cpu or cuda.
    #[arg(long, default_value = "auto", env = "SPOTTER_DEVICE")]
    pub device: Device,
    /// ONNX Runtime threads per graph (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Folders searched for packages, the explicit one first.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.models_dir.iter().cloned().collect();
        dirs.extend(spotter_model::default_model_dirs());
        dirs
    }

    /// Opens the selected package.
    pub fn package(&self) -> Result<ModelPackage> {
        Ok(ModelPackage::find(&self.model, &self.search_dirs())?)
    }

    /// Runtime options from the flags.
    pub fn runtime(&self) -> RuntimeOptions {
        RuntimeOptions::default()
            .with_device(self.device)
            .with_intra_threads(self.threads)
    }
}

/// Named sets of proposal post-processing parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProposalProfile {
    /// The model package's defaults (for WeDetect-Uni: objectness ≥ 0.1, NMS 0.7, 100 kept, as
    /// the reference `infer_anything.py`).
    Manifest,
    /// What WeDetect's evaluations keep (`eval_recall.py`, `eval_retrieval/extract_embedding.py`):
    /// no objectness threshold, NMS 0.7, 300 per image; makes AR@300 meaningful, costs ~3× the
    /// storage of the default.
    ReferenceEval,
}

/// Overrides of the manifest's proposal post-processing.
#[derive(Debug, Clone, Args)]
pub struct ProposalArgs {
    /// Starting set of parameters, which the three options below override.
    #[arg(long, value_enum, default_value_t = ProposalProfile::Manifest)]
    pub proposal_profile: ProposalProfile,
    /// Minimum objectness of a proposal (default: the manifest's).
    #[arg(long)]
    pub objectness: Option<f32>,
    /// Class-agnostic NMS IoU (default: the manifest's).
    #[arg(long)]
    pub nms_iou: Option<f32>,
    /// Maximum proposals per image (default: the manifest's).
    #[arg(long)]
    pub max_proposals: Option<usize>,
}

impl ProposalArgs {
    /// The manifest's defaults with these overrides applied.
    pub fn params(&self, package: &ModelPackage) -> spotter_model::ProposalParams {
        let mut params = spotter_model::ProposalParams::from(&package.manifest.proposals);
        if self.proposal_profile == ProposalProfile::ReferenceEval {
            params.objectness_threshold = 0.0;
            params.nms_iou = 0.7;
            params.max_per_image = 300;
        }
        if let Some(t) = self.objectness {
            params.objectness_threshold = t;
        }
        if let Some(iou) = self.nms_iou {
            params.nms_iou = iou;
        }
        if let Some(k) = self.max_proposals {
            params.max_per_image = k;
        }
        params
    }
}

/// Prints a value as pretty JSON on stdout (the `--json` output of the commands).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        crate::error::SpotterError::Usage(format!("cannot print the result as JSON: {e}"))
    })?;
    println!("{text}");
    Ok(())
}

/// Text safe to print on a terminal: control characters (line breaks, escape sequences from
/// file names) are escaped as Rust does (`\n`, `\u{1b}`); other Unicode is kept.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path safe to print on a terminal: bytes that are not UTF-8 as `\xNN`, control characters
/// escaped (see [`terminal_safe`]).
pub fn terminal_path(path: &std::path::Path) -> String {
    terminal_safe(&spotter_indexer::relpath::display_path(path))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Detect(args) => detect::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Index(args) => index::run(&args),
        Command::Search(args) => search::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Stats(args) => index::stats(&args),
        Command::Compact(args) => index::compact(&args),
        Command::Eval(args) => eval::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_text_escapes_control_characters_and_keeps_unicode() {
        assert_eq!(
            terminal_safe("a\nb\x1b[31m été.jpg"),
            "a\\nb\\u{1b}[31m été.jpg"
        );
        assert_eq!(terminal_safe("plain/été 1.jpg"), "plain/été 1.jpg");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/a/\xff\t.jpg"));
            assert_eq!(terminal_path(path), "/a/\\xff\\t.jpg");
        }
    }
}
