//! `Join`: a join of two inputs that both change (tables, views, or
//! streams whose state an interval bounds, see [`IntervalJoin`]), of any
//! join type DataFusion has, on equal keys and any further condition.
//!
//! Semantics: the output is the join of the two inputs' current rows; a
//! change of either side becomes the change of that join.
//!
//! - A side the join is *linear* in (both sides of an inner join, the
//!   preserved side of a left join, semi join or anti join): each of its
//!   rows' output depends only on the other side, so the change itself is
//!   joined with the other side's rows of the touched keys, inserts and
//!   deletes apart.
//! - Otherwise the touched keys' rows are joined before and after the
//!   change, and the output is the difference.
//!
//! Either way, when the condition compares a column of each side
//! ([`Range`]), each side's rows of a key are kept in the order of its
//! compared column, and the other side is read only where a changed row
//! can meet it: rows outside that range give the same output before and
//! after. The output is not kept: a join is deterministic.
//!
//! State (sides from [`layout::partitioned`](super::layout::partitioned)):
//! `<input i> <key length u32> <join key> <row>` -> multiplicity, each
//! side's rows; `<sizes>` -> how many rows each side holds.

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{JoinType, LogicalPlan};
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::layout::Region;
use super::partitioned::ordered::{ranges_of, Range};
use super::partitioned::{distinct, PartitionPlan, PartitionedInput, PartitionedState, Rows};
use crate::{OpContext, Operator};

pub(crate) mod expire;
pub(crate) mod interval;
pub use interval::{Expiry, IntervalJoin};

/// Up to how many keys a join of tables reads key by key rather than the
/// whole side (its sides are large and its changes touch few keys).
const JOIN_KEY_BY_KEY: usize = 4096;

/// Maintains a join of two changing inputs: see the module's
/// documentation.
pub struct Join {
    pub(crate) plan: PartitionPlan,
    pub(crate) parts: PartitionedState,
    join_type: JoinType,
    /// A join comparing a column of each side: each side's rows in that
    /// column's order, read by range.
    ranges: [Option<Range>; 2],
    pub(crate) label: String,
}

impl Join {
    /// Maintains `plan`, a `Join` of `left` and `right` whose keys are the
    /// equi-join keys. `label` names it in `EXPLAIN`.
    pub fn try_new(
        plan: LogicalPlan,
        left: PartitionedInput,
        right: PartitionedInput,
        label: String,
    ) -> Result<Self> {
        let LogicalPlan::Join(join) = &plan else {
            return Err(SluiceError::internal("Join over a plan that is not a join"));
        };
        if left.keys.len() != right.keys.len() {
            return Err(SluiceError::internal("Join with unequal key counts"));
        }
        let join_type = join.join_type;
        let ranges = ranges_of(&plan);
        let mut parts = PartitionedState::try_new(vec![left, right])?;
        for (codec, range) in parts.inputs.iter_mut().zip(&ranges) {
            if let Some(range) = range {
                codec.lead_with(range.column, true)?;
            }
        }
        Ok(Join {
            plan: PartitionPlan::try_new(plan)?,
            parts,
            join_type,
            ranges,
            label,
        })
    }

    /// The state's description for `EXPLAIN`.
    pub(crate) fn state_text(&self) -> &'static str {
        if self.ranges[0].is_some() {
            "state: both sides' rows per key, in order of the compared columns"
        } else {
            "state: both sides' rows per key"
        }
    }

    /// The change of the output for `changes` of side `input`.
    pub(crate) async fn change(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let keys = self.parts.keys_of(input, &changes.batch)?;
        let rows = self.parts.inputs[input].encode(&changes.batch)?;
        if linear_in(self.join_type, input) {
            return self
                .linear_join(input, &keys, rows, &changes, prefix, ctx)
                .await;
        }
        self.recompute(input, &keys, rows, &changes, prefix, ctx)
            .await
    }
}

#[async_trait]
impl Operator for Join {
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if changes.is_empty() {
            return Ok(self.plan.empty());
        }
        self.change(input, changes, prefix, ctx).await
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    fn state_layout(&self) -> Vec<Region> {
        self.parts.input_regions("rows per join key")
    }

    fn explain(&self) -> String {
        format!("{} ({})", self.label, self.state_text())
    }
}

/// Whether `join_type`'s output is linear in input `side`: a row's output
/// depends only on the other side.
pub(crate) fn linear_in(join_type: JoinType, side: usize) -> bool {
    match join_type {
        JoinType::Inner => true,
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => side == 0,
        JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => side == 1,
        _ => false,
    }
}

/// Whether `join_type` has no output without rows on both sides.
fn needs_both(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
    )
}

impl Join {
    /// The rows of `side`, under the keys `keys` of `changes` (rows of the
    /// other side), that the changed rows can meet.
    fn load_meeting(
        &self,
        ctx: &OpContext<'_>,
        prefix: &[u8],
        side: usize,
        changes: &ChangeBatch,
        keys: &[Vec<u8>],
        affected: &[Vec<u8>],
    ) -> Result<Rows> {
        match self.ranges[side] {
            // A side with fewer rows than the change has keys (q7's maximum
            // per window) is read whole: one scan, not a range read per
            // key. Rows outside the range meet nothing, and the join's
            // condition leaves them out.
            Some(_) if self.parts.side_size(side, ctx, prefix)? <= affected.len() as i64 => self
                .parts
                .load_many(ctx, prefix, PartitionedState::side(side), affected, 0),
            Some(range) => self
                .parts
                .load_in_range(ctx, prefix, side, range, &changes.batch, keys),
            None => self.parts.load_many(
                ctx,
                prefix,
                PartitionedState::side(side),
                affected,
                JOIN_KEY_BY_KEY,
            ),
        }
    }

    /// A change of a side the join is not linear in: the touched keys
    /// joined before and after the change.
    async fn recompute(
        &self,
        input: usize,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        changes: &ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let affected = distinct(keys);
        let mut before = Vec::with_capacity(self.parts.inputs.len());
        for (side, codec) in self.parts.inputs.iter().enumerate() {
            let rows = if side == input {
                self.parts.load_many(
                    ctx,
                    prefix,
                    PartitionedState::side(side),
                    &affected,
                    JOIN_KEY_BY_KEY,
                )?
            } else {
                self.load_meeting(ctx, prefix, side, changes, keys, &affected)?
            };
            before.push(codec.decode(&rows)?);
        }
        let side = PartitionedState::side(input);
        self.parts
            .apply(ctx, prefix, side, keys, rows, |i| changes.sign(i))?;
        let changed = self
            .parts
            .load_many(ctx, prefix, side, &affected, JOIN_KEY_BY_KEY)?;
        let mut after = before.clone();
        after[input] = self.parts.inputs[input].decode(&changed)?;
        let old = self
            .plan
            .execute(ctx.datafusion, &self.parts.inputs, before)
            .await?;
        let new = self
            .plan
            .execute(ctx.datafusion, &self.parts.inputs, after)
            .await?;
        let old = self.plan.encode(&old)?;
        Ok(self.plan.diff(&old, &new)?.0)
    }

    /// A change of a side the join is linear in: the change itself joined
    /// with the other side's rows it can meet, inserts and deletes apart.
    async fn linear_join(
        &self,
        input: usize,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        changes: &ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let other = 1 - input;
        let affected = distinct(keys);
        let other_rows = self.load_meeting(ctx, prefix, other, changes, keys, &affected)?;
        let other_batch = self.parts.inputs[other].decode(&other_rows)?;
        self.parts.apply(
            ctx,
            prefix,
            PartitionedState::side(input),
            keys,
            rows,
            |i| changes.sign(i),
        )?;
        if other_batch.num_rows() == 0 && needs_both(self.join_type) {
            return Ok(self.plan.empty());
        }
        let parts: Vec<(RecordBatch, i8)> = if changes.is_append_only() {
            vec![(changes.batch.clone(), 1)]
        } else {
            let positive: BooleanArray = (0..changes.num_rows())
                .map(|i| Some(changes.sign(i) > 0))
                .collect();
            let negative = not(&positive)?;
            vec![
                (filter_record_batch(&changes.batch, &positive)?, 1),
                (filter_record_batch(&changes.batch, &negative)?, -1),
            ]
        };
        let mut out = Vec::with_capacity(parts.len());
        for (part, sign) in parts {
            if part.num_rows() == 0 {
                continue;
            }
            let mut inputs: Vec<RecordBatch> = self
                .parts
                .inputs
                .iter()
                .map(|codec| RecordBatch::new_empty(codec.schema.clone()))
                .collect();
            inputs[input] = part;
            inputs[other] = other_batch.clone();
            let joined = self
                .plan
                .execute(ctx.datafusion, &self.parts.inputs, inputs)
                .await?;
            let n = joined.num_rows();
            out.push(if sign > 0 {
                ChangeBatch::inserts(joined)
            } else {
                ChangeBatch::new(joined, vec![-1; n])
            });
        }
        ChangeBatch::concat(self.plan.schema.clone(), &out)
    }
}

#[cfg(test)]
mod tests;
