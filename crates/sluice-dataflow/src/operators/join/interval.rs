//! `IntervalJoin`: a [`Join`] whose state the watermark frees. It is an
//! interval join of two streams (`b.ts BETWEEN a.ts AND a.ts + INTERVAL
//! '1 hour'`), a join of a stream with a view bounded by the same event
//! times (q7: the bids of a window with the window's maximum), or a join
//! of windows of two views (`ON a.window_start = b.window_start`).
//!
//! Semantics: those of the [`Join`] over the rows that are not late. Its
//! condition has terms `x <= y + k` between a column `x` of one side and
//! `y` of the other ([`Expiry`]): a row whose `y + k` is below the bound of
//! `x` at the other side's watermark can match no row to come, so it is
//! dropped from state ([`super::expire`]), and a new row whose `x` is below
//! that bound at the last expiry is late (what it would have matched may be
//! gone): dropped and reported.
//!
//! State: the [`Join`]'s, plus one event-time slot per expiry
//! ([`crate::operators::event_time`]).

use std::sync::Mutex;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use sluice_common::{ChangeBatch, Result};

use super::expire::Pass;
use super::Join;
use crate::operators::event_time::{keep_smallest, lock, micros_of, slots_region, Bound, Slots};
use crate::operators::layout::Region;
use crate::{OpContext, Operator};

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

/// The slots of the expiries, with each one's expiry scan in progress.
#[derive(Default)]
pub(super) struct Expiring {
    pub slots: Slots,
    pub passes: Vec<Option<Pass>>,
}

/// Maintains a join whose state the watermark frees: see the module's
/// documentation.
pub struct IntervalJoin {
    pub(super) join: Join,
    expiries: Vec<Expiry>,
    expiring: Mutex<Expiring>,
}

impl IntervalJoin {
    /// `join`, with its rows dropped by `expiries`.
    pub fn new(join: Join, expiries: Vec<Expiry>) -> Self {
        IntervalJoin {
            join,
            expiries,
            expiring: Default::default(),
        }
    }

    /// Drops (and reports) the rows of `changes`, arriving on `input`, that
    /// may have missed rows already expired.
    fn drop_late(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let mut guard = lock(&self.expiring)?;
        let expiring = &mut *guard;
        let n = self.expiries.len();
        expiring.slots.loaded(n, prefix, ctx)?;
        expiring.passes.resize_with(n, || None);
        let batch = &changes.batch;
        let mut checks: Vec<(usize, Vec<Option<i64>>)> = Vec::new();
        let mut time_column: Option<usize> = None;
        for (slot, e) in self.expiries.iter().enumerate() {
            if e.other == input {
                checks.push((slot, micros_of(batch.column(e.other_column))?));
                time_column = time_column.or(Some(e.other_event_time.unwrap_or(e.other_column)));
            }
            if e.side == input {
                // New rows that may expire later: keep the smallest.
                let values = micros_of(batch.column(e.column))?;
                keep_smallest(&mut expiring.slots.smallest[slot], &values);
                if let (Some(pass), Some(min)) = (
                    expiring.passes[slot].as_mut(),
                    values.iter().flatten().min(),
                ) {
                    pass.smallest = pass.smallest.min(*min);
                }
            }
        }
        expiring.slots.drop_late(changes, &checks, time_column, ctx)
    }
}

#[async_trait]
impl Operator for IntervalJoin {
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let changes = self.drop_late(input, changes, prefix, ctx)?;
        if changes.is_empty() {
            return Ok(self.join.plan.empty());
        }
        self.join.change(input, changes, prefix, ctx).await
    }

    async fn on_watermark(
        &self,
        watermarks: &[Option<i64>],
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        let mut guard = lock(&self.expiring)?;
        let expiring = &mut *guard;
        let n = self.expiries.len();
        expiring.slots.loaded(n, prefix, ctx)?;
        expiring.passes.resize_with(n, || None);
        let bounds: Vec<(usize, &Bound)> =
            self.expiries.iter().map(|e| (e.other, &e.bound)).collect();
        if !expiring.slots.advance(watermarks, &bounds, prefix, ctx)? {
            return Ok(None);
        }
        for (slot, e) in self.expiries.iter().enumerate() {
            self.expire(e, slot, expiring, prefix, ctx)?;
        }
        Ok(None)
    }

    fn schema(&self) -> SchemaRef {
        self.join.plan.schema.clone()
    }

    fn state_layout(&self) -> Vec<Region> {
        let mut regions = self.join.state_layout();
        regions.push(slots_region());
        regions
    }

    fn explain(&self) -> String {
        format!(
            "{} ({}; frees rows the watermark puts out of reach)",
            self.join.label,
            self.join.state_text()
        )
    }
}
