//! `DESCRIBE name`: a row per column, with its type, nullability, key
//! membership and, on the event-time column, the watermark expression.

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::ObjectName;
use sluice_common::{ObjectKind, Result};

use crate::engine::{Engine, Output};

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("nullable", DataType::Boolean, false),
        Field::new("primary_key", DataType::Boolean, false),
        Field::new("watermark", DataType::Utf8, true),
    ]))
}

pub fn execute(engine: &Engine, name: &ObjectName) -> Result<Output> {
    let name = sluice_sql::object_name(name)?;
    let relation = engine.catalog().require(&name, ObjectKind::Relation)?;
    let entry = relation.entry();
    let mut names = Vec::new();
    let mut types = Vec::new();
    let mut nullable = Vec::new();
    let mut key = Vec::new();
    let mut watermark = Vec::new();
    if entry.columns.is_empty() {
        // A view: its columns are those of its query.
        for field in relation.schema().fields() {
            names.push(field.name().clone());
            types.push(sluice_sql::types::pg_type_name(field.data_type()));
            nullable.push(field.is_nullable());
            key.push(false);
            watermark.push(None);
        }
    }
    for (i, c) in entry.columns.iter().enumerate() {
        names.push(c.name.clone());
        types.push(c.sql_type.to_string());
        nullable.push(!c.not_null);
        key.push(entry.primary_key.contains(&i));
        watermark.push(
            entry
                .watermark
                .as_ref()
                .filter(|w| w.column == c.name)
                .map(|w| w.expr.clone()),
        );
    }
    let schema = schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(types)),
            Arc::new(BooleanArray::from(nullable)),
            Arc::new(BooleanArray::from(key)),
            Arc::new(StringArray::from(watermark)),
        ],
    )?;
    Ok(super::rows(schema, batch))
}
