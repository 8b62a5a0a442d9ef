//! One handler per Sluice statement. Standard SQL that DataFusion runs does
//! not come here (see [`crate::engine`]).

mod connection;
mod create;
mod create_sink;
mod create_view;
mod describe;
mod drop;
mod flush;
mod settings;
mod show;

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use sluice_common::{Result, SluiceError};
use sluice_sql::Statement;

use crate::engine::{Engine, Output};

/// Runs one of Sluice's own statements.
pub async fn execute(engine: &Engine, statement: &Statement) -> Result<Output> {
    match statement {
        Statement::CreateRelation(create) => create::execute(engine, create).await,
        Statement::CreateView(create) => create_view::execute(engine, create).await,
        Statement::CreateSink(create) => create_sink::execute(engine, create).await,
        Statement::ExplainCreateView(create) => create_view::explain(engine, create).await,
        Statement::Drop(drop) => drop::execute(engine, drop).await,
        Statement::ShowRelations(kind) => show::execute(engine, *kind),
        Statement::Describe(name) => describe::execute(engine, name),
        Statement::Flush => flush::execute(engine).await,
        Statement::CreateConnection(create) => connection::create(engine, create).await,
        Statement::DropConnection { if_exists, names } => {
            connection::drop(engine, *if_exists, names).await
        }
        Statement::ShowConnections => connection::show(engine),
        Statement::DescribeConnection(name) => connection::describe(engine, name),
        Statement::Sql(sql) => settings::execute(sql),
    }
}

/// The columns a statement returns, known before it runs (for `Describe`
/// in the extended protocol). `None` when it returns no rows.
pub fn result_schema(statement: &Statement) -> Option<SchemaRef> {
    match statement {
        Statement::ShowRelations(_) => Some(show::schema()),
        Statement::Describe(_) => Some(describe::schema()),
        Statement::ShowConnections => Some(connection::show_schema()),
        Statement::DescribeConnection(_) => Some(connection::describe_schema()),
        Statement::ExplainCreateView(_) => Some(text_schema(&["QUERY PLAN"])),
        Statement::Sql(sql) => settings::result_schema(sql),
        _ => None,
    }
}

/// The row count of a DML result (`count` column, one row).
pub fn dml_count(batches: &[RecordBatch]) -> Result<usize> {
    let mut total = 0;
    for batch in batches {
        let Some(counts) = batch
            .columns()
            .first()
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        else {
            return Err(SluiceError::internal("DML result without a count column"));
        };
        total += counts.iter().flatten().sum::<u64>() as usize;
    }
    Ok(total)
}

/// One row of one text column (`SHOW` of a setting).
pub fn single_value(name: &str, value: &str) -> Result<Output> {
    use datafusion::arrow::array::StringArray;
    let schema = text_schema(&[name]);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![value]))],
    )?;
    Ok(rows(schema, batch))
}

/// Rows from a single batch.
fn rows(schema: SchemaRef, batch: RecordBatch) -> Output {
    Output::Rows {
        schema,
        batches: vec![batch],
    }
}

fn text_schema(names: &[&str]) -> SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field};
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// Whether `name` is already a relation of `kind` and the statement said
/// `IF NOT EXISTS` (nothing to do); any other relation of that name is a
/// `42P07`. Call with the writer lock held.
fn already_exists(
    catalog: &sluice_catalog::Catalog,
    name: &str,
    if_not_exists: bool,
    kind: sluice_sql::RelationKind,
) -> Result<bool> {
    match catalog.get(name)? {
        None => Ok(false),
        Some(existing) if if_not_exists && existing.kind() == kind => Ok(true),
        Some(existing) => Err(SluiceError::DuplicateObject {
            kind: existing.kind().into(),
            name: name.to_owned(),
        }),
    }
}
