//! In-memory backend for tests: a `BTreeMap` behind a lock.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::{prefix_successor, KeyValue, Result, StateBackend, StateError, WriteBatch, WriteOp};

/// A [`StateBackend`] that keeps everything in memory and loses it on drop.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let end = match prefix_successor(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        (Bound::Included(prefix.to_vec()), end)
    }
}

fn poisoned() -> StateError {
    StateError::Backend("in-memory store lock poisoned".to_owned())
}

impl StateBackend for MemoryBackend {
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    map.remove(&k);
                }
                WriteOp::DeletePrefix(prefix) => {
                    let doomed: Vec<Vec<u8>> = map
                        .range(Self::range(&prefix))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .range(Self::range(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .range(Self::range(prefix))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn visit_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let map = self.map.read().map_err(|_| poisoned())?;
        let end = match end {
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        let range = map.range((Bound::Included(start.to_vec()), end));
        if reverse {
            for (k, v) in range.rev() {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for (k, v) in range {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}
