//! Kafka, through rdkafka (librdkafka): sources for streams and tables,
//! and sinks.

pub mod client;
pub mod options;
pub mod outbox;
pub mod properties;
pub mod sink;
pub(crate) mod source;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_catalog::Relation;
use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};

use crate::connector::{Connector, Context, OptionDoc, Running};
use crate::registry::{Registry, RegistryOptions};
use crate::status::SourceStatus;
use crate::SpawnSink;
use options::{KafkaSink, KafkaSource};

/// The Kafka connector.
#[derive(Debug)]
pub struct Kafka;

use OptionDoc as D;

/// The client options sources and sinks share.
const CLIENT_OPTIONS: &[OptionDoc] = &[
    D::new(
        "bootstrap_servers",
        "host:port[,...] (default localhost:9092)",
    ),
    D::new(
        "security_protocol",
        "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    D::new("sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    D::new("sasl_username", "the SASL user"),
    D::new("sasl_password", "the SASL password (secret: never shown)"),
    D::new(
        "ssl_ca_location",
        "CA certificate file, under client_file_dirs",
    ),
    D::new("ssl_ca_pem", "CA certificate, PEM text"),
    D::new(
        "ssl_certificate_location",
        "client certificate file, under client_file_dirs",
    ),
    D::new("ssl_certificate_pem", "client certificate, PEM text"),
    D::new(
        "ssl_key_location",
        "client key file, under client_file_dirs",
    ),
    D::new("ssl_key_pem", "client key, PEM text (secret)"),
    D::new("ssl_key_password", "the client key's password (secret)"),
    D::new(
        "ssl_endpoint_identification_algorithm",
        "https (default: check the broker's host name) or none",
    ),
];

const SOURCE_OPTIONS: &[OptionDoc] = &[
    D::new("topic", "the topic read (every partition)"),
    D::new(
        "format",
        "json, csv, avro or protobuf (streams), upsert_json, upsert_avro, debezium_json or debezium_avro (tables)",
    ),
    D::new(
        "schema_registry",
        "avro, protobuf: a schema_registry connection, or the registry's URL",
    ),
    D::new(
        "message",
        "protobuf: the message records must be (full name); default: the one each names",
    ),
    D::new("scan_startup", "earliest (default), latest, or a time"),
    D::new(
        "on_error",
        "skip (default), fail or dead_letter: what a bad record does",
    ),
    D::new(
        "dead_letter_topic",
        "where on_error = 'dead_letter' writes bad records",
    ),
];

const SINK_OPTIONS: &[OptionDoc] = &[
    D::new("topic", "the topic written"),
    D::new(
        "format",
        "json, avro or protobuf (every change, with op), upsert_json or upsert_avro (keyed, tombstones), debezium_json or debezium_avro",
    ),
    D::new(
        "schema_registry",
        "avro, protobuf: a schema_registry connection, or the registry's URL",
    ),
    D::new(
        "primary_key",
        "upsert_json, upsert_avro: the key columns, when Sluice cannot tell them",
    ),
    D::new(
        "on_error",
        "fail (default), skip or dead_letter: what a refused record does",
    ),
    D::new(
        "dead_letter_topic",
        "where on_error = 'dead_letter' writes refused records",
    ),
];

/// The schema registry `schema_registry` names: a connection of type
/// `schema_registry`, or a URL.
pub fn registry(cx: &Context, name: Option<&str>) -> Result<Option<Registry>> {
    let Some(name) = name else {
        return Ok(None);
    };
    let options = if name.starts_with("http://") || name.starts_with("https://") {
        let mut o = BTreeMap::new();
        o.insert("url".to_owned(), name.to_owned());
        RegistryOptions::parse("schema_registry", &o, &cx.policy)?
    } else {
        let connection =
            cx.catalog
                .connection(name)?
                .ok_or_else(|| SluiceError::UndefinedObject {
                    kind: ObjectKind::Connection,
                    name: name.to_owned(),
                })?;
        if connection.kind != "schema_registry" {
            return Err(SluiceError::InvalidOption {
                message: format!(
                    "schema_registry names connection \"{name}\", which is a {} connection",
                    connection.kind
                ),
                hint: Some(
                    "name a connection created WITH (type = 'schema_registry', url = '...')"
                        .to_owned(),
                ),
            });
        }
        RegistryOptions::parse(
            &format!("connection \"{name}\""),
            &connection.options,
            &cx.policy,
        )?
    };
    Ok(Some(Registry::new(options)?))
}

impl Connector for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn source_options(&self) -> Vec<OptionDoc> {
        [SOURCE_OPTIONS, CLIENT_OPTIONS].concat()
    }

    fn sink_options(&self) -> Vec<OptionDoc> {
        [SINK_OPTIONS, CLIENT_OPTIONS].concat()
    }

    fn connection_options(&self) -> Vec<OptionDoc> {
        CLIENT_OPTIONS.to_vec()
    }

    fn prefixes(&self) -> &'static [&'static str] {
        &["properties."]
    }

    fn locked_by_connection(&self, key: &str) -> bool {
        CLIENT_OPTIONS.iter().any(|o| o.name == key)
            || key.strip_prefix("properties.").is_some_and(|p| {
                [
                    "sasl.",
                    "ssl.",
                    "security.",
                    "enable.ssl",
                    "bootstrap",
                    "metadata.broker",
                ]
                .iter()
                .any(|locked| p.starts_with(locked))
            })
    }

    fn check_source(
        &self,
        cx: &Context,
        create: &CreateRelation,
        options: &BTreeMap<String, String>,
    ) -> Result<()> {
        let parsed = KafkaSource::parse(create.kind, &create.name, options, &cx.policy)?;
        registry(cx, parsed.schema_registry.as_deref()).map(|_| ())
    }

    fn start_source(
        &self,
        cx: &Context,
        relation: Arc<Relation>,
        options: &BTreeMap<String, String>,
    ) -> Result<Running> {
        let parsed = KafkaSource::parse(relation.kind(), relation.name(), options, &cx.policy)?;
        let registry = registry(cx, parsed.schema_registry.as_deref())?;
        let status = Arc::new(SourceStatus::new(relation.name(), &parsed.topic));
        let task = tokio::spawn(source::run(
            cx.catalog.clone(),
            relation,
            parsed,
            registry,
            status.clone(),
        ));
        Ok((status, task))
    }

    fn sink(
        &self,
        cx: &Context,
        name: &str,
        options: &BTreeMap<String, String>,
        key: Vec<usize>,
        from: RelationKind,
    ) -> Result<(Arc<SourceStatus>, SpawnSink)> {
        let options = KafkaSink::parse(name, options, &cx.policy)?;
        let registry = registry(cx, options.schema_registry.as_deref())?;
        let status = Arc::new(SourceStatus::new(name, &options.topic));
        let spec = sink::SinkSpec {
            options,
            key,
            with_op: from != RelationKind::Stream,
            registry,
        };
        let (name, task_status) = (name.to_owned(), status.clone());
        let spawn: SpawnSink =
            Box::new(move |input| tokio::spawn(sink::run(spec, name, task_status, input)));
        Ok((status, spawn))
    }
}
