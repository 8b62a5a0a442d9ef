//! RocksDB backend: one database under the data directory, default column
//! family, LZ4-compressed. A write batch goes to the WAL at once; `write`
//! syncs it before it returns, `write_relaxed` does not, and `sync` syncs
//! everything written so far in one `fsync` shared by every caller waiting
//! meanwhile (group commit). Hot state
//! stays in memory in RocksDB's LRU block cache, whose size is configured.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rocksdb::{
    BlockBasedOptions, Cache, Direction, IteratorMode, Options, ReadOptions, WriteOptions, DB,
};

/// The in-memory cache of hot state when none is configured: 256 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

use crate::{prefix_successor, KeyValue, Result, StateBackend, StateError, WriteBatch, WriteOp};

/// A [`StateBackend`] stored in RocksDB.
pub struct RocksBackend {
    db: DB,
    /// Relaxed writes that have returned, counted.
    written: AtomicU64,
    /// How many of them a WAL sync covered.
    synced: AtomicU64,
    /// Held while the WAL syncs: who comes meanwhile waits, then finds
    /// its write covered.
    syncing: Mutex<()>,
    /// WAL syncs done by [`StateBackend::sync`].
    syncs: AtomicU64,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend")
            .field("path", &self.db.path())
            .finish()
    }
}

fn backend(e: rocksdb::Error) -> StateError {
    StateError::Backend(e.into_string())
}

impl RocksBackend {
    /// How many WAL syncs [`StateBackend::sync`] has done.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Opens (or creates) the database in `path` with the default cache
    /// size.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `path`, keeping up to
    /// `cache_bytes` of hot state blocks in memory.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Operator state is mostly point reads of keys that are not there
        // yet (a new row's multiplicity): bloom filters on whole keys, in
        // the files and in the memtable, answer those without a search.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.1);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(cache_bytes));
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(backend)?;
        tracing::info!(path = %path.display(), cache_bytes, "state store opened");
        Ok(RocksBackend {
            db,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncing: Mutex::new(()),
            syncs: AtomicU64::new(0),
        })
    }

    fn prefix_read_options(prefix: &[u8]) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(end) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        ro
    }

    fn apply(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => wb.put(k, v),
                WriteOp::Delete(k) => wb.delete(k),
                WriteOp::DeletePrefix(prefix) => match prefix_successor(&prefix) {
                    Some(end) => wb.delete_range(prefix, end),
                    None => {
                        for (k, _) in self.scan_prefix(&prefix)? {
                            wb.delete(k);
                        }
                    }
                },
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(backend)
    }
}

impl StateBackend for RocksBackend {
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(backend))
            .collect()
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.apply(batch, true)
    }

    fn write_relaxed(&self, batch: WriteBatch) -> Result<()> {
        self.apply(batch, false)?;
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mine = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let _syncing = self
            .syncing
            .lock()
            .map_err(|_| StateError::Backend("WAL sync lock poisoned".to_owned()))?;
        // A sync that ran while this caller waited may have covered it.
        if self.synced.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let through = self.written.load(Ordering::SeqCst);
        self.db.flush_wal(true).map_err(backend)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(through, Ordering::SeqCst);
        Ok(())
    }

    fn needs_sync(&self) -> bool {
        self.synced.load(Ordering::SeqCst) < self.written.load(Ordering::SeqCst)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let iter = self.db.iterator_opt(
            IteratorMode::From(prefix, Direction::Forward),
            Self::prefix_read_options(prefix),
        );
        iter.map(|r| {
            r.map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(backend)
        })
        .collect()
    }

    fn memory(&self) -> Vec<(&'static str, u64)> {
        [
            ("rocksdb_memtables", "rocksdb.cur-size-all-mem-tables"),
            ("rocksdb_block_cache", "rocksdb.block-cache-usage"),
            (
                "rocksdb_block_cache_pinned",
                "rocksdb.block-cache-pinned-usage",
            ),
            (
                "rocksdb_table_readers",
                "rocksdb.estimate-table-readers-mem",
            ),
        ]
        .into_iter()
        .filter_map(|(part, property)| {
            let bytes = self.db.property_int_value(property).ok().flatten()?;
            Some((part, bytes))
        })
        .collect()
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>> {
        let mut ro = Self::prefix_read_options(prefix);
        ro.set_iterate_lower_bound(prefix.to_vec());
        let mut iter = self.db.iterator_opt(IteratorMode::End, ro);
        iter.next()
            .transpose()
            .map(|kv| kv.map(|(k, v)| (k.into_vec(), v.into_vec())))
            .map_err(backend)
    }

    fn visit_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::From(start, Direction::Forward)
        };
        for kv in self.db.iterator_opt(mode, ro) {
            let (k, v) = kv.map_err(backend)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn put(store: &RocksBackend, key: &str) {
        let mut batch = WriteBatch::new();
        batch.put(key.as_bytes().to_vec(), b"v".to_vec());
        store.write_relaxed(batch).expect("write");
    }

    #[test]
    fn one_sync_covers_every_write_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksBackend::open(dir.path()).expect("open");
        // (writes since the last sync, syncs expected after sync(), pending after)
        let steps: [(&[&str], u64); 4] = [
            (&[], 0),              // nothing written: no disk sync
            (&["a", "b", "c"], 1), // three writes, one sync
            (&[], 1),              // all covered: the next sync is free
            (&["d"], 2),
        ];
        for (keys, syncs) in steps {
            for k in keys {
                put(&store, k);
            }
            assert_eq!(store.needs_sync(), !keys.is_empty(), "{keys:?}");
            store.sync().expect("sync");
            assert!(!store.needs_sync(), "{keys:?}");
            assert_eq!(store.syncs(), syncs, "{keys:?}");
        }
    }

    #[test]
    fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RocksBackend::open(dir.path()).expect("open"));
        let writers = 16;
        let rounds = 20;
        let barrier = Arc::new(std::sync::Barrier::new(writers));
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    for r in 0..rounds {
                        barrier.wait();
                        put(&store, &format!("{w}/{r}"));
                        store.sync().expect("sync");
                        assert!(store.synced.load(Ordering::SeqCst) > 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        assert!(!store.needs_sync());
        assert_eq!(
            store.scan_prefix(b"").expect("scan").len(),
            writers * rounds
        );
        // Never more syncs than writes; each sync covered its callers.
        assert!(store.syncs() <= (writers * rounds) as u64);
    }
}
