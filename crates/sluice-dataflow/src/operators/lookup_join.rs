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
            return Err(SluiceError::internal(
                "LookupJoin over a plan that is not a join",
            ));
        }
        Ok(LookupJoin {
            plan: PartitionPlan::try_new(plan)?,
            parts: PartitionedState::try_new(vec![left, right])?,
            stream,
            label,
        })
    }

    /// Events of the stream, joined with the table's rows of their keys.
    async fn lookup(
        &self,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
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
            .execute(ctx.datafusion, &self.parts.inputs, inputs)
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

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{Expr, LogicalPlan};

    use super::*;
    use crate::operators::layout::partitioned::{INPUT, SIZES};
    use crate::testkit::{arrow, changes, node, physical, plan, Harness};

    const I: DataType = DataType::Int64;

    fn lookup(plan: &LogicalPlan) -> LookupJoin {
        let LogicalPlan::Join(j) = plan else {
            panic!("not a join")
        };
        let (left, right): (Vec<Expr>, Vec<Expr>) = j.on.iter().cloned().unzip();
        let left = PartitionedInput {
            df_schema: j.left.schema().clone(),
            keys: physical(&left, j.left.schema()),
        };
        let right = PartitionedInput {
            df_schema: j.right.schema().clone(),
            keys: physical(&right, j.right.schema()),
        };
        LookupJoin::try_new(plan.clone(), left, right, 0, "LookupJoin".into()).expect("lookup")
    }

    #[tokio::test]
    async fn events_meet_the_table_as_it_is_and_are_never_revised() {
        let plan = plan(
            "SELECT * FROM s LEFT JOIN t ON s.k = t.k",
            &[
                ("s", &[("k", I), ("v", I)]),
                ("t", &[("k", I), ("name", DataType::Utf8)]),
            ],
        )
        .await;
        let plan = node(&plan, |p| matches!(p, LogicalPlan::Join(_)));
        let inputs: Vec<_> = plan.inputs().iter().map(|i| arrow(i.schema())).collect();
        let mut h = Harness::new(Box::new(lookup(&plan)), inputs.clone());
        assert_eq!(h.push(1, "+ 1 a").await, Vec::<String>::new());
        assert_eq!(
            h.push(0, "+ 1 10\n+ 2 20").await,
            ["+ 1 10 1 a", "+ 2 20 . ."]
        );
        // The table changes: what was emitted stays.
        assert_eq!(h.push(1, "- 1 a\n+ 1 b").await, Vec::<String>::new());
        assert_eq!(
            h.state(),
            [(INPUT[1], 1), (SIZES, 1)],
            "only the table is kept"
        );
        h.restart(Box::new(lookup(&plan)));
        assert_eq!(h.push(0, "+ 1 11").await, ["+ 1 11 1 b"]);
        let retraction = changes(&inputs[0], "- 1 11");
        let err = h.try_push(0, retraction).await.expect_err("a retraction");
        assert!(err.to_string().contains("retraction"), "{err}");
    }
}
