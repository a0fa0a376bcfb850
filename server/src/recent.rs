//! Recently used values kept in memory: bounded, and never older than a
//! staleness bound, so a replica that missed a write on another replica
//! serves its change within that bound. Writes through this process
//! invalidate at once.
//!
//! Two generations approximate LRU with O(1) work per operation: lookups
//! look in the current generation, then the previous one (promoting a hit);
//! when the current generation is full it becomes the previous one and the
//! oldest generation is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded, time-limited memo.
#[derive(Debug)]
pub struct Recent<K, V> {
    generations: Mutex<Generations<K, V>>,
    capacity: usize,
    max_age: Duration,
}

#[derive(Debug)]
struct Generations<K, V> {
    current: HashMap<K, (V, Instant)>,
    previous: HashMap<K, (V, Instant)>,
}

impl<K: Hash + Eq + Clone, V: Clone> Recent<K, V> {
    /// Holds up to about `capacity` values, each for at most `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            generations: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
            capacity: capacity.max(2),
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        self.generations
            .lock()
            .expect("the memo lock is never poisoned")
    }

    /// The value for `key`, if one younger than the bound is held.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut generations = self.lock();
        let fresh = |stored: &Instant| stored.elapsed() < self.max_age;
        if let Some((value, stored)) = generations.current.get(key) {
            return fresh(stored).then(|| value.clone());
        }
        let (value, stored) = generations.previous.remove(key)?;
        if !fresh(&stored) {
            return None;
        }
        self.insert_locked(&mut generations, key.clone(), value.clone(), stored);
        Some(value)
    }

    /// Remembers `value` for `key`.
    pub fn insert(&self, key: K, value: V) {
        let mut generations = self.lock();
        self.insert_locked(&mut generations, key, value, Instant::now());
    }

    fn insert_locked(&self, generations: &mut Generations<K, V>, key: K, value: V, at: Instant) {
        if generations.current.len() >= self.capacity / 2 {
            generations.previous = std::mem::take(&mut generations.current);
        }
        generations.current.insert(key, (value, at));
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &K) {
        let mut generations = self.lock();
        generations.current.remove(key);
        generations.previous.remove(key);
    }

    /// Forgets every key `forget` selects.
    pub fn remove_where(&self, forget: impl Fn(&K) -> bool) {
        let mut generations = self.lock();
        generations.current.retain(|key, _| !forget(key));
        generations.previous.retain(|key, _| !forget(key));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut generations = self.lock();
        generations.current.clear();
        generations.previous.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_is_used_and_holds_at_most_its_capacity() {
        let memo = Recent::new(4, Duration::from_secs(60));
        memo.insert(1, "one");
        memo.insert(2, "two");
        memo.insert(3, "three");
        // `1` is read, so it survives the generation change that `4` causes; `2` does not.
        assert_eq!(memo.get(&1), Some("one"));
        memo.insert(4, "four");
        assert_eq!(memo.get(&2), None);
        assert_eq!(memo.get(&1), Some("one"));
        for n in 5..100 {
            memo.insert(n, "more");
        }
        let generations = memo.lock();
        let held = generations.current.len() + generations.previous.len();
        assert!(held <= 4, "{held}");
    }

    #[test]
    fn values_expire_and_can_be_forgotten() {
        let memo = Recent::new(100, Duration::from_millis(20));
        memo.insert("a", 1);
        memo.insert("b", 2);
        memo.remove(&"a");
        assert_eq!(memo.get(&"a"), None);
        assert_eq!(memo.get(&"b"), Some(2));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(memo.get(&"b"), None, "older than the bound");
        memo.insert("c", 3);
        memo.insert("d", 4);
        memo.remove_where(|k| *k == "c");
        assert_eq!(memo.get(&"c"), None);
        memo.clear();
        assert_eq!(memo.get(&"d"), None);
    }
}
