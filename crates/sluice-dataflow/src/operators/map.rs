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

    fn explain(&self) -> String {
        format!("{} (stateless)", self.label)
    }
}
