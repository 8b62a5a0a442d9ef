//! `WindowFunction`: window functions (`row_number()`, `rank()`, `lag()`,
//! `sum(...) OVER (...)`, any DataFusion has) over a table or view.
//!
//! Semantics: every input row with the values of the window functions over
//! its partition; a change of a partition's rows retracts the rows of that
//! partition whose values changed and inserts their new values.
//!
//! The input's rows are kept partitioned by the PARTITION BY the window
//! functions share (one partition when they differ or have none), and the
//! node's own plan runs over a touched partition's rows; each partition's
//! output rows are kept to diff against.
//!
//! State (sides from [`layout::partitioned`](super::layout::partitioned)):
//! `<input 0> <key length u32> <partition key> <row>` -> multiplicity, the
//! input's rows; `<output> <key length u32> <partition key> <row>` ->
//! multiplicity, the partition's output rows; `<sizes>` -> rows held.

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::layout::Region;
use super::partitioned::{recompute_per_key, PartitionPlan, PartitionedInput, PartitionedState};
use crate::{OpContext, Operator};

/// Maintains window functions over partitions: see the module's
/// documentation.
pub struct WindowFunction {
    plan: PartitionPlan,
    parts: PartitionedState,
    label: String,
}

impl WindowFunction {
    /// Maintains `plan`, a `Window`, over `input` whose keys are the
    /// PARTITION BY. `label` names it in `EXPLAIN`.
    pub fn try_new(plan: LogicalPlan, input: PartitionedInput, label: String) -> Result<Self> {
        if !matches!(plan, LogicalPlan::Window(_)) {
            return Err(SluiceError::internal(
                "WindowFunction over a plan that is not a window",
            ));
        }
        Ok(WindowFunction {
            plan: PartitionPlan::try_new(plan)?,
            parts: PartitionedState::try_new(vec![input])?,
            label,
        })
    }
}

#[async_trait]
impl Operator for WindowFunction {
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
        let mut regions = self.parts.input_regions("input rows per partition");
        regions.push(PartitionedState::output_region("output rows per partition"));
        regions
    }

    fn explain(&self) -> String {
        format!("{} (state: input rows and output rows per key)", self.label)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{Expr, LogicalPlan};

    use super::*;
    use crate::operators::layout::partitioned::{INPUT, OUTPUT, SIZES};
    use crate::testkit::{arrow, node, physical, plan, Harness};

    fn window(plan: &LogicalPlan) -> WindowFunction {
        let LogicalPlan::Window(w) = plan else {
            panic!("not a window")
        };
        let partition_by = match &w.window_expr[0] {
            Expr::WindowFunction(f) => f.params.partition_by.clone(),
            Expr::Alias(a) => match a.expr.as_ref() {
                Expr::WindowFunction(f) => f.params.partition_by.clone(),
                other => panic!("{other}"),
            },
            other => panic!("{other}"),
        };
        let input = PartitionedInput {
            df_schema: w.input.schema().clone(),
            keys: physical(&partition_by, w.input.schema()),
        };
        WindowFunction::try_new(plan.clone(), input, "Window".into()).expect("window")
    }

    #[tokio::test]
    async fn a_change_revises_its_partition_only() {
        let plan = plan(
            "SELECT k, v, row_number() OVER (PARTITION BY k ORDER BY v) FROM t",
            &[("t", &[("k", DataType::Int64), ("v", DataType::Int64)])],
        )
        .await;
        let plan = node(&plan, |p| matches!(p, LogicalPlan::Window(_)));
        let inputs = vec![arrow(plan.inputs()[0].schema())];
        let mut h = Harness::new(Box::new(window(&plan)), inputs);
        assert_eq!(
            h.push(0, "+ 1 10\n+ 1 20\n+ 2 5").await,
            ["+ 1 10 1", "+ 1 20 2", "+ 2 5 1"]
        );
        assert_eq!(
            h.push(0, "- 1 10").await,
            ["+ 1 20 1", "- 1 10 1", "- 1 20 2"]
        );
        assert_eq!(h.state(), [(INPUT[0], 2), (OUTPUT, 2), (SIZES, 1)]);
        h.restart(Box::new(window(&plan)));
        assert_eq!(h.push(0, "+ 2 1").await, ["+ 2 1 1", "+ 2 5 2", "- 2 5 1"]);
    }
}
