//! `Map`: filter, then project, row by row over whole batches. Stateless:
//! each row keeps its sign, so retractions pass through unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{ChangeBatch, Result, SluiceError};

use crate::{OpContext, Operator};

/// Filters rows by a predicate, then computes the output columns.
pub struct Map {
    filter: Option<Arc<dyn PhysicalExpr>>,
    projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    label: String,
}

impl Map {
    /// A map with an optional filter and optional projection (`None` keeps
    /// the input columns); `schema` is the output's.
    pub fn new(
        filter: Option<Arc<dyn PhysicalExpr>>,
        projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
        schema: SchemaRef,
        label: String,
    ) -> Self {
        Map {
            filter,
            projection,
            schema,
            label,
        }
    }
}

#[async_trait]
impl Operator for Map {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        _state: &[u8],
        _ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let mut changes = changes;
        if let Some(filter) = &self.filter {
            let mask = filter
                .evaluate(&changes.batch)?
                .into_array(changes.num_rows())?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| SluiceError::DatatypeMismatch {
                    message: "argument of WHERE must be type boolean".into(),
                })?;
            changes = changes.filter(mask)?;
        }
        match &self.projection {
            None => {
                let columns = changes.batch.columns().to_vec();
                changes.with_columns(self.schema.clone(), columns)
            }
            Some(exprs) => {
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&changes.batch)?.into_array(changes.num_rows()))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                changes.with_columns(self.schema.clone(), columns)
            }
        }
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn stateless(&self) -> bool {
        true
    }

    fn explain(&self) -> String {
        format!("{} (stateless)", self.label)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_plan::expressions::{binary, col, lit};
    use datafusion::prelude::SessionContext;
    use sluice_state::{MemoryBackend, StateTxn};

    use super::*;

    #[tokio::test]
    async fn filters_and_projects_keeping_signs() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(Int64Array::from(vec![10, 20, 30])),
            ],
        )
        .expect("batch");
        // + 1 10, - 2 20, + 3 30  ->  WHERE a > 1  ->  SELECT b
        let changes = ChangeBatch::new(batch, vec![1, -1, 1]);
        let predicate = binary(
            col("a", &schema).expect("a"),
            BinaryOp::Gt,
            lit(1i64),
            &schema,
        )
        .expect("a > 1");
        let out_schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Int64, true)]));
        let map = Map::new(
            Some(predicate),
            Some(vec![col("b", &schema).expect("b")]),
            out_schema.clone(),
            "test".into(),
        );
        let mut txn = StateTxn::new(Arc::new(MemoryBackend::new()));
        let session = SessionContext::new();
        let mut late = Vec::new();
        let mut ctx = OpContext {
            txn: &mut txn,
            datafusion: &session,
            late: &mut late,
        };
        let out = map
            .process(0, changes, &[], &mut ctx)
            .await
            .expect("process");
        let expected =
            RecordBatch::try_new(out_schema, vec![Arc::new(Int64Array::from(vec![20, 30]))])
                .expect("expected");
        assert_eq!(out, ChangeBatch::new(expected, vec![-1, 1]));
    }
}
