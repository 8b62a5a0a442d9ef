//! `CREATE CONNECTION`, `DROP CONNECTION`, `SHOW CONNECTIONS` and
//! `DESCRIBE CONNECTION`. Secret options are stored (the sources need
//! them) but never shown: `DESCRIBE CONNECTION` prints them as `***`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_connectors::is_secret_option;
use sluice_sql::CreateConnection;

use crate::engine::{Engine, Output};

pub async fn create(engine: &Engine, create: &CreateConnection) -> Result<Output> {
    let mut options = BTreeMap::new();
    for (key, value) in &create.options {
        if options.insert(key.clone(), value.clone()).is_some() {
            return Err(SluiceError::InvalidOption {
                message: format!("option \"{key}\" is given more than once"),
                hint: None,
            });
        }
    }
    let entry = engine.sources().check_connection(&create.name, &options)?;
    engine
        .catalog()
        .create_connection(entry, create.if_not_exists)
        .await?;
    Ok(Output::command("CREATE CONNECTION"))
}

pub async fn drop(engine: &Engine, if_exists: bool, names: &[String]) -> Result<Output> {
    for name in names {
        engine.catalog().drop_connection(name, if_exists).await?;
    }
    Ok(Output::command("DROP CONNECTION"))
}

pub fn show_schema() -> SchemaRef {
    super::text_schema(&["name", "type"])
}

pub fn show(engine: &Engine) -> Result<Output> {
    let connections = engine.catalog().connections()?;
    let schema = show_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                connections.iter().map(|c| c.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                connections.iter().map(|c| c.kind.as_str()),
            )),
        ],
    )?;
    Ok(super::rows(schema, batch))
}

pub fn describe_schema() -> SchemaRef {
    super::text_schema(&["option", "value"])
}

pub fn describe(engine: &Engine, name: &str) -> Result<Output> {
    let connection =
        engine
            .catalog()
            .connection(name)?
            .ok_or_else(|| SluiceError::UndefinedObject {
                kind: ObjectKind::Connection,
                name: name.to_owned(),
            })?;
    let mut keys = vec!["type".to_owned()];
    let mut values = vec![connection.kind.clone()];
    for (key, value) in &connection.options {
        keys.push(key.clone());
        values.push(if is_secret_option(key) {
            "***".to_owned()
        } else {
            value.clone()
        });
    }
    let schema = describe_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(keys)),
            Arc::new(StringArray::from(values)),
        ],
    )?;
    Ok(super::rows(schema, batch))
}
