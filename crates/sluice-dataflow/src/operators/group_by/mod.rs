//! `GroupBy`: GROUP BY and DISTINCT, over any input, with any aggregate
//! DataFusion has.
//!
//! Semantics: the output holds one row per group that has input rows (a
//! global aggregate, with no group columns, has its one row over no rows
//! too, `count(*) = 0`); a change of the input retracts the old row of each
//! group it touches and inserts the new one. The output's first columns are
//! the group columns.
//!
//! How a group's row is kept up to date depends on the aggregates and the
//! input ([`Strategy`]):
//! - **rows** (the general case): the group's input rows are kept, and its
//!   aggregates recomputed over them by the node's own plan
//!   ([`PartitionPlan`]);
//! - **extreme**: only `max` (or only `min`) of one column: the input rows
//!   are kept in that column's order and only the extreme row is read;
//! - **merge** ([`merge`]): an append-only input whose aggregates all merge
//!   (count, sum, min, max): only the group's row is kept, and the
//!   aggregate of each change is merged into it;
//! - **totals** ([`totals`]): an input that retracts, with only count, sum
//!   and avg of integers: running totals per group.
//!
//! A GROUP BY over event-time windows ([`WindowClose`], [`window`]) frees a
//! group when the watermark passes its window, drops rows that arrive for
//! it later as late, and with `EMIT ON WINDOW CLOSE` emits each group's row
//! once, when it closes.
//!
//! State (sides from [`layout::partitioned`]), per group key `<key>` =
//! `<key length u32> <group key>`:
//! - rows, extreme: `<input 0> <key> <row>` -> multiplicity, the group's
//!   input rows (extreme: led by the aggregated column); `<output> <key>
//!   <row>` -> multiplicity, the group's output row; `<sizes>` -> rows
//!   held;
//! - merge: `<merged> <key>` -> the group's output row;
//! - totals: `<totals> <key>` -> the running totals;
//! - windows: `<slots> ...`, see [`super::event_time`].

use std::sync::Mutex;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;
use datafusion::logical_expr::LogicalPlan;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::event_time::{slots_region, Slots};
use super::layout::partitioned::{INPUT, MERGED, OUTPUT, TOTALS};
use super::layout::{partition_prefix, Region};
use super::partitioned::ordered::{extreme_of, Extreme};
use super::partitioned::{converter, distinct, PartitionPlan, PartitionedInput, PartitionedState};
use crate::{OpContext, Operator};

pub(crate) mod merge;
pub(crate) mod totals;
pub(crate) mod window;

pub use merge::Merge;
pub use totals::{invertible_type, Inverted, Total};
pub use window::WindowClose;

/// How a [`GroupBy`] keeps its groups' rows up to date.
enum Strategy {
    /// Every input row, recomputed per touched group.
    Rows,
    /// Input rows in the order of the aggregated column; the extreme read.
    Extreme(Extreme),
    /// Only each group's row, merged with each change's aggregates.
    Merge(Vec<Merge>),
    /// Running totals per group.
    Totals(Vec<Inverted>),
}

/// Maintains a GROUP BY: see the module's documentation.
pub struct GroupBy {
    plan: PartitionPlan,
    parts: PartitionedState,
    /// How many group columns lead the output.
    group_columns: usize,
    /// Encodes an output row's group key (none without group columns).
    output_key: Option<RowConverter>,
    strategy: Strategy,
    /// The windows the watermark closes, if any.
    window: Option<WindowClose>,
    slots: Mutex<Slots>,
    label: String,
}

impl GroupBy {
    /// Maintains `plan`, an `Aggregate` over `input` whose keys are the
    /// group expressions. `label` names it in `EXPLAIN`.
    pub fn try_new(plan: LogicalPlan, input: PartitionedInput, label: String) -> Result<Self> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Err(SluiceError::internal(
                "GroupBy over a plan that is not an aggregate",
            ));
        };
        let group_columns = aggregate.group_expr.len();
        if input.keys.len() != group_columns {
            return Err(SluiceError::internal(format!(
                "GroupBy with {} keys for {group_columns} group columns",
                input.keys.len()
            )));
        }
        let extreme = extreme_of(&plan);
        let plan = PartitionPlan::try_new(plan)?;
        let mut parts = PartitionedState::try_new(vec![input])?;
        if let Some(e) = extreme {
            // NULLs where the extreme is not looked for.
            parts.inputs[0].lead_with(e.column, e.max)?;
        }
        let output_key = converter(
            plan.schema
                .fields()
                .iter()
                .take(group_columns)
                .map(|f| f.data_type().clone()),
        )?;
        Ok(GroupBy {
            plan,
            parts,
            group_columns,
            output_key,
            strategy: extreme.map_or(Strategy::Rows, Strategy::Extreme),
            window: None,
            slots: Default::default(),
            label,
        })
    }

    /// Maintains the groups over an append-only input by merging partial
    /// aggregates (one `Merge` per aggregate, in order): state stays one
    /// row per group however many rows arrive.
    pub fn with_merge(mut self, merge: Vec<Merge>) -> Self {
        self.strategy = Strategy::Merge(merge);
        self
    }

    /// Frees the groups of windows the watermark closes, and drops the rows
    /// that arrive for them later.
    pub fn with_window(mut self, window: WindowClose) -> Self {
        self.window = Some(window);
        self
    }

    /// Maintains the groups by running totals, one `Inverted` per
    /// aggregate, when there is a group column and no window closes.
    pub fn with_totals(mut self, inverted: Vec<Inverted>) -> Self {
        if self.group_columns > 0 && self.window.is_none() {
            self.strategy = Strategy::Totals(inverted);
        }
        self
    }

    fn emits_on_close(&self) -> bool {
        self.window.as_ref().is_some_and(|w| w.emit_on_close)
    }

    fn merged(&self) -> bool {
        matches!(self.strategy, Strategy::Merge(_))
    }

    /// The group key of each output row.
    fn output_keys(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        Ok(match &self.output_key {
            Some(codec) => codec
                .convert_columns(&rows.columns()[..self.group_columns])?
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            None => vec![Vec::new(); rows.num_rows()],
        })
    }

    /// [`Operator::process`] for rows that are not late.
    async fn process_on_time(
        &self,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let keys = self.parts.keys_of(0, &changes.batch)?;
        let extreme = match &self.strategy {
            Strategy::Totals(inverted) => {
                return self.apply_totals(inverted, &keys, &changes, prefix, ctx)
            }
            Strategy::Merge(merge) => {
                return self.merge_change(merge, &keys, changes, prefix, ctx).await
            }
            Strategy::Extreme(e) => Some(*e),
            Strategy::Rows => None,
        };
        let rows = self.parts.inputs[0].encode(&changes.batch)?;
        self.parts
            .apply(ctx, prefix, INPUT[0], &keys, rows, |i| changes.sign(i))?;
        let mut input_rows = Vec::new();
        let mut old = Vec::new();
        for key in &distinct(&keys) {
            match extreme {
                Some(e) => input_rows.extend(self.parts.load_extreme(ctx, prefix, e, key)?),
                None => input_rows.extend(self.parts.load(ctx, prefix, INPUT[0], key)?),
            }
            old.extend(self.parts.load(ctx, prefix, OUTPUT, key)?);
            ctx.txn
                .delete_prefix(partition_prefix(prefix, OUTPUT, key))?;
        }
        let batch = self.parts.inputs[0].decode(&input_rows)?;
        let new = self
            .plan
            .execute(ctx.datafusion, &self.parts.inputs, vec![batch])
            .await?;
        self.replace_groups(ctx, prefix, &old, &new)
    }

    /// Emits the change from `old` to `new` output rows of some groups and
    /// stores `new` as their output (the old rows are already removed).
    fn replace_groups(
        &self,
        ctx: &mut OpContext<'_>,
        prefix: &[u8],
        old: &[(Vec<u8>, i64)],
        new: &RecordBatch,
    ) -> Result<ChangeBatch> {
        let (change, new_rows) = self.plan.diff(old, new)?;
        let new_keys = self.output_keys(new)?;
        self.parts
            .apply(ctx, prefix, OUTPUT, &new_keys, new_rows, |_| 1)?;
        Ok(change)
    }
}

#[async_trait]
impl Operator for GroupBy {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let changes = self.drop_late(changes, prefix, ctx)?;
        if changes.is_empty() {
            return Ok(self.plan.empty());
        }
        let output = self.process_on_time(changes, prefix, ctx).await?;
        if self.emits_on_close() {
            // The groups' rows wait until their window closes.
            return Ok(self.plan.empty());
        }
        Ok(output)
    }

    async fn on_watermark(
        &self,
        watermarks: &[Option<i64>],
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        self.close(watermarks, prefix, ctx)
    }

    async fn initialize(
        &self,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        // Only a global aggregate (GROUP BY nothing) has output over no rows.
        if self.group_columns != 0 {
            return Ok(None);
        }
        let merged = partition_prefix(prefix, MERGED, &[]);
        if self.merged() && ctx.txn.multi_get(std::slice::from_ref(&merged))?[0].is_some() {
            return Ok(None);
        }
        if !self.parts.load(ctx, prefix, OUTPUT, &[])?.is_empty() {
            return Ok(None);
        }
        let rows = self.parts.load(ctx, prefix, INPUT[0], &[])?;
        let batch = self.parts.inputs[0].decode(&rows)?;
        let new = self
            .plan
            .execute(ctx.datafusion, &self.parts.inputs, vec![batch])
            .await?;
        let (change, new_rows) = self.plan.diff(&[], &new)?;
        if self.merged() {
            for row in new_rows {
                ctx.txn.put(merged.clone(), row);
            }
        } else {
            let keys = vec![Vec::new(); new_rows.len()];
            self.parts
                .apply(ctx, prefix, OUTPUT, &keys, new_rows, |_| 1)?;
        }
        Ok(Some(change))
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    fn state_layout(&self) -> Vec<Region> {
        let mut regions = match &self.strategy {
            Strategy::Merge(_) => vec![Region {
                side: MERGED,
                name: "output row per group",
                key: "<key length u32> <group key>",
                value: "the row",
            }],
            Strategy::Totals(_) => vec![Region {
                side: TOTALS,
                name: "running totals per group",
                key: "<key length u32> <group key>",
                value: "<rows i64> then per aggregate <sum i128> <count i64>",
            }],
            Strategy::Rows | Strategy::Extreme(_) => {
                let mut r = self.parts.input_regions("input rows per group");
                r.push(PartitionedState::output_region("output row per group"));
                r
            }
        };
        if self.window.is_some() {
            regions.push(slots_region());
        }
        regions
    }

    fn explain(&self) -> String {
        let state = match self.strategy {
            Strategy::Merge(_) => "state: output row per group, merged with each change",
            Strategy::Totals(_) => "state: running totals per group",
            Strategy::Extreme(_) => {
                "state: input rows in order of the aggregated column and output row per group"
            }
            Strategy::Rows => "state: input rows and output row per group",
        };
        let closes = match &self.window {
            Some(w) if w.emit_on_close => {
                "; emits each window's row when the watermark closes it, then frees it"
            }
            Some(_) => "; frees a window when the watermark closes it",
            None => "",
        };
        format!("{} ({state}{closes})", self.label)
    }
}

#[cfg(test)]
mod tests;
