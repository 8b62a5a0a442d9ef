//! Keyed state for Sluice behind a small, batched facade.
//!
//! Layout: one flat, ordered key space of byte strings. Each user of the
//! store owns a key prefix (the catalog, each table's rows, each stream's
//! log, later each operator's state); keys within it are memcomparable
//! (`arrow-row` or big-endian integers), so prefix scans return them in order.
//! Writes go through [`WriteBatch`]es, applied atomically and durably (synced
//! to the write-ahead log before `write` returns).
//!
//! Two backends: [`RocksBackend`] (the data directory) and [`MemoryBackend`]
//! (tests).

mod memory;
mod rocks;
mod txn;

pub use memory::MemoryBackend;
pub use rocks::RocksBackend;
pub use txn::StateTxn;

use sluice_common::SluiceError;

/// Errors of the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB or the file system failed.
    #[error("rocksdb: {0}")]
    Backend(String),
}

impl From<StateError> for SluiceError {
    fn from(e: StateError) -> Self {
        SluiceError::Storage(e.to_string())
    }
}

/// Result of state operations.
pub type Result<T> = std::result::Result<T, StateError>;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Remove every key that starts with this prefix.
    DeletePrefix(Vec<u8>),
}

/// Changes applied together, atomically, in order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put(key.into(), value.into()));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete(key.into()));
    }

    /// Removes every key starting with `prefix`.
    pub fn delete_prefix(&mut self, prefix: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeletePrefix(prefix.into()));
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Appends the changes of `other`, after this batch's own.
    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
}

/// A key-value store with batched reads and atomic, durable batched writes.
pub trait StateBackend: Send + Sync + 'static {
    /// Reads many keys at once; the result has one entry per key, in order.
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Applies a batch atomically; it is durable when this returns.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Applies a batch atomically, without waiting for the disk: a crash may
    /// lose it, but only together with every write after it (the log is
    /// sequential). Checkpoints use it; what they cover can be replayed.
    fn write_relaxed(&self, batch: WriteBatch) -> Result<()> {
        self.write(batch)
    }

    /// Makes every write that returned before this call durable. Writers
    /// that call it while a sync is in flight share the next one (group
    /// commit): N concurrent writers pay about one disk sync, not N.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Whether some write that returned is not durable yet (so that
    /// [`Self::sync`] would wait for the disk).
    fn needs_sync(&self) -> bool {
        false
    }

    /// Every key-value pair whose key starts with `prefix`, in key order, from
    /// one consistent snapshot.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>>;

    /// The pair with the largest key starting with `prefix`, if any.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>>;

    /// Visits the pairs whose keys are in `[start, end)` (`end` `None`: to
    /// the last key), in key order or (`reverse`) backwards, until `visit`
    /// returns false.
    fn visit_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// What the store holds in memory, by part (RocksDB: memtables, block
    /// cache, table readers), in bytes; empty when it does not say.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.multi_get(&[key.to_vec()])?.pop().flatten())
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (the prefix is all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every backend must honour.
    pub(crate) fn exercise(store: &dyn StateBackend) {
        let mut b = WriteBatch::new();
        b.put(b"a/1".to_vec(), b"x".to_vec());
        b.put(b"a/2".to_vec(), b"y".to_vec());
        b.put(b"a/3".to_vec(), b"z".to_vec());
        b.put(b"b/1".to_vec(), b"w".to_vec());
        b.delete(b"a/3".to_vec());
        store.write(b).expect("write");
        assert_eq!(
            store.scan_prefix(b"a/").expect("scan"),
            vec![
                (b"a/1".to_vec(), b"x".to_vec()),
                (b"a/2".to_vec(), b"y".to_vec())
            ]
        );
        assert_eq!(
            store
                .multi_get(&[b"a/2".to_vec(), b"nope".to_vec(), b"b/1".to_vec()])
                .expect("multi_get"),
            vec![Some(b"y".to_vec()), None, Some(b"w".to_vec())]
        );
        assert_eq!(
            store.last_with_prefix(b"a/").expect("last"),
            Some((b"a/2".to_vec(), b"y".to_vec()))
        );
        assert_eq!(store.last_with_prefix(b"c/").expect("last"), None);
        let mut seen = Vec::new();
        store
            .visit_range(b"a/2", None, false, &mut |k, _| {
                seen.push(k.to_vec());
                true
            })
            .expect("visit");
        assert_eq!(seen, vec![b"a/2".to_vec(), b"b/1".to_vec()]);
        seen.clear();
        store
            .visit_range(b"a/", Some(b"b/"), true, &mut |k, _| {
                seen.push(k.to_vec());
                false
            })
            .expect("visit backwards");
        assert_eq!(seen, vec![b"a/2".to_vec()]);
        let mut b = WriteBatch::new();
        b.delete_prefix(b"a/".to_vec());
        store.write(b).expect("write");
        assert!(store.scan_prefix(b"a/").expect("scan").is_empty());
        assert_eq!(store.get(b"b/1").expect("get"), Some(b"w".to_vec()));
    }

    #[test]
    fn memory_backend_honours_the_contract() {
        exercise(&MemoryBackend::new());
    }

    #[test]
    fn rocks_backend_honours_the_contract_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksBackend::open(dir.path()).expect("open");
            exercise(&store);
        }
        let store = RocksBackend::open(dir.path()).expect("reopen");
        assert_eq!(store.get(b"b/1").expect("get"), Some(b"w".to_vec()));
    }

    #[test]
    fn successor_of_prefixes() {
        assert_eq!(prefix_successor(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }
}
