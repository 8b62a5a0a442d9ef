//! The `WITH (connector = 'kafka', ...)` options of a stream or table, and
//! of a sink, checked and typed.

use std::collections::BTreeMap;

use sluice_common::{Result, SluiceError};
use sluice_sql::RelationKind;

use crate::kafka::properties::{Policy, Settings};

/// How records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, columns in declaration order, no header.
    Csv,
    /// Tables: the Kafka key holds the primary key (a JSON object, or the
    /// bare value of a one-column key), the value the row; a null value
    /// deletes the key. Sinks: keyed records, a tombstone per delete.
    UpsertJson,
    /// Avro in the schema registry's wire format (streams, and sinks).
    Avro,
    /// Debezium change events in JSON (tables keyed by the primary key).
    DebeziumJson,
    /// Debezium change events in Avro through the registry.
    DebeziumAvro,
    /// Tables: the Kafka key and value in Avro (the registry's wire
    /// format, subjects `<topic>-key` and `<topic>-value`); a null value
    /// deletes the key.
    UpsertAvro,
    /// Protobuf in the schema registry's wire format (streams, and sinks).
    Protobuf,
}

impl Format {
    /// Whether records name their schema in a schema registry.
    pub fn uses_registry(self) -> bool {
        matches!(
            self,
            Format::Avro | Format::UpsertAvro | Format::DebeziumAvro | Format::Protobuf
        )
    }
}

/// Where a source starts when it has no stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// The oldest record of each partition.
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

/// What a source does with a record it cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    /// Count it, log it at WARN and go on.
    Skip,
    /// Stop the source (the error shows in `sluice_sources`).
    Fail,
    /// Send the raw record, the error and its coordinates to this topic.
    DeadLetter(String),
}

/// The options of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// The topic (all its partitions are read).
    pub topic: String,
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// How records are encoded.
    pub format: Format,
    /// Where to start without a stored position.
    pub startup: Startup,
    /// What to do with bad records.
    pub on_error: OnError,
    /// Client settings: the security options and `properties.*`, checked
    /// against the allow-list.
    pub properties: Settings,
    /// `schema_registry`: a connection name or a URL (Avro, Protobuf).
    pub schema_registry: Option<String>,
    /// `message`: the Protobuf message records must be (full name, or the
    /// last part); by default the one each record names.
    pub message: Option<String>,
}

/// The options of a Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    /// The topic written to.
    pub topic: String,
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `json` (every change as a row with an `op` field) or `upsert_json`.
    pub format: Format,
    /// What to do with a record the broker refuses for good (too large,
    /// invalid) or that cannot be encoded. Default: `fail`.
    pub on_error: OnError,
    /// Client settings: the security options and `properties.*`, checked
    /// against the allow-list.
    pub properties: Settings,
    /// `schema_registry`: a connection name or a URL (Avro).
    pub schema_registry: Option<String>,
}

/// `on_error` and `dead_letter_topic`; `default` when `on_error` is unset.
fn on_error(options: &BTreeMap<String, String>, what: &str, default: OnError) -> Result<OnError> {
    let default_name = match default {
        OnError::Skip => "skip",
        OnError::Fail => "fail",
        OnError::DeadLetter(_) => "dead_letter",
    };
    let on_error = match options.get("on_error").map(String::as_str) {
        None => default,
        Some("skip") => OnError::Skip,
        Some("fail") => OnError::Fail,
        Some("dead_letter") => match options.get("dead_letter_topic") {
            Some(t) if !t.is_empty() => OnError::DeadLetter(t.clone()),
            _ => {
                return Err(invalid(
                    format!(
                        "on_error = 'dead_letter' needs option \"dead_letter_topic\" for {what}"
                    ),
                    "add dead_letter_topic = 'name' to WITH (...)",
                ))
            }
        },
        Some(other) => {
            return Err(invalid(
                format!("unknown on_error \"{other}\" for {what}"),
                &format!("on_error is 'skip', 'fail' or 'dead_letter' (default '{default_name}')"),
            ))
        }
    };
    if options.contains_key("dead_letter_topic") && !matches!(on_error, OnError::DeadLetter(_)) {
        return Err(invalid(
            format!("dead_letter_topic is set but on_error is not 'dead_letter' for {what}"),
            "add on_error = 'dead_letter'",
        ));
    }
    Ok(on_error)
}

fn invalid(message: String, hint: &str) -> SluiceError {
    SluiceError::InvalidOption {
        message,
        hint: Some(hint.to_owned()),
    }
}

/// Topic, bootstrap servers and client settings.
type Common = (String, String, Settings);

fn common(options: &BTreeMap<String, String>, what: &str, policy: &Policy) -> Result<Common> {
    let topic = options
        .get("topic")
        .filter(|t| !t.is_empty())
        .cloned()
        .ok_or_else(|| {
            invalid(
                format!("{what} needs option \"topic\""),
                "add topic = 'name' to WITH (...)",
            )
        })?;
    let bootstrap_servers = options
        .get("bootstrap_servers")
        .cloned()
        .unwrap_or_else(|| "localhost:9092".to_owned());
    let properties = Settings::parse(options, policy)?;
    Ok((topic, bootstrap_servers, properties))
}

/// `schema_registry`, required by (and only taken with) Avro and Protobuf.
fn schema_registry(
    options: &BTreeMap<String, String>,
    format: Format,
    what: &str,
) -> Result<Option<String>> {
    match (options.get("schema_registry"), format.uses_registry()) {
        (Some(r), true) => Ok(Some(r.clone())),
        (None, true) => Err(invalid(
            format!(
                "format '{}' needs option \"schema_registry\" for {what}",
                options.get("format").map_or("avro", String::as_str)
            ),
            "add schema_registry = 'connection name' (CREATE CONNECTION ... type = 'schema_registry') \
             or schema_registry = 'http://host:8081'",
        )),
        (Some(_), _) => Err(invalid(
            format!("schema_registry is set but the format of {what} is neither 'avro' nor 'protobuf'"),
            "add format = 'avro' or format = 'protobuf'",
        )),
        (None, _) => Ok(None),
    }
}

/// Parses a timestamp option: milliseconds since the epoch, or a
/// `YYYY-MM-DD HH:MM:SS[.fff]` / RFC 3339 time (UTC).
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let nanos =
        datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text).ok()?;
    Some(nanos / 1_000_000)
}

impl KafkaSource {
    /// Checks the options of `CREATE STREAM|TABLE name ... WITH (...)`.
    pub fn parse(
        kind: RelationKind,
        name: &str,
        options: &BTreeMap<String, String>,
        policy: &Policy,
    ) -> Result<Self> {
        let what = format!("{kind} \"{name}\"");
        let (topic, bootstrap_servers, properties) = common(options, &what, policy)?;
        let format = match (options.get("format").map(String::as_str), kind) {
            (None | Some("json"), RelationKind::Stream) => Format::Json,
            (Some("csv"), RelationKind::Stream) => Format::Csv,
            (Some("avro"), RelationKind::Stream) => Format::Avro,
            (Some("protobuf"), RelationKind::Stream) => Format::Protobuf,
            (Some("protobuf"), RelationKind::Table) => {
                return Err(invalid(
                    format!("format \"protobuf\" is for streams, but \"{name}\" is a table"),
                    "declare Protobuf events as a STREAM",
                ))
            }
            (Some("upsert_avro"), RelationKind::Table) => Format::UpsertAvro,
            (Some("avro"), RelationKind::Table) => {
                return Err(invalid(
                    format!("format \"avro\" is for streams, but \"{name}\" is a table"),
                    "a table reads upsert_avro: the Kafka key (Avro) is the primary key",
                ))
            }
            (Some("upsert_avro"), RelationKind::Stream) => {
                return Err(invalid(
                    format!("format \"upsert_avro\" needs a table, but \"{name}\" is a {kind}"),
                    "declare keyed data as a TABLE with a PRIMARY KEY",
                ))
            }
            (None | Some("json" | "upsert_json"), RelationKind::Table) => Format::UpsertJson,
            (Some("debezium_json"), RelationKind::Table) => Format::DebeziumJson,
            (Some("debezium_avro"), RelationKind::Table) => Format::DebeziumAvro,
            (Some(f @ ("debezium_json" | "debezium_avro")), RelationKind::Stream) => {
                return Err(invalid(
                    format!("format \"{f}\" needs a table, but \"{name}\" is a {kind}"),
                    "declare the changed rows as a TABLE with the source table's PRIMARY KEY",
                ))
            }
            (Some("upsert_json"), _) => {
                return Err(invalid(
                    format!("format \"upsert_json\" needs a table, but \"{name}\" is a {kind}"),
                    "declare keyed data as a TABLE with a PRIMARY KEY",
                ))
            }
            (Some("csv"), _) => {
                return Err(invalid(
                    format!("format \"csv\" is for streams, but \"{name}\" is a {kind}"),
                    "a table reads upsert_json: the Kafka key is the primary key",
                ))
            }
            (Some(other), RelationKind::Stream | RelationKind::Table) => {
                return Err(invalid(
                    format!("unknown format \"{other}\" for {what}"),
                    "formats: json, csv, avro, protobuf (streams), upsert_json, upsert_avro, debezium_json, debezium_avro (tables)",
                ))
            }
            (_, RelationKind::View | RelationKind::Sink) => {
                return Err(invalid(
                    format!("a Kafka source feeds a stream or a table, not a {kind}"),
                    "declare a STREAM or TABLE WITH (connector = 'kafka', ...)",
                ))
            }
        };
        let startup = match options.get("scan_startup").map(String::as_str) {
            None | Some("earliest") => Startup::Earliest,
            Some("latest") => Startup::Latest,
            Some(other) => Startup::Timestamp(parse_time(other).ok_or_else(|| {
                invalid(
                    format!("invalid scan_startup \"{other}\" for {what}"),
                    "use 'earliest', 'latest', or a time such as '2024-05-01 10:00:00' \
                     or milliseconds since 1970",
                )
            })?),
        };
        let on_error = on_error(options, &what, OnError::Skip)?;
        let schema_registry = schema_registry(options, format, &what)?;
        let message = match (options.get("message"), format) {
            (Some(m), Format::Protobuf) => Some(m.clone()),
            (Some(_), _) => {
                return Err(invalid(
                    format!("message is set but the format of {what} is not 'protobuf'"),
                    "add format = 'protobuf'",
                ))
            }
            (None, _) => None,
        };
        Ok(KafkaSource {
            topic,
            bootstrap_servers,
            format,
            startup,
            on_error,
            properties,
            schema_registry,
            message,
        })
    }
}

impl KafkaSink {
    /// Checks the options of `CREATE SINK name FROM ... WITH (...)`.
    pub fn parse(name: &str, options: &BTreeMap<String, String>, policy: &Policy) -> Result<Self> {
        let what = format!("sink \"{name}\"");
        let (topic, bootstrap_servers, properties) = common(options, &what, policy)?;
        let format = match options.get("format").map(String::as_str) {
            None | Some("json") => Format::Json,
            Some("upsert_json") => Format::UpsertJson,
            Some("upsert_avro") => Format::UpsertAvro,
            Some("avro") => Format::Avro,
            Some("protobuf") => Format::Protobuf,
            Some("debezium_json") => Format::DebeziumJson,
            Some("debezium_avro") => Format::DebeziumAvro,
            Some(other) => {
                return Err(invalid(
                    format!("unknown format \"{other}\" for {what}"),
                    "sink formats: json (every change, with an op field), upsert_json or upsert_avro (keyed, tombstones on delete), avro or protobuf (every change, with op), debezium_json or debezium_avro (before/after per change)",
                ))
            }
        };
        let on_error = on_error(options, &what, OnError::Fail)?;
        let schema_registry = schema_registry(options, format, &what)?;
        Ok(KafkaSink {
            topic,
            bootstrap_servers,
            format,
            on_error,
            properties,
            schema_registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn source_options_are_checked() {
        let s = KafkaSource::parse(
            RelationKind::Stream,
            "s",
            &opts(&[
                ("topic", "t"),
                ("scan_startup", "2024-05-01 10:00:00"),
                ("properties.fetch.min.bytes", "1"),
            ]),
            &Policy::default(),
        )
        .expect("valid");
        assert_eq!(s.format, Format::Json);
        assert_eq!(s.startup, Startup::Timestamp(1_714_557_600_000));
        assert_eq!(
            s.properties.iter().collect::<Vec<_>>(),
            vec![("fetch.min.bytes", "1")]
        );
        let t = KafkaSource::parse(
            RelationKind::Table,
            "t",
            &opts(&[("topic", "t")]),
            &Policy::default(),
        )
        .expect("valid");
        assert_eq!(t.format, Format::UpsertJson);
        for (kind, bad, needle) in [
            (RelationKind::Stream, vec![], "needs option \"topic\""),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("format", "upsert_json")],
                "needs a table",
            ),
            (
                RelationKind::Table,
                vec![("topic", "t"), ("format", "csv")],
                "is for streams",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("format", "protobuf")],
                "format 'protobuf' needs option \"schema_registry\"",
            ),
            (
                RelationKind::Table,
                vec![
                    ("topic", "t"),
                    ("format", "protobuf"),
                    ("schema_registry", "r"),
                ],
                "is for streams",
            ),
            (
                RelationKind::Stream,
                vec![
                    ("topic", "t"),
                    ("format", "avro"),
                    ("schema_registry", "r"),
                    ("message", "m"),
                ],
                "is not 'protobuf'",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("format", "xml")],
                "unknown format",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("format", "avro")],
                "needs option \"schema_registry\"",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("schema_registry", "r")],
                "neither 'avro' nor 'protobuf'",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("scan_startup", "yesterday")],
                "invalid scan_startup",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("on_error", "dead_letter")],
                "needs option \"dead_letter_topic\"",
            ),
            (
                RelationKind::Stream,
                vec![("topic", "t"), ("on_error", "ignore")],
                "unknown on_error",
            ),
        ] {
            let e =
                KafkaSource::parse(kind, "s", &opts(&bad), &Policy::default()).expect_err(needle);
            assert_eq!(e.sqlstate(), "22023");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
