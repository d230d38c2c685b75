//! A small thread-safe least-recently-used cache (text embeddings, thumbnails).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

struct Entries<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

/// At most `capacity` entries; the least recently used one goes first.
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
                order: VecDeque::new(),
            }),
        }
    }

    /// The cached value, marked as recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut e = self.entries.lock().ok()?;
        let value = e.map.get(key)?.clone();
        if let Some(pos) = e.order.iter().position(|k| k == key) {
            e.order.remove(pos);
        }
        e.order.push_back(key.clone());
        Some(value)
    }

    /// Stores a value, evicting the least recently used entry when full.
    pub fn insert(&self, key: K, value: V) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        if e.map.insert(key.clone(), value).is_some() {
            return;
        }
        e.order.push_back(key);
        while e.map.len() > self.capacity {
            match e.order.pop_front() {
                Some(old) => {
                    e.map.remove(&old);
                }
                None => break,
            }
        }
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
    }
}
