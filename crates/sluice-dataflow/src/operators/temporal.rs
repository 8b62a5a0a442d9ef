//! `TemporalJoin`: `stream JOIN table FOR SYSTEM_TIME AS OF stream.ts`, the
//! event-time enrichment join. Each event meets the table row that was
//! current at the event's time, however late either side arrives.
//!
//! The table side is versioned: every row the table takes is kept as a
//! version of its join key, valid from its event time (the table's
//! `WATERMARK FOR` column) until the next version's. A delete without a new
//! row ends the key at the latest event time the table has seen.
//!
//! An event at `t` can be answered once the table's watermark passes `t`
//! (no version at or before `t` is still to come): until then it waits in
//! state, and the operator's output watermark waits with it. The output is
//! append-only: a joined event is never revised.
//!
//! State is freed with the watermark `W`, the smaller of the two inputs':
//! of a key's versions at or before `W`, only the newest can still answer
//! an event that is not late. An event behind `W` is late: what it should
//! meet may be gone, so it is dropped and reported.
//!
//! State (under the operator's prefix):
//! - `0 <key length u32> <key> <version time>` -> `1 <row>` or `0` (a
//!   delete);
//! - `1 <event time> <seq u64>` -> `<row>`, the events waiting;
//! - `2 <key length u32> <key>` -> ``, keys with versions to free;
//! - `3` -> the watermarks seen, the latest version time, the next seq.
//!
//! Times are microseconds, stored so that byte order is time order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::kernels::boolean::{and, not};
use datafusion::arrow::compute::kernels::nullif::nullif;
use datafusion::arrow::compute::{filter_record_batch, take, take_record_batch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::event_time::micros_of;
use super::layout::{ordered_time, partition_prefix, side_prefix, split_entry, time_of};
use crate::late::LateRows;
use crate::{OpContext, Operator};

use super::layout::temporal::{DIRTY, META, VERSIONS, WAITING};

/// What the planner knows of an event-time temporal join.
pub struct TemporalSpec {
    /// The join's output: the stream's columns, then the table's.
    pub schema: SchemaRef,
    /// `LEFT JOIN`: an event without a row gets NULLs.
    pub left: bool,
    /// The stream input's schema.
    pub stream_schema: SchemaRef,
    /// The table input's schema.
    pub table_schema: SchemaRef,
    /// The equi-join key, on each side.
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub table_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The stream's `AS OF` column.
    pub stream_time: usize,
    /// The table's event-time column.
    pub table_time: usize,
    /// The table's watermark expression, over a batch whose only column is
    /// its event time.
    pub table_watermark: Arc<dyn PhysicalExpr>,
    /// The rest of the `ON` condition, over the output.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// How `EXPLAIN` names it.
    pub label: String,
}

/// The event-time temporal join.
pub struct TemporalJoin {
    spec: TemporalSpec,
    stream_rows: RowConverter,
    table_rows: RowConverter,
    key_codec: Option<RowConverter>,
    /// The output with every column nullable (before the match is known).
    loose: SchemaRef,
    /// The earliest time among the waiting events: `None` until loaded,
    /// then `Some(None)` when none waits.
    hold: Mutex<Option<Option<i64>>>,
}

/// The operator's bookkeeping, kept under [`META`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Meta {
    stream_watermark: Option<i64>,
    table_watermark: Option<i64>,
    /// The watermark versions were last freed at.
    freed: Option<i64>,
    /// The latest version time the table has seen.
    latest: Option<i64>,
    seq: u64,
}

impl Meta {
    /// The watermark that frees state and makes events late.
    fn watermark(&self) -> Option<i64> {
        Some(self.stream_watermark?.min(self.table_watermark?))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44);
        for v in [
            self.stream_watermark,
            self.table_watermark,
            self.freed,
            self.latest,
        ] {
            out.push(u8::from(v.is_some()));
            out.extend_from_slice(&v.unwrap_or(0).to_be_bytes());
        }
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Meta> {
        let corrupt = || SluiceError::Storage("corrupt temporal join state".into());
        if bytes.len() != 44 {
            return Err(corrupt());
        }
        let mut values = [None; 4];
        for (i, v) in values.iter_mut().enumerate() {
            let at = i * 9;
            let n = i64::from_be_bytes(bytes[at + 1..at + 9].try_into().map_err(|_| corrupt())?);
            *v = (bytes[at] == 1).then_some(n);
        }
        Ok(Meta {
            stream_watermark: values[0],
            table_watermark: values[1],
            freed: values[2],
            latest: values[3],
            seq: u64::from_be_bytes(bytes[36..44].try_into().map_err(|_| corrupt())?),
        })
    }
}

fn max_of(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// One version of a key: its time and row (`None`: deleted).
struct Version {
    time: i64,
    row: Option<Vec<u8>>,
    key: Vec<u8>,
}

impl TemporalJoin {
    pub fn try_new(spec: TemporalSpec) -> Result<Self> {
        let fields = |s: &SchemaRef| -> Vec<SortField> {
            s.fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect()
        };
        let key_types = spec
            .stream_keys
            .iter()
            .map(|k| k.data_type(&spec.stream_schema))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let key_codec = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                key_types.into_iter().map(SortField::new).collect(),
            )?)
        };
        let loose = Arc::new(Schema::new(
            spec.schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(TemporalJoin {
            stream_rows: RowConverter::new(fields(&spec.stream_schema))?,
            table_rows: RowConverter::new(fields(&spec.table_schema))?,
            key_codec,
            loose,
            hold: Mutex::new(None),
            spec,
        })
    }

    fn keys_of(&self, keys: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        super::layout::encode_keys(self.key_codec.as_ref(), keys, batch)
    }

    fn load_meta(&self, state: &[u8], ctx: &OpContext<'_>) -> Result<Meta> {
        match ctx
            .txn
            .multi_get(&[side_prefix(state, META)])?
            .pop()
            .flatten()
        {
            Some(bytes) => Meta::decode(&bytes),
            None => Ok(Meta::default()),
        }
    }

    fn save_meta(&self, state: &[u8], ctx: &mut OpContext<'_>, meta: &Meta) {
        ctx.txn.put(side_prefix(state, META), meta.encode());
    }

    fn set_hold(&self, hold: Option<i64>) -> Result<()> {
        *self
            .hold
            .lock()
            .map_err(|_| SluiceError::internal("temporal join hold poisoned"))? = Some(hold);
        Ok(())
    }

    /// Loads the hold from the waiting events after a restart.
    fn ensure_hold(&self, state: &[u8], ctx: &OpContext<'_>) -> Result<()> {
        let loaded = self
            .hold
            .lock()
            .map_err(|_| SluiceError::internal("temporal join hold poisoned"))?
            .is_some();
        if loaded {
            return Ok(());
        }
        let prefix = side_prefix(state, WAITING);
        let first = match ctx.txn.scan_prefix(&prefix)?.first() {
            Some((k, _)) => Some(time_of(&k[prefix.len()..prefix.len() + 8])?),
            None => None,
        };
        self.set_hold(first)
    }

    /// A key's versions, oldest first.
    fn versions(&self, state: &[u8], ctx: &OpContext<'_>, key: &[u8]) -> Result<Vec<Version>> {
        let prefix = partition_prefix(state, VERSIONS, key);
        ctx.txn
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| {
                Ok(Version {
                    time: time_of(&k[prefix.len()..])?,
                    row: match v.split_first() {
                        Some((1, row)) => Some(row.to_vec()),
                        _ => None,
                    },
                    key: k,
                })
            })
            .collect()
    }

    /// Joins `events` (stream rows whose time the table's watermark has
    /// passed) with the versions current at their times.
    fn answer(
        &self,
        events: &RecordBatch,
        state: &[u8],
        ctx: &OpContext<'_>,
    ) -> Result<RecordBatch> {
        let keys = self.keys_of(&self.spec.stream_keys, events)?;
        let times = micros_of(events.column(self.spec.stream_time))?;
        let mut loaded: HashMap<&[u8], Vec<Version>> = HashMap::new();
        for key in &keys {
            if !loaded.contains_key(key.as_slice()) {
                loaded.insert(key, self.versions(state, ctx, key)?);
            }
        }
        let mut chosen: Vec<&[u8]> = Vec::new();
        let mut indices: Vec<Option<u32>> = Vec::with_capacity(events.num_rows());
        for (key, time) in keys.iter().zip(&times) {
            let versions = &loaded[key.as_slice()];
            let current = time.and_then(|t| {
                let after = versions.partition_point(|v| v.time <= t);
                after
                    .checked_sub(1)
                    .and_then(|i| versions[i].row.as_deref())
            });
            indices.push(current.map(|row| {
                chosen.push(row);
                (chosen.len() - 1) as u32
            }));
        }
        let table = &self.spec.table_schema;
        let right: Vec<ArrayRef> = if chosen.is_empty() {
            table
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), events.num_rows()))
                .collect()
        } else {
            let parser = self.table_rows.parser();
            let rows = self
                .table_rows
                .convert_rows(chosen.iter().map(|r| parser.parse(r)))?;
            let at = UInt32Array::from(indices.clone());
            rows.iter()
                .map(|c| Ok(take(c.as_ref(), &at, None)?))
                .collect::<Result<_>>()?
        };
        let mut columns = events.columns().to_vec();
        columns.extend(right);
        let joined = RecordBatch::try_new(self.loose.clone(), columns)?;
        let found = BooleanArray::from(indices.iter().map(Option::is_some).collect::<Vec<_>>());
        let matched = match &self.spec.filter {
            Some(f) => {
                let passed = f.evaluate(&joined)?.into_array(joined.num_rows())?;
                let passed = passed
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| SluiceError::internal("join filter is not boolean"))?;
                // NULL is no match.
                let passed: BooleanArray = passed.iter().map(|b| Some(b == Some(true))).collect();
                and(&found, &passed)?
            }
            None => found,
        };
        let out = if self.spec.left {
            let unmatched = not(&matched)?;
            let width = self.spec.stream_schema.fields().len();
            let columns = joined
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i < width {
                        Ok(c.clone())
                    } else {
                        Ok(nullif(c.as_ref(), &unmatched)?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            RecordBatch::try_new(self.loose.clone(), columns)?
        } else {
            filter_record_batch(&joined, &matched)?
        };
        Ok(RecordBatch::try_new(
            self.spec.schema.clone(),
            out.columns().to_vec(),
        )?)
    }

    /// Answers the waiting events the table's watermark has passed.
    fn release(&self, meta: &Meta, state: &[u8], ctx: &mut OpContext<'_>) -> Result<RecordBatch> {
        let Some(table_watermark) = meta.table_watermark else {
            return Ok(RecordBatch::new_empty(self.spec.schema.clone()));
        };
        let prefix = side_prefix(state, WAITING);
        let mut ready = Vec::new();
        let mut hold = None;
        for (k, row) in ctx.txn.scan_prefix(&prefix)? {
            let t = time_of(&k[prefix.len()..prefix.len() + 8])?;
            if t >= table_watermark {
                hold = Some(t);
                break;
            }
            ready.push(row);
            ctx.txn.delete(k);
        }
        self.set_hold(hold)?;
        if ready.is_empty() {
            return Ok(RecordBatch::new_empty(self.spec.schema.clone()));
        }
        let parser = self.stream_rows.parser();
        let columns = self
            .stream_rows
            .convert_rows(ready.iter().map(|r| parser.parse(r)))?;
        let events = RecordBatch::try_new(self.spec.stream_schema.clone(), columns)?;
        self.answer(&events, state, ctx)
    }

    /// Frees the versions no event that is not late can meet.
    fn free(&self, meta: &mut Meta, state: &[u8], ctx: &mut OpContext<'_>) -> Result<()> {
        let Some(w) = meta.watermark() else {
            return Ok(());
        };
        if meta.freed.is_some_and(|f| f >= w) {
            return Ok(());
        }
        meta.freed = Some(w);
        let prefix = side_prefix(state, DIRTY);
        for (dirty, _) in ctx.txn.scan_prefix(&prefix)? {
            let key = split_entry(&dirty[prefix.len()..])?.0.to_vec();
            let mut versions = self.versions(state, ctx, &key)?;
            let at_or_before = versions.partition_point(|v| v.time <= w);
            if let Some(newest) = at_or_before.checked_sub(1) {
                // Older versions are superseded; a delete answers like no
                // version at all.
                let drop = if versions[newest].row.is_none() {
                    newest + 1
                } else {
                    newest
                };
                for v in versions.drain(..drop) {
                    ctx.txn.delete(v.key);
                }
            }
            let settled = versions.len() <= 1 && versions.iter().all(|v| v.time <= w);
            if settled {
                ctx.txn.delete(dirty);
            }
        }
        Ok(())
    }

    fn process_stream(
        &self,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if !changes.is_append_only() {
            return Err(SluiceError::internal(
                "temporal join got a retraction on its stream side",
            ));
        }
        self.ensure_hold(state, ctx)?;
        let mut meta = self.load_meta(state, ctx)?;
        let batch = changes.batch;
        let times = micros_of(batch.column(self.spec.stream_time))?;
        let watermark = meta.watermark();
        let (mut late, mut now, mut wait) = (Vec::new(), Vec::new(), Vec::new());
        for (i, t) in times.iter().enumerate() {
            match t {
                None => late.push(i as u32),
                Some(t) if watermark.is_some_and(|w| *t < w) => late.push(i as u32),
                Some(t) if meta.table_watermark.is_some_and(|w| *t < w) => now.push(i as u32),
                Some(_) => wait.push(i as u32),
            }
        }
        if !late.is_empty() {
            ctx.late.push(LateRows {
                rows: take_record_batch(&batch, &UInt32Array::from(late.clone()))?,
                event_time: late.iter().map(|&i| times[i as usize]).collect(),
                watermark,
            });
        }
        if !wait.is_empty() {
            let waiting = take_record_batch(&batch, &UInt32Array::from(wait.clone()))?;
            let rows = self.stream_rows.convert_columns(waiting.columns())?;
            let mut earliest: Option<i64> = None;
            for (row, &i) in rows.iter().zip(&wait) {
                let t = times[i as usize].unwrap_or(i64::MIN);
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                let mut k = side_prefix(state, WAITING);
                k.extend_from_slice(&ordered_time(t));
                k.extend_from_slice(&meta.seq.to_be_bytes());
                meta.seq += 1;
                ctx.txn.put(k, row.as_ref().to_vec());
            }
            let mut hold = self
                .hold
                .lock()
                .map_err(|_| SluiceError::internal("temporal join hold poisoned"))?;
            if let Some(current) = hold.as_mut() {
                *current = match (*current, earliest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            drop(hold);
            self.save_meta(state, ctx, &meta);
        }
        let out = if now.is_empty() {
            RecordBatch::new_empty(self.spec.schema.clone())
        } else {
            let events = take_record_batch(&batch, &UInt32Array::from(now))?;
            self.answer(&events, state, ctx)?
        };
        Ok(ChangeBatch::inserts(out))
    }

    fn process_table(
        &self,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        self.ensure_hold(state, ctx)?;
        let mut meta = self.load_meta(state, ctx)?;
        let batch = &changes.batch;
        let time_column = batch.column(self.spec.table_time);
        let times = micros_of(time_column)?;
        let keys = self.keys_of(&self.spec.table_keys, batch)?;
        let rows = self.table_rows.convert_columns(batch.columns())?;
        let watermark_batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "ts",
                time_column.data_type().clone(),
                true,
            )])),
            vec![time_column.clone()],
        )?;
        let marks = self
            .spec
            .table_watermark
            .evaluate(&watermark_batch)?
            .into_array(batch.num_rows())?;
        let table_watermark = micros_of(&marks)?.into_iter().flatten().max();
        meta.latest = max_of(meta.latest, times.iter().flatten().copied().max());
        let mut inserted: HashSet<&[u8]> = HashSet::new();
        let mut deleted: Vec<&[u8]> = Vec::new();
        for i in 0..batch.num_rows() {
            let key = keys[i].as_slice();
            if changes.sign(i) < 0 {
                deleted.push(key);
                continue;
            }
            // A row without its event time cannot be placed in time.
            let Some(t) = times[i] else { continue };
            inserted.insert(key);
            let mut k = partition_prefix(state, VERSIONS, key);
            k.extend_from_slice(&ordered_time(t));
            let mut value = vec![1];
            value.extend_from_slice(rows.row(i).as_ref());
            ctx.txn.put(k, value);
            ctx.txn.put(partition_prefix(state, DIRTY, key), Vec::new());
        }
        if let Some(latest) = meta.latest {
            for key in deleted {
                if inserted.contains(key) {
                    continue;
                }
                let mut k = partition_prefix(state, VERSIONS, key);
                k.extend_from_slice(&ordered_time(latest));
                ctx.txn.put(k, vec![0]);
                ctx.txn.put(partition_prefix(state, DIRTY, key), Vec::new());
            }
        }
        let moved = table_watermark.is_some_and(|w| meta.table_watermark.is_none_or(|m| w > m));
        meta.table_watermark = max_of(meta.table_watermark, table_watermark);
        let out = if moved {
            self.release(&meta, state, ctx)?
        } else {
            RecordBatch::new_empty(self.spec.schema.clone())
        };
        self.save_meta(state, ctx, &meta);
        Ok(ChangeBatch::inserts(out))
    }
}

#[async_trait]
impl Operator for TemporalJoin {
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if input == 0 {
            self.process_stream(changes, state, ctx)
        } else {
            self.process_table(changes, state, ctx)
        }
    }

    async fn on_watermark(
        &self,
        watermarks: &[Option<i64>],
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        self.ensure_hold(state, ctx)?;
        let mut meta = self.load_meta(state, ctx)?;
        let before = meta;
        meta.stream_watermark =
            max_of(meta.stream_watermark, watermarks.first().copied().flatten());
        meta.table_watermark = max_of(meta.table_watermark, watermarks.get(1).copied().flatten());
        let out = if meta.table_watermark != before.table_watermark {
            self.release(&meta, state, ctx)?
        } else {
            RecordBatch::new_empty(self.spec.schema.clone())
        };
        self.free(&mut meta, state, ctx)?;
        if meta != before {
            self.save_meta(state, ctx, &meta);
        }
        Ok((out.num_rows() > 0).then(|| ChangeBatch::inserts(out)))
    }

    fn watermark_hold(&self) -> Option<i64> {
        match self.hold.lock().map(|h| *h) {
            Ok(Some(hold)) => hold,
            // Not known yet (after a restart): hold everything.
            _ => Some(i64::MIN),
        }
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn state_layout(&self) -> Vec<super::layout::Region> {
        use super::layout::Region;
        vec![
            Region {
                side: VERSIONS,
                name: "the table's versions per key",
                key: "<key length u32> <join key> <version time>",
                value: "1 <row>, or 0 for a delete",
            },
            Region {
                side: WAITING,
                name: "events waiting for the table's watermark",
                key: "<event time> <seq u64>",
                value: "the row",
            },
            Region {
                side: DIRTY,
                name: "keys with versions to free",
                key: "<key length u32> <join key>",
                value: "empty",
            },
            Region {
                side: META,
                name: "watermarks, latest version time, next seq",
                key: "",
                value: "see Meta",
            },
        ]
    }

    fn explain(&self) -> String {
        format!(
            "{} (state: the table's versions per key until the watermark passes them, and the \
             events waiting for the table's watermark)",
            self.spec.label
        )
    }
}

#[cfg(test)]
mod tests;
