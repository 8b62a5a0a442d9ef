//! A transaction over a store: reads see the transaction's own writes, and
//! everything is written in one atomic batch at commit.
//!
//! An operator of the dataflow keeps one open for its whole life: at each
//! checkpoint barrier it hands its writes over ([`StateTxn::take_writes`])
//! and keeps the values it wrote as a cache of hot keys, trimmed
//! ([`StateTxn::shrink_to`]) once the writes still in flight are all it may
//! not forget. A key written many times between two barriers is one write
//! in the batch, with its last value. A deleted key is remembered (so that
//! reads do not see the store's old value) only until its delete is in the
//! store ([`StateTxn::forget_settled_deletes`]): a view's rows are keyed
//! by the row, so every update of a group deletes a key, and those would
//! otherwise fill the cache with keys long gone.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{prefix_successor, KeyValue, Result, StateBackend, WriteBatch, WriteOp};

/// Buffered writes over a [`StateBackend`].
pub struct StateTxn {
    store: Arc<dyn StateBackend>,
    overlay: BTreeMap<Vec<u8>, Cached>,
    /// Roughly how many bytes the overlay holds.
    bytes: usize,
    /// Whether some entry is dirty.
    dirty: bool,
    /// How many times the writes were taken.
    takes: u64,
    /// Keys whose delete was taken before the latest take: candidates to
    /// forget once every batch but the latest is in the store.
    settled_deletes: Vec<Vec<u8>>,
    /// Keys whose delete the latest take handed over.
    latest_deletes: Vec<Vec<u8>>,
    /// Where this transaction adds what it holds (`sluice_memory`), and
    /// what it last added there: brought up to date when the writes are
    /// taken or the cache trimmed, not on every write.
    meter: Option<(Arc<AtomicUsize>, usize)>,
}

/// A value this transaction wrote.
#[derive(Debug, Clone)]
struct Cached {
    /// `None` marks a deleted key.
    value: Option<Vec<u8>>,
    /// Written since the writes were last taken.
    dirty: bool,
    /// The take that last handed this value over (0: none yet).
    taken: u64,
}

/// What an overlay entry of `key` and `value` costs, roughly.
fn cost(key: &[u8], value: Option<&Vec<u8>>) -> usize {
    key.len() + value.map_or(0, Vec::len) + ENTRY_OVERHEAD
}

/// The keys in `[start, end)`, as a range of a map keyed by byte strings.
fn range<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// What an overlay entry costs beyond its key and value, roughly: the
/// entry in the B-tree's node (a key and a value header, 56 bytes, in nodes
/// about two thirds full) and the two heap allocations' headers and
/// rounding.
const ENTRY_OVERHEAD: usize = 120;

impl std::fmt::Debug for StateTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTxn")
            .field("pending", &self.overlay.len())
            .finish()
    }
}

impl StateTxn {
    /// A transaction over `store`.
    pub fn new(store: Arc<dyn StateBackend>) -> Self {
        StateTxn {
            store,
            overlay: BTreeMap::new(),
            bytes: 0,
            dirty: false,
            takes: 0,
            settled_deletes: Vec::new(),
            latest_deletes: Vec::new(),
            meter: None,
        }
    }

    /// A transaction over `store` that adds what it holds to `meter`, which
    /// other transactions may share: as of each take of the writes, each
    /// trim of the cache, and 0 once dropped.
    pub fn metered(store: Arc<dyn StateBackend>, meter: Arc<AtomicUsize>) -> Self {
        let mut txn = StateTxn::new(store);
        txn.meter = Some((meter, 0));
        txn
    }

    /// Brings the meter to `bytes` held by this transaction.
    fn report(&mut self, bytes: usize) {
        if let Some((meter, reported)) = &mut self.meter {
            if bytes >= *reported {
                meter.fetch_add(bytes - *reported, Ordering::Relaxed);
            } else {
                meter.fetch_sub(*reported - bytes, Ordering::Relaxed);
            }
            *reported = bytes;
        }
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.dirty = true;
        match self.overlay.get_mut(&key) {
            Some(cached) => {
                self.bytes = (self.bytes + value.as_ref().map_or(0, Vec::len))
                    .saturating_sub(cached.value.as_ref().map_or(0, Vec::len));
                cached.value = value;
                cached.dirty = true;
            }
            None => {
                self.bytes += cost(&key, value.as_ref());
                self.overlay.insert(
                    key,
                    Cached {
                        value,
                        dirty: true,
                        taken: 0,
                    },
                );
            }
        }
    }

    /// Sets `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.write(key, Some(value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.write(key, None);
    }

    /// Removes every key starting with `prefix`.
    pub fn delete_prefix(&mut self, prefix: Vec<u8>) -> Result<()> {
        for (k, _) in self.scan_prefix(&prefix)? {
            self.write(k, None);
        }
        Ok(())
    }

    /// Reads keys, seeing this transaction's writes.
    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !self.overlay.contains_key(*k))
            .cloned()
            .collect();
        let mut stored = self.store.multi_get(&missing)?.into_iter();
        Ok(keys
            .iter()
            .map(|k| match self.overlay.get(k) {
                Some(cached) => cached.value.clone(),
                None => stored.next().flatten(),
            })
            .collect())
    }

    /// Every pair under `prefix`, in key order, seeing this transaction's writes.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let end = prefix_successor(prefix);
        self.scan_range(prefix, end.as_deref())
    }

    /// Every pair with a key in `[start, end)` (`end` `None`: to the last
    /// key), in key order, seeing this transaction's writes.
    pub fn scan_range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        self.visit_range(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Calls `visit` on every pair with a key in `[start, end)`, in key
    /// order, seeing this transaction's writes, until it returns `false`:
    /// a scan that holds nothing of what it reads.
    pub fn visit_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut overlay = self.overlay.range::<[u8], _>(range(start, end)).peekable();
        let mut more = true;
        // Merge two sorted runs; the overlay wins on equal keys.
        self.store.visit_range(start, end, false, &mut |k, v| {
            while let Some((o, ov)) = overlay.next_if(|(o, _)| o.as_slice() < k) {
                if let Some(ov) = &ov.value {
                    if !visit(o, ov) {
                        more = false;
                        return false;
                    }
                }
            }
            let go = match overlay.next_if(|(o, _)| o.as_slice() == k) {
                Some((
                    _,
                    Cached {
                        value: Some(ov), ..
                    },
                )) => visit(k, ov),
                Some(_) => true,
                None => visit(k, v),
            };
            more = go;
            go
        })?;
        if more {
            for (o, ov) in overlay {
                if let Some(ov) = &ov.value {
                    if !visit(o, ov) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The pair with the smallest key in `[start, end)` or (`last`) the
    /// largest, seeing this transaction's writes.
    pub fn first_in_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        last: bool,
    ) -> Result<Option<KeyValue>> {
        let mut live = self
            .overlay
            .range::<[u8], _>(range(start, end))
            .filter_map(|(k, c)| c.value.as_ref().map(|v| (k, v)));
        let candidate = if last { live.next_back() } else { live.next() };
        let mut found: Option<KeyValue> = None;
        self.store.visit_range(start, end, last, &mut |k, v| {
            if let Some((c, _)) = candidate {
                // Past the overlay's own first live key: that one is first.
                let beyond = if last {
                    k <= c.as_slice()
                } else {
                    k >= c.as_slice()
                };
                if beyond {
                    return false;
                }
            }
            if self.overlay.contains_key(k) {
                // Deleted here (a live overlay key would be the candidate).
                return true;
            }
            found = Some((k.to_vec(), v.to_vec()));
            false
        })?;
        Ok(found.or_else(|| candidate.map(|(k, v)| (k.clone(), v.clone()))))
    }

    /// Hands over the writes made since the last call (to be committed by
    /// someone else), one per key, in key order; their values stay
    /// readable here.
    pub fn take_writes(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        self.takes += 1;
        let latest = std::mem::take(&mut self.latest_deletes);
        self.settled_deletes.extend(latest);
        self.report(self.bytes);
        if !std::mem::take(&mut self.dirty) {
            return batch;
        }
        for (k, cached) in self.overlay.iter_mut().filter(|(_, c)| c.dirty) {
            cached.dirty = false;
            cached.taken = self.takes;
            match &cached.value {
                Some(v) => batch.put(k.clone(), v.clone()),
                None => {
                    batch.delete(k.clone());
                    self.latest_deletes.push(k.clone());
                }
            }
        }
        batch
    }

    /// Forgets the deleted keys whose delete is in the store: call it only
    /// when every batch of writes taken before the latest is in the store.
    /// Costs as much as the deletes taken since the last call.
    pub fn forget_settled_deletes(&mut self) {
        for k in std::mem::take(&mut self.settled_deletes) {
            // Forget it only while it is still that settled delete: not
            // written again since, nor deleted again in the latest batch.
            let settled = self
                .overlay
                .get(&k)
                .is_some_and(|c| c.value.is_none() && !c.dirty && c.taken < self.takes);
            if settled {
                self.overlay.remove(&k);
                self.bytes = self.bytes.saturating_sub(cost(&k, None));
            }
        }
        self.report(self.bytes);
    }

    /// Roughly how many bytes of keys and values this transaction holds.
    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets every cached value except the keys `inflight` writes (taken
    /// but maybe not yet committed) and the writes not yet taken: call it
    /// only when every earlier batch of writes is in the store.
    pub fn shrink_to(&mut self, inflight: &WriteBatch) {
        let mut keep: BTreeMap<Vec<u8>, Cached> = BTreeMap::new();
        // `take_writes` hands over puts and deletes only.
        for op in inflight.ops() {
            if let WriteOp::Put(k, _) | WriteOp::Delete(k) = op {
                if let Some((k, v)) = self.overlay.remove_entry(k) {
                    keep.insert(k, v);
                }
            }
        }
        // Writes not yet taken stay too.
        let overlay = std::mem::take(&mut self.overlay);
        keep.extend(overlay.into_iter().filter(|(_, c)| c.dirty));
        self.bytes = keep.iter().map(|(k, c)| cost(k, c.value.as_ref())).sum();
        self.report(self.bytes);
        self.overlay = keep;
        // What is left of the deletes is in `keep` or in the store.
        self.settled_deletes.clear();
    }

    /// Writes everything atomically, durable once the store's
    /// [`StateBackend::sync`] returns (what a statement waits for before
    /// it is acknowledged).
    pub fn commit_relaxed(mut self) -> Result<()> {
        let batch = self.take_writes();
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write_relaxed(batch)
    }

    /// Writes everything, atomically and durably.
    pub fn commit(mut self) -> Result<()> {
        let batch = self.take_writes();
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write(batch)
    }
}

impl Drop for StateTxn {
    fn drop(&mut self) {
        self.report(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn reads_see_own_writes_and_commit_is_atomic() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let mut seed = WriteBatch::new();
        seed.put(b"a/1".to_vec(), b"x".to_vec());
        seed.put(b"a/2".to_vec(), b"y".to_vec());
        store.write(seed).expect("seed");

        let mut txn = StateTxn::new(store.clone());
        txn.put(b"a/3".to_vec(), b"z".to_vec());
        txn.delete(b"a/1".to_vec());
        assert_eq!(
            txn.scan_prefix(b"a/").expect("scan"),
            vec![
                (b"a/2".to_vec(), b"y".to_vec()),
                (b"a/3".to_vec(), b"z".to_vec())
            ]
        );
        assert_eq!(
            txn.multi_get(&[b"a/1".to_vec(), b"a/2".to_vec(), b"a/3".to_vec()])
                .expect("get"),
            vec![None, Some(b"y".to_vec()), Some(b"z".to_vec())]
        );
        // Nothing reaches the store before commit.
        assert_eq!(store.get(b"a/1").expect("get"), Some(b"x".to_vec()));
        txn.delete_prefix(b"a/".to_vec()).expect("delete prefix");
        assert!(txn.scan_prefix(b"a/").expect("scan").is_empty());
        txn.commit().expect("commit");
        assert!(store.scan_prefix(b"a/").expect("scan").is_empty());
    }

    #[test]
    fn range_reads_merge_the_store_with_this_transactions_writes() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let mut seed = WriteBatch::new();
        for k in [&b"r/1"[..], b"r/3", b"r/5", b"r/7", b"s/1"] {
            seed.put(k.to_vec(), b"stored".to_vec());
        }
        store.write(seed).expect("seed");
        let mut txn = StateTxn::new(store);
        txn.put(b"r/3".to_vec(), b"mine".to_vec());
        txn.put(b"r/4".to_vec(), b"new".to_vec());
        txn.delete(b"r/7".to_vec());
        txn.delete(b"r/1".to_vec());
        let keys = |kvs: Vec<KeyValue>| -> Vec<(String, String)> {
            kvs.into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(
            keys(txn.scan_range(b"r/2", Some(b"r/9")).expect("range")),
            vec![
                ("r/3".into(), "mine".into()),
                ("r/4".into(), "new".into()),
                ("r/5".into(), "stored".into())
            ]
        );
        assert_eq!(keys(txn.scan_range(b"r/6", None).expect("tail")).len(), 1);
        // A visit sees the same merge, and stops when told to, whether it
        // is in the overlay (r/4) or in the store (r/5).
        for stop in ["r/4", "r/5", "s/1"] {
            let mut seen = Vec::new();
            txn.visit_range(b"r/", None, &mut |k, _| {
                seen.push(String::from_utf8_lossy(k).into_owned());
                seen.last().map(String::as_str) != Some(stop)
            })
            .expect("visit");
            let all = ["r/3", "r/4", "r/5", "s/1"];
            let upto = all.iter().position(|k| *k == stop).expect("stop") + 1;
            assert_eq!(seen, all[..upto].to_vec());
        }
        let first = |start: &[u8], end: Option<&[u8]>, last: bool| {
            txn.first_in_range(start, end, last)
                .expect("first")
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        };
        // r/1 and r/7 are deleted here though the store still has them.
        assert_eq!(first(b"r/", Some(b"r0"), false), Some("r/3".into()));
        assert_eq!(first(b"r/", Some(b"r0"), true), Some("r/5".into()));
        assert_eq!(first(b"r/6", Some(b"r0"), true), None);
        assert_eq!(first(b"r/35", Some(b"r/45"), true), Some("r/4".into()));
        assert_eq!(first(b"s/", None, false), Some("s/1".into()));
    }

    #[test]
    fn a_key_written_many_times_is_one_write_with_its_last_value() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let mut seed = WriteBatch::new();
        seed.put(b"p/old".to_vec(), b"0".to_vec());
        store.write(seed).expect("seed");
        let mut txn = StateTxn::new(store.clone());
        for i in 0..100u8 {
            txn.put(b"k/hot".to_vec(), vec![i]);
        }
        txn.put(b"k/gone".to_vec(), b"x".to_vec());
        txn.delete(b"k/gone".to_vec());
        txn.put(b"p/new".to_vec(), b"1".to_vec());
        txn.delete_prefix(b"p/".to_vec()).expect("delete prefix");
        let writes = txn.take_writes();
        assert_eq!(
            writes.ops(),
            &[
                WriteOp::Delete(b"k/gone".to_vec()),
                WriteOp::Put(b"k/hot".to_vec(), vec![99]),
                WriteOp::Delete(b"p/new".to_vec()),
                WriteOp::Delete(b"p/old".to_vec()),
            ]
        );
        // Taken writes are not taken again; the cache counts each key once.
        assert!(txn.take_writes().is_empty());
        assert!(txn.cached_bytes() < 4 * (8 + ENTRY_OVERHEAD));
        store.write(writes).expect("commit");
        assert_eq!(
            store.scan_prefix(b"").expect("scan"),
            vec![(b"k/hot".to_vec(), vec![99])]
        );
    }

    #[test]
    fn taken_writes_stay_readable_until_shrunk_and_the_rest_is_read_again() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let mut txn = StateTxn::new(store.clone());
        txn.put(b"k/1".to_vec(), b"one".to_vec());
        let first = txn.take_writes();
        assert_eq!(first.len(), 1);
        txn.put(b"k/2".to_vec(), b"two".to_vec());
        let second = txn.take_writes();
        // Neither batch is in the store yet: both are still read here.
        assert_eq!(
            txn.multi_get(&[b"k/1".to_vec(), b"k/2".to_vec()])
                .expect("get"),
            vec![Some(b"one".to_vec()), Some(b"two".to_vec())]
        );
        store.write(first).expect("first batch lands");
        assert!(txn.cached_bytes() > 0);
        txn.shrink_to(&second);
        // k/1 now comes from the store, k/2 (in flight) from the cache.
        assert_eq!(
            txn.scan_prefix(b"k/").expect("scan"),
            vec![
                (b"k/1".to_vec(), b"one".to_vec()),
                (b"k/2".to_vec(), b"two".to_vec())
            ]
        );
        assert_eq!(store.get(b"k/2").expect("get"), None);
        assert!(txn.take_writes().is_empty());
    }

    #[test]
    fn a_deleted_key_is_forgotten_once_its_delete_is_in_the_store() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let meter = Arc::new(AtomicUsize::new(0));
        let mut txn = StateTxn::metered(store.clone(), meter.clone());
        // Epoch 1 writes four keys; epoch 2 deletes three of them and
        // writes d again, epoch 3 deletes d.
        for k in [&b"w/a"[..], b"w/b", b"w/c", b"w/d"] {
            txn.put(k.to_vec(), b"row".to_vec());
        }
        // The meter follows at each take, not at each write.
        assert_eq!(meter.load(Ordering::Relaxed), 0);
        let e1 = txn.take_writes();
        store.write(e1).expect("epoch 1");
        let full = txn.cached_bytes();
        assert_eq!(meter.load(Ordering::Relaxed), full);
        for k in [&b"w/a"[..], b"w/b", b"w/d"] {
            txn.delete(k.to_vec());
        }
        txn.put(b"w/d".to_vec(), b"again".to_vec());
        let e2 = txn.take_writes();
        // Epoch 2 is not in the store: nothing it deleted may be forgotten.
        txn.forget_settled_deletes();
        assert_eq!(txn.overlay.len(), 4);
        store.write(e2).expect("epoch 2");
        txn.delete(b"w/d".to_vec());
        let e3 = txn.take_writes();
        // Epoch 2 is in the store, epoch 3 (deleting d) is not.
        txn.forget_settled_deletes();
        let cached: Vec<(&[u8], bool)> = txn
            .overlay
            .iter()
            .map(|(k, c)| (k.as_slice(), c.value.is_some()))
            .collect();
        assert_eq!(cached, vec![(&b"w/c"[..], true), (&b"w/d"[..], false)]);
        assert_eq!(
            txn.multi_get(&[b"w/a".to_vec(), b"w/c".to_vec(), b"w/d".to_vec()])
                .expect("get"),
            vec![None, Some(b"row".to_vec()), None]
        );
        store.write(e3).expect("epoch 3");
        assert!(txn.take_writes().is_empty());
        txn.forget_settled_deletes();
        assert_eq!(txn.overlay.len(), 1);
        assert_eq!(txn.multi_get(&[b"w/d".to_vec()]).expect("get"), vec![None]);
        assert!(txn.cached_bytes() < full / 2);
        assert_eq!(meter.load(Ordering::Relaxed), txn.cached_bytes());
        // Another transaction on the same meter adds to it; each takes its
        // own share away when dropped.
        let mut other = StateTxn::metered(store, meter.clone());
        other.put(b"x".to_vec(), b"y".to_vec());
        assert!(other.take_writes().len() == 1);
        assert_eq!(
            meter.load(Ordering::Relaxed),
            txn.cached_bytes() + other.cached_bytes()
        );
        drop(txn);
        assert_eq!(meter.load(Ordering::Relaxed), other.cached_bytes());
        drop(other);
        assert_eq!(meter.load(Ordering::Relaxed), 0);
    }
}
