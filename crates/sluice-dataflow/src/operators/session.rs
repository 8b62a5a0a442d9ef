//! `Session`: `SESSION(src, ts, gap)` in a view. Each row gets the
//! `window_start` / `window_end` of its session: within a partition (the
//! other GROUP BY columns), rows ordered by time whose times are less than
//! `gap` apart share a session, which runs from its first time to its last
//! plus `gap`. A row can extend a session or merge two: the rows whose
//! session changed are retracted with the old bounds and inserted with the
//! new.
//!
//! A session whose end is at or before the watermark can change no more (a
//! row that is not late comes at or after the watermark, so at or after
//! its end): its rows are freed without output. A row behind the watermark
//! of the last freeing is late (the session it belongs to may be gone):
//! dropped and reported. Every row the operator emits or retracts after
//! watermark `W` has `window_end > W`, which is what lets a GROUP BY over
//! the sessions close (and emit, with `EMIT ON WINDOW CLOSE`) a group once
//! the watermark passes its `window_end`.
//!
//! State (under the operator's prefix): `0 <key length u32> <key> <time>
//! <row>` -> multiplicity (i64), the rows of open sessions in time order;
//! `3` -> the watermark rows were last freed at.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use sluice_common::{ChangeBatch, Result};

use super::event_time::micros_of;
use super::layout::{count_of, ordered_time, partition_prefix, side_prefix, split_entry, time_of};
use crate::late::LateRows;
use crate::{OpContext, Operator};

use super::layout::session::{META, ROWS};

/// One output column of a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionColumn {
    /// An input column, passed through.
    Input(usize),
    /// The session's first time.
    Start,
    /// The session's last time plus the gap.
    End,
}

/// What the planner knows of a `SESSION` window.
pub struct SessionSpec {
    /// The output schema.
    pub schema: SchemaRef,
    /// The input schema.
    pub input_schema: SchemaRef,
    /// The partition columns (input indices).
    pub partition: Vec<usize>,
    /// The time column (input index).
    pub time: usize,
    /// The gap, in microseconds.
    pub gap: i64,
    /// Each output column.
    pub columns: Vec<SessionColumn>,
    /// How `EXPLAIN` names it.
    pub label: String,
}

/// The session window operator.
pub struct Session {
    spec: SessionSpec,
    rows: RowConverter,
    key_codec: Option<RowConverter>,
}

/// Encoded rows of one partition with their times and multiplicities.
type Rows = Vec<(i64, Vec<u8>, i64)>;

/// The sessions of `rows` (sorted by time): each row's (start, end).
fn sessions(rows: &Rows, gap: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut i = 0;
    while i < rows.len() {
        let start = rows[i].0;
        let mut last = start;
        let mut j = i + 1;
        while j < rows.len() && rows[j].0.saturating_sub(last) < gap {
            last = rows[j].0;
            j += 1;
        }
        let end = last.saturating_add(gap);
        out.extend(std::iter::repeat_n((start, end), j - i));
        i = j;
    }
    out
}

impl Session {
    pub fn try_new(spec: SessionSpec) -> Result<Self> {
        let rows = RowConverter::new(
            spec.input_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let key_codec = if spec.partition.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                spec.partition
                    .iter()
                    .map(|&i| SortField::new(spec.input_schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Session {
            spec,
            rows,
            key_codec,
        })
    }

    fn freed(&self, state: &[u8], ctx: &OpContext<'_>) -> Result<Option<i64>> {
        match ctx
            .txn
            .multi_get(&[side_prefix(state, META)])?
            .pop()
            .flatten()
        {
            Some(bytes) => Ok(Some(count_of(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A partition's rows, in time order.
    fn load(&self, state: &[u8], ctx: &OpContext<'_>, key: &[u8]) -> Result<Rows> {
        let prefix = partition_prefix(state, ROWS, key);
        ctx.txn
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| {
                let time = time_of(&k[prefix.len()..prefix.len() + 8])?;
                Ok((time, k[prefix.len() + 8..].to_vec(), count_of(&v)?))
            })
            .collect()
    }

    /// The output rows of `rows` with their session bounds and signs.
    fn output(&self, rows: &[(Vec<u8>, i64, i64, i64)]) -> Result<ChangeBatch> {
        if rows.is_empty() {
            return Ok(ChangeBatch::empty(self.spec.schema.clone()));
        }
        let parser = self.rows.parser();
        let distinct = self
            .rows
            .convert_rows(rows.iter().map(|(r, ..)| parser.parse(r)))?;
        let input = RecordBatch::try_new(self.spec.input_schema.clone(), distinct)?;
        let mut repeat = Vec::new();
        let mut signs = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for (i, (_, start, end, n)) in rows.iter().enumerate() {
            for _ in 0..n.unsigned_abs() {
                repeat.push(i as u32);
                signs.push(n.signum() as i8);
                starts.push(*start);
                ends.push(*end);
            }
        }
        let input = take_record_batch(&input, &UInt32Array::from(repeat))?;
        let time_type: &DataType = self.spec.input_schema.field(self.spec.time).data_type();
        let micros = |v: Vec<i64>| -> Result<ArrayRef> {
            let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(v));
            Ok(cast(&a, time_type)?)
        };
        let (starts, ends) = (micros(starts)?, micros(ends)?);
        let columns = self
            .spec
            .columns
            .iter()
            .map(|c| match c {
                SessionColumn::Input(i) => input.column(*i).clone(),
                SessionColumn::Start => starts.clone(),
                SessionColumn::End => ends.clone(),
            })
            .collect();
        let batch = RecordBatch::try_new(self.spec.schema.clone(), columns)?;
        Ok(ChangeBatch::new(batch, signs))
    }
}

/// The difference between two sessionings of one partition's rows, as
/// (row, start, end, signed multiplicity).
fn diff(
    old: &Rows,
    old_sessions: &[(i64, i64)],
    new: &Rows,
    new_sessions: &[(i64, i64)],
) -> Vec<(Vec<u8>, i64, i64, i64)> {
    let mut counts: HashMap<(&[u8], i64, i64), i64> = HashMap::new();
    for ((_, row, n), (s, e)) in old.iter().zip(old_sessions) {
        *counts.entry((row.as_slice(), *s, *e)).or_default() -= n;
    }
    for ((_, row, n), (s, e)) in new.iter().zip(new_sessions) {
        *counts.entry((row.as_slice(), *s, *e)).or_default() += n;
    }
    let mut out: Vec<(Vec<u8>, i64, i64, i64)> = counts
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((row, s, e), n)| (row.to_vec(), s, e, n))
        .collect();
    // Retractions first, then in time order: a stable output.
    out.sort_by(|a, b| (a.3 > 0, a.1, &a.0).cmp(&(b.3 > 0, b.1, &b.0)));
    out
}

#[async_trait]
impl Operator for Session {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let batch = &changes.batch;
        let times = micros_of(batch.column(self.spec.time))?;
        let freed = self.freed(state, ctx)?;
        let keys: Vec<Vec<u8>> = match &self.key_codec {
            Some(codec) => {
                let columns: Vec<ArrayRef> = self
                    .spec
                    .partition
                    .iter()
                    .map(|&i| batch.column(i).clone())
                    .collect();
                codec
                    .convert_columns(&columns)?
                    .iter()
                    .map(|r| r.as_ref().to_vec())
                    .collect()
            }
            None => vec![Vec::new(); batch.num_rows()],
        };
        let rows = self.rows.convert_columns(batch.columns())?;
        let mut late = Vec::new();
        let mut deltas: HashMap<&[u8], Vec<(i64, Vec<u8>, i64)>> = HashMap::new();
        for i in 0..batch.num_rows() {
            match times[i] {
                Some(t) if freed.is_none_or(|w| t >= w) => {
                    deltas.entry(keys[i].as_slice()).or_default().push((
                        t,
                        rows.row(i).as_ref().to_vec(),
                        i64::from(changes.sign(i)),
                    ));
                }
                _ => late.push(i as u32),
            }
        }
        if !late.is_empty() {
            ctx.late.push(LateRows {
                rows: take_record_batch(batch, &UInt32Array::from(late.clone()))?,
                event_time: late.iter().map(|&i| times[i as usize]).collect(),
                watermark: freed,
            });
        }
        let mut out = Vec::new();
        let mut partitions: Vec<&[u8]> = deltas.keys().copied().collect();
        partitions.sort();
        for key in partitions {
            let old = self.load(state, ctx, key)?;
            let mut merged: HashMap<(i64, Vec<u8>), i64> = HashMap::new();
            for (t, row, n) in &old {
                *merged.entry((*t, row.clone())).or_default() += n;
            }
            for (t, row, n) in &deltas[key] {
                *merged.entry((*t, row.clone())).or_default() += n;
            }
            let prefix = partition_prefix(state, ROWS, key);
            let mut new: Rows = Vec::with_capacity(merged.len());
            for ((t, row), n) in merged {
                let mut k = prefix.clone();
                k.extend_from_slice(&ordered_time(t));
                k.extend_from_slice(&row);
                if n == 0 {
                    ctx.txn.delete(k);
                } else {
                    ctx.txn.put(k, n.to_be_bytes().to_vec());
                    new.push((t, row, n));
                }
            }
            new.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let old_sessions = sessions(&old, self.spec.gap);
            let new_sessions = sessions(&new, self.spec.gap);
            out.extend(diff(&old, &old_sessions, &new, &new_sessions));
        }
        self.output(&out)
    }

    async fn on_watermark(
        &self,
        watermarks: &[Option<i64>],
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        let Some(w) = watermarks.first().copied().flatten() else {
            return Ok(None);
        };
        if self.freed(state, ctx)?.is_some_and(|f| f >= w) {
            return Ok(None);
        }
        let prefix = side_prefix(state, ROWS);
        let all = ctx.txn.scan_prefix(&prefix)?;
        // Entries come partition by partition, each in time order.
        let mut at = 0;
        while at < all.len() {
            let (key, _) = split_entry(&all[at].0[prefix.len()..])?;
            let key = key.to_vec();
            let part_prefix = partition_prefix(state, ROWS, &key);
            let mut rows: Rows = Vec::new();
            let mut entries = Vec::new();
            while at < all.len() && all[at].0.starts_with(&part_prefix) {
                let (k, v) = &all[at];
                let time = time_of(&k[part_prefix.len()..part_prefix.len() + 8])?;
                rows.push((time, Vec::new(), count_of(v)?));
                entries.push(k.clone());
                at += 1;
            }
            for ((_, end), k) in sessions(&rows, self.spec.gap).into_iter().zip(entries) {
                if end <= w {
                    ctx.txn.delete(k);
                }
            }
        }
        ctx.txn
            .put(side_prefix(state, META), w.to_be_bytes().to_vec());
        Ok(None)
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn state_layout(&self) -> Vec<super::layout::Region> {
        use super::layout::Region;
        vec![
            Region {
                side: ROWS,
                name: "rows of open sessions",
                key: "<key length u32> <partition key> <time> <row>",
                value: "multiplicity i64",
            },
            Region {
                side: META,
                name: "watermark rows were last freed at",
                key: "",
                value: "microseconds i64",
            },
        ]
    }

    fn explain(&self) -> String {
        format!(
            "{} (state: the rows of open sessions; frees a session when the watermark passes its \
             end)",
            self.spec.label
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_closer_than_the_gap_share_a_session() {
        let rows: Rows = [0, 5, 20, 24, 40]
            .iter()
            .map(|&t| (t, Vec::new(), 1))
            .collect();
        assert_eq!(
            sessions(&rows, 10),
            vec![(0, 15), (0, 15), (20, 34), (20, 34), (40, 50)]
        );
        // A row at 12 merges the first two sessions.
        let mut merged = rows.clone();
        merged.insert(2, (12, Vec::new(), 1));
        assert_eq!(sessions(&merged, 10)[..4], [(0, 34); 4]);
    }

    #[test]
    fn a_merge_retracts_the_old_bounds() {
        let row = |t: i64| (t, vec![t as u8], 1);
        let old: Rows = vec![row(0), row(20)];
        let new: Rows = vec![row(0), row(10), row(20)];
        let changes = diff(&old, &sessions(&old, 15), &new, &sessions(&new, 15));
        let signed: Vec<(i64, i64, i64)> =
            changes.iter().map(|(_, s, e, n)| (*s, *e, *n)).collect();
        assert_eq!(
            signed,
            vec![
                (0, 15, -1),
                (20, 35, -1),
                (0, 35, 1),
                (0, 35, 1),
                (0, 35, 1)
            ]
        );
    }
}
