//! A small thread-safe least-recently-used cache (text embeddings, thumbnails).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

struct Entries<K, V> {
    /// Value and the tick of its last use.
    map: HashMap<K, (V, u64)>,
    tick: u64,
}

/// At most `capacity` entries; the least recently used one goes first. A hit costs one hash
/// lookup; an insert into a full cache scans for the oldest entry (inserts follow misses, which
/// cost far more than the scan).
pub struct Lru<K, V> {
    capacity: usize,
    entries: Mutex<Entries<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Lru<K, V> {
    /// An empty cache.
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                tick: 0,
            }),
        }
    }

    /// The cached value, marked as recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = &mut *guard;
        e.tick += 1;
        let (value, used) = e.map.get_mut(key)?;
        *used = e.tick;
        Some(value.clone())
    }

    /// Stores a value (replacing an older one), evicting the least recently used entry when full.
    pub fn insert(&self, key: K, value: V) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = &mut *guard;
        e.tick += 1;
        if !e.map.contains_key(&key) && e.map.len() >= self.capacity {
            let oldest = e
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(old) = oldest {
                e.map.remove(&old);
            }
        }
        e.map.insert(key, (value, e.tick));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get(&"a"), Some(1));
        lru.insert("c", 3);
        assert_eq!(lru.get(&"b"), None);
        assert_eq!((lru.get(&"a"), lru.get(&"c")), (Some(1), Some(3)));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn replacing_a_key_keeps_the_others() {
        let lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        lru.insert("a", 10);
        assert_eq!((lru.get(&"a"), lru.get(&"b")), (Some(10), Some(2)));
        lru.insert("c", 3); // "a" was used before "b" was read last
        assert_eq!((lru.get(&"a"), lru.get(&"b")), (None, Some(2)));
    }
}
