//! `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`.

use std::collections::BTreeMap;

use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_sql::CreateSink;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateSink) -> Result<Output> {
    let options: BTreeMap<String, String> = create.options.iter().cloned().collect();
    // The connection's options count as the sink's own.
    let format = engine.sources().resolve(&options)?.get("format").cloned();
    let upsert = matches!(format.as_deref(), Some("upsert_json" | "upsert_avro"));
    let from = engine
        .catalog()
        .get(&create.from)?
        .ok_or_else(|| SluiceError::UndefinedObject {
            kind: ObjectKind::Relation,
            name: create.from.clone(),
        })?;
    let keyed = upsert || matches!(format.as_deref(), Some("debezium_json" | "debezium_avro"));
    let key = match (keyed, options.get("primary_key")) {
        (true, Some(list)) => {
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
        (true, None) if upsert => engine.dataflow().unique_key(&from).await?.ok_or_else(|| {
            SluiceError::InvalidOption {
                message: format!(
                    "cannot tell which columns identify a row of \"{}\" for {}",
                    from.name(),
                    format.as_deref().unwrap_or("upsert_json")
                ),
                hint: Some("name them: primary_key = 'col1, col2'".to_owned()),
            }
        })?,
        // Debezium records are keyed (and updates paired) when a key is known.
        (true, None) => engine
            .dataflow()
            .unique_key(&from)
            .await?
            .unwrap_or_default(),
        (false, _) => Vec::new(),
    };
    let spawn = engine
        .sources()
        .sink(&create.name, &options, key.clone(), from.kind())?;
    engine.dataflow().create_sink(create, key, spawn).await?;
    Ok(Output::command("CREATE SINK"))
}
