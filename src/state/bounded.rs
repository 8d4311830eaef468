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
//! maps hash them with the identity function.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
    shards: Box<[Mutex<Shard<V>>]>,
    /// Entries a young generation may hold before it is rotated.
    max_young: usize,
    /// Heap bytes a young generation may hold before it is rotated.
    max_young_heap: usize,
    ttl_ms: u64,
    evictions: AtomicU64,
}

struct Shard<V> {
    young: HashMap<u64, V, BuildHasherDefault<IdentityHasher>>,
    old: HashMap<u64, V, BuildHasherDefault<IdentityHasher>>,
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
                Mutex::new(Shard {
                    // Sized for the budget up front: a table that grows rehashes every key
                    // on the request path, about 0.5 us a request while state builds up
                    // (BENCHMARKS.md). So memory is taken at start, as nginx takes its
                    // zones: with transparent huge pages it is resident at once.
                    young: HashMap::with_capacity_and_hasher(max_young, Default::default()),
                    old: HashMap::default(),
                    young_heap: 0,
                    old_heap: 0,
                    young_since_ms: 0,
                })
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

    /// Bytes one slot of the table costs: key, value and control byte.
    pub fn slot_bytes() -> usize {
        std::mem::size_of::<(u64, V)>() + 1
    }

    /// Runs `f` on the key's value (a default one when the key is new, with `true`).
    pub fn update<R>(&self, key: u64, now_ms: u64, f: impl FnOnce(&mut V, bool) -> R) -> R {
        let shard = &self.shards[(key >> 58) as usize % SHARDS];
        // A poisoned shard only means another request panicked mid-update; the data is
        // plain counters, so keep serving rather than propagate the panic.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if shard.young_since_ms == 0 {
            shard.young_since_ms = now_ms;
        }
        let expired = now_ms.saturating_sub(shard.young_since_ms) > self.ttl_ms;
        let full = shard.young.len() >= self.max_young || shard.young_heap > self.max_young_heap;
        if (expired || full) && !shard.young.contains_key(&key) {
            self.rotate(shard, now_ms);
        }
        let mut is_new = false;
        let value = match shard.young.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let v = match shard.old.remove(&key) {
                    Some(v) => {
                        let h = v.heap_bytes();
                        shard.old_heap -= h;
                        shard.young_heap += h;
                        v
                    }
                    None => {
                        is_new = true;
                        V::default()
                    }
                };
                e.insert(v)
            }
        };
        let before = value.heap_bytes();
        let out = f(value, is_new);
        shard.young_heap = shard.young_heap + value.heap_bytes() - before;
        out
    }

    /// Reads a key without creating or promoting it.
    pub fn peek<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let shard = self.shards[(key >> 58) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.young.get(&key).or_else(|| shard.old.get(&key)).map(f)
    }

    fn rotate(&self, shard: &mut Shard<V>, now_ms: u64) {
        self.evictions.fetch_add(shard.old.len() as u64, Ordering::Relaxed);
        shard.old = std::mem::replace(
            &mut shard.young,
            HashMap::with_capacity_and_hasher(self.max_young, Default::default()),
        );
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
            let s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let keys = (s.young.len() + s.old.len()) as u64;
            let heap = (s.young_heap + s.old_heap) as u64;
            stats.keys += keys;
            let slots = bucket_count(s.young.capacity()) + bucket_count(s.old.capacity());
            stats.bytes += slots as u64 * slot + heap;
            stats.entry_bytes += keys * slot + heap;
        }
        stats
    }

    /// The most memory the map takes (its layout's bytes).
    #[cfg(test)]
    pub fn max_bytes(&self) -> usize {
        SHARDS * 2 * (bucket_count(self.max_young) * Self::slot_bytes() + self.max_young_heap)
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

/// The capacity of a hash table of `buckets` buckets (hashbrown's: 7/8 of them, one
/// bucket less in tables under 8).
fn capacity_of(buckets: usize) -> usize {
    if buckets < 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// Buckets behind a hash table of the given capacity (the inverse of `capacity_of`).
fn bucket_count(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else if capacity < 7 {
        capacity + 1
    } else {
        (capacity * 8 / 7).next_power_of_two()
    }
}

/// Keys are keyed hashes already; hashing them again would only cost time. But the
/// shard is chosen by the key's top six bits, and the table's per-slot tag (hashbrown's
/// control byte) is the hash's top seven bits: fed unchanged, every key of a shard would
/// carry one of two tags, and a probe would compare about half of each group's keys
/// (one cache line each) instead of about one. Folding lower bits into the top restores
/// the tag's spread for the price of a shift and an xor; the bucket index (low bits) is
/// left as it was.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n ^ (n << 7);
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
    fn presized_tables_take_the_buckets_the_accounting_assumes() {
        for buckets in (2..20).map(|p| 1usize << p) {
            let cap = capacity_of(buckets);
            let table: HashMap<u64, [u8; 136]> = HashMap::with_capacity(cap);
            assert_eq!(table.capacity(), cap, "{buckets} buckets");
            assert_eq!(bucket_count(cap), buckets);
        }
    }

    #[test]
    fn keys_of_one_shard_spread_over_the_table_tags() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<IdentityHasher>::default();
        let mut tags = std::collections::HashSet::new();
        // Keys of one shard: the same top six bits.
        for i in 0..10_000u64 {
            let k = (key(i) & !(0x3F << 58)) | (5 << 58);
            tags.insert(hasher.hash_one(k) >> 57);
        }
        assert_eq!(tags.len(), 128);
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
