//! The changelog between writers and the dataflow.
//!
//! A write to a relation that some view reads commits, in the same durable
//! batch as the relation's rows, an entry of the changelog (0x04, by
//! sequence number) holding the change. The writer then hands the change to
//! the dataflow ([`ChangeListener::on_committed`]) and returns: the views
//! catch up asynchronously. A checkpoint of the dataflow commits the state
//! of every operator and the rows of every view together with the removal
//! of the changelog entries it covers, so after a crash the entries left
//! are exactly the changes the views have not seen, and are replayed.
//!
//! A view that stopped at an error keeps a marker (0x05, by view id) with
//! the error, so that it stays stopped, and says why, after a restart.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Int8Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_state::{StateTxn, WriteBatch};

use crate::catalog::{key, Catalog, Relation};

/// Key prefix of the changelog.
pub(crate) const CHANGELOG_PREFIX: u8 = 0x04;
/// Key prefix of the markers of views stopped at an error.
pub(crate) const FAILURE_PREFIX: u8 = 0x05;
/// The column that carries each row's sign in a changelog entry.
const SIGN_COLUMN: &str = "__sluice_sign";

/// A committed change, waiting for the dataflow.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    /// Its position in the changelog.
    pub seq: u64,
    /// The id of the relation it changed.
    pub source: u64,
    /// The change.
    pub changes: ChangeBatch,
    /// Writes for the checkpoint that covers this change: the position of
    /// a source whose events are generated, not logged (`Catalog::ingest_generated`).
    pub checkpoint: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Receives every committed change to a relation that a view reads.
#[async_trait]
pub trait ChangeListener: Send + Sync {
    /// Whether any view reads relation `id` (only then is a change logged).
    fn follows(&self, id: u64) -> bool;

    /// `change` was committed; the listener takes it from here. Called with
    /// the writer lock held, in commit order.
    async fn on_committed(&self, change: LoggedChange) -> Result<()>;
}

/// The changelog key of entry `seq`.
pub fn changelog_key(seq: u64) -> Vec<u8> {
    key(CHANGELOG_PREFIX, seq)
}

/// The key of the marker of a view that stopped at an error.
pub fn failure_key(view_id: u64) -> Vec<u8> {
    key(FAILURE_PREFIX, view_id)
}

fn encode(source: u64, changes: &ChangeBatch) -> Result<Vec<u8>> {
    let batch = &changes.batch;
    let signs: ArrayRef = match &changes.signs {
        Some(signs) => Arc::new(signs.clone()),
        None => Arc::new(Int8Array::from(vec![1i8; batch.num_rows()])),
    };
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SIGN_COLUMN, DataType::Int8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(signs);
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let with_signs =
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?;
    let mut buf = source.to_be_bytes().to_vec();
    {
        let mut w = StreamWriter::try_new(&mut buf, &with_signs.schema())?;
        w.write(&with_signs)?;
        w.finish()?;
    }
    Ok(buf)
}

fn decode(bytes: &[u8]) -> Result<(u64, ChangeBatch)> {
    let corrupt = || SluiceError::Storage("corrupt changelog entry".to_owned());
    let (id, ipc) = bytes.split_at_checked(8).ok_or_else(corrupt)?;
    let source = u64::from_be_bytes(id.try_into().map_err(|_| corrupt())?);
    let mut reader = StreamReader::try_new(ipc, None)?;
    let batch = reader.next().ok_or_else(corrupt)??;
    let n = batch.num_columns().checked_sub(1).ok_or_else(corrupt)?;
    let signs = batch
        .column(n)
        .as_any()
        .downcast_ref::<Int8Array>()
        .ok_or_else(corrupt)?
        .clone();
    let schema = Arc::new(batch.schema().project(&(0..n).collect::<Vec<_>>())?);
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let rows = RecordBatch::try_new_with_options(schema, batch.columns()[..n].to_vec(), &options)?;
    let changes = if signs.values().iter().all(|&s| s == 1) {
        ChangeBatch::inserts(rows)
    } else {
        ChangeBatch::new(rows, signs.values().to_vec())
    };
    Ok((source, changes))
}

impl Catalog {
    /// Commits a writer's transaction that changed `source`, and hands the
    /// change to the dataflow when a view reads `source`. Call with the
    /// writer lock held.
    pub async fn commit_changes(
        &self,
        mut txn: StateTxn,
        source: &Arc<Relation>,
        changes: Vec<ChangeBatch>,
    ) -> Result<()> {
        let changes = ChangeBatch::concat(source.schema(), &changes)?;
        let listener = self.listener()?;
        let follower = match listener {
            Some(l) if !changes.is_empty() && l.follows(source.entry().id) => l,
            _ => return self.commit(txn).await,
        };
        let seq = self.next_change_seq();
        txn.put(changelog_key(seq), encode(source.entry().id, &changes)?);
        self.commit(txn).await?;
        follower
            .on_committed(LoggedChange {
                seq,
                source: source.entry().id,
                changes,
                checkpoint: Vec::new(),
            })
            .await
    }

    /// Every change the dataflow has not checkpointed yet, in order.
    pub fn pending_changes(&self) -> Result<Vec<LoggedChange>> {
        let mut out = Vec::new();
        for (k, v) in self.store().scan_prefix(&[CHANGELOG_PREFIX])? {
            let seq = k
                .get(1..9)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| SluiceError::Storage("corrupt changelog key".to_owned()))?;
            let (source, changes) = decode(&v)?;
            out.push(LoggedChange {
                seq,
                source,
                changes,
                checkpoint: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Commits a checkpoint of the dataflow (operator state, view rows, the
    /// removal of the changelog entries it covers), never in the middle of
    /// a query's reads. Not synced: a crash that loses it also loses every
    /// later write, and the changelog replays what it covered.
    pub async fn commit_checkpoint(&self, batch: WriteBatch) -> Result<()> {
        let _exclusive = self.lock_commits().await;
        Ok(self.store().write_relaxed(batch)?)
    }
}

impl Relation {
    /// Why this view stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Marks this view as stopped at `reason` (the marker is persisted by
    /// the checkpoint that reports it).
    pub fn set_failure(&self, reason: String) {
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(reason);
        }
    }

    /// The error a read of a stopped view gets.
    pub fn check_not_failed(&self) -> Result<()> {
        match self.failure() {
            Some(reason) => Err(SluiceError::ViewFailed {
                name: self.name().to_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn changes_round_trip_with_their_signs() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
            ],
        )
        .expect("batch");
        let retract = ChangeBatch::new(batch.clone(), vec![-1, 1]);
        let (source, back) = decode(&encode(7, &retract).expect("encode")).expect("decode");
        assert_eq!(source, 7);
        assert_eq!(back.batch, batch);
        assert_eq!(back.sign(0), -1);
        assert_eq!(back.sign(1), 1);
        let (_, inserts) =
            decode(&encode(7, &ChangeBatch::inserts(batch)).expect("encode")).expect("decode");
        assert!(inserts.is_append_only());
    }
}
