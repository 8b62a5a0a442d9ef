//! The connector-independent checks of `WITH (...)` options: each option
//! given once, `idle_timeout` a duration, and nothing else without a
//! connector. The options of a connector are its own to check
//! (`sluice-connectors`' registry), so none are listed here.

use std::collections::BTreeMap;

use sluice_common::{Result, SluiceError};
use sluice_sql::RelationKind;

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
    let fed_by_connector = map.contains_key("connector") || map.contains_key("connection");
    for (key, value) in &map {
        if kind != RelationKind::Sink && TIME_OPTIONS.contains(&key.as_str()) {
            duration(key, value)?;
            continue;
        }
        if !fed_by_connector {
            return Err(SluiceError::InvalidOption {
                message: format!("unrecognized option \"{key}\" for {kind} \"{name}\""),
                hint: Some(
                    "without a connector (or connection), a stream or table takes only \
                     idle_timeout"
                        .to_owned(),
                ),
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
        // A connector's own options are its own to check.
        assert!(validate(
            RelationKind::Stream,
            "s",
            &opts(&[("connector", "kafka"), ("topik", "t")])
        )
        .is_ok());
        let e = validate(RelationKind::Table, "t", &opts(&[("topic", "x")])).unwrap_err();
        assert!(e.to_string().contains("unrecognized option \"topic\""));
        let e = validate(RelationKind::Table, "t", &opts(&[("a", "1"), ("a", "2")])).unwrap_err();
        assert!(e.to_string().contains("more than once"));
        let e = validate(RelationKind::Stream, "s", &opts(&[("idle_timeout", "x")])).unwrap_err();
        assert!(e.to_string().contains("positive duration"));
    }
}
