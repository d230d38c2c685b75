//! Finding and loading the ONNX Runtime shared library, and building sessions on a device.
//!
//! Spotter loads ONNX Runtime dynamically (the `ort` crate's `load-dynamic`), from the library that
//! `scripts/setup.sh` copies out of the pinned PyPI wheel into `.deps/onnxruntime/lib/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;

use crate::error::{ModelError, Result};

/// Environment variable naming the ONNX Runtime library file (or a folder holding it).
pub const ORT_LIB_ENV: &str = "SPOTTER_ORT_LIB";

/// Where the set-up script installs the library, relative to the repository root.
pub const BUNDLED_LIB_DIR: &str = ".deps/onnxruntime/lib";

/// Which execution provider to run graphs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when it works, else CPU (the log says which).
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA only; an error when CUDA is unavailable.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            other => Err(format!("unknown device '{other}' (use auto, cpu or cuda)")),
        }
    }
}

/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveDevice {
    /// CPU execution provider.
    Cpu,
    /// CUDA execution provider.
    Cuda,
}

impl std::fmt::Display for ActiveDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActiveDevice::Cpu => "cpu",
            ActiveDevice::Cuda => "cuda",
        })
    }
}

/// Options for building sessions (fastembed-style builder options).
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Execution provider choice.
    pub device: Device,
    /// Intra-op threads per session; `None` lets ONNX Runtime choose (all cores).
    pub intra_threads: Option<usize>,
    /// CUDA device ordinal.
    pub cuda_device_id: i32,
    /// Let ONNX Runtime's idle worker threads spin (lower latency for a lone process; steals CPU
    /// from decoding threads in a pipeline). Off by default.
    pub spin_threads: bool,
}

impl RuntimeOptions {
    /// Sets the device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
    /// Sets the intra-op thread count.
    pub fn with_intra_threads(mut self, threads: Option<usize>) -> Self {
        self.intra_threads = threads;
        self
    }
}

/// The loaded runtime: library path and the process-wide ONNX Runtime environment.
struct Runtime {
    library: PathBuf,
    environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Candidate library locations, in the order they are tried.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for var in [ORT_LIB_ENV, "ORT_DYLIB_PATH"] {
        if let Some(value) = std::env::var_os(var) {
            out.push(PathBuf::from(value));
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    // Crate source folder, for `cargo test` from any directory.
    roots.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    for root in roots {
        let dir = root.join(BUNDLED_LIB_DIR);
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// Picks the library file inside a folder (`libonnxruntime.so*`, `libonnxruntime*.dylib`, `onnxruntime.dll`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("libonnxruntime.so") || name == "onnxruntime.dll")
                || (name.starts_with("libonnxruntime") && name.ends_with(".dylib"))
        })
        .collect();
    // Prefer the longest (most versioned) name: libonnxruntime.so.1.31.1 over libonnxruntime.so.1.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

fn locate_library() -> std::result::Result<PathBuf, String> {
    let candidates = library_candidates();
    for candidate in &candidates {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
        if candidate.is_dir() {
            if let Some(lib) = library_in(candidate) {
                return Ok(lib);
            }
        }
    }
    Err(format!(
        "no libonnxruntime found; run scripts/setup.sh, or set {ORT_LIB_ENV} to the library file. Looked in: {}",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Loads ONNX Runtime once per process and returns the library path in use.
pub fn init_runtime() -> Result<PathBuf> {
    runtime().map(|r| r.library.clone())
}

fn runtime() -> Result<&'static Runtime> {
    RUNTIME
        .get_or_init(|| {
            let path = locate_library()?;
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
            // A self-hosted search engine sends nothing anywhere: ONNX Runtime's own telemetry
            // (on by default in Microsoft's builds, which setup.sh installs) is switched off.
            let env = builder
                .with_name("spotter")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
            tracing::debug!(library = %path.display(), "ONNX Runtime loaded");
            Ok(Runtime {
                library: path,
                environment: env,
            })
        })
        .as_ref()
        .map_err(|e| ModelError::Runtime(e.clone()))
}

fn base_builder(options: &RuntimeOptions) -> Result<ort::session::builder::SessionBuilder> {
    let mut builder = Session::builder(&runtime()?.environment)
        .map_err(|e| ModelError::ort("creating session", e))?;
    builder = builder
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .map_err(|e| ModelError::ort("setting optimisation level", e))?;
    if !options.spin_threads {
        builder = builder
            .with_config_entry("session.intra_op.allow_spinning", "0")
            .map_err(|e| ModelError::ort("disabling thread spinning", e))?
            .with_config_entry("session.inter_op.allow_spinning", "0")
            .map_err(|e| ModelError::ort("disabling thread spinning", e))?;
    }
    if let Some(threads) = options.intra_threads {
        builder = builder
            .with_intra_threads(threads.max(1))
            .map_err(|e| ModelError::ort("setting threads", e))?;
    }
    Ok(builder)
}

fn commit(mut builder: ort::session::builder::SessionBuilder, graph: &Path) -> Result<Session> {
    builder
        .commit_from_file(graph)
        .map_err(|e| ModelError::ort(format!("loading {}", graph.display()), e))
}

fn cuda_session(graph: &Path, options: &RuntimeOptions) -> Result<Session> {
    let cuda = ort::ep::CUDA::default()
        .with_device_id(options.cuda_device_id)
        .build()
        .error_on_failure();
    let builder = base_builder(options)?
        .with_execution_providers([cuda])
        .map_err(|e| ModelError::Device(format!("CUDA execution provider unavailable: {e}")))?;
    commit(builder, graph)
}

/// Builds a session for `graph` on the requested device and says which device it runs on.
pub fn build_session(graph: &Path, options: &RuntimeOptions) -> Result<(Session, ActiveDevice)> {
    match options.device {
        Device::Cpu => Ok((commit(base_builder(options)?, graph)?, ActiveDevice::Cpu)),
        Device::Cuda => Ok((cuda_session(graph, options)?, ActiveDevice::Cuda)),
        Device::Auto => match cuda_session(graph, options) {
            Ok(session) => {
                tracing::info!(graph = %graph.display(), "running on CUDA");
                Ok((session, ActiveDevice::Cuda))
            }
            Err(err) => {
                // Expected on machines without a GPU: say it at debug level (-v shows it); the
                // commands report the device they run on.
                tracing::debug!(graph = %graph.display(), reason = %err, "CUDA not available, running on CPU");
                Ok((commit(base_builder(options)?, graph)?, ActiveDevice::Cpu))
            }
        },
    }
}
