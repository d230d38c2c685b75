//! The vector index on a Milvus collection (cargo feature `milvus`), for archives past one
//! machine: N indexers write one collection, any number of query servers search it.
//!
//! Collection layout: `id` (INT64 primary key: the proposal id), `image` (INT64), `vector`
//! (FLOAT_VECTOR, the stored vector `[scale_l · e ; bias_l]`) and `hit` (VARCHAR: the
//! [`HitPayload`] as JSON, so a server shows a hit without the indexer's database). The vector
//! index is built on the inner-product metric, so Milvus's score is the model's logit `<q, v>`.
//!
//! Vectors go to one partition per scoring level (bias) and norm band (a factor √2), the
//! embedded engine's groups: Milvus builds one graph per segment and a segment holds one
//! partition, so every graph sees vectors of one bias and nearly one norm, where inner product
//! is a good neighbourhood. One graph over all levels and norms loses most true neighbours
//! (WeDetect-shaped vectors: recall@100 0.03, docs/ann-comparison.md). A search covers every
//! partition and Milvus merges them by score, which is the logit, so no re-ranking is needed.
//! Writes are upserts (a replayed batch replaces, never duplicates). Searches use the
//! configured consistency (Bounded by default: writes of the last few seconds may not be seen
//! yet); reconciliation reads with Strong consistency, so it always sees this machine's writes.
//! The SDK is async; this engine owns a small Tokio runtime and blocks on it.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use milvus::client::{Client, ClientBuilder};
use milvus::data::FieldColumn;
use milvus::index::{IndexParams, IndexType, MetricType};
use milvus::mutate::{DeleteOptions, UpsertOptions};
use milvus::options::CreateCollectionOptions;
use milvus::proto::common::ConsistencyLevel;
use milvus::query::{QueryOptions, SearchOptions};
use milvus::schema::{CollectionSchema, CollectionSchemaBuilder, FieldSchema};
use milvus::value::{Value, ValueVec};

use crate::backend::{Consistency, MilvusConfig, MilvusIndex};
use spotter_model::StoredVectorRef;

use crate::error::{IndexError, Result};
use crate::vectors::{
    band_of, HitPayload, Neighbour, PayloadStore, RemoteHit, VectorEntry, VectorIndex,
};

/// Milvus's largest `topk` / `limit` (and `offset + limit` for queries).
pub const MAX_TOPK: usize = 16384;
/// Largest `ef` Milvus accepts for HNSW.
const MAX_EF: usize = 32768;
/// Rows per insert or fetch request (a 769-d batch is ~6 MB, well under gRPC's limit).
const BATCH: usize = 2048;
/// Longest JSON payload per proposal.
const MAX_PAYLOAD: i32 = 8192;
/// How long a cached count of the collection is trusted (other machines write too).
const COUNT_TTL: Duration = Duration::from_secs(5);

/// What a collection made by Spotter says about itself (its description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollectionIdentity {
    /// Model package name.
    pub model: String,
    /// BLAKE3 of the manifest (see `index::manifest_hash`).
    pub manifest_hash: String,
    /// Stored vector length.
    pub dim: usize,
}

/// A Milvus collection as a [`VectorIndex`].
pub struct MilvusVectors {
    runtime: tokio::runtime::Runtime,
    client: Client,
    config: MilvusConfig,
    schema: CollectionSchema,
    dim: usize,
    /// Proposal ids `ids()` reports (this machine's shard).
    scope: Range<u64>,
    count: Mutex<Option<(Instant, usize)>>,
    /// Partitions known to exist.
    partitions: Mutex<HashSet<String>>,
}

/// The partition of a stored vector: its bias (scoring level) and norm band.
fn partition_of(vector: &[f32]) -> String {
    let (norm, bias) = StoredVectorRef::new(vector).map_or((0.0, 0.0), |v| (v.norm(), v.bias()));
    // Partition names are letters, digits and underscores: bias bits in hex, band offset to ≥ 0.
    format!("b{:08x}_n{}", bias.to_bits(), band_of(norm) + 1000)
}

fn milvus_error(config: &MilvusConfig, what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Vectors(format!(
        "Milvus at {}:{} ({what}): {e}",
        config.host, config.port
    ))
}

impl MilvusVectors {
    /// Connects to the collection of `config`, creating it (with its vector index) when
    /// missing, and checks that it holds vectors of this model. `scope` is the range of proposal
    /// ids this machine owns (reported by `ids()`).
    pub fn open(
        config: &MilvusConfig,
        identity: &CollectionIdentity,
        scope: Range<u64>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spotter-milvus")
            .enable_all()
            .build()
            .map_err(|e| IndexError::Vectors(format!("starting the Milvus client runtime: {e}")))?;
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    ClientBuilder::new(config.endpoint())
                        .timeout(Duration::from_secs(600))
                        .build(),
                )
                .await
            })
            .map_err(|_| milvus_error(config, "connect", "no answer in 20 s"))?
            .map_err(|e| {
                milvus_error(
                    config,
                    "connect",
                    format!(
                        "{e} (is the server running? for a local one: scripts/milvus.sh start)"
                    ),
                )
            })?;
        let schema = collection_schema(&config.collection, identity)?;
        let engine = MilvusVectors {
            runtime,
            client,
            config: config.clone(),
            schema,
            dim: identity.dim,
            scope,
            count: Mutex::new(None),
            partitions: Mutex::new(HashSet::new()),
        };
        engine.prepare(identity)?;
        Ok(engine)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> IndexError {
        milvus_error(&self.config, what, e)
    }

    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Creates the collection and its index if needed, checks its identity, loads it. Several
    /// machines may start at once: the one that loses the race to create uses the winner's.
    fn prepare(&self, identity: &CollectionIdentity) -> Result<()> {
        let name = self.config.collection.as_str();
        let exists = self
            .block(self.client.has_collection(name))
            .map_err(|e| self.err("has_collection", e))?;
        let mut created = false;
        if !exists {
            tracing::info!(collection = %name, "creating the Milvus collection");
            let attempt = self.block(self.client.create_collection(
                self.schema.clone(),
                Some(CreateCollectionOptions::with_consistency_level(
                    ConsistencyLevel::Bounded,
                )),
            ));
            match attempt {
                Ok(()) => created = true,
                Err(e) => {
                    let now = self
                        .block(self.client.has_collection(name))
                        .map_err(|e| self.err("has_collection", e))?;
                    if !now {
                        return Err(self.err("create_collection", e));
                    }
                }
            }
        }
        if !created {
            self.check_identity(identity)?;
        }
        // Another machine may be creating the index right now: wait for it a little, then make
        // it ourselves (its creator may have died between the two steps).
        let mut waited = Duration::ZERO;
        while !created && !self.has_vector_index() && waited < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(500));
            waited += Duration::from_millis(500);
        }
        if !self.has_vector_index() {
            if let Err(e) = self.create_vector_index() {
                if !self.has_vector_index() {
                    return Err(e);
                }
            }
        }
        self.block(self.client.load_collection(name, None))
            .map_err(|e| self.err("load_collection", e))?;
        Ok(())
    }

    fn check_identity(&self, identity: &CollectionIdentity) -> Result<()> {
        let name = &self.config.collection;
        let described = self
            .block(self.client.describe_collection(name.as_str()))
            .map_err(|e| self.err("describe_collection", e))?;
        let found: Option<CollectionIdentity> =
            serde_json::from_str(&described.schema.description).ok();
        match found {
            Some(found) if found == *identity => Ok(()),
            Some(found) => Err(IndexError::Incompatible(format!(
                "Milvus collection '{name}' holds vectors of model '{}' (manifest {}, {} values), not '{}' (manifest {}, {} values): use another collection",
                found.model,
                &found.manifest_hash[..12.min(found.manifest_hash.len())],
                found.dim,
                identity.model,
                &identity.manifest_hash[..12.min(identity.manifest_hash.len())],
                identity.dim
            ))),
            None => Err(IndexError::Incompatible(format!(
                "Milvus collection '{name}' was not made by Spotter: use another collection name"
            ))),
        }
    }

    fn has_vector_index(&self) -> bool {
        self.block(
            self.client
                .describe_index(self.config.collection.as_str(), "vector"),
        )
        .is_ok_and(|infos| !infos.is_empty())
    }

    fn create_vector_index(&self) -> Result<()> {
        let (kind, params) = match self.config.index {
            MilvusIndex::Hnsw { m, ef_construction } => (
                IndexType::HNSW,
                vec![
                    ("M".to_string(), m.to_string()),
                    ("efConstruction".to_string(), ef_construction.to_string()),
                ],
            ),
            MilvusIndex::IvfFlat { nlist } => (
                IndexType::IvfFlat,
                vec![("nlist".to_string(), nlist.to_string())],
            ),
            MilvusIndex::IvfSq8 { nlist } => (
                IndexType::IvfSQ8,
                vec![("nlist".to_string(), nlist.to_string())],
            ),
            MilvusIndex::Flat => (IndexType::Flat, Vec::new()),
        };
        let index = IndexParams::new(
            "vector_index".to_string(),
            kind,
            MetricType::IP,
            params.into_iter().collect(),
        );
        self.block(
            self.client
                .create_index(self.config.collection.as_str(), "vector", index),
        )
        .map_err(|e| self.err("create_index", e))
    }

    fn columns(&self, items: &[VectorEntry]) -> Result<Vec<FieldColumn>> {
        let mut ids = Vec::with_capacity(items.len());
        let mut images = Vec::with_capacity(items.len());
        let mut hits = Vec::with_capacity(items.len());
        let mut vectors = Vec::with_capacity(items.len() * self.dim);
        for e in items {
            if e.vector.len() != self.dim {
                return Err(IndexError::Vectors(format!(
                    "vector {} has {} values, the collection holds {}",
                    e.id,
                    e.vector.len(),
                    self.dim
                )));
            }
            let payload = e.payload.as_ref().ok_or_else(|| {
                IndexError::Vectors(format!("proposal {} has no payload for Milvus", e.id))
            })?;
            ids.push(e.id as i64);
            images.push(payload.image as i64);
            let json = serde_json::to_string(payload)
                .map_err(|err| IndexError::Vectors(format!("payload of {}: {err}", e.id)))?;
            if json.len() > MAX_PAYLOAD as usize {
                return Err(IndexError::Vectors(format!(
                    "the path of proposal {} is too long for Milvus ({} bytes of payload, at most {MAX_PAYLOAD})",
                    e.id,
                    json.len()
                )));
            }
            hits.push(json);
            vectors.extend_from_slice(&e.vector);
        }
        let field = |name: &str| {
            self.schema
                .get_field(name)
                .ok_or_else(|| IndexError::Vectors(format!("schema has no field {name}")))
        };
        Ok(vec![
            FieldColumn::new(field("id")?, ids),
            FieldColumn::new(field("image")?, images),
            FieldColumn::new(field("hit")?, hits),
            FieldColumn::new(field("vector")?, vectors),
        ])
    }

    fn upsert(&self, items: &[VectorEntry]) -> Result<()> {
        let mut by_partition: BTreeMap<String, Vec<VectorEntry>> = BTreeMap::new();
        for e in items {
            by_partition
                .entry(partition_of(&e.vector))
                .or_default()
                .push(e.clone());
        }
        for (partition, entries) in by_partition {
            self.ensure_partition(&partition)?;
            for chunk in entries.chunks(BATCH) {
                let columns = self.columns(chunk)?;
                self.block(self.client.upsert(
                    self.config.collection.as_str(),
                    columns,
                    UpsertOptions::new().partition_name(partition.as_str()),
                ))
                .map_err(|e| self.err("upsert", e))?;
            }
        }
        self.forget_count();
        Ok(())
    }

    /// Creates a partition unless it exists (another machine may be creating it too).
    fn ensure_partition(&self, name: &str) -> Result<()> {
        if self
            .partitions
            .lock()
            .is_ok_and(|known| known.contains(name))
        {
            return Ok(());
        }
        let collection = self.config.collection.clone();
        let exists = |this: &Self| {
            this.block(
                this.client
                    .has_partition(collection.clone(), name.to_string()),
            )
            .map_err(|e| this.err("has_partition", e))
        };
        if !exists(self)? {
            if let Err(e) = self.block(
                self.client
                    .create_partition(collection.clone(), name.to_string()),
            ) {
                if !exists(self)? {
                    return Err(self.err("create_partition", e));
                }
            }
            // A partition made after the collection was loaded is searched once it is loaded.
            self.block(self.client.load_collection(collection.as_str(), None))
                .map_err(|e| self.err("load_collection", e))?;
        }
        if let Ok(mut known) = self.partitions.lock() {
            known.insert(name.to_string());
        }
        Ok(())
    }

    fn forget_count(&self) {
        if let Ok(mut count) = self.count.lock() {
            *count = None;
        }
    }

    /// The configured consistency level, as the SDK takes it.
    fn level(&self) -> i32 {
        let level = match self.config.consistency {
            Consistency::Strong => ConsistencyLevel::Strong,
            Consistency::Bounded => ConsistencyLevel::Bounded,
            Consistency::Eventually => ConsistencyLevel::Eventually,
        };
        level as i32
    }

    fn query(
        &self,
        expr: &str,
        fields: &[&str],
        limit: usize,
        level: i32,
    ) -> Result<Vec<FieldColumn>> {
        let options = QueryOptions::new()
            .consistency_level(level)
            .limit(limit as i64)
            .output_fields(fields.iter().map(|f| f.to_string()).collect());
        self.block(
            self.client
                .query(self.config.collection.as_str(), expr, &options),
        )
        .map_err(|e| self.err("query", e))
    }

    /// Ids in `[start, end)`, splitting the range until each part answers under the limit.
    fn ids_in(&self, range: Range<u64>, out: &mut HashSet<u64>) -> Result<()> {
        let expr = format!("id >= {} and id < {}", range.start, range.end);
        let columns = self.query(&expr, &["id"], MAX_TOPK, ConsistencyLevel::Strong as i32)?;
        let ids = longs(&columns, "id")?;
        if ids.len() < MAX_TOPK || range.end - range.start <= MAX_TOPK as u64 {
            out.extend(ids.into_iter().map(|i| i as u64));
            return Ok(());
        }
        let middle = range.start + (range.end - range.start) / 2;
        self.ids_in(range.start..middle, out)?;
        self.ids_in(middle..range.end, out)
    }
}

fn collection_schema(name: &str, identity: &CollectionIdentity) -> Result<CollectionSchema> {
    let description = serde_json::to_string(identity)
        .map_err(|e| IndexError::Vectors(format!("collection description: {e}")))?;
    CollectionSchemaBuilder::new(name, &description)
        .add_field(FieldSchema::new_primary_int64("id", "proposal id", false))
        .add_field(FieldSchema::new_int64("image", "image id"))
        .add_field(FieldSchema::new_varchar(
            "hit",
            "payload (JSON)",
            MAX_PAYLOAD,
        ))
        .add_field(FieldSchema::new_float_vector(
            "vector",
            "stored vector [scale*e ; bias]",
            identity.dim as i64,
        ))
        .build()
        .map_err(|e| IndexError::Vectors(format!("collection schema: {e}")))
}

fn column<'a>(columns: &'a [FieldColumn], name: &str) -> Result<&'a FieldColumn> {
    columns
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| IndexError::Vectors(format!("Milvus answer has no field {name}")))
}

fn longs(columns: &[FieldColumn], name: &str) -> Result<Vec<i64>> {
    match &column(columns, name)?.value {
        ValueVec::Long(v) => Ok(v.clone()),
        other => Err(IndexError::Vectors(format!(
            "Milvus field {name}: expected INT64 values, got {other:?}"
        ))),
    }
}

fn strings<'a>(columns: &'a [FieldColumn], name: &str) -> Result<&'a [String]> {
    match &column(columns, name)?.value {
        ValueVec::String(v) => Ok(v),
        _ => Err(IndexError::Vectors(format!(
            "Milvus field {name}: expected strings"
        ))),
    }
}

fn parse_payload(json: &str) -> Result<HitPayload> {
    serde_json::from_str(json).map_err(|e| IndexError::Corrupt {
        what: "Milvus payload".into(),
        message: e.to_string(),
    })
}

impl VectorIndex for MilvusVectors {
    fn insert(&self, items: &[VectorEntry]) -> Result<()> {
        self.upsert(items)
    }

    fn remove(&self, ids: &[u64]) -> Result<()> {
        for chunk in ids.chunks(BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            self.block(self.client.delete(
                self.config.collection.as_str(),
                &DeleteOptions::with_ids(ValueVec::Long(ids)),
            ))
            .map_err(|e| self.err("delete", e))?;
        }
        self.forget_count();
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbour>> {
        if query.len() != self.dim {
            return Err(IndexError::Vectors(format!(
                "query has {} values, the collection holds {}",
                query.len(),
                self.dim
            )));
        }
        let k = k.min(MAX_TOPK);
        if k == 0 {
            return Ok(Vec::new());
        }
        let params = match self.config.index {
            MilvusIndex::Hnsw { .. } => format!("{{\"ef\": {}}}", ef.max(k).min(MAX_EF)),
            MilvusIndex::IvfFlat { nlist } | MilvusIndex::IvfSq8 { nlist } => {
                format!("{{\"nprobe\": {}}}", (ef / 4).clamp(8, nlist))
            }
            MilvusIndex::Flat => "{}".to_string(),
        };
        let options = SearchOptions::new()
            .consistency_level(self.level())
            .limit(k)
            .add_param("anns_field", "vector")
            .add_param("metric_type", "IP")
            .add_param("params", params);
        let results = self
            .block(self.client.search(
                self.config.collection.as_str(),
                vec![Value::from(query.to_vec())],
                Some(options),
            ))
            .map_err(|e| self.err("search", e))?;
        let mut out = Vec::with_capacity(k);
        for result in results {
            for (id, score) in result.id.iter().zip(&result.score) {
                if let Value::Long(id) = id {
                    out.push(Neighbour {
                        id: *id as u64,
                        logit: *score,
                    });
                }
            }
        }
        out.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn len(&self) -> Result<usize> {
        if let Ok(count) = self.count.lock() {
            if let Some((at, n)) = *count {
                if at.elapsed() < COUNT_TTL {
                    return Ok(n);
                }
            }
        }
        let options = QueryOptions::new().consistency_level(self.level());
        let n = self
            .block(self.client.count_with_expr(
                self.config.collection.as_str(),
                "id >= 0",
                &options,
            ))
            .map_err(|e| self.err("count", e))?;
        let n = n.max(0) as usize;
        if let Ok(mut count) = self.count.lock() {
            *count = Some((Instant::now(), n));
        }
        Ok(n)
    }

    fn tombstones(&self) -> Result<usize> {
        Ok(0)
    }

    fn ids(&self) -> Result<HashSet<u64>> {
        let mut out = HashSet::new();
        self.ids_in(self.scope.clone(), &mut out)?;
        Ok(out)
    }

    fn persist(&self) -> Result<()> {
        self.block(self.client.flush(self.config.collection.as_str()))
            .map_err(|e| self.err("flush", e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        let index = match self.config.index {
            MilvusIndex::Hnsw { m, ef_construction } => {
                format!("HNSW M={m} efConstruction={ef_construction}")
            }
            MilvusIndex::IvfFlat { nlist } => format!("IVF_FLAT nlist={nlist}"),
            MilvusIndex::IvfSq8 { nlist } => format!("IVF_SQ8 nlist={nlist}"),
            MilvusIndex::Flat => "FLAT".to_string(),
        };
        format!(
            "Milvus collection '{}' at {}:{} ({index}, inner product, {:?} consistency)",
            self.config.collection, self.config.host, self.config.port, self.config.consistency
        )
    }

    fn wait_until_indexed(&self, timeout: Duration) -> Result<()> {
        // The v1 API only tells "finished", which is also what a segment not yet handed to the
        // index builder looks like; the v2 API reports indexed and total rows.
        use milvus::v2::prelude::*;
        let started = Instant::now();
        let client = self
            .block(ClientV2::new(
                &ConnectConfig::new().uri(self.config.endpoint()),
            ))
            .map_err(|e| self.err("connect (v2)", e))?;
        let expected = self.len()?;
        loop {
            let request = milvus::v2::request::index::DescribeIndexRequest::builder()
                .collection_name(self.config.collection.as_str())
                .field_name("vector")
                .build()
                .map_err(|e| self.err("describe_index", e))?;
            let response = self
                .block(client.describe_index(request))
                .map_err(|e| self.err("describe_index", e))?;
            let ready = response.indexes().iter().all(|i| {
                i.get_pending_rows() == 0
                    && i.get_indexed_rows() >= i.get_total_rows()
                    && i.get_total_rows() as usize >= expected
            });
            if ready {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(self.err(
                    "describe_index",
                    format!(
                        "the vector index is not built after {} s",
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl PayloadStore for MilvusVectors {
    fn update_payloads(&self, items: &[VectorEntry]) -> Result<()> {
        self.upsert(items)
    }

    fn fetch(&self, ids: &[u64]) -> Result<Vec<RemoteHit>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let list: Vec<String> = chunk.iter().map(|i| i.to_string()).collect();
            let expr = format!("id in [{}]", list.join(","));
            let columns = self.query(&expr, &["id", "vector", "hit"], chunk.len(), self.level())?;
            let found = longs(&columns, "id")?;
            let hits = strings(&columns, "hit")?;
            let ValueVec::Float(vectors) = &column(&columns, "vector")?.value else {
                return Err(IndexError::Vectors(
                    "Milvus field vector: expected floats".into(),
                ));
            };
            if hits.len() != found.len() || vectors.len() != found.len() * self.dim {
                return Err(IndexError::Vectors(
                    "Milvus answered columns of different lengths".into(),
                ));
            }
            for (row, id) in found.iter().enumerate() {
                out.push(RemoteHit {
                    id: *id as u64,
                    vector: vectors[row * self.dim..(row + 1) * self.dim].to_vec(),
                    payload: parse_payload(&hits[row])?,
                });
            }
        }
        Ok(out)
    }

    fn image_payload(&self, image: u64) -> Result<Option<HitPayload>> {
        let columns = self.query(&format!("image == {image}"), &["hit"], 1, self.level())?;
        match strings(&columns, "hit")?.first() {
            Some(json) => Ok(Some(parse_payload(json)?)),
            None => Ok(None),
        }
    }
}
