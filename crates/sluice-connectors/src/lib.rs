//! Sluice's connectors: Kafka sources for streams and tables (and, with
//! `sinks`, Kafka sinks for views and streams).
//!
//! A source is a task per stream or table declared `WITH (connector =
//! 'kafka', ...)`: it reads the topic, decodes records into Arrow
//! (`decode.rs`) and writes them with its position through
//! `Catalog::ingest`; what it did shows in the system table
//! `sluice_sources` (`status.rs`).

pub mod avro;
pub mod connector;
pub mod debezium;
pub mod decode;
pub mod file;
pub mod kafka;
pub mod nexmark;
pub mod protobuf;
pub mod registry;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sluice_catalog::{Catalog, ConnectionEntry, Relation};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};

pub use connector::{registry, Connector, Context, OptionDoc};
pub use kafka::options::{KafkaSink, KafkaSource};
pub use kafka::properties::{is_secret_option, Policy};
pub use nexmark::NexmarkSource;
pub use status::{sinks_table, sources_table, SourceStatus, StatusList};

use connector::{Running, Use};

/// Starts a sink's task on its input (what `Dataflow::install_sink` and
/// `Dataflow::resume_sink` take).
pub use sluice_dataflow::SpawnSink;

/// The running sources, and the status of every sink.
#[derive(Debug)]
pub struct Sources {
    cx: Context,
    running: Mutex<BTreeMap<u64, Running>>,
    sinks: Mutex<BTreeMap<String, Arc<SourceStatus>>>,
}

fn poisoned() -> SluiceError {
    SluiceError::internal("sources lock poisoned")
}

impl Sources {
    /// No sources yet; connectors get what `policy` allows.
    pub fn new(catalog: Arc<Catalog>, policy: Policy) -> Result<Arc<Self>> {
        catalog.set_replay(Arc::new(connector::Regenerate))?;
        Ok(Arc::new(Sources {
            cx: Context {
                catalog,
                policy: Arc::new(policy),
            },
            running: Mutex::new(BTreeMap::new()),
            sinks: Mutex::new(BTreeMap::new()),
        }))
    }

    /// `options` with those of the connection they name (`connection =
    /// 'name'`) merged in: the connection's type becomes `connector`. An
    /// option set both here and in the connection is refused.
    pub fn resolve(&self, options: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
        let Some(name) = options.get("connection") else {
            return Ok(options.clone());
        };
        let connection =
            self.cx
                .catalog
                .connection(name)?
                .ok_or_else(|| SluiceError::UndefinedObject {
                    kind: sluice_common::ObjectKind::Connection,
                    name: name.clone(),
                })?;
        if let Some(connector) = registry().iter().find(|c| c.name() == connection.kind) {
            if let Some(key) = options.keys().find(|k| connector.locked_by_connection(k)) {
                return Err(SluiceError::InvalidOption {
                    message: format!(
                        "option \"{key}\" cannot be set beside connection \"{name}\": a source or \
                         sink that uses a connection takes its servers and security settings from it"
                    ),
                    hint: Some(format!(
                        "set it in the connection, or create another connection; leave out {key}"
                    )),
                });
            }
        }
        let mut merged = options.clone();
        match merged.get("connector") {
            Some(c) if *c != connection.kind => {
                return Err(SluiceError::InvalidOption {
                    message: format!(
                        "connection \"{name}\" is a {} connection, but connector is \"{c}\"",
                        connection.kind
                    ),
                    hint: Some("leave out connector: the connection says it".to_owned()),
                })
            }
            _ => {
                merged.insert("connector".to_owned(), connection.kind.clone());
            }
        }
        for (key, value) in &connection.options {
            if merged.insert(key.clone(), value.clone()).is_some() {
                return Err(SluiceError::InvalidOption {
                    message: format!(
                        "option \"{key}\" is set by connection \"{name}\" and cannot be set here too"
                    ),
                    hint: Some(format!(
                        "leave out {key}, or use a connection without it"
                    )),
                });
            }
        }
        Ok(merged)
    }

    /// Checks the options of `CREATE CONNECTION name WITH (type = ...,
    /// ...)` and returns the entry to store.
    pub fn check_connection(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<ConnectionEntry> {
        let what = format!("connection \"{name}\"");
        let mut options = options.clone();
        let kind = options
            .remove("type")
            .ok_or_else(|| SluiceError::InvalidOption {
                message: format!("{what} needs option \"type\""),
                hint: Some("add type = 'kafka'".to_owned()),
            })?;
        if options.contains_key("connector") || options.contains_key("connection") {
            return Err(SluiceError::InvalidOption {
                message: format!("{what} cannot name a connector or another connection"),
                hint: Some("type says which connector it is for".to_owned()),
            });
        }
        if kind == "schema_registry" {
            registry::RegistryOptions::parse(&what, &options, &self.cx.policy)?;
            return Ok(ConnectionEntry {
                name: name.to_owned(),
                kind,
                options,
            });
        }
        let mut probe = options.clone();
        probe.insert("connector".to_owned(), kind.clone());
        let connector = connector::find(&probe, &what, Use::Connection)?
            .ok_or_else(|| SluiceError::internal("a connection without a connector"))?;
        if connector.connection_options().is_empty() {
            return Err(SluiceError::InvalidOption {
                message: format!("there are no connections of type \"{kind}\""),
                hint: Some("connection types: kafka, schema_registry".to_owned()),
            });
        }
        if kind == "kafka" && !options.contains_key("bootstrap_servers") {
            return Err(SluiceError::InvalidOption {
                message: format!("{what} needs option \"bootstrap_servers\""),
                hint: Some("add bootstrap_servers = 'host:port[,...]'".to_owned()),
            });
        }
        // The client settings' values are checked as a source would check them.
        kafka::properties::Settings::parse(&options, &self.cx.policy)?;
        Ok(ConnectionEntry {
            name: name.to_owned(),
            kind,
            options,
        })
    }

    /// The task of sink `name` with these options, keyed by the columns at
    /// `key`, reading a relation of kind `from`.
    pub fn sink(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
        key: Vec<usize>,
        from: RelationKind,
    ) -> Result<SpawnSink> {
        let what = format!("sink \"{name}\"");
        let options = self.resolve(options)?;
        let connector = connector::find(&options, &what, Use::Sink)?.ok_or_else(|| {
            SluiceError::InvalidOption {
                message: format!("{what} needs option \"connector\" or \"connection\""),
                hint: Some("add connector = 'kafka' to WITH (...)".to_owned()),
            }
        })?;
        let (status, spawn) = connector.sink(&self.cx, name, &options, key, from)?;
        self.sinks
            .lock()
            .map_err(|_| poisoned())?
            .insert(name.to_owned(), status);
        Ok(spawn)
    }

    /// Fills in the columns of a stream declared without any, from its
    /// source: the latest schema of the topic's `<topic>-value` subject in
    /// the schema registry (format `avro`). Does nothing when columns are
    /// declared; an empty list stays empty (and is refused later) for
    /// formats that cannot tell.
    pub async fn infer_columns(&self, create: &mut CreateRelation) -> Result<()> {
        if !create.columns.is_empty() {
            return Ok(());
        }
        let options: BTreeMap<String, String> = create.options.iter().cloned().collect();
        let options = self.resolve(&options)?;
        let format = options.get("format").map(String::as_str);
        if options.get("connector").map(String::as_str) != Some("kafka")
            || !matches!(format, Some("avro" | "upsert_avro" | "protobuf"))
        {
            return Ok(());
        }
        let parsed = KafkaSource::parse(create.kind, &create.name, &options, &self.cx.policy)?;
        let Some(registry) = kafka::registry(&self.cx, parsed.schema_registry.as_deref())? else {
            return Ok(());
        };
        if format == Some("protobuf") {
            let subject = format!("{}-value", parsed.topic);
            let latest = registry
                .latest_of(&subject, registry::SchemaType::Protobuf)
                .await?;
            let (main, imports) = registry.protobuf_files(latest.id).await?;
            let file =
                protobuf::compile(&main, &imports).map_err(|e| SluiceError::InvalidOption {
                    message: format!("subject \"{subject}\" (schema {}): {e}", latest.id),
                    hint: None,
                })?;
            let message = protobuf::message_named(&file, parsed.message.as_deref())?;
            for field in message.fields() {
                if create.include.iter().any(|(_, c)| c == field.name()) {
                    continue;
                }
                create.columns.push(sluice_sql::ColumnDef {
                    name: field.name().to_owned(),
                    sql_type: protobuf::sql_type(&field)?,
                    not_null: false,
                });
            }
            tracing::info!(relation = %create.name, %subject, schema_id = latest.id,
                message = message.full_name(), columns = create.columns.len(),
                "columns taken from the schema registry");
            return Ok(());
        }
        let mut fields = Vec::new();
        // A table's key schema first (its fields the value may lack).
        if format == Some("upsert_avro") {
            match registry.latest(&format!("{}-key", parsed.topic)).await {
                Ok(key) => fields.extend(
                    avro::arrow_schema(key.id, &key.schema)?
                        .fields()
                        .iter()
                        .cloned(),
                ),
                Err(registry::RegistryError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let subject = format!("{}-value", parsed.topic);
        let latest = registry.latest(&subject).await?;
        for field in avro::arrow_schema(latest.id, &latest.schema)?.fields() {
            if !fields.iter().any(|f| f.name() == field.name()) {
                fields.push(field.clone());
            }
        }
        for field in fields {
            if create.include.iter().any(|(_, c)| c == field.name()) {
                continue;
            }
            create.columns.push(sluice_sql::ColumnDef {
                name: field.name().clone(),
                sql_type: avro::sql_type(field.name(), field.data_type())?,
                not_null: !field.is_nullable(),
            });
        }
        tracing::info!(relation = %create.name, %subject, schema_id = latest.id,
            columns = create.columns.len(), "columns taken from the schema registry");
        Ok(())
    }

    /// Checks the connector options of a stream or table about to be
    /// created (before anything is stored).
    pub fn check(&self, create: &CreateRelation, options: &BTreeMap<String, String>) -> Result<()> {
        let what = format!("{} \"{}\"", create.kind, create.name);
        let options = self.resolve(options)?;
        match connector::find(&options, &what, Use::Source)? {
            Some(connector) => connector.check_source(&self.cx, create, &options),
            None => Ok(()),
        }
    }

    /// Starts reading into `relation` if it has a connector.
    pub fn start(&self, relation: Arc<Relation>) -> Result<()> {
        let what = format!("{} \"{}\"", relation.kind(), relation.name());
        let options = self.resolve(&relation.entry().options)?;
        let Some(connector) = connector::find(&options, &what, Use::Source)? else {
            return Ok(());
        };
        let running = connector.start_source(&self.cx, relation.clone(), &options)?;
        if let Some((_, old)) = self
            .running
            .lock()
            .map_err(|_| poisoned())?
            .insert(relation.entry().id, running)
        {
            old.abort();
        }
        Ok(())
    }

    /// Starts every stored source (at server start). A source that cannot
    /// start (its options are no longer allowed by the config, its
    /// connection is gone) is logged and shows as failed in
    /// `sluice_sources`; the others start.
    pub fn start_all(&self) -> Result<()> {
        for kind in [RelationKind::Stream, RelationKind::Table] {
            for relation in self.cx.catalog.list(kind)? {
                let id = relation.entry().id;
                let name = relation.name().to_owned();
                if let Err(e) = self.start(relation) {
                    tracing::error!(source = %name, error = %e, "source cannot start");
                    let status = Arc::new(SourceStatus::new(&name, ""));
                    status.set_state(status::bounded(&format!("failed: {e}")));
                    self.running
                        .lock()
                        .map_err(|_| poisoned())?
                        .insert(id, (status, tokio::spawn(async {})));
                }
            }
        }
        Ok(())
    }

    /// Stops the source of relation `relation`, if it has one (and forgets
    /// the status of a dropped sink).
    pub async fn stop(&self, relation: &Relation) {
        let id = relation.entry().id;
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.remove(relation.name());
        }
        let stopped = self.running.lock().ok().and_then(|mut r| r.remove(&id));
        if let Some((_, task)) = stopped {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops every source.
    pub async fn shutdown(&self) {
        let all: Vec<_> = match self.running.lock() {
            Ok(mut r) => std::mem::take(&mut *r).into_values().collect(),
            Err(_) => Vec::new(),
        };
        for (_, task) in all {
            task.abort();
            let _ = task.await;
        }
    }
}

impl StatusList for Sources {
    fn statuses(&self, sinks: bool) -> Vec<Arc<SourceStatus>> {
        if sinks {
            return self
                .sinks
                .lock()
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default();
        }
        self.running
            .lock()
            .map(|r| r.values().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default()
    }
}
