//! The typed configuration of a Sluice server.
//!
//! Loaded only by the binary (file, then environment variables, then flags)
//! and passed down explicitly. Every field is listed in `docs/config.md`; a
//! test keeps the two in step.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a Sluice server can be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the pgwire endpoint. Default: `127.0.0.1:4566` (loopback only).
    pub listen: String,
    /// Directory holding the catalog and all state (RocksDB). Default: `./sluice-data`.
    pub data_dir: PathBuf,
    /// The user a client must log in as. Default: unset (any user is accepted).
    pub user: Option<String>,
    /// The password a client must give. Default: unset (no password: trust mode,
    /// like a fresh local Postgres).
    pub password: Option<String>,
    /// How the password is exchanged when one is set: `md5` or `cleartext`.
    /// Default: `md5`.
    pub auth_method: AuthMethod,
    /// Log filter in `tracing`'s `EnvFilter` syntax. Default: `info`.
    pub log: String,
    /// Memory for hot state (RocksDB's block cache), in MiB. Default: `256`.
    pub state_cache_mb: usize,
    /// State values each operator keeps in memory above RocksDB, in MiB.
    /// Default: `64`.
    pub operator_cache_mb: usize,
    /// How often the dataflow checkpoints (commits operator state and view
    /// rows), in milliseconds. `FLUSH` checkpoints at once. Default: `1000`.
    pub checkpoint_interval_ms: u64,
    /// How many late rows `sluice_late_events` keeps (the newest).
    /// Default: `10000`.
    pub late_events_retention: usize,
    /// The longest a statement may run, in milliseconds, unless a session
    /// sets its own (`SET statement_timeout`); `0` means no limit.
    /// Default: `0`.
    pub statement_timeout_ms: u64,
    /// The most client connections open at once, counting those still
    /// logging in; one more is refused with SQLSTATE 53300. Default: `100`.
    pub max_connections: usize,
    /// How long a new connection may take to log in, in milliseconds,
    /// before it is closed. Default: `10000`.
    pub startup_timeout_ms: u64,
    /// Directories of the certificate and key files that Kafka clients and
    /// the schema registry client may open when SQL names them
    /// (`ssl_ca_location`, ...); their content is never shown to SQL. Any
    /// other path is refused with 42501. Default: none.
    pub client_file_dirs: Vec<PathBuf>,
    /// Directories whose files the file connector may read into streams
    /// (their content becomes rows anyone can query: keep keys out of
    /// them). Any other path is refused with 42501. Default: none.
    pub source_file_dirs: Vec<PathBuf>,
    /// Kafka client settings SQL may pass as `properties.<name>` beyond
    /// the built-in list of safe ones (docs/kafka.md). Only the config
    /// file can widen the list. Default: none.
    pub kafka_allowed_properties: Vec<String>,
}

/// How a configured password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// MD5-hashed password exchange (Postgres' `md5`).
    #[default]
    Md5,
    /// The password is sent as is (Postgres' `password`); use only on loopback or TLS.
    Cleartext,
}

impl std::str::FromStr for AuthMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(AuthMethod::Md5),
            "cleartext" | "password" => Ok(AuthMethod::Cleartext),
            other => Err(format!(
                "unknown auth method \"{other}\" (expected md5 or cleartext)"
            )),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4566".to_owned(),
            data_dir: PathBuf::from("./sluice-data"),
            user: None,
            password: None,
            auth_method: AuthMethod::Md5,
            log: "info".to_owned(),
            state_cache_mb: 256,
            operator_cache_mb: 64,
            checkpoint_interval_ms: 1000,
            late_events_retention: 10_000,
            statement_timeout_ms: 0,
            max_connections: 100,
            startup_timeout_ms: 10_000,
            client_file_dirs: Vec::new(),
            source_file_dirs: Vec::new(),
            kafka_allowed_properties: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_list_every_config_field() {
        let docs = include_str!("../../../docs/config.md");
        // Set the optional fields so they appear in the serialized form.
        let config = Config {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Config::default()
        };
        let text = toml::to_string(&config).expect("config serializes");
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            if key.is_empty() {
                continue;
            }
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/config.md does not document `{key}`"
            );
        }
    }

    #[test]
    fn config_files_are_partial_and_strict() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:5000\"").expect("parses");
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert_eq!(c.data_dir, PathBuf::from("./sluice-data"));
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }
}
