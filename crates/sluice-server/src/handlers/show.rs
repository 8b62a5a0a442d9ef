//! `SHOW STREAMS` / `SHOW TABLES`: one row per relation, by name.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use sluice_common::Result;
use sluice_sql::RelationKind;

use crate::engine::{Engine, Output};

pub fn schema() -> SchemaRef {
    super::text_schema(&["name"])
}

pub fn execute(engine: &Engine, kind: RelationKind) -> Result<Output> {
    let names: Vec<String> = engine
        .catalog()
        .list(kind)?
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    let schema = schema();
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(names))])?;
    Ok(super::rows(schema, batch))
}
