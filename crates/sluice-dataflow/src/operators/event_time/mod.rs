//! Event time: the state a watermark closes, shared by the windowed
//! [`GroupBy`](super::GroupBy) and the [`IntervalJoin`](super::IntervalJoin).
//!
//! Both judge rows against *slots*. A slot is a column whose values in rows
//! that are not late the watermark bounds from below ([`Bound`]): a window
//! column of a GROUP BY ([`super::WindowClose`]), the time column of a join
//! side another side's rows expire by ([`super::Expiry`]). A slot keeps its
//! bound at the last watermark, persisted under the operator's prefix (so a
//! restart judges lateness the same way), and, in memory, the smallest
//! value still in state, so that a watermark that closes nothing costs no
//! scan. A row below a slot's bound is late: dropped and reported.
//!
//! State: `<slots side> <0 u32>` -> the input watermark at the last close,
//! `<slots side> <slot + 1 u32>` -> that slot's bound (i64 each).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::layout::partitioned::SLOTS;
use super::layout::{count_of, Region};
use crate::late::LateRows;
use crate::OpContext;

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

/// The slots' values, as loaded.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    loaded: bool,
    /// The input watermark at the last close.
    pub watermark: Option<i64>,
    /// Each slot's bound at the last close.
    pub bounds: Vec<Option<i64>>,
    /// Each slot's smallest value still in state (`None`: unknown).
    pub smallest: Vec<Option<i64>>,
}

/// Lowers `smallest` (when known) to the smallest of `values`.
pub(crate) fn keep_smallest(smallest: &mut Option<i64>, values: &[Option<i64>]) {
    let Some(min) = values.iter().flatten().min() else {
        return;
    };
    if let Some(s) = smallest.as_mut() {
        *s = (*s).min(*min);
    }
}

fn slot_key(prefix: &[u8], slot: usize) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.push(SLOTS);
    k.extend_from_slice(&(slot as u32).to_be_bytes());
    k
}

/// The slots' region, for [`crate::Operator::state_layout`].
pub(crate) fn slots_region() -> Region {
    Region {
        side: SLOTS,
        name: "event-time slots",
        key: "<0 u32> (the watermark) or <slot + 1 u32> (its bound)",
        value: "microseconds i64",
    }
}

impl Slots {
    /// The `n` slots, read from state the first time.
    pub fn loaded(&mut self, n: usize, prefix: &[u8], ctx: &OpContext<'_>) -> Result<&mut Self> {
        if !self.loaded {
            let keys: Vec<Vec<u8>> = (0..=n).map(|i| slot_key(prefix, i)).collect();
            let values = ctx.txn.multi_get(&keys)?;
            let mut values = values
                .into_iter()
                .map(|v| v.map(|b| count_of(&b)).transpose());
            self.watermark = values.next().transpose()?.flatten();
            self.bounds = values.collect::<Result<Vec<_>>>()?;
            self.bounds.resize(n, None);
            self.smallest = vec![None; n];
            self.loaded = true;
        }
        Ok(self)
    }

    /// Takes the input watermarks: each slot `i`'s bound is `bounds[i].1`
    /// at the watermark of input `bounds[i].0`. Stores what moved; returns
    /// whether some slot's bound advanced.
    pub fn advance(
        &mut self,
        watermarks: &[Option<i64>],
        bounds: &[(usize, &Bound)],
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<bool> {
        let mut advanced = false;
        let mut watermark = self.watermark;
        for (slot, (input, bound)) in bounds.iter().enumerate() {
            let Some(w) = watermarks.get(*input).copied().flatten() else {
                continue;
            };
            watermark = Some(watermark.map_or(w, |m| m.max(w)));
            let Some(b) = bound.at(w)? else { continue };
            if self.bounds[slot].is_none_or(|old| b > old) {
                self.bounds[slot] = Some(b);
                ctx.txn
                    .put(slot_key(prefix, slot + 1), b.to_be_bytes().to_vec());
                advanced = true;
            }
        }
        if let Some(w) = watermark {
            self.watermark = Some(w);
            ctx.txn.put(slot_key(prefix, 0), w.to_be_bytes().to_vec());
        }
        Ok(advanced)
    }

    /// Drops (and reports in `ctx.late`) the rows of `changes` with a value
    /// below its slot's bound: `checks` are `(slot, each row's value)`;
    /// `time_column` holds the rows' event time, if they have it.
    pub fn drop_late(
        &self,
        changes: ChangeBatch,
        checks: &[(usize, Vec<Option<i64>>)],
        time_column: Option<usize>,
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let batch = &changes.batch;
        let late: Vec<bool> = (0..batch.num_rows())
            .map(|row| {
                checks.iter().any(|(slot, values)| {
                    matches!((values[row], self.bounds[*slot]), (Some(v), Some(b)) if v < b)
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
            watermark: self.watermark,
        });
        let keep = BooleanArray::from(late.iter().map(|l| !l).collect::<Vec<_>>());
        changes.filter(&keep)
    }
}

/// Locks a mutex that no panic should have poisoned.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| SluiceError::internal("slot lock poisoned"))
}
