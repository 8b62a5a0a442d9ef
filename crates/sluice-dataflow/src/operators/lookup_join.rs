//! `LookupJoin`: `stream JOIN table` (or `LEFT JOIN`), the enrichment join
//! against a table's current rows.
//!
//! Semantics: each event of the stream is joined, as it arrives, with the
//! table's rows of its key at that moment, and the result is never revised:
//! a later change of the table changes only what later events meet. The
//! output is append-only. The stream side never retracts (the planner only
//! builds a lookup join over an append-only side).
//!
//! State (sides from [`layout::partitioned`](super::layout::partitioned)):
//! `<table input> <key length u32> <join key> <row>` -> multiplicity, the
//! table side's rows; `<sizes>` -> how many rows it holds. The stream side
//! is not kept.

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::layout::Region;
use super::partitioned::{distinct, PartitionPlan, PartitionedInput, PartitionedState};
use crate::{OpContext, Operator};

/// Up to how many keys a lookup reads key by key rather than the whole
/// table side (a lookup batch touches many keys of a small table).
const LOOKUP_KEY_BY_KEY: usize = 32;

/// Joins a stream's events with a table's current rows: see the module's
/// documentation.
pub struct LookupJoin {
    plan: PartitionPlan,
    parts: PartitionedState,
    /// The stream's input (0 or 1); the other is the table.
    stream: usize,
    label: String,
}

impl LookupJoin {
    /// Maintains `plan`, a `Join` of `left` and `right` whose keys are the
    /// equi-join keys, with input `stream` the stream. `label` names it in
    /// `EXPLAIN`.
    pub fn try_new(
        plan: LogicalPlan,
        left: PartitionedInput,
        right: PartitionedInput,
        stream: usize,
        label: String,
    ) -> Result<Self> {
        if !matches!(plan, LogicalPlan::Join(_)) || stream > 1 {
            return Err(SluiceError::internal("LookupJoin over a plan that is not a join"));
        }
        Ok(LookupJoin {
            plan: PartitionPlan::try_new(plan)?,
            parts: PartitionedState::try_new(vec![left, right])?,
            stream,
            label,
        })
    }

    /// Events of the stream, joined with the table's rows of their keys.
    async fn lookup(&self, changes: ChangeBatch, prefix: &[u8], ctx: &mut OpContext<'_>) -> Result<ChangeBatch> {
        let table = 1 - self.stream;
        let keys = self.parts.keys_of(self.stream, &changes.batch)?;
        let table_rows = self.parts.load_many(
            ctx,
            prefix,
            PartitionedState::side(table),
            &distinct(&keys),
            LOOKUP_KEY_BY_KEY,
        )?;
        let table_batch = self.parts.inputs[table].decode(&table_rows)?;
        let mut inputs: Vec<RecordBatch> = self
            .parts
            .inputs
            .iter()
            .map(|codec| RecordBatch::new_empty(codec.schema.clone()))
            .collect();
        inputs[self.stream] = changes.batch;
        inputs[table] = table_batch;
        let out = self
            .plan
            .execute(ctx.session, &self.parts.inputs, inputs)
            .await?;
        Ok(ChangeBatch::inserts(out))
    }
}

#[async_trait]
impl Operator for LookupJoin {
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if input == self.stream {
            if !changes.is_append_only() {
                return Err(SluiceError::internal(
                    "lookup join got a retraction on its stream side",
                ));
            }
            return self.lookup(changes, prefix, ctx).await;
        }
        if changes.is_empty() {
            return Ok(self.plan.empty());
        }
        let keys = self.parts.keys_of(input, &changes.batch)?;
        let rows = self.parts.inputs[input].encode(&changes.batch)?;
        self.parts.apply(
            ctx,
            prefix,
            PartitionedState::side(input),
            &keys,
            rows,
            |i| changes.sign(i),
        )?;
        Ok(self.plan.empty())
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    fn state_layout(&self) -> Vec<Region> {
        // The stream side is not kept.
        self.parts
            .input_regions("the table's rows per join key")
            .into_iter()
            .filter(|r| r.side != PartitionedState::side(self.stream))
            .collect()
    }

    fn explain(&self) -> String {
        format!("{} (state: the table side's rows per key)", self.label)
    }
}
