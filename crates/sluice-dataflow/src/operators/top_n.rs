//! `TopN`: `ORDER BY ... LIMIT n [OFFSET m]` over a table or view (a
//! stream must be aggregated first).
//!
//! Semantics: the output is the first `n` rows (after `m`) of the input in
//! the given order, ties broken as DataFusion's sort breaks them; a change
//! of the input retracts the rows that leave the top and inserts those that
//! enter it.
//!
//! The input's rows are kept in one partition (the empty key), and the
//! node's own plan (the sort with its fetch) runs over them on each change;
//! the output rows are kept to diff against.
//!
//! State (sides from [`layout::partitioned`](super::layout::partitioned)):
//! `<input 0> <0 u32> <row>` -> multiplicity, the input's rows; `<output>
//! <0 u32> <row>` -> multiplicity, the top rows; `<sizes>` -> rows held.

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::LogicalPlan;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::layout::Region;
use super::partitioned::{recompute_per_key, PartitionPlan, PartitionedInput, PartitionedState};
use crate::{OpContext, Operator};

/// Maintains the top rows of its input: see the module's documentation.
pub struct TopN {
    plan: PartitionPlan,
    parts: PartitionedState,
    label: String,
}

impl TopN {
    /// Maintains `plan`, a `Sort` with a fetch or a `Limit`, over an input
    /// of `input` schema. `label` names it in `EXPLAIN`.
    pub fn try_new(plan: LogicalPlan, input: DFSchemaRef, label: String) -> Result<Self> {
        if !matches!(plan, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)) {
            return Err(SluiceError::internal(
                "TopN over a plan that is not a sort or limit",
            ));
        }
        Ok(TopN {
            plan: PartitionPlan::try_new(plan)?,
            parts: PartitionedState::try_new(vec![PartitionedInput {
                df_schema: input,
                keys: Vec::new(),
            }])?,
            label,
        })
    }
}

#[async_trait]
impl Operator for TopN {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if changes.is_empty() {
            return Ok(self.plan.empty());
        }
        recompute_per_key(&self.plan, &self.parts, changes, prefix, ctx).await
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    fn state_layout(&self) -> Vec<Region> {
        let mut regions = self.parts.input_regions("input rows");
        regions.push(PartitionedState::output_region("the top rows"));
        regions
    }

    fn explain(&self) -> String {
        format!("{} (state: input rows and output rows per key)", self.label)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::LogicalPlan;

    use super::*;
    use crate::operators::layout::partitioned::{INPUT, OUTPUT, SIZES};
    use crate::testkit::{arrow, node, plan, Harness};

    fn top_n(plan: &LogicalPlan) -> TopN {
        TopN::try_new(
            plan.clone(),
            plan.inputs()[0].schema().clone(),
            "TopN".into(),
        )
        .expect("top n")
    }

    #[tokio::test]
    async fn rows_enter_and_leave_the_top() {
        let plan = plan(
            "SELECT * FROM t ORDER BY v DESC LIMIT 2",
            &[("t", &[("k", DataType::Utf8), ("v", DataType::Int64)])],
        )
        .await;
        let plan = node(&plan, |p| {
            matches!(p, LogicalPlan::Sort(_) | LogicalPlan::Limit(_))
        });
        let inputs = vec![arrow(plan.inputs()[0].schema())];
        let mut h = Harness::new(Box::new(top_n(&plan)), inputs);
        assert_eq!(h.push(0, "+ a 1\n+ b 2\n+ c 3").await, ["+ b 2", "+ c 3"]);
        assert_eq!(h.push(0, "- c 3").await, ["+ a 1", "- c 3"]);
        assert_eq!(
            h.push(0, "- a 1\n+ a 1").await,
            Vec::<String>::new(),
            "no change"
        );
        assert_eq!(h.state(), [(INPUT[0], 2), (OUTPUT, 2), (SIZES, 1)]);
        h.restart(Box::new(top_n(&plan)));
        assert_eq!(h.push(0, "+ d 5").await, ["+ d 5", "- a 1"]);
    }
}
