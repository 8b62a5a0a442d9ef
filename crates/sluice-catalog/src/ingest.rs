//! What a source connector writes: batches of rows read from outside, and
//! the source's position (its Kafka offsets) in the same transaction, so
//! that after a crash it resumes exactly after the last rows it wrote.
//!
//! Positions live under 0x06 <relation id> <partition i32> (Kafka), and
//! named positions under 0x08 <relation id> <name> (a file source: one per
//! file, its next line).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_state::StateTxn;

use crate::catalog::{key, Catalog, Relation};
use crate::changes::RowSource;
use crate::LoggedChange;

/// Regenerates the events of a stream whose source generates them (the
/// `nexmark` connector): such a stream keeps no log, only its source's
/// position, and its past is generated again when a new view back-fills.
pub trait Replay: Send + Sync {
    /// The events of `stream` before `position` (partition -> next
    /// offset), or `None` when its source does not generate its events.
    fn replay(
        &self,
        stream: &Relation,
        position: &BTreeMap<i32, i64>,
    ) -> Option<Result<RecordBatch>>;
}

/// Key prefix of source positions.
pub(crate) const POSITION_PREFIX: u8 = 0x06;
/// Key prefix of named source positions.
pub(crate) const NAMED_POSITION_PREFIX: u8 = 0x08;

/// One part of what a source read, applied in order.
#[derive(Debug, Clone)]
pub enum Ingest {
    /// Events for a stream.
    Append(RecordBatch),
    /// Rows for a table, replacing the rows of the same keys.
    Upsert(RecordBatch),
    /// Keys of a table to delete: the primary key columns, in key order.
    DeleteKeys(RecordBatch),
}

fn position_key(relation: u64, partition: i32) -> Vec<u8> {
    let mut k = key(POSITION_PREFIX, relation);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl Relation {
    /// Deletes the rows of these keys (the primary key columns, in key
    /// order) that exist and returns the change (the deleted rows,
    /// retracted).
    pub fn delete_keys(&self, txn: &mut StateTxn, keys: &RecordBatch) -> Result<ChangeBatch> {
        let mut seen = std::collections::HashSet::with_capacity(keys.num_rows());
        let full: Vec<Vec<u8>> = self
            .codec
            .encode_key_columns(keys.columns())?
            .iter()
            .map(|k| self.row_key(k))
            .filter(|k| seen.insert(k.clone()))
            .collect();
        let old = txn.multi_get(&full)?;
        let mut retracted = Vec::new();
        for (k, old) in full.into_iter().zip(old) {
            if let Some(old) = old {
                txn.delete(k);
                retracted.push(old);
            }
        }
        let rows = self
            .codec
            .decode_values(retracted.iter().map(Vec::as_slice))?;
        let n = rows.num_rows();
        Ok(ChangeBatch::new(rows, vec![-1; n]))
    }
}

impl Catalog {
    /// Writes what a source read, with its new position (partition -> next
    /// offset), in one durable transaction, and hands the change to the
    /// views.
    pub async fn ingest(
        &self,
        relation: &Arc<Relation>,
        parts: Vec<Ingest>,
        position: &BTreeMap<i32, i64>,
    ) -> Result<()> {
        self.ingest_at(relation, parts, position, &BTreeMap::new())
            .await
    }

    /// [`Self::ingest`], also storing named positions (`name` -> next).
    pub async fn ingest_at(
        &self,
        relation: &Arc<Relation>,
        parts: Vec<Ingest>,
        position: &BTreeMap<i32, i64>,
        named: &BTreeMap<String, i64>,
    ) -> Result<()> {
        let _writer = self.lock_writes().await;
        // The relation may have been dropped while the source was reading.
        match self.get_by_id(relation.entry().id)? {
            Some(r) if Arc::ptr_eq(&r, relation) => {}
            _ => {
                return Err(SluiceError::UndefinedObject {
                    kind: relation.kind().into(),
                    name: relation.name().to_owned(),
                })
            }
        }
        let mut txn = StateTxn::new(self.store().clone());
        let mut changes = Vec::with_capacity(parts.len());
        for part in parts {
            changes.push(match part {
                Ingest::Append(batch) => relation.append(&mut txn, &batch)?,
                Ingest::Upsert(batch) => relation.upsert(&mut txn, &batch)?,
                Ingest::DeleteKeys(batch) => relation.delete_keys(&mut txn, &batch)?,
            });
        }
        for (partition, offset) in position {
            txn.put(
                position_key(relation.entry().id, *partition),
                offset.to_be_bytes().to_vec(),
            );
        }
        for (name, next) in named {
            let mut k = key(NAMED_POSITION_PREFIX, relation.entry().id);
            k.extend_from_slice(name.as_bytes());
            txn.put(k, next.to_be_bytes().to_vec());
        }
        self.commit_changes(txn, relation, changes).await
    }

    /// A source's stored named positions: name -> next.
    pub fn named_positions(&self, relation: u64) -> Result<BTreeMap<String, i64>> {
        let prefix = key(NAMED_POSITION_PREFIX, relation);
        let mut out = BTreeMap::new();
        for (k, v) in self.store().scan_prefix(&prefix)? {
            let corrupt = || SluiceError::Storage("corrupt named source position".to_owned());
            let name = k
                .get(prefix.len()..)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(corrupt)?;
            let next = v
                .as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt())?;
            out.insert(name.to_owned(), next);
        }
        Ok(out)
    }

    /// Hands events a source generated to the views, without writing them:
    /// the source's new position (`partition` -> `next`) is stored by the
    /// checkpoint that covers them, and after a crash the source generates
    /// again from there. Returns false, handing nothing, when no view reads
    /// `stream` (the source waits for one).
    pub async fn ingest_generated(
        &self,
        stream: &Arc<Relation>,
        batch: RecordBatch,
        partition: i32,
        next: i64,
    ) -> Result<bool> {
        let _writer = self.lock_writes().await;
        match self.get_by_id(stream.entry().id)? {
            Some(r) if Arc::ptr_eq(&r, stream) => {}
            _ => {
                return Err(SluiceError::UndefinedObject {
                    kind: stream.kind().into(),
                    name: stream.name().to_owned(),
                })
            }
        }
        let Some(listener) = self.listener()?.filter(|l| l.follows(stream.entry().id)) else {
            return Ok(false);
        };
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        listener
            .on_committed(LoggedChange {
                seq: self.next_change_seq(),
                source: stream.entry().id,
                changes: ChangeBatch::inserts(batch),
                checkpoint: vec![(
                    position_key(stream.entry().id, partition),
                    next.to_be_bytes().to_vec(),
                )],
            })
            .await?;
        Ok(true)
    }

    /// Whether some view reads relation `id`.
    pub fn is_followed(&self, id: u64) -> bool {
        self.listener()
            .ok()
            .flatten()
            .is_some_and(|l| l.follows(id))
    }

    /// What a new view back-fills from: [`Relation::read_contents`], except
    /// that a generated stream's events are generated again.
    pub fn contents(&self, relation: &Relation, src: &dyn RowSource) -> Result<RecordBatch> {
        if relation.kind() == sluice_sql::RelationKind::Stream {
            if let Some(replay) = self.replay()? {
                let position = self.position_in(relation.entry().id, src)?;
                if let Some(events) = replay.replay(relation, &position) {
                    return events;
                }
            }
        }
        relation.read_contents(src)
    }

    /// A source's stored position: partition -> next offset to read.
    pub fn source_position(&self, relation: u64) -> Result<BTreeMap<i32, i64>> {
        self.position_in(relation, self.store())
    }

    fn position_in(&self, relation: u64, src: &dyn RowSource) -> Result<BTreeMap<i32, i64>> {
        let prefix = key(POSITION_PREFIX, relation);
        let mut out = BTreeMap::new();
        for (k, v) in src.scan(&prefix)? {
            let corrupt = || SluiceError::Storage("corrupt source position".to_owned());
            let partition = k
                .get(prefix.len()..)
                .and_then(|p| p.try_into().ok())
                .map(i32::from_be_bytes)
                .ok_or_else(corrupt)?;
            let offset = v
                .as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt())?;
            out.insert(partition, offset);
        }
        Ok(out)
    }
}
