//! Joins in [`Recompute`]: how a change of one side becomes the change of
//! the join's output.
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
//! ([`super::ordered::Range`]), the other side is read only where a
//! changed row can meet it: rows outside that range give the same output
//! before and after.
//!
//! Lookup joins (stream JOIN table) keep only the table side: each stream
//! change is joined with the table's current rows and never revised.

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, not};
use datafusion::logical_expr::JoinType;
use sluice_common::{ChangeBatch, Result};

use super::{rows_of, Recompute, JOIN_KEY_BY_KEY, LOOKUP_KEY_BY_KEY};
use crate::OpContext;

/// Whether `join_type`'s output is linear in input `side`: a row's output
/// depends only on the other side.
pub(super) fn linear_in(join_type: JoinType, side: usize) -> bool {
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

impl Recompute {
    /// The rows of `side`, under the keys `keys` of `changes` (rows of the
    /// other side), that the changed rows can meet.
    fn load_meeting(
        &self,
        ctx: &OpContext<'_>,
        state: &[u8],
        side: usize,
        changes: &ChangeBatch,
        keys: &[Vec<u8>],
        affected: &[Vec<u8>],
    ) -> Result<Vec<(Vec<u8>, i64)>> {
        match self.ranges[side] {
            // A side with fewer rows than the change has keys (q7's maximum
            // per window) is read whole: one scan, not a range read per
            // key. Rows outside the range meet nothing, and the join's
            // condition leaves them out.
            Some(_) if self.side_size(side, ctx, state)? <= affected.len() as i64 => {
                self.load_many(ctx, state, side as u8, affected, 0)
            }
            Some(range) => self.load_in_range(ctx, state, side, range, &changes.batch, keys),
            None => self.load_many(ctx, state, side as u8, affected, JOIN_KEY_BY_KEY),
        }
    }

    /// A change of one side of a join.
    pub(super) async fn join(
        &self,
        input: usize,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        changes: &ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let Some(join_type) = self.join_type else {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        };
        if linear_in(join_type, input) {
            return self
                .linear_join(input, keys, rows, changes, state, ctx)
                .await;
        }
        let affected = Self::distinct(keys);
        let mut before = Vec::with_capacity(self.inputs.len());
        for (side, codec) in self.inputs.iter().enumerate() {
            let rows = if side == input {
                self.load_many(ctx, state, side as u8, &affected, JOIN_KEY_BY_KEY)?
            } else {
                self.load_meeting(ctx, state, side, changes, keys, &affected)?
            };
            before.push(codec.decode(&rows)?);
        }
        self.apply(ctx, state, input as u8, keys, rows, |i| changes.sign(i))?;
        let changed = self.load_many(ctx, state, input as u8, &affected, JOIN_KEY_BY_KEY)?;
        let mut after = before.clone();
        after[input] = self.inputs[input].decode(&changed)?;
        let old = self.execute(ctx.session, before).await?;
        let new = self.execute(ctx.session, after).await?;
        let old: Vec<(Vec<u8>, i64)> = rows_of(&self.output_rows, &old)?
            .into_iter()
            .map(|r| (r, 1))
            .collect();
        Ok(self.diff(&old, &new)?.0)
    }

    /// A change of a side the join is linear in: the change itself joined
    /// with the other side's rows it can meet, inserts and deletes apart.
    async fn linear_join(
        &self,
        input: usize,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        changes: &ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let other = 1 - input;
        let affected = Self::distinct(keys);
        let other_rows = self.load_meeting(ctx, state, other, changes, keys, &affected)?;
        let other_batch = self.inputs[other].decode(&other_rows)?;
        self.apply(ctx, state, input as u8, keys, rows, |i| changes.sign(i))?;
        if other_batch.num_rows() == 0 && self.join_type.is_some_and(needs_both) {
            return Ok(ChangeBatch::empty(self.schema.clone()));
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
                .inputs
                .iter()
                .map(|codec| RecordBatch::new_empty(codec.schema.clone()))
                .collect();
            inputs[input] = part;
            inputs[other] = other_batch.clone();
            let joined = self.execute(ctx.session, inputs).await?;
            let n = joined.num_rows();
            out.push(if sign > 0 {
                ChangeBatch::inserts(joined)
            } else {
                ChangeBatch::new(joined, vec![-1; n])
            });
        }
        ChangeBatch::concat(self.schema.clone(), &out)
    }

    /// A change of a lookup join's stream side.
    pub(super) async fn lookup(
        &self,
        stream: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let table = 1 - stream;
        let keys = self.keys_of(stream, &changes.batch)?;
        let table_rows = self.load_many(
            ctx,
            state,
            table as u8,
            &Self::distinct(&keys),
            LOOKUP_KEY_BY_KEY,
        )?;
        let table_batch = self.inputs[table].decode(&table_rows)?;
        let mut inputs: Vec<RecordBatch> = self
            .inputs
            .iter()
            .map(|codec| RecordBatch::new_empty(codec.schema.clone()))
            .collect();
        inputs[stream] = changes.batch;
        inputs[table] = table_batch;
        let out = self.execute(ctx.session, inputs).await?;
        Ok(ChangeBatch::inserts(out))
    }
}
