//! Interval-join expiry in [`IntervalJoin`](super::IntervalJoin): dropping the rows of a join side
//! that the watermark put out of reach ([`Expiry`]).
//!
//! - When the side's key leads with the expiring column and every key
//!   column has a fixed width (a join of windows on `window_start`), the
//!   side's entries are in that column's order, so what expires is one
//!   range of keys, read and deleted as it is.
//! - Otherwise the whole side is scanned, a chunk of rows at a time, and at
//!   most [`EXPIRE_PER_CLOSE`] rows are deleted per watermark; a scan that
//!   stops there resumes where it stopped ([`Pass`]). A scan starts only
//!   once the rows that could expire reach a quarter of the span the
//!   watermark keeps: rows kept longer than needed meet nothing, as the
//!   join's condition excludes them.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::expressions::Column;
use sluice_common::{Result, SluiceError};
use sluice_state::prefix_successor;

use super::interval::{Expiring, Expiry, IntervalJoin};
use crate::operators::event_time::micros_of;
use crate::operators::layout::{count_of, side_prefix, split_entry};
use crate::operators::partitioned::PartitionedState;
use crate::OpContext;

/// At most how many rows one watermark expires from a scanned side (the
/// deletes are held in memory until the checkpoint writes them).
const EXPIRE_PER_CLOSE: usize = 262_144;
/// How many entries a scan decodes at once.
const CHUNK: usize = 4096;

/// An expiry scan of a whole side, in progress.
#[derive(Debug)]
pub(crate) struct Pass {
    /// The key to go on from.
    resume: Vec<u8>,
    /// The smallest time among the rows the scan kept and the rows added
    /// while it ran.
    pub smallest: i64,
}

/// `[start, end)` of the entries of `side` whose key leads with a value
/// below `cutoff`, when its key leads with `column` and has a fixed width.
fn key_range(
    parts: &PartitionedState,
    side: usize,
    column: usize,
    cutoff: i64,
    prefix: &[u8],
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let codec = &parts.inputs[side];
    let leads = codec.keys.first().is_some_and(|k| {
        let any: &dyn std::any::Any = k.as_ref();
        any.downcast_ref::<Column>()
            .is_some_and(|c| c.index() == column)
    });
    let Some(key_codec) = codec.key_codec.as_ref().filter(|_| leads) else {
        return Ok(None);
    };
    let types = codec
        .keys
        .iter()
        .map(|k| k.data_type(&codec.schema))
        .collect::<datafusion::error::Result<Vec<DataType>>>()?;
    if !types
        .iter()
        .all(|t| t.is_primitive() || *t == DataType::Boolean)
    {
        return Ok(None);
    }
    // The cutoff and NULL, as the leading key column.
    let micros: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(cutoff), None]));
    let lead = cast(&micros, &types[0])?;
    // The whole key's length (the same for every key), then the leading
    // values' encoding alone.
    let mut sample: Vec<ArrayRef> = vec![lead.clone()];
    sample.extend(types[1..].iter().map(|t| new_null_array(t, 2)));
    let length = key_codec.convert_columns(&sample)?.row(0).as_ref().len() as u32;
    let first = RowConverter::new(vec![SortField::new(types[0].clone())])?;
    let encoded = first.convert_columns(&[lead])?;
    let mut at = side_prefix(prefix, PartitionedState::side(side));
    at.extend_from_slice(&length.to_be_bytes());
    // NULLs sort first and never expire.
    let mut start = at.clone();
    start.extend(prefix_successor(encoded.row(1).as_ref()).unwrap_or_default());
    let mut end = at;
    end.extend_from_slice(encoded.row(0).as_ref());
    Ok(Some((start, end)))
}

impl IntervalJoin {
    /// Drops the rows of `e.side` the slot's bound put out of reach.
    pub(super) fn expire(
        &self,
        e: &Expiry,
        slot: usize,
        expiring: &mut Expiring,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<()> {
        let Expiring { slots, passes } = expiring;
        let parts = &self.join.parts;
        let Some(bound) = slots.bounds[slot] else {
            return Ok(());
        };
        let cutoff = bound.saturating_sub(e.offset);
        if let Some((start, end)) = key_range(parts, e.side, e.column, cutoff, prefix)? {
            let mut doomed = Vec::new();
            ctx.txn.visit_range(&start, Some(&end), &mut |k, v| {
                doomed.push((k.to_vec(), count_of(v)));
                true
            })?;
            let mut expired = 0;
            for (k, n) in doomed {
                expired += n?;
                ctx.txn.delete(k);
            }
            parts.count_rows(e.side, -expired, ctx, prefix)?;
            slots.smallest[slot] = Some(cutoff);
            return Ok(());
        }
        if passes[slot].is_none() {
            let slack = slots
                .watermark
                .map_or(0, |w| w.saturating_sub(cutoff).max(0) / 4);
            if slots.smallest[slot].is_some_and(|s| s >= cutoff.saturating_sub(slack)) {
                return Ok(());
            }
            passes[slot] = Some(Pass {
                resume: side_prefix(prefix, PartitionedState::side(e.side)),
                smallest: i64::MAX,
            });
            slots.smallest[slot] = None;
        }
        let Some(pass) = passes[slot].as_mut() else {
            return Ok(());
        };
        let at = side_prefix(prefix, PartitionedState::side(e.side));
        let end = prefix_successor(&at);
        let codec = &parts.inputs[e.side];
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(CHUNK);
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let mut expired = 0i64;
        let mut failed: Option<SluiceError> = None;
        // Sorts a chunk's rows into expired and kept.
        let mut sweep = |chunk: &mut Vec<(Vec<u8>, Vec<u8>)>,
                         doomed: &mut Vec<Vec<u8>>,
                         smallest: &mut i64|
         -> Result<()> {
            let rows = chunk
                .iter()
                .map(|(k, _)| Ok((split_entry(&k[at.len()..])?.1, 1)))
                .collect::<Result<Vec<(&[u8], i64)>>>()?;
            let times = micros_of(codec.decode(&rows)?.column(e.column))?;
            for ((k, v), t) in chunk.drain(..).zip(times) {
                match t {
                    Some(t) if t < cutoff => {
                        expired += count_of(&v)?;
                        doomed.push(k);
                    }
                    Some(t) => *smallest = (*smallest).min(t),
                    None => {}
                }
            }
            Ok(())
        };
        let mut stopped_after: Option<Vec<u8>> = None;
        let mut smallest = pass.smallest;
        ctx.txn
            .visit_range(&pass.resume, end.as_deref(), &mut |k, v| {
                chunk.push((k.to_vec(), v.to_vec()));
                if chunk.len() < CHUNK {
                    return true;
                }
                if let Err(err) = sweep(&mut chunk, &mut doomed, &mut smallest) {
                    failed = Some(err);
                    return false;
                }
                if doomed.len() >= EXPIRE_PER_CLOSE {
                    stopped_after = Some(k.to_vec());
                    return false;
                }
                true
            })?;
        if let Some(err) = failed {
            return Err(err);
        }
        sweep(&mut chunk, &mut doomed, &mut smallest)?;
        for k in doomed {
            ctx.txn.delete(k);
        }
        parts.count_rows(e.side, -expired, ctx, prefix)?;
        match stopped_after {
            Some(mut last) => {
                // The next key after `last`.
                last.push(0);
                pass.resume = last;
                pass.smallest = smallest;
            }
            None => {
                slots.smallest[slot] = Some(smallest);
                passes[slot] = None;
            }
        }
        Ok(())
    }
}
