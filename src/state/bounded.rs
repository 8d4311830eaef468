//! A sharded map with a hard memory budget, for state keyed by attacker-controlled ids.
//!
//! Each shard holds two generations. New and touched keys live in the young one; when
//! it reaches its share of the budget, or is older than the TTL, the old generation is
//! dropped whole (its keys are the evictions) and the young one becomes old. A key
//! touched within the last generation survives (it is moved back to young on access),
//! so this approximates LRU with O(1) work and no per-entry links, and an attacker
//! rotating millions of new ids only ever pushes out keys as cold as a generation.
//!
//! Keys are already keyed hashes of the identities (see `state::KeyHasher`), so the
//! tables ([`Table`]) place them by their low bits, unhashed, and a request can
//! [`prefetch`](BoundedMap::prefetch) its keys' slots before it takes any lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::table::{capacity_of, Hint, Table};

const SHARDS: usize = 64;

/// Values report their heap use so that the budget counts it too.
pub trait HeapSize {
    /// Whether values may own heap memory; those maps keep part of the budget for it.
    const HAS_HEAP: bool = false;

    fn heap_bytes(&self) -> usize {
        0
    }
}

impl HeapSize for u64 {}

/// The map's own accounting: what is tracked and what was let go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    pub keys: u64,
    /// Allocated: both generations' slots, and the heap their values own.
    pub bytes: u64,
    /// What the tracked keys themselves take: a slot each, and their heap.
    pub entry_bytes: u64,
    pub evictions: u64,
}

pub struct BoundedMap<V> {
    shards: Box<[Locked<V>]>,
    /// Entries a young generation may hold before it is rotated.
    max_young: usize,
    /// Heap bytes a young generation may hold before it is rotated.
    max_young_heap: usize,
    ttl_ms: u64,
    evictions: AtomicU64,
}

struct Locked<V> {
    shard: Mutex<Shard<V>>,
    /// Where the shard's young table is, to prefetch without the lock.
    hint: Hint,
}

struct Shard<V> {
    young: Table<V>,
    old: Table<V>,
    young_heap: usize,
    old_heap: usize,
    young_since_ms: u64,
}

/// How a map spends its budget: buckets per shard and generation, and the heap a young
/// generation may hold before it is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    buckets: usize,
    max_young_heap: usize,
    /// The heap kept when the map is given more buckets than its budget's (`doubled`).
    heap_floor: usize,
    slot: usize,
}

impl Layout {
    /// The most the map can take: both generations of every shard, slots and heap.
    pub fn bytes(&self) -> usize {
        SHARDS * 2 * (self.buckets * self.slot + self.max_young_heap)
    }

    /// Only the quarter of heap room its values need (none for values without heap):
    /// the rest of the share is left for other maps.
    pub fn trimmed(self) -> Layout {
        Layout {
            max_young_heap: self.heap_floor,
            ..self
        }
    }

    /// Twice the buckets, with the trimmed heap room.
    pub fn doubled(self) -> Layout {
        Layout {
            buckets: self.buckets * 2,
            ..self.trimmed()
        }
    }
}

impl<V: Default + HeapSize> BoundedMap<V> {
    /// A map that keeps its slots and heap under `budget_bytes`, and forgets keys not
    /// touched for between one and two `ttl_ms`.
    pub fn new(budget_bytes: usize, ttl_ms: u64) -> Self {
        Self::with_layout(Self::layout(budget_bytes), ttl_ms)
    }

    /// The layout `new` gives a budget. Half the shard's budget per generation, of which
    /// a quarter is kept for heap when values have any; the slot count is rounded down
    /// to a power of two so that the table never regrows past it (see `capacity_of`),
    /// and what the rounding leaves is heap room too.
    pub fn layout(budget_bytes: usize) -> Layout {
        let slot = Self::slot_bytes();
        let per_generation = budget_bytes / SHARDS / 2;
        let heap_floor = if V::HAS_HEAP { per_generation / 4 } else { 0 };
        let buckets = prev_power_of_two(((per_generation - heap_floor) / slot).max(4));
        Layout {
            buckets,
            max_young_heap: per_generation.saturating_sub(buckets * slot).max(heap_floor),
            heap_floor,
            slot,
        }
    }

    pub fn with_layout(layout: Layout, ttl_ms: u64) -> Self {
        let max_young = capacity_of(layout.buckets);
        let shards = (0..SHARDS)
            .map(|_| {
                // Sized for the budget up front: a table that grew would rehash every key
                // on the request path, about 0.5 us a request while state builds up
                // (BENCHMARKS.md). So memory is reserved at start, as nginx reserves its
                // zones, and made resident as keys arrive.
                let young = Table::with_slots(layout.buckets);
                Locked {
                    hint: Hint::of(&young),
                    shard: Mutex::new(Shard {
                        young,
                        old: Table::default(),
                        young_heap: 0,
                        old_heap: 0,
                        young_since_ms: 0,
                    }),
                }
            })
            .collect();
        BoundedMap {
            shards,
            max_young,
            max_young_heap: layout.max_young_heap,
            ttl_ms,
            evictions: AtomicU64::new(0),
        }
    }

    /// Bytes one slot of the table costs: key and value.
    pub fn slot_bytes() -> usize {
        std::mem::size_of::<u64>() + std::mem::size_of::<V>()
    }

    fn shard_of(key: u64) -> usize {
        (key >> 58) as usize % SHARDS
    }

    /// Starts loading the memory a lookup of `key` reads first, so that the cache
    /// misses of a request's several keys overlap instead of following one another.
    /// Takes no lock and changes nothing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        self.shards[Self::shard_of(key)].hint.prefetch::<V>(key);
    }

    /// Runs `f` on the key's value (a default one when the key is new, with `true`).
    pub fn update<R>(&self, key: u64, now_ms: u64, f: impl FnOnce(&mut V, bool) -> R) -> R {
        let index = Self::shard_of(key);
        let shard = &self.shards[index].shard;
        // A poisoned shard only means another request panicked mid-update; the data is
        // plain counters, so keep serving rather than propagate the panic.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if shard.young_since_ms == 0 {
            shard.young_since_ms = now_ms;
        }
        let expired = now_ms.saturating_sub(shard.young_since_ms) > self.ttl_ms;
        let full = shard.young.len() >= self.max_young || shard.young_heap > self.max_young_heap;
        if (expired || full) && !shard.young.contains_key(key) {
            self.rotate(index, shard, now_ms);
        }
        let mut is_new = false;
        let Shard {
            young,
            old,
            young_heap,
            old_heap,
            ..
        } = shard;
        let found = young.get_or_insert_with(key, || match old.remove(key) {
            Some(v) => {
                let h = v.heap_bytes();
                *old_heap -= h;
                *young_heap += h;
                v
            }
            None => {
                is_new = true;
                V::default()
            }
        });
        // The young table is never full here (it was rotated above); were it, the update
        // would go to a value of its own and be lost, rather than fail the request.
        let mut spare = None;
        let value = match found {
            Some(value) => value,
            None => spare.insert(V::default()),
        };
        let before = value.heap_bytes();
        let out = f(value, is_new);
        *young_heap = *young_heap + value.heap_bytes() - before;
        out
    }

    /// Reads a key without creating or promoting it.
    pub fn peek<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let shard = self.shards[Self::shard_of(key)]
            .shard
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.young.get(key).or_else(|| shard.old.get(key)).map(f)
    }

    fn rotate(&self, index: usize, shard: &mut Shard<V>, now_ms: u64) {
        self.evictions.fetch_add(shard.old.len() as u64, Ordering::Relaxed);
        let young = Table::with_slots(shard.young.slots());
        self.shards[index].hint.set(&young);
        shard.old = std::mem::replace(&mut shard.young, young);
        shard.old_heap = std::mem::take(&mut shard.young_heap);
        shard.young_since_ms = now_ms;
    }

    /// Tracked keys, bytes allocated and used by them, and evictions so far.
    pub fn stats(&self) -> MapStats {
        let slot = Self::slot_bytes() as u64;
        let mut stats = MapStats {
            evictions: self.evictions.load(Ordering::Relaxed),
            ..MapStats::default()
        };
        for shard in self.shards.iter() {
            let s = shard.shard.lock().unwrap_or_else(|e| e.into_inner());
            let keys = (s.young.len() + s.old.len()) as u64;
            let heap = (s.young_heap + s.old_heap) as u64;
            stats.keys += keys;
            let slots = s.young.slots() + s.old.slots();
            stats.bytes += slots as u64 * slot + heap;
            stats.entry_bytes += keys * slot + heap;
        }
        stats
    }

    /// The most memory the map takes (its layout's bytes).
    #[cfg(test)]
    pub fn max_bytes(&self) -> usize {
        let slots = self.shards[0]
            .shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .young
            .slots();
        SHARDS * 2 * (slots * Self::slot_bytes() + self.max_young_heap)
    }

    /// Most keys the map can hold at once.
    pub fn capacity(&self) -> usize {
        self.max_young * 2 * SHARDS
    }
}

fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u64 {
        // Spread like the real keyed hashes, so that every shard is used.
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn keeps_values_and_reports_new_keys() {
        let map: BoundedMap<u64> = BoundedMap::new(1 << 20, 60_000);
        assert!(map.update(key(1), 1, |v, new| {
            *v += 5;
            new
        }));
        assert!(!map.update(key(1), 2, |v, new| {
            *v += 1;
            new
        }));
        assert_eq!(map.peek(key(1), |v| *v), Some(6));
        assert_eq!(map.peek(key(2), |v| *v), None);
        assert_eq!(map.stats().keys, 1);
    }

    #[test]
    fn a_flood_of_new_keys_stays_within_the_budget() {
        let budget = 4 << 20;
        let map: BoundedMap<u64> = BoundedMap::new(budget, 86_400_000);
        for i in 0..1_000_000 {
            map.update(key(i), 1_000, |v, _| *v += 1);
        }
        let stats = map.stats();
        assert!(stats.bytes <= budget as u64, "{stats:?}");
        assert!(stats.keys <= map.capacity() as u64, "{stats:?}");
        assert!(stats.evictions >= 1_000_000 - map.capacity() as u64, "{stats:?}");
        assert_eq!(stats.keys + stats.evictions, 1_000_000);
    }

    #[test]
    fn hot_keys_survive_a_flood() {
        let map: BoundedMap<u64> = BoundedMap::new(1 << 20, 86_400_000);
        for i in 0..200_000u64 {
            map.update(key(i + 1_000_000), 1_000, |v, _| *v += 1);
            if i % 100 == 0 {
                map.update(key(7), 1_000, |v, _| *v += 1);
            }
        }
        assert_eq!(map.peek(key(7), |v| *v), Some(2_000));
    }

    #[test]
    fn prefetching_changes_nothing() {
        // A value of several cache lines, each of them prefetched.
        #[derive(Default)]
        struct Wide([u64; 20]);
        impl HeapSize for Wide {}
        let map: BoundedMap<Wide> = BoundedMap::new(1 << 20, 60_000);
        map.prefetch(key(3));
        map.update(key(3), 1, |v, _| v.0[19] = 4);
        for i in 0..100_000 {
            map.prefetch(key(i));
        }
        assert_eq!(map.peek(key(3), |v| v.0[19]), Some(4));
        assert_eq!(map.stats().keys, 1);
    }

    #[test]
    fn keys_idle_past_two_ttls_are_forgotten() {
        let map: BoundedMap<u64> = BoundedMap::new(1 << 20, 1_000);
        map.update(key(1), 1_000, |v, _| *v = 1);
        // Each shard rotates on its own; touch every shard after the TTL, twice.
        for round in 1..=2u64 {
            for i in 0..5_000 {
                map.update(key(10 + i + round * 10_000), 1_000 + round * 1_500, |_, _| ());
            }
        }
        assert_eq!(map.peek(key(1), |v| *v), None);
    }
}
