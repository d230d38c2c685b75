//! Query vectors by concept text: an LRU cache in front of the text tower, with single-flight —
//! when many requests ask for the same uncached text at once, one runs the text tower and the
//! others wait for its answer instead of each computing it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::error::Result;
use crate::lru::Lru;

/// A query vector shared between requests.
pub type QueryVector = Arc<Vec<f32>>;

/// The answer of one text-tower run, shared with the requests that waited for it (`None` when
/// it failed: each waiter then runs the text tower itself, to report its own error).
type Flight = Arc<OnceLock<Option<QueryVector>>>;

/// How the cache has been used since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TextCacheStats {
    /// Texts held.
    pub entries: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that waited for the same text being computed by another request.
    pub shared: u64,
    /// Text-tower runs.
    pub computed: u64,
}

/// LRU cache of query vectors with single-flight computation of misses.
pub struct TextCache {
    lru: Lru<String, QueryVector>,
    in_flight: Mutex<HashMap<String, Flight>>,
    hits: AtomicU64,
    shared: AtomicU64,
    computed: AtomicU64,
}

impl TextCache {
    /// An empty cache of at most `capacity` texts.
    pub fn new(capacity: usize) -> Self {
        TextCache {
            lru: Lru::new(capacity),
            in_flight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            computed: AtomicU64::new(0),
        }
    }

    /// The vector of `text` and whether it came from the cache; on a miss `compute` runs at most
    /// once however many callers ask for `text` at the same time (they all wait for it).
    pub fn get_or_compute<F>(&self, text: &str, compute: F) -> Result<(QueryVector, bool)>
    where
        F: FnOnce() -> Result<Vec<f32>>,
    {
        let key = text.to_string();
        if let Some(v) = self.lru.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((v, true));
        }
        let flight: Flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let mut compute = Some(compute);
        let mut own_error = None;
        let answer = flight
            .get_or_init(|| {
                let run = compute.take()?;
                self.computed.fetch_add(1, Ordering::Relaxed);
                match run() {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        own_error = Some(e);
                        None
                    }
                }
            })
            .clone();
        if let Some(v) = &answer {
            // Cache first, then end the flight: a request arriving in between finds one of them.
            self.lru.insert(key.clone(), v.clone());
        }
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                in_flight.remove(&key);
            }
        }
        match (answer, own_error, compute) {
            (Some(v), _, waited) => {
                if waited.is_some() {
                    self.shared.fetch_add(1, Ordering::Relaxed);
                }
                Ok((v, false))
            }
            (None, Some(e), _) => Err(e),
            (None, None, Some(run)) => {
                // The shared run failed: try once more for this caller, uncached.
                self.computed.fetch_add(1, Ordering::Relaxed);
                run().map(|v| (Arc::new(v), false))
            }
            (None, None, None) => unreachable!("a failed run stores its error"),
        }
    }

    /// Usage counters.
    pub fn stats(&self) -> TextCacheStats {
        TextCacheStats {
            entries: self.lru.len(),
            hits: self.hits.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            computed: self.computed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SpotterError;
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn concurrent_misses_of_one_text_compute_it_once() {
        let cache = TextCache::new(16);
        let runs = AtomicU64::new(0);
        let barrier = Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    let (v, hit) = cache
                        .get_or_compute("a red car", || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(200));
                            Ok(vec![1.0, 2.0])
                        })
                        .unwrap();
                    assert_eq!((v.as_slice(), hit), (&[1.0, 2.0][..], false));
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.computed, stats.shared, stats.entries), (1, 7, 1));
        let (_, hit) = cache
            .get_or_compute("a red car", || panic!("must be cached"))
            .unwrap();
        assert!(hit);
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn a_failed_run_is_not_cached_and_each_caller_sees_an_error() {
        let cache = TextCache::new(16);
        let barrier = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    let result = cache.get_or_compute("broken", || {
                        std::thread::sleep(Duration::from_millis(100));
                        Err(SpotterError::Usage("text tower failed".into()))
                    });
                    assert!(result.is_err());
                });
            }
        });
        assert_eq!(cache.stats().entries, 0);
        let (v, hit) = cache.get_or_compute("broken", || Ok(vec![3.0])).unwrap();
        assert_eq!((v.as_slice(), hit), (&[3.0][..], false));
    }

    #[test]
    fn different_texts_do_not_wait_for_each_other() {
        let cache = TextCache::new(16);
        let runs = AtomicU64::new(0);
        std::thread::scope(|s| {
            for text in ["cat", "dog", "car"] {
                let (cache, runs) = (&cache, &runs);
                s.spawn(move || {
                    cache
                        .get_or_compute(text, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok(vec![text.len() as f32])
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(cache.stats().entries, 3);
    }
}
