//! `CREATE MATERIALIZED VIEW` and `EXPLAIN CREATE MATERIALIZED VIEW`.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use sluice_common::Result;
use sluice_sql::{CreateView, RelationKind};

use crate::engine::{Engine, Output};

/// Plans the query, records the view and has the dataflow back-fill and
/// run it, all under the writer lock (no write lands in between).
pub async fn execute(engine: &Engine, create: &CreateView) -> Result<Output> {
    let done = Output::command("CREATE MATERIALIZED VIEW");
    let catalog = engine.catalog();
    let _writer = catalog.lock_writes().await;
    if super::already_exists(
        catalog,
        &create.name,
        create.if_not_exists,
        RelationKind::View,
    )? {
        return Ok(done);
    }
    let id = catalog.next_id()?;
    let planned = engine.planner().plan_view(create, id).await?;
    let relation = catalog.new_view(
        &create.name,
        &create.stored_query(),
        &planned.schema,
        planned.depends_on,
        planned.appended,
    )?;
    engine
        .dataflow()
        .install_view(relation, planned.root)
        .await?;
    Ok(done)
}

pub async fn explain(engine: &Engine, create: &CreateView) -> Result<Output> {
    let lines = engine.planner().explain(create).await?;
    let schema = super::text_schema(&["QUERY PLAN"]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])?;
    Ok(super::rows(schema, batch))
}
