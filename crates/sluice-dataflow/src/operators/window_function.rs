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
use super::partitioned::{
    recompute_per_key, PartitionPlan, PartitionedInput, PartitionedState,
};
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
            return Err(SluiceError::internal("WindowFunction over a plan that is not a window"));
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
