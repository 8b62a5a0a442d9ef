//! Validation of `WITH (...)` options against the connectors that exist.
//!
//! A stream or table without `connector` is fed by `INSERT`. Each connector
//! registers the options it accepts below (names only; `sluice-connectors`
//! checks their values).

use std::collections::BTreeMap;

use sluice_common::{Result, SluiceError};
use sluice_sql::RelationKind;

/// A connector Sluice can read a stream or table from, with the options it
/// accepts besides `connector` itself.
struct ConnectorSpec {
    name: &'static str,
    options: &'static [&'static str],
    /// Options accepted under these prefixes (passed through to a client).
    prefixes: &'static [&'static str],
}

/// The connectors that exist.
const CONNECTORS: &[ConnectorSpec] = &[
    ConnectorSpec {
        name: "kafka",
        options: &[
            "topic",
            "bootstrap_servers",
            "format",
            "scan_startup",
            "on_error",
            "dead_letter_topic",
        ],
        prefixes: &["properties."],
    },
    ConnectorSpec {
        name: "nexmark",
        options: &[
            "kind",
            "events",
            "event_rate",
            "base_time",
            "batch_size",
            "parallelism",
        ],
        prefixes: &[],
    },
];

/// Options any stream or table takes, with or without a connector.
const TIME_OPTIONS: &[&str] = &["idle_timeout"];

/// A duration option (`'5 seconds'`, `'500 milliseconds'`).
pub fn duration(key: &str, value: &str) -> Result<std::time::Duration> {
    use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
    let bad = || SluiceError::InvalidOption {
        message: format!("option \"{key}\" must be a positive duration, not \"{value}\""),
        hint: Some("for example '5 seconds' or '500 milliseconds'".to_owned()),
    };
    let v = parse_interval_month_day_nano(value).map_err(|_| bad())?;
    let nanos = i128::from(v.days) * 86_400_000_000_000 + i128::from(v.nanoseconds);
    if v.months != 0 || nanos <= 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_nanos(
        u64::try_from(nanos).map_err(|_| bad())?,
    ))
}

/// Checks the options of a `CREATE STREAM|TABLE` and returns them as a map.
pub fn validate(
    kind: RelationKind,
    name: &str,
    options: &[(String, String)],
) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (key, value) in options {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(SluiceError::InvalidOption {
                message: format!("option \"{key}\" is given more than once"),
                hint: None,
            });
        }
    }
    let (accepted, prefixes): (&[&str], &[&str]) = match map.get("connector") {
        None => (&[], &[]),
        Some(connector) => {
            let known: Vec<&str> = CONNECTORS.iter().map(|c| c.name).collect();
            match CONNECTORS.iter().find(|c| c.name == connector.as_str()) {
                Some(spec) => (spec.options, spec.prefixes),
                None => {
                    return Err(SluiceError::InvalidOption {
                        message: format!("unknown connector \"{connector}\" for {kind} \"{name}\""),
                        hint: Some(if known.is_empty() {
                            "no external connector is available in this version; leave out WITH \
                             to create a stream or table fed by INSERT"
                                .to_owned()
                        } else {
                            format!("available connectors: {}", known.join(", "))
                        }),
                    });
                }
            }
        }
    };
    for (key, value) in &map {
        if kind != RelationKind::Sink && TIME_OPTIONS.contains(&key.as_str()) {
            duration(key, value)?;
            continue;
        }
        if key != "connector"
            && !accepted.contains(&key.as_str())
            && !prefixes
                .iter()
                .any(|p| key.starts_with(p) && key.len() > p.len())
        {
            return Err(SluiceError::InvalidOption {
                message: format!("unrecognized option \"{key}\" for {kind} \"{name}\""),
                hint: Some(if accepted.is_empty() {
                    "without a connector, a stream or table takes only idle_timeout".to_owned()
                } else {
                    let mut all: Vec<String> = accepted.iter().map(|s| s.to_string()).collect();
                    all.extend(prefixes.iter().map(|p| format!("{p}*")));
                    format!("accepted options: {}", all.join(", "))
                }),
            });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_options_is_fine_and_unknown_ones_are_not() {
        assert!(validate(RelationKind::Stream, "s", &[])
            .expect("ok")
            .is_empty());
        let e = validate(RelationKind::Stream, "s", &opts(&[("connector", "kafkaa")])).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert!(e.to_string().contains("unknown connector \"kafkaa\""));
        assert!(validate(
            RelationKind::Stream,
            "s",
            &opts(&[
                ("connector", "kafka"),
                ("topic", "t"),
                ("properties.acks", "all")
            ])
        )
        .is_ok());
        let e = validate(
            RelationKind::Stream,
            "s",
            &opts(&[("connector", "kafka"), ("topik", "t")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unrecognized option \"topik\""));
        let e = validate(RelationKind::Table, "t", &opts(&[("topic", "x")])).unwrap_err();
        assert!(e.to_string().contains("unrecognized option \"topic\""));
        let e = validate(RelationKind::Table, "t", &opts(&[("a", "1"), ("a", "2")])).unwrap_err();
        assert!(e.to_string().contains("more than once"));
    }
}
