//! `CREATE SINK name FROM relation WITH (connector = 'kafka', ...)`.

use std::collections::BTreeMap;

use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_sql::{CreateSink, RelationKind};

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateSink) -> Result<Output> {
    let done = Output::command("CREATE SINK");
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
    let key =
        match (keyed, options.get("primary_key")) {
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
            (true, None) if upsert => {
                engine.planner().unique_key(&from).await?.ok_or_else(|| {
                    SluiceError::InvalidOption {
                        message: format!(
                            "cannot tell which columns identify a row of \"{}\" for {}",
                            from.name(),
                            format.as_deref().unwrap_or("upsert_json")
                        ),
                        hint: Some("name them: primary_key = 'col1, col2'".to_owned()),
                    }
                })?
            }
            // Debezium records are keyed (and updates paired) when a key is known.
            (true, None) => engine
                .planner()
                .unique_key(&from)
                .await?
                .unwrap_or_default(),
            (false, _) => Vec::new(),
        };
    let spawn = engine
        .sources()
        .sink(&create.name, &options, key.clone(), from.kind())?;
    let catalog = engine.catalog();
    let _writer = catalog.lock_writes().await;
    if super::already_exists(
        catalog,
        &create.name,
        create.if_not_exists,
        RelationKind::Sink,
    )? {
        return Ok(done);
    }
    // Looked up again under the lock: it may have been dropped meanwhile.
    let from = catalog
        .get(&create.from)?
        .ok_or_else(|| SluiceError::UndefinedObject {
            kind: ObjectKind::Relation,
            name: create.from.clone(),
        })?;
    if from.kind() == RelationKind::Sink {
        return Err(SluiceError::WrongObjectType {
            message: format!(
                "\"{}\" is a sink: a sink reads a stream, table or view",
                from.name()
            ),
            hint: None,
        });
    }
    from.check_not_failed()?;
    let relation = catalog.new_sink(&create.name, &from, options, key)?;
    engine
        .dataflow()
        .install_sink(relation, &from, spawn)
        .await?;
    Ok(done)
}
