//! The merge strategy of [`GroupBy`]: over an append-only input whose
//! aggregates all merge (count, sum, min, max), each group keeps only its
//! output row. A change's rows are aggregated by the node's plan, and the
//! partial result is merged into the old rows of its groups (counts and
//! sums added, the smaller minimum, the larger maximum): one point read and
//! one write per touched group, however many rows the group has had.
//!
//! State: `<merged> <key length u32> <group key>` -> the group's row.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::GroupBy;
use crate::operators::layout::partition_prefix;
use crate::operators::layout::partitioned::MERGED;
use crate::operators::partitioned::{distinct, scratch_table, Rows, SCRATCH};
use crate::OpContext;

/// How the partial aggregates of two batches of rows combine, for an
/// aggregate that can be merged (count, sum, min, max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// count and sum: add.
    Sum,
    /// min: the smaller.
    Min,
    /// max: the larger.
    Max,
}

impl GroupBy {
    /// A change of an append-only input, merged into its groups' rows.
    pub(super) async fn merge_change(
        &self,
        merge: &[Merge],
        keys: &[Vec<u8>],
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if !changes.is_append_only() {
            return Err(SluiceError::internal("merged aggregate got a retraction"));
        }
        // One point read per touched group, one write per group.
        let groups: Vec<Vec<u8>> = distinct(keys)
            .iter()
            .map(|k| partition_prefix(prefix, MERGED, k))
            .collect();
        let old: Rows = ctx
            .txn
            .multi_get(&groups)?
            .into_iter()
            .flatten()
            .map(|row| (row, 1))
            .collect();
        let partial = self
            .plan
            .execute(ctx.datafusion, &self.parts.inputs, vec![changes.batch])
            .await?;
        let old_batch = self.plan.decode(&old)?;
        let parts = concat_batches(&self.plan.schema, [&old_batch, &partial])?;
        let new = self.merge_rows(ctx.datafusion, merge, parts).await?;
        let (change, new_rows) = self.plan.diff(&old, &new)?;
        for (key, row) in self.output_keys(&new)?.into_iter().zip(new_rows) {
            ctx.txn.put(partition_prefix(prefix, MERGED, &key), row);
        }
        Ok(change)
    }

    /// Combines old output rows and partial aggregates of new rows, group
    /// by group.
    async fn merge_rows(
        &self,
        session: &SessionContext,
        merge: &[Merge],
        parts: RecordBatch,
    ) -> Result<RecordBatch> {
        use datafusion::functions_aggregate::expr_fn::{max, min, sum};
        use datafusion::logical_expr::{cast, col};
        let schema = &self.plan.schema;
        let n = self.group_columns;
        let table = scratch_table(schema, parts)?;
        let group: Vec<Expr> = (0..n).map(|i| col(format!("c{i}"))).collect();
        let aggregates: Vec<Expr> = merge
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let c = col(format!("c{}", n + j));
                match m {
                    Merge::Sum => sum(c),
                    Merge::Min => min(c),
                    Merge::Max => max(c),
                }
                .alias(format!("m{j}"))
            })
            .collect();
        let outputs: Vec<Expr> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = if i < n {
                    format!("c{i}")
                } else {
                    format!("m{}", i - n)
                };
                cast(col(name), f.data_type().clone()).alias(format!("o{i}"))
            })
            .collect();
        let plan = LogicalPlanBuilder::scan(SCRATCH, provider_as_source(Arc::new(table)), None)?
            .aggregate(group, aggregates)?
            .project(outputs)?
            .build()?;
        let batches = session.execute_logical_plan(plan).await?.collect().await?;
        let merged = match batches.first() {
            Some(first) => concat_batches(&first.schema(), &batches)?,
            None => return Ok(RecordBatch::new_empty(schema.clone())),
        };
        Ok(RecordBatch::try_new(
            schema.clone(),
            merged.columns().to_vec(),
        )?)
    }
}
