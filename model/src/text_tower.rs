//! The text graph: texts → tokenizer → token ids → one normalised embedding per text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{ModelError, Result};
use crate::manifest::{ModelPackage, TextSpec};
use crate::runtime::{build_session, ActiveDevice, RuntimeOptions};

/// Texts embedded per graph call (bounds memory for long lists).
const TEXT_BATCH: usize = 64;

/// A loaded text graph and its tokenizer.
pub struct TextTower {
    spec: TextSpec,
    dim: usize,
    tokenizer: Tokenizer,
    /// Sessions used round-robin, so concurrent queries do not all wait for one.
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    device: ActiveDevice,
}

/// Token ids and mask of a batch, padded to its longest text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Texts in the batch.
    pub rows: usize,
    /// Padded length.
    pub len: usize,
    /// `rows × len` token ids.
    pub ids: Vec<i64>,
    /// `rows × len` attention mask (1 = token, 0 = padding).
    pub mask: Vec<i64>,
}

impl TextTower {
    /// Loads the package's tokenizer and text graph (one session).
    pub fn load(package: &ModelPackage, options: &RuntimeOptions) -> Result<Self> {
        Self::load_pool(package, options, 1)
    }

    /// Loads the tokenizer and `sessions` copies of the text graph (for servers answering
    /// several queries at once; each session costs the graph's size in memory).
    pub fn load_pool(
        package: &ModelPackage,
        options: &RuntimeOptions,
        sessions: usize,
    ) -> Result<Self> {
        let spec = package.manifest.text.clone();
        let path = package.tokenizer_path();
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_length,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(format!("setting truncation: {e}")))?;
        let mut pool = Vec::with_capacity(sessions.max(1));
        let mut device = ActiveDevice::Cpu;
        for _ in 0..sessions.max(1) {
            let (session, active) = build_session(&package.text_graph_path(), options)?;
            device = active;
            pool.push(Mutex::new(session));
        }
        Ok(TextTower {
            spec,
            dim: package.manifest.embedding_dim,
            tokenizer,
            sessions: pool,
            next: AtomicUsize::new(0),
            device,
        })
    }

    /// The device the graph runs on.
    pub fn device(&self) -> ActiveDevice {
        self.device
    }

    /// Puts a user query into the manifest's query template.
    pub fn apply_template(&self, query: &str) -> String {
        self.spec.query_template.replacen("{}", query, 1)
    }

    /// Tokenises texts as typed (no template), padded to the longest.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![self.spec.pad_id; texts.len() * len];
        let mut mask = vec![0i64; texts.len() * len];
        for (row, encoding) in encodings.iter().enumerate() {
            for (col, &id) in encoding.get_ids().iter().enumerate() {
                ids[row * len + col] = i64::from(id);
                mask[row * len + col] = 1;
            }
        }
        Ok(TokenBatch {
            rows: texts.len(),
            len,
            ids,
            mask,
        })
    }

    /// Embeds texts as typed (no template): one L2-normalised `D`-vector per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TEXT_BATCH) {
            out.extend(self.embed_batch(&self.tokenize(chunk)?)?);
        }
        Ok(out)
    }

    /// Embeds user queries: each is put into the query template first.
    pub fn embed_queries(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = queries.iter().map(|q| self.apply_template(q)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.embed(&refs)
    }

    fn embed_batch(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let shape = vec![batch.rows as i64, batch.len as i64];
        let tensor = |data: Vec<i64>| {
            Tensor::from_array((shape.clone(), data))
                .map_err(|e| ModelError::ort("building a token tensor", e))
        };
        let mut inputs = ort::inputs![
            self.spec.input_ids.as_str() => tensor(batch.ids.clone())?,
            self.spec.attention_mask.as_str() => tensor(batch.mask.clone())?,
        ];
        if let Some(name) = &self.spec.token_type_ids {
            inputs.push((
                name.clone().into(),
                tensor(vec![0; batch.ids.len()])?.into(),
            ));
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut session = self.sessions[slot]
            .lock()
            .map_err(|_| ModelError::Invalid("text session poisoned by an earlier panic".into()))?;
        let outputs = session
            .run(inputs)
            .map_err(|e| ModelError::ort("running the text graph", e))?;
        let name = &self.spec.output;
        let value = outputs.get(name).ok_or_else(|| ModelError::GraphOutput {
            name: name.clone(),
            message: "not produced by the text graph".into(),
        })?;
        let (shape, data) =
            value
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::GraphOutput {
                    name: name.clone(),
                    message: format!("expected a float32 tensor: {e}"),
                })?;
        let rows_ok = match shape.len() {
            2 => shape[0] == batch.rows as i64 && shape[1] == self.dim as i64,
            3 => shape[0] == 1 && shape[1] == batch.rows as i64 && shape[2] == self.dim as i64,
            _ => false,
        };
        if !rows_ok {
            return Err(ModelError::GraphOutput {
                name: name.clone(),
                message: format!(
                    "shape {:?}, expected [{}, {}] or [1, {}, {}]",
                    &shape[..],
                    batch.rows,
                    self.dim,
                    batch.rows,
                    self.dim
                ),
            });
        }
        Ok(data.chunks_exact(self.dim).map(<[f32]>::to_vec).collect())
    }
}
