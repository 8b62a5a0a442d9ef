//! `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`.

use std::collections::BTreeMap;

use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_connectors::kafka::options::Format;
use sluice_connectors::KafkaSink;
use sluice_sql::CreateSink;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateSink) -> Result<Output> {
    let options: BTreeMap<String, String> = create.options.iter().cloned().collect();
    let parsed = KafkaSink::parse(&create.name, &options)?;
    let from = engine
        .catalog()
        .get(&create.from)?
        .ok_or_else(|| SluiceError::UndefinedObject {
            kind: ObjectKind::Relation,
            name: create.from.clone(),
        })?;
    let key = match (parsed.format, options.get("primary_key")) {
        (Format::UpsertJson, Some(list)) => {
            let schema = from.schema();
            list.split(',')
                .map(|c| {
                    let c = c.trim().to_lowercase();
                    schema
                        .index_of(&c)
                        .map_err(|_| SluiceError::UndefinedColumn { name: c.clone() })
                })
                .collect::<Result<Vec<_>>>()?
        }
        (Format::UpsertJson, None) => {
            engine.dataflow().unique_key(&from).await?.ok_or_else(|| {
                SluiceError::InvalidOption {
                    message: format!(
                        "cannot tell which columns identify a row of \"{}\" for upsert_json",
                        from.name()
                    ),
                    hint: Some("name them: primary_key = 'col1, col2'".to_owned()),
                }
            })?
        }
        _ => Vec::new(),
    };
    let spawn = engine
        .sources()
        .sink(&create.name, &options, key.clone(), from.kind())?;
    engine.dataflow().create_sink(create, key, spawn).await?;
    Ok(Output::command("CREATE SINK"))
}
