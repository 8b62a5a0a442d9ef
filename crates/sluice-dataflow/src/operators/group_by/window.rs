//! Windows of a [`GroupBy`] that the watermark closes.
//!
//! A GROUP BY over event-time windows has group columns (`window_start`,
//! `window_end`) whose values in rows that are not late the watermark
//! bounds from below ([`Bound`]); each such column is a slot
//! ([`super::super::event_time`]). A group with a value below its slot's
//! bound is closed: its state is freed (and, with `EMIT ON WINDOW CLOSE`,
//! its final row emitted), and a row that arrives for it later is late.

use sluice_common::{ChangeBatch, Result, SluiceError};

use super::GroupBy;
use crate::operators::event_time::{keep_smallest, lock, micros_of, Bound, Slots};
use crate::operators::layout::partitioned::{INPUT, MERGED, OUTPUT};
use crate::operators::layout::{count_of, partition_prefix, side_prefix, split_entry};
use crate::operators::partitioned::Rows;
use crate::OpContext;

/// How many groups a window close sorts at once.
const CLOSE_CHUNK: usize = 4096;

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

impl GroupBy {
    /// Drops (and reports) the rows of `changes` for windows the watermark
    /// already closed.
    pub(super) fn drop_late(
        &self,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let Some(window) = &self.window else {
            return Ok(changes);
        };
        let mut guard = lock(&self.slots)?;
        let slots = guard.loaded(window.columns.len(), prefix, ctx)?;
        let batch = &changes.batch;
        let mut checks: Vec<(usize, Vec<Option<i64>>)> = Vec::new();
        for (slot, (column, _)) in window.columns.iter().enumerate() {
            let key = &self.parts.inputs[0].keys[*column];
            let values = micros_of(&key.evaluate(batch)?.into_array(batch.num_rows())?)?;
            // New groups that may close later: keep the smallest.
            keep_smallest(&mut slots.smallest[slot], &values);
            checks.push((slot, values));
        }
        slots.drop_late(changes, &checks, window.event_time, ctx)
    }

    /// Closes the windows the watermark passed: see
    /// [`crate::Operator::on_watermark`].
    pub(super) fn close(
        &self,
        watermarks: &[Option<i64>],
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        let Some(window) = &self.window else {
            return Ok(None);
        };
        let mut guard = lock(&self.slots)?;
        let slots = guard.loaded(window.columns.len(), prefix, ctx)?;
        let bounds: Vec<(usize, &Bound)> = window.columns.iter().map(|(_, b)| (0, b)).collect();
        if !slots.advance(watermarks, &bounds, prefix, ctx)? {
            return Ok(None);
        }
        self.close_windows(window, slots, prefix, ctx)
    }

    fn close_windows(
        &self,
        window: &WindowClose,
        slots: &mut Slots,
        prefix: &[u8],
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
        let merged = self.merged();
        let at = side_prefix(prefix, if merged { MERGED } else { OUTPUT });
        let end = sluice_state::prefix_successor(&at);
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
        ctx.txn.visit_range(&at, end.as_deref(), &mut |k, v| {
            let entry = split_entry(&k[at.len()..]).and_then(|(key, row)| {
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
                ctx.txn.delete(partition_prefix(prefix, MERGED, &key));
            } else {
                ctx.txn
                    .delete_prefix(partition_prefix(prefix, INPUT[0], &key))?;
                ctx.txn
                    .delete_prefix(partition_prefix(prefix, OUTPUT, &key))?;
            }
        }
        slots.smallest = smallest;
        if closed_rows.is_empty() {
            return Ok(None);
        }
        closed_rows.sort();
        let batch = self.plan.decode(&closed_rows)?;
        Ok(Some(ChangeBatch::inserts(batch)))
    }
}
