//! Event time in [`Recompute`]: the state a watermark closes.
//!
//! A GROUP BY over event-time windows ([`WindowClose`]) has group columns
//! (`window_start`, `window_end`) whose values in rows that are not late
//! the watermark bounds from below ([`Bound`]). A group below the bound is
//! closed: its state is freed (and, with `EMIT ON WINDOW CLOSE`, its final
//! row emitted), and a row that arrives for it later is late.
//!
//! An interval join ([`Expiry`]) has conditions `x <= y + k` between a
//! column `x` of one side and `y` of the other: a row whose `y + k` is
//! below the bound of `x` can match no row to come, so it is dropped, and a
//! new row whose `x` is below the bound at the last expiry is late (what it
//! would have matched may be gone). How rows are found and dropped is in
//! [`super::expire`].
//!
//! Each such check is a *slot*: its bound at the last watermark (persisted
//! under the operator's state, so a restart judges lateness the same way)
//! and, in memory, the smallest value still in state, so that a watermark
//! that closes nothing costs no scan.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::{count_of, decode_rows, split_entry, Recompute, MERGED_SIDE, OUTPUT_SIDE};
use crate::late::LateRows;
use crate::OpContext;

/// Encoded rows with their multiplicities.
type Rows = Vec<(Vec<u8>, i64)>;

/// How many groups a window close sorts at once.
const CLOSE_CHUNK: usize = 4096;
/// Where the slots' bounds are kept, under the operator's prefix.
const SLOT_SIDE: u8 = 3;
/// The column of the one-row batch a [`Bound`] is evaluated on.
pub const WATERMARK_COLUMN: &str = "__watermark";

/// A lower bound, as a function of a watermark, on the values a column can
/// still take in rows that are not late: the minimum of `exprs`, each
/// evaluated on a one-row batch whose only column ([`WATERMARK_COLUMN`], of
/// type `watermark_type`) holds the watermark.
#[derive(Clone)]
pub struct Bound {
    /// The bounds; the smallest holds.
    pub exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The type of the event-time column the watermark is of.
    pub watermark_type: DataType,
}

impl Bound {
    /// The bound at `watermark`, in microseconds.
    pub fn at(&self, watermark: i64) -> Result<Option<i64>> {
        let micros: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![watermark]));
        let value = cast(&micros, &self.watermark_type)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            WATERMARK_COLUMN,
            self.watermark_type.clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![value])?;
        let mut bound: Option<i64> = None;
        for expr in &self.exprs {
            let v = expr.evaluate(&batch)?.into_array(1)?;
            let Some(v) = micros_of(&v)?.first().copied().flatten() else {
                return Ok(None);
            };
            bound = Some(bound.map_or(v, |b| b.min(v)));
        }
        Ok(bound)
    }
}

/// A timestamp (or date) column as microseconds.
pub fn micros_of(values: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let micros = cast(values, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let micros = micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| SluiceError::internal("event time is not a timestamp"))?;
    Ok(micros.iter().collect())
}

/// A GROUP BY whose groups close with the watermark.
pub struct WindowClose {
    /// The group columns the watermark bounds (index among the group
    /// columns, which lead the output), with their bounds.
    pub columns: Vec<(usize, Bound)>,
    /// Emit each group's row once, when it closes, instead of updates.
    pub emit_on_close: bool,
    /// The input column holding the event time, if the input has it (for
    /// late-row reports).
    pub event_time: Option<usize>,
}

/// One interval-join expiry: rows of input `side` whose `column` plus
/// `offset` is below the bound of `other`'s `other_column` can match no
/// row to come.
pub struct Expiry {
    /// The input whose rows expire.
    pub side: usize,
    /// Their time column.
    pub column: usize,
    /// `k` of `x <= y + k`, microseconds.
    pub offset: i64,
    /// The other input.
    pub other: usize,
    /// Its time column `x`.
    pub other_column: usize,
    /// The bound of `x` at `other`'s watermark.
    pub bound: Bound,
    /// `other`'s event-time column, if it has it (for late-row reports).
    pub other_event_time: Option<usize>,
}

/// What a [`Recompute`] knows of event time.
pub enum EventTime {
    /// A windowed GROUP BY.
    Window(WindowClose),
    /// An interval join.
    Interval(Vec<Expiry>),
}

/// The slots' values, as loaded.
#[derive(Debug, Default)]
pub(super) struct Slots {
    loaded: bool,
    /// The input watermark at the last close.
    pub(super) watermark: Option<i64>,
    /// Each slot's bound at the last close.
    pub(super) bounds: Vec<Option<i64>>,
    /// Each slot's smallest value still in state (`None`: unknown).
    pub(super) smallest: Vec<Option<i64>>,
    /// Each slot's expiry scan in progress, if any (see [`super::expire`]).
    pub(super) passes: Vec<Option<super::expire::Pass>>,
}

/// Lowers `smallest` (when known) to the smallest of `values`, and the
/// smallest new value of an expiry scan in progress.
fn keep_smallest(
    smallest: &mut Option<i64>,
    pass: Option<&mut super::expire::Pass>,
    values: &[Option<i64>],
) {
    let Some(min) = values.iter().flatten().min() else {
        return;
    };
    if let Some(s) = smallest.as_mut() {
        *s = (*s).min(*min);
    }
    if let Some(pass) = pass {
        pass.smallest = pass.smallest.min(*min);
    }
}

fn slot_key(state: &[u8], slot: usize) -> Vec<u8> {
    let mut k = state.to_vec();
    k.push(SLOT_SIDE);
    k.extend_from_slice(&(slot as u32).to_be_bytes());
    k
}

impl Recompute {
    fn slot_count(&self) -> usize {
        match &self.event_time {
            Some(EventTime::Window(w)) => w.columns.len(),
            Some(EventTime::Interval(e)) => e.len(),
            None => 0,
        }
    }

    fn slots<'s>(
        &self,
        slots: &'s mut Slots,
        state: &[u8],
        ctx: &OpContext<'_>,
    ) -> Result<&'s mut Slots> {
        if !slots.loaded {
            let n = self.slot_count();
            let keys: Vec<Vec<u8>> = (0..=n).map(|i| slot_key(state, i)).collect();
            let values = ctx.txn.multi_get(&keys)?;
            let mut values = values
                .into_iter()
                .map(|v| v.map(|b| count_of(&b)).transpose());
            slots.watermark = values.next().transpose()?.flatten();
            slots.bounds = values.collect::<Result<Vec<_>>>()?;
            slots.smallest = vec![None; n];
            slots.passes = (0..n).map(|_| None).collect();
            slots.loaded = true;
        }
        Ok(slots)
    }

    /// Drops (and reports) the rows of `changes`, arriving on `input`, that
    /// belong to state the watermark already closed.
    pub(super) fn drop_late(
        &self,
        input: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let Some(event_time) = &self.event_time else {
            return Ok(changes);
        };
        let mut guard = self
            .slot_state
            .lock()
            .map_err(|_| SluiceError::internal("slot lock poisoned"))?;
        let slots = self.slots(&mut guard, state, ctx)?;
        let batch = &changes.batch;
        // The values judged against each slot's bound, and the column that
        // holds the rows' event time (read only if some row is late).
        let mut checks: Vec<(usize, Vec<Option<i64>>)> = Vec::new();
        let mut time_column: Option<usize> = None;
        match event_time {
            EventTime::Window(w) => {
                for (slot, (column, _)) in w.columns.iter().enumerate() {
                    let key = &self.inputs[input].keys[*column];
                    let values = micros_of(&key.evaluate(batch)?.into_array(batch.num_rows())?)?;
                    // New groups that may close later: keep the smallest.
                    keep_smallest(&mut slots.smallest[slot], None, &values);
                    checks.push((slot, values));
                }
                time_column = w.event_time;
            }
            EventTime::Interval(expiries) => {
                for (slot, e) in expiries.iter().enumerate() {
                    if e.other == input {
                        checks.push((slot, micros_of(batch.column(e.other_column))?));
                        time_column =
                            time_column.or(Some(e.other_event_time.unwrap_or(e.other_column)));
                    }
                    if e.side == input {
                        // New rows that may expire later: keep the smallest.
                        let values = micros_of(batch.column(e.column))?;
                        keep_smallest(
                            &mut slots.smallest[slot],
                            slots.passes[slot].as_mut(),
                            &values,
                        );
                    }
                }
            }
        }
        let late: Vec<bool> = (0..batch.num_rows())
            .map(|row| {
                checks.iter().any(|(slot, values)| {
                    matches!((values[row], slots.bounds[*slot]), (Some(v), Some(b)) if v < b)
                })
            })
            .collect();
        if !late.iter().any(|l| *l) {
            return Ok(changes);
        }
        let late_mask = BooleanArray::from(late.clone());
        let rows = filter_record_batch(batch, &late_mask)?;
        let event_time = match time_column {
            Some(c) => micros_of(rows.column(c))?,
            None => vec![None; rows.num_rows()],
        };
        ctx.late.push(LateRows {
            rows,
            event_time,
            watermark: slots.watermark,
        });
        let keep = BooleanArray::from(late.iter().map(|l| !l).collect::<Vec<_>>());
        changes.filter(&keep)
    }

    /// Closes what the watermark passed: see [`crate::Operator::on_watermark`].
    pub(super) fn close(
        &self,
        watermarks: &[Option<i64>],
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        let Some(event_time) = &self.event_time else {
            return Ok(None);
        };
        let mut guard = self
            .slot_state
            .lock()
            .map_err(|_| SluiceError::internal("slot lock poisoned"))?;
        let slots = self.slots(&mut guard, state, ctx)?;
        // The new bound of each slot, and the input watermark it came from.
        let mut advanced = false;
        let mut watermark = slots.watermark;
        let bounds_of: Vec<(usize, &Bound)> = match event_time {
            EventTime::Window(w) => w.columns.iter().map(|(_, b)| (0, b)).collect(),
            EventTime::Interval(e) => e.iter().map(|e| (e.other, &e.bound)).collect(),
        };
        for (slot, (input, bound)) in bounds_of.into_iter().enumerate() {
            let Some(w) = watermarks.get(input).copied().flatten() else {
                continue;
            };
            watermark = Some(watermark.map_or(w, |m| m.max(w)));
            let Some(b) = bound.at(w)? else { continue };
            if slots.bounds[slot].is_none_or(|old| b > old) {
                slots.bounds[slot] = Some(b);
                ctx.txn
                    .put(slot_key(state, slot + 1), b.to_be_bytes().to_vec());
                advanced = true;
            }
        }
        if let Some(w) = watermark {
            slots.watermark = Some(w);
            ctx.txn.put(slot_key(state, 0), w.to_be_bytes().to_vec());
        }
        if !advanced {
            return Ok(None);
        }
        match event_time {
            EventTime::Window(w) => self.close_windows(w, slots, state, ctx),
            EventTime::Interval(expiries) => {
                for (slot, e) in expiries.iter().enumerate() {
                    self.expire(e, slot, slots, state, ctx)?;
                }
                Ok(None)
            }
        }
    }

    fn close_windows(
        &self,
        window: &WindowClose,
        slots: &mut Slots,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        let nothing_closes = window.columns.iter().enumerate().all(|(slot, _)| {
            matches!((slots.bounds[slot], slots.smallest[slot]), (Some(b), Some(s)) if b <= s)
                || slots.bounds[slot].is_none()
        });
        if nothing_closes {
            return Ok(None);
        }
        let Some(key_codec) = &self.output_key else {
            return Ok(None);
        };
        let merged = self.merge.is_some();
        let mut prefix = state.to_vec();
        prefix.push(if merged { MERGED_SIDE } else { OUTPUT_SIDE });
        let end = sluice_state::prefix_successor(&prefix);
        let parser = key_codec.parser();
        let mut smallest: Vec<Option<i64>> = vec![Some(i64::MAX); window.columns.len()];
        let mut closed: Vec<Vec<u8>> = Vec::new();
        let mut closed_rows: Rows = Vec::new();
        // Sorts complete groups into closed and open, a chunk at a time, so
        // the scan holds only what closes.
        let mut sort = |groups: &mut Vec<(Vec<u8>, Rows)>| -> Result<()> {
            if groups.is_empty() {
                return Ok(());
            }
            let key_columns =
                key_codec.convert_rows(groups.iter().map(|(k, _)| parser.parse(k)))?;
            let values: Vec<Vec<Option<i64>>> = window
                .columns
                .iter()
                .map(|(c, _)| micros_of(&key_columns[*c]))
                .collect::<Result<_>>()?;
            for (g, (key, rows)) in groups.drain(..).enumerate() {
                let is_closed = values.iter().enumerate().any(
                    |(slot, v)| matches!((v[g], slots.bounds[slot]), (Some(v), Some(b)) if v < b),
                );
                if is_closed {
                    closed.push(key);
                    if window.emit_on_close {
                        closed_rows.extend(rows);
                    }
                } else {
                    for (slot, v) in values.iter().enumerate() {
                        if let (Some(v), Some(s)) = (v[g], &mut smallest[slot]) {
                            *s = (*s).min(v);
                        }
                    }
                }
            }
            Ok(())
        };
        // The output side's entries, grouped by key; the last group may
        // go on in the next entries.
        let mut groups: Vec<(Vec<u8>, Rows)> = Vec::new();
        let mut failed: Option<SluiceError> = None;
        ctx.txn.visit_range(&prefix, end.as_deref(), &mut |k, v| {
            let entry = split_entry(&k[prefix.len()..]).and_then(|(key, row)| {
                if merged {
                    // One row per group, in the value.
                    return Ok((key, v.to_vec(), 1));
                }
                Ok((key, row.to_vec(), count_of(v)?))
            });
            let (key, row, n) = match entry {
                Ok(e) => e,
                Err(err) => {
                    failed = Some(err);
                    return false;
                }
            };
            match groups.last_mut() {
                Some((last, rows)) if last.as_slice() == key => rows.push((row, n)),
                _ => {
                    if groups.len() > CLOSE_CHUNK {
                        let open = groups.pop();
                        if let Err(err) = sort(&mut groups) {
                            failed = Some(err);
                            return false;
                        }
                        groups.extend(open);
                    }
                    groups.push((key.to_vec(), vec![(row, n)]));
                }
            }
            true
        })?;
        if let Some(err) = failed {
            return Err(err);
        }
        sort(&mut groups)?;
        for key in closed {
            if merged {
                ctx.txn
                    .delete(Self::partition_prefix(state, MERGED_SIDE, &key));
            } else {
                ctx.txn
                    .delete_prefix(Self::partition_prefix(state, 0, &key))?;
                ctx.txn
                    .delete_prefix(Self::partition_prefix(state, OUTPUT_SIDE, &key))?;
            }
        }
        slots.smallest = smallest;
        if closed_rows.is_empty() {
            return Ok(None);
        }
        closed_rows.sort();
        let batch = decode_rows(&self.output_rows, &self.schema, &closed_rows)?;
        Ok(Some(ChangeBatch::inserts(batch)))
    }
}
