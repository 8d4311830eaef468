//! The hash table under each shard generation of a [`BoundedMap`](super::bounded::BoundedMap):
//! open addressing with linear probing, a fixed power-of-two number of slots, keys in one
//! array and values in another.
//!
//! Why not hashbrown: it hides where a key's slot is, so a request cannot prefetch the
//! slots of its identities before it reads them. Each lookup then waits for its own cache
//! misses (control bytes, then the entry), one lookup after another, since the shard lock
//! between them orders memory. Here a key's home slot is `key & mask`, known before any
//! lock is taken, so [`Hint::prefetch`] can start those misses for all of a request's
//! keys at once. Keys are keyed hashes already (uniform in every bit), so the home slot
//! needs no further hashing.
//!
//! The table never grows: the map rotates a generation before it is full, and inserting
//! into a full table fails instead of probing forever. Removal shifts the following
//! entries back (no tombstones), so probe runs stay as short as the load allows.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Marks an empty slot. A key equal to it is stored as [`EMPTY_STANDIN`]: two keys in
/// 2^64 share a slot, far below the keyed hash's own collision rate over the key space.
const EMPTY: u64 = 0;
const EMPTY_STANDIN: u64 = 1;

pub struct Table<V> {
    keys: Box<[u64]>,
    /// `values[i]` is initialised exactly when `keys[i] != EMPTY`.
    values: Box<[MaybeUninit<V>]>,
    len: usize,
}

/// The entries a table of `slots` slots may hold: 7/8 of them (one slot fewer in tables
/// under 8), so that a probe always meets an empty slot and runs stay short.
pub fn capacity_of(slots: usize) -> usize {
    if slots < 8 {
        slots.saturating_sub(1)
    } else {
        slots / 8 * 7
    }
}

fn stored(key: u64) -> u64 {
    if key == EMPTY {
        EMPTY_STANDIN
    } else {
        key
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            keys: Box::new([]),
            values: Box::new([]),
            len: 0,
        }
    }
}

impl<V> Table<V> {
    /// A table of `slots` slots (a power of two). Its memory is zeroed by the allocator,
    /// so pages are only made resident as keys land on them.
    pub fn with_slots(slots: usize) -> Self {
        assert!(
            slots.is_power_of_two(),
            "table slots must be a power of two, not {slots}"
        );
        Table {
            keys: vec![EMPTY; slots].into_boxed_slice(),
            values: Box::new_uninit_slice(slots),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn slots(&self) -> usize {
        self.keys.len()
    }

    /// The slot holding `key` (`Ok`) or the empty slot where it would go (`Err`);
    /// `Err(None)` when the table has no slots.
    fn find(&self, key: u64) -> Result<usize, Option<usize>> {
        let mask = self.keys.len().wrapping_sub(1);
        if self.keys.is_empty() {
            return Err(None);
        }
        let key = stored(key);
        let mut i = key as usize & mask;
        // Ends: `len <= capacity_of(slots) < slots` leaves an empty slot on every run.
        loop {
            match self.keys[i] {
                k if k == key => return Ok(i),
                EMPTY => return Err(Some(i)),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn contains_key(&self, key: u64) -> bool {
        self.find(key).is_ok()
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        let i = self.find(key).ok()?;
        // SAFETY: slot `i` holds a key, so its value is initialised.
        Some(unsafe { self.values[i].assume_init_ref() })
    }

    /// The key's value, inserting `make()` first when the key is absent: `None` when it
    /// is absent and the table is full (`make` is then not called).
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> Option<&mut V> {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(Some(i)) if self.len < capacity_of(self.keys.len()) => {
                // The value first: were `make` to panic, no key may mark the slot as
                // holding one (a poisoned shard is still used).
                let value = make();
                self.values[i].write(value);
                self.keys[i] = stored(key);
                self.len += 1;
                i
            }
            Err(_) => return None,
        };
        // SAFETY: slot `i` holds a key (found, or just written with its value).
        Some(unsafe { self.values[i].assume_init_mut() })
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let mut hole = self.find(key).ok()?;
        // SAFETY: slot `hole` holds a key; its value is moved out and the slot is then
        // either refilled by a shifted entry or marked empty below.
        let value = unsafe { self.values[hole].assume_init_read() };
        self.len -= 1;
        // Backward shift: pull each later entry of the run into the hole unless its home
        // slot lies cyclically after the hole (moving it would put it before its home).
        let mask = self.keys.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let k = self.keys[j];
            if k == EMPTY {
                break;
            }
            let home = k as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.keys[hole] = k;
                // SAFETY: `j` holds an initialised value and `hole` none (moved out);
                // after the copy `j` becomes the hole, so the value has one owner.
                unsafe {
                    let v = self.values[j].assume_init_read();
                    self.values[hole].write(v);
                }
                hole = j;
            }
        }
        self.keys[hole] = EMPTY;
        Some(value)
    }
}

impl<V> Drop for Table<V> {
    fn drop(&mut self) {
        if std::mem::needs_drop::<V>() && self.len > 0 {
            for (k, v) in self.keys.iter().zip(self.values.iter_mut()) {
                if *k != EMPTY {
                    // SAFETY: occupied slots hold initialised values, dropped once here.
                    unsafe { v.assume_init_drop() };
                }
            }
        }
    }
}

/// Where a table's arrays are, read and written without the table's lock, for
/// prefetching. The owner sets it under the lock whenever it replaces the table; a torn
/// or stale read only points a prefetch at the wrong line, as the addresses are never
/// dereferenced.
pub struct Hint {
    keys: AtomicUsize,
    values: AtomicUsize,
    /// Slots minus one; `usize::MAX` (no slots) disables the hint.
    mask: AtomicUsize,
}

impl Hint {
    pub fn of<V>(table: &Table<V>) -> Hint {
        let hint = Hint {
            keys: AtomicUsize::new(0),
            values: AtomicUsize::new(0),
            mask: AtomicUsize::new(usize::MAX),
        };
        hint.set(table);
        hint
    }

    pub fn set<V>(&self, table: &Table<V>) {
        self.keys.store(table.keys.as_ptr() as usize, Ordering::Relaxed);
        self.values.store(table.values.as_ptr() as usize, Ordering::Relaxed);
        self.mask.store(table.keys.len().wrapping_sub(1), Ordering::Relaxed);
    }

    /// Starts loading the cache lines `key`'s lookup will read first: its home slot's
    /// key and the lines of the value there (where the key is unless it was displaced),
    /// at most five.
    #[inline]
    pub fn prefetch<V>(&self, key: u64) {
        let mask = self.mask.load(Ordering::Relaxed);
        if mask == usize::MAX {
            return;
        }
        let i = stored(key) as usize & mask;
        prefetch_line(self.keys.load(Ordering::Relaxed).wrapping_add(i * 8));
        let size = std::mem::size_of::<V>();
        let value = self.values.load(Ordering::Relaxed).wrapping_add(i * size);
        // Every line the value spans (an entry is not line-aligned), up to five.
        let (first, last) = (value & !63, value.wrapping_add(size.max(1) - 1) & !63);
        let mut line = first;
        for _ in 0..5 {
            prefetch_line(line);
            if line >= last {
                break;
            }
            line = line.wrapping_add(64);
        }
    }
}

#[inline(always)]
fn prefetch_line(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program,
    // whatever the address (a stale one only wastes a cache line).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (splitmix64) for the model-checking test.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn agrees_with_a_hash_map_under_inserts_and_removes() {
        // Few distinct keys in a small table: long runs, wrap-around and many shifts.
        let mut t: Table<String> = Table::with_slots(64);
        let mut model: HashMap<u64, String> = HashMap::new();
        let mut rng = 7;
        let keys: Vec<u64> = (0..80)
            .map(|i| {
                if i == 0 {
                    0
                } else {
                    next(&mut rng) & 0xFFFF_0000_0000_003F | (i & 1)
                }
            })
            .collect();
        for step in 0..20_000 {
            let key = keys[(next(&mut rng) % keys.len() as u64) as usize];
            if next(&mut rng) % 3 == 0 {
                assert_eq!(t.remove(key), model.remove(&key), "remove {key:x} at step {step}");
            } else {
                let full = model.len() >= capacity_of(64) && !model.contains_key(&key);
                match t.get_or_insert_with(key, || format!("v{key:x}")) {
                    Some(v) => {
                        assert!(!full, "inserted into a full table");
                        v.push('+');
                        model.entry(key).or_insert_with(|| format!("v{key:x}")).push('+');
                    }
                    None => assert!(full, "refused {key:x} with room left at step {step}"),
                }
            }
            assert_eq!(t.len(), model.len());
        }
        for key in &keys {
            assert_eq!(t.get(*key), model.get(key), "key {key:x}");
            assert_eq!(t.contains_key(*key), model.contains_key(key));
        }
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_keeps_the_rest() {
        let mut t: Table<u64> = Table::with_slots(8);
        for k in 1..=7 {
            assert!(t.get_or_insert_with(k * 8, || k).is_some(), "all land on slot 0's run");
        }
        assert!(t.get_or_insert_with(99, || 0).is_none());
        assert_eq!(t.len(), 7);
        assert_eq!(t.remove(8), Some(1));
        for k in 2..=7 {
            assert_eq!(t.get(k * 8), Some(&k), "shifted back after the removal");
        }
    }

    #[test]
    fn an_empty_table_holds_nothing() {
        let mut t: Table<u64> = Table::default();
        assert_eq!(t.get(5), None);
        assert!(t.get_or_insert_with(5, || 1).is_none());
        assert_eq!(t.remove(5), None);
        Hint::of(&t).prefetch::<u64>(5);
    }

    #[test]
    fn a_value_that_panics_while_made_leaves_no_key_behind() {
        let mut t: Table<String> = Table::with_slots(8);
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.get_or_insert_with(5, || panic!("no value"));
        }));
        assert!(made.is_err());
        assert_eq!((t.len(), t.get(5)), (0, None));
        t.get_or_insert_with(5, || "five".into());
        assert_eq!(t.get(5).map(String::as_str), Some("five"));
    }

    #[test]
    fn values_are_dropped_once() {
        let counter = std::rc::Rc::new(());
        {
            let mut t: Table<std::rc::Rc<()>> = Table::with_slots(16);
            for k in 1..10 {
                t.get_or_insert_with(k, || counter.clone());
            }
            drop(t.remove(3));
            assert_eq!(std::rc::Rc::strong_count(&counter), 9);
        }
        assert_eq!(std::rc::Rc::strong_count(&counter), 1);
    }
}
