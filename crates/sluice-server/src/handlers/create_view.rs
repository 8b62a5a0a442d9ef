//! `CREATE MATERIALIZED VIEW` and `EXPLAIN CREATE MATERIALIZED VIEW`.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use sluice_common::Result;
use sluice_sql::CreateView;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateView) -> Result<Output> {
    engine.dataflow().create_view(create).await?;
    Ok(Output::command("CREATE MATERIALIZED VIEW"))
}

pub async fn explain(engine: &Engine, create: &CreateView) -> Result<Output> {
    let lines = engine.dataflow().explain(create).await?;
    let schema = super::text_schema(&["QUERY PLAN"]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])?;
    Ok(super::rows(schema, batch))
}
