//! Writes to relations inside a [`StateTxn`], each returning the change it
//! made (what the views downstream consume; see `changelog.rs` for how it
//! gets there), and the rows of views.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_sql::RelationKind;
use sluice_state::StateTxn;

use crate::catalog::{key, Relation, LOG_PREFIX, ROWS_PREFIX, STATE_PREFIX, VIEW_ROWS_PREFIX};

/// The key prefix under which the dataflow keeps the operator state of the
/// view with this id.
pub fn state_prefix(view_id: u64) -> Vec<u8> {
    key(STATE_PREFIX, view_id)
}

fn take(batch: &RecordBatch, indices: Vec<u32>) -> Result<RecordBatch> {
    Ok(take_record_batch(batch, &UInt32Array::from(indices))?)
}

impl Relation {
    pub(crate) fn row_key(&self, key_bytes: &[u8]) -> Vec<u8> {
        let mut k = key(ROWS_PREFIX, self.entry.id);
        k.extend_from_slice(key_bytes);
        k
    }

    /// Upserts the rows of a table (a later row of a key wins) and returns
    /// the change: the replaced rows retracted, the new rows inserted.
    pub fn upsert(&self, txn: &mut StateTxn, batch: &RecordBatch) -> Result<ChangeBatch> {
        let keys = self.codec.encode_keys(batch)?;
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            last.insert(k.as_slice(), i);
        }
        let winners: Vec<u32> = (0..keys.len())
            .filter(|&i| last.get(keys[i].as_slice()) == Some(&i))
            .map(|i| i as u32)
            .collect();
        let batch = take(batch, winners.clone())?;
        let full_keys: Vec<Vec<u8>> = winners
            .iter()
            .map(|&i| self.row_key(&keys[i as usize]))
            .collect();
        let old = txn.multi_get(&full_keys)?;
        let values = self.codec.encode_values(&batch)?;
        let mut retracted = Vec::new();
        let mut inserted = Vec::new();
        for (i, ((k, new), old)) in full_keys.into_iter().zip(values).zip(old).enumerate() {
            if old.as_ref() == Some(&new) {
                continue; // the same row again: no change
            }
            if let Some(old) = old {
                retracted.push(old);
            }
            inserted.push(i as u32);
            txn.put(k, new);
        }
        let old_rows = self
            .codec
            .decode_values(retracted.iter().map(Vec::as_slice))?;
        let new_rows = take(&batch, inserted)?;
        let mut signs = vec![-1i8; old_rows.num_rows()];
        signs.extend(std::iter::repeat_n(1i8, new_rows.num_rows()));
        let both = ChangeBatch::concat(
            self.schema.clone(),
            &[
                ChangeBatch::inserts(old_rows),
                ChangeBatch::inserts(new_rows),
            ],
        )?;
        Ok(ChangeBatch::new(both.batch, signs))
    }

    /// Deletes these current rows of a table and returns the change.
    pub fn delete_rows(&self, txn: &mut StateTxn, rows: &RecordBatch) -> Result<ChangeBatch> {
        for k in self.codec.encode_keys(rows)? {
            txn.delete(self.row_key(&k));
        }
        Ok(ChangeBatch::new(rows.clone(), vec![-1; rows.num_rows()]))
    }

    /// Appends rows to a stream's log and returns the change.
    pub fn append(&self, txn: &mut StateTxn, batch: &RecordBatch) -> Result<ChangeBatch> {
        self.put_numbered(txn, LOG_PREFIX, batch)?;
        Ok(ChangeBatch::inserts(batch.clone()))
    }

    /// Stores `batch` in Arrow IPC form as the next numbered batch under
    /// `prefix` (a stream's log, an appended view's rows).
    fn put_numbered(&self, txn: &mut StateTxn, prefix: u8, batch: &RecordBatch) -> Result<()> {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut k = key(prefix, self.entry.id);
        k.extend_from_slice(&seq.to_be_bytes());
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &self.schema)?;
            w.write(batch)?;
            w.finish()?;
        }
        txn.put(k, buf);
        Ok(())
    }

    /// Applies a view's output changes to its rows (a multiset: each
    /// distinct row with its multiplicity; for an appended view, the
    /// batches as they come).
    pub fn apply_view_changes(&self, txn: &mut StateTxn, changes: &ChangeBatch) -> Result<()> {
        if self.entry.kind != RelationKind::View {
            return Err(SluiceError::internal("view changes applied to a non-view"));
        }
        if self.entry.appended {
            if !changes.is_append_only() {
                return Err(SluiceError::internal(format!(
                    "view \"{}\" keeps appended rows but got a retraction",
                    self.entry.name
                )));
            }
            if changes.batch.num_rows() > 0 {
                self.put_numbered(txn, VIEW_ROWS_PREFIX, &changes.batch)?;
            }
            return Ok(());
        }
        let prefix = key(VIEW_ROWS_PREFIX, self.entry.id);
        let rows = self.codec.encode_values(&changes.batch)?;
        let mut deltas: HashMap<Vec<u8>, i64> = HashMap::new();
        for (i, row) in rows.into_iter().enumerate() {
            let mut k = prefix.clone();
            k.extend_from_slice(&row);
            *deltas.entry(k).or_default() += i64::from(changes.sign(i));
        }
        let keys: Vec<Vec<u8>> = deltas.keys().cloned().collect();
        let current = txn.multi_get(&keys)?;
        for (k, old) in keys.into_iter().zip(current) {
            let old =
                match old {
                    Some(b) => i64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                        SluiceError::Storage("corrupt view row multiplicity".into())
                    })?),
                    None => 0,
                };
            let new = old + deltas[&k];
            if new < 0 {
                return Err(SluiceError::internal(format!(
                    "view \"{}\" would hold a row {new} times",
                    self.entry.name
                )));
            }
            if new == 0 {
                txn.delete(k);
            } else {
                txn.put(k, new.to_be_bytes().to_vec());
            }
        }
        Ok(())
    }

    /// The rows of a view, each repeated by its multiplicity.
    pub fn read_view_rows(&self, txn_or_store: &dyn RowSource) -> Result<RecordBatch> {
        let prefix = key(VIEW_ROWS_PREFIX, self.entry.id);
        let pairs = txn_or_store.scan(&prefix)?;
        if self.entry.appended {
            let mut batches = Vec::with_capacity(pairs.len());
            for (_, bytes) in pairs {
                for batch in StreamReader::try_new(bytes.as_slice(), None)? {
                    batches.push(batch?);
                }
            }
            return Ok(concat_batches(&self.schema, &batches)?);
        }
        let mut repeat = Vec::with_capacity(pairs.len());
        for (i, (_, count)) in pairs.iter().enumerate() {
            let n = i64::from_be_bytes(
                count
                    .as_slice()
                    .try_into()
                    .map_err(|_| SluiceError::Storage("corrupt view row multiplicity".into()))?,
            );
            repeat.extend(std::iter::repeat_n(i as u32, n.max(0) as usize));
        }
        let distinct = self
            .codec
            .decode_values(pairs.iter().map(|(k, _)| &k[prefix.len()..]))?;
        take(&distinct, repeat)
    }
}

/// Where rows are read from: the store (a snapshot) or a transaction.
pub trait RowSource {
    /// Every pair under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

impl RowSource for StateTxn {
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan_prefix(prefix)?)
    }
}

impl RowSource for Arc<dyn sluice_state::StateBackend> {
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan_prefix(prefix)?)
    }
}
