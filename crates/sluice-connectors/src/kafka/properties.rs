//! The Kafka client settings a SQL user may choose, and how they are
//! checked.
//!
//! librdkafka takes hundreds of settings, and some of them make the server
//! load a shared library (`plugin.library.paths`, `ssl.engine.location`,
//! `ssl.providers`), run a command (`sasl.kerberos.kinit.cmd`) or read a
//! file (`ssl.ca.location`, `sasl.kerberos.keytab`). None of that may be
//! chosen from SQL. So `properties.<name>` passes a setting through only
//! when `<name>` is in [`SAFE`] (tuning, timeouts, batching, compression,
//! the client id, and TLS/SASL choices that load nothing), in [`FILES`]
//! with a path under a directory the operator allowed (`client_file_dirs`
//! in the server's config), or in the operator's own list
//! (`kafka_allowed_properties`); anything else is refused with 42501.
//!
//! The security options also have first-class names (`security_protocol`,
//! `sasl_mechanism`, `sasl_username`, `sasl_password`, `ssl_ca_location`,
//! ...: [`SECURITY_OPTIONS`]), checked the same way. Secrets ([`SECRETS`])
//! never appear in `Debug` output, errors or logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_common::{Result, SluiceError};

/// What the operator allows beyond the built-in lists (from the server's
/// config file; SQL cannot change it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Extra client settings SQL may pass as `properties.<name>`.
    pub extra_properties: Vec<String>,
    /// Directories of the certificate and key files clients may open when
    /// SQL names them (never shown to SQL).
    pub file_dirs: Vec<PathBuf>,
    /// Directories whose files the file connector may read into rows.
    pub source_dirs: Vec<PathBuf>,
}

impl Policy {
    /// Whether `path` (already resolved) is under one of `dirs` (resolved
    /// too: a directory given through a symbolic link counts as its target).
    pub fn under(dirs: &[PathBuf], path: &Path) -> bool {
        dirs.iter()
            .filter_map(|d| d.canonicalize().ok())
            .any(|d| path.starts_with(d))
    }

    /// Whether `path` names a file under one of the allowed directories,
    /// after resolving `..` and symbolic links. The path must exist.
    pub fn check_file(&self, option: &str, path: &str) -> Result<PathBuf> {
        let refused = |why: String| SluiceError::PermissionDenied {
            message: format!("option \"{option}\": {why}"),
            hint: Some(if self.file_dirs.is_empty() {
                "no directory is allowed: the server's operator can list directories SQL may \
                 name certificate and key files in with client_file_dirs in the config file"
                    .to_owned()
            } else {
                format!(
                    "files must be under an allowed directory: {}",
                    self.file_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
        };
        // One answer for a missing file and a file elsewhere, so that SQL
        // cannot probe which files exist.
        let resolved = Path::new(path)
            .canonicalize()
            .ok()
            .filter(|resolved| resolved.is_file() && Self::under(&self.file_dirs, resolved));
        resolved.ok_or_else(|| {
            refused(format!(
                "\"{path}\" is not a file under a directory the server allows"
            ))
        })
    }
}

/// Settings that only tune the client: safe to take from SQL.
pub const SAFE: &[&str] = &[
    "acks",
    "allow.auto.create.topics",
    "api.version.request",
    "api.version.request.timeout.ms",
    "batch.num.messages",
    "batch.size",
    "broker.address.family",
    "broker.address.ttl",
    "broker.version.fallback",
    "check.crcs",
    "client.dns.lookup",
    "client.id",
    "client.rack",
    "compression.codec",
    "compression.level",
    "compression.type",
    "connections.max.idle.ms",
    "delivery.timeout.ms",
    "enable.idempotence",
    "enable.ssl.certificate.verification",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "heartbeat.interval.ms",
    "isolation.level",
    "linger.ms",
    "max.in.flight",
    "max.in.flight.requests.per.connection",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "message.copy.max.bytes",
    "message.max.bytes",
    "message.send.max.retries",
    "message.timeout.ms",
    "metadata.max.age.ms",
    "metadata.recovery.strategy",
    "partitioner",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "receive.message.max.bytes",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "retry.backoff.max.ms",
    "retry.backoff.ms",
    "sasl.mechanism",
    "sasl.password",
    "sasl.username",
    "security.protocol",
    "session.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable",
    "socket.max.fails",
    "socket.nagle.disable",
    "socket.receive.buffer.bytes",
    "socket.send.buffer.bytes",
    "socket.timeout.ms",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.sigalgs.list",
    "sticky.partitioning.linger.ms",
    "topic.metadata.propagation.max.ms",
    "topic.metadata.refresh.fast.interval.ms",
    "topic.metadata.refresh.interval.ms",
    "topic.metadata.refresh.sparse",
];

/// Settings that name a file the client reads: allowed only for a path
/// under `client_file_dirs`.
pub const FILES: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.crl.location",
    "ssl.key.location",
];

/// Settings whose values are secret.
pub const SECRETS: &[&str] = &["sasl.password", "ssl.key.password", "ssl.key.pem"];

/// First-class security options (`WITH (sasl_password = ...)`) and the
/// librdkafka setting each one sets.
pub const SECURITY_OPTIONS: &[(&str, &str)] = &[
    ("security_protocol", "security.protocol"),
    ("sasl_mechanism", "sasl.mechanism"),
    ("sasl_username", "sasl.username"),
    ("sasl_password", "sasl.password"),
    ("ssl_ca_location", "ssl.ca.location"),
    ("ssl_ca_pem", "ssl.ca.pem"),
    ("ssl_certificate_location", "ssl.certificate.location"),
    ("ssl_certificate_pem", "ssl.certificate.pem"),
    ("ssl_key_location", "ssl.key.location"),
    ("ssl_key_pem", "ssl.key.pem"),
    ("ssl_key_password", "ssl.key.password"),
    (
        "ssl_endpoint_identification_algorithm",
        "ssl.endpoint.identification.algorithm",
    ),
];

/// Whether the `WITH` option `key` holds a secret (a first-class security
/// option or a `properties.*` setting): such values are never shown.
pub fn is_secret_option(key: &str) -> bool {
    // A schema registry connection's basic-auth password.
    if key == "password" {
        return true;
    }
    let setting = key.strip_prefix("properties.").unwrap_or_else(|| {
        SECURITY_OPTIONS
            .iter()
            .find(|(option, _)| *option == key)
            .map_or(key, |(_, setting)| *setting)
    });
    SECRETS.contains(&setting)
}

/// The client settings of a source or sink, checked. Its `Debug` output
/// hides secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings(Vec<(String, String)>);

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if SECRETS.contains(&k.as_str()) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl Settings {
    /// The settings, librdkafka names and values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of librdkafka setting `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Reads the security options and `properties.*` of a `WITH (...)`,
    /// refusing what SQL may not set.
    pub fn parse(options: &BTreeMap<String, String>, policy: &Policy) -> Result<Self> {
        let mut settings: Vec<(String, String)> = Vec::new();
        for (key, value) in options {
            let (setting, shown) = if let Some(name) = key.strip_prefix("properties.") {
                // librdkafka's alias: one setting, whichever name is used.
                let name = if name == "sasl.mechanisms" {
                    "sasl.mechanism"
                } else {
                    name
                };
                (name, key.as_str())
            } else if let Some((_, name)) = SECURITY_OPTIONS.iter().find(|(o, _)| o == key) {
                (*name, key.as_str())
            } else {
                continue;
            };
            if settings.iter().any(|(k, _)| k == setting) {
                return Err(SluiceError::InvalidOption {
                    message: format!("Kafka setting \"{setting}\" is given twice (as \"{shown}\" and another name)"),
                    hint: Some("give each setting once".to_owned()),
                });
            }
            let value = if FILES.contains(&setting) {
                policy
                    .check_file(shown, value)?
                    .to_string_lossy()
                    .into_owned()
            } else if SAFE.contains(&setting)
                || policy.extra_properties.iter().any(|p| p == setting)
            {
                value.clone()
            } else {
                return Err(SluiceError::PermissionDenied {
                    message: format!("Kafka client setting \"{setting}\" cannot be set from SQL"),
                    hint: Some(
                        "only settings that tune the client are accepted (batching, timeouts, \
                         fetch sizes, compression, client.id, TLS and SASL choices); the \
                         server's operator can allow more with kafka_allowed_properties in \
                         the config file"
                            .to_owned(),
                    ),
                });
            };
            settings.push((setting.to_owned(), value));
        }
        let settings = Settings(settings);
        settings.check_security()?;
        Ok(settings)
    }

    /// The values of `security.protocol` and `sasl.mechanism` are ones this
    /// build supports, and SASL has a user and a password.
    fn check_security(&self) -> Result<()> {
        let bad = |message: String, hint: &str| SluiceError::InvalidOption {
            message,
            hint: Some(hint.to_owned()),
        };
        let protocol = self
            .get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
            return Err(bad(
                format!("unknown security_protocol \"{protocol}\""),
                "security_protocol is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            ));
        }
        let mechanism = self.get("sasl.mechanism");
        if let Some(m) = mechanism {
            let m = m.to_ascii_uppercase();
            if m == "GSSAPI" || m == "OAUTHBEARER" {
                return Err(SluiceError::not_supported(
                    format!("sasl_mechanism \"{m}\""),
                    Some("Sluice supports SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"),
                ));
            }
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
                return Err(bad(
                    format!("unknown sasl_mechanism \"{m}\""),
                    "sasl_mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
        }
        if protocol.starts_with("sasl") {
            if self.get("sasl.username").is_none() || self.get("sasl.password").is_none() {
                return Err(bad(
                    format!(
                        "security_protocol \"{protocol}\" needs sasl_username and sasl_password"
                    ),
                    "add sasl_username = '...' and sasl_password = '...'",
                ));
            }
        } else if mechanism.is_some() || self.get("sasl.username").is_some() {
            return Err(bad(
                format!(
                    "SASL options are set but security_protocol is \"{protocol}\", so they would be ignored"
                ),
                "use security_protocol = 'SASL_SSL' (or 'SASL_PLAINTEXT')",
            ));
        }
        Ok(())
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
    fn settings_from_sql_are_an_allow_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").expect("write");
        let policy = Policy {
            extra_properties: vec!["statistics.interval.ms".into()],
            file_dirs: vec![dir.path().to_owned()],
            source_dirs: vec![],
        };
        let ca_path = ca.to_string_lossy().into_owned();
        // (options, Ok(settings) or Err(sqlstate, message part))
        type Expected =
            std::result::Result<Vec<(&'static str, String)>, (&'static str, &'static str)>;
        let cases: Vec<(Vec<(&str, &str)>, Expected)> = vec![
            (
                vec![("properties.linger.ms", "5"), ("topic", "t")],
                Ok(vec![("linger.ms", "5".into())]),
            ),
            (
                vec![
                    ("security_protocol", "SASL_SSL"),
                    ("sasl_mechanism", "SCRAM-SHA-512"),
                    ("sasl_username", "u"),
                    ("sasl_password", "p"),
                    ("ssl_ca_location", &ca_path),
                ],
                Ok(vec![
                    ("sasl.mechanism", "SCRAM-SHA-512".into()),
                    ("sasl.password", "p".into()),
                    ("sasl.username", "u".into()),
                    ("security.protocol", "SASL_SSL".into()),
                    (
                        "ssl.ca.location",
                        ca.canonicalize()
                            .expect("ca")
                            .to_string_lossy()
                            .into_owned(),
                    ),
                ]),
            ),
            (
                vec![("properties.statistics.interval.ms", "1000")],
                Ok(vec![("statistics.interval.ms", "1000".into())]),
            ),
            (
                vec![("properties.plugin.library.paths", "/tmp/x.so")],
                Err(("42501", "plugin.library.paths")),
            ),
            (
                vec![("properties.sasl.kerberos.kinit.cmd", "touch /tmp/pwned")],
                Err(("42501", "sasl.kerberos.kinit.cmd")),
            ),
            (
                vec![("properties.ssl.engine.location", "/tmp/e.so")],
                Err(("42501", "ssl.engine.location")),
            ),
            (
                vec![("properties.interceptor.x", "y")],
                Err(("42501", "interceptor.x")),
            ),
            (
                vec![("ssl_key_location", "/etc/shadow")],
                Err(("42501", "not a file under")),
            ),
            (
                vec![("properties.ssl.ca.location", "/nonexistent/ca.pem")],
                Err(("42501", "not a file under")),
            ),
            (
                vec![
                    ("security_protocol", "SASL_SSL"),
                    ("sasl_mechanism", "PLAIN"),
                ],
                Err(("22023", "needs sasl_username and sasl_password")),
            ),
            (
                vec![("sasl_username", "u")],
                Err(("22023", "would be ignored")),
            ),
            (
                vec![
                    ("security_protocol", "SASL_SSL"),
                    ("sasl_mechanism", "GSSAPI"),
                    ("sasl_username", "u"),
                    ("sasl_password", "p"),
                ],
                Err(("0A000", "GSSAPI")),
            ),
            (
                vec![("security_protocol", "TLS")],
                Err(("22023", "unknown security_protocol")),
            ),
            (
                vec![("sasl_username", "u"), ("properties.sasl.username", "v")],
                Err(("22023", "given twice")),
            ),
            (
                vec![
                    ("sasl_mechanism", "SCRAM-SHA-512"),
                    ("properties.sasl.mechanisms", "PLAIN"),
                ],
                Err(("22023", "given twice")),
            ),
            (
                vec![("properties.metadata.broker.list", "evil:9092")],
                Err(("42501", "metadata.broker.list")),
            ),
        ];
        for (options, expected) in cases {
            let got = Settings::parse(&opts(&options), &policy);
            match (got, expected) {
                (Ok(s), Ok(want)) => {
                    let got: Vec<(String, String)> = s
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    let want: Vec<(String, String)> =
                        want.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    assert_eq!(got, want, "{options:?}");
                }
                (Err(e), Err((state, needle))) => {
                    assert_eq!(e.sqlstate(), state, "{options:?}: {e}");
                    assert!(e.to_string().contains(needle), "{options:?}: {e}");
                }
                (got, want) => panic!("{options:?}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn secrets_are_hidden() {
        let s = Settings::parse(
            &opts(&[
                ("security_protocol", "SASL_PLAINTEXT"),
                ("sasl_mechanism", "PLAIN"),
                ("sasl_username", "u"),
                ("sasl_password", "hunter2"),
            ]),
            &Policy::default(),
        )
        .expect("valid");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
        assert!(is_secret_option("sasl_password"));
        assert!(is_secret_option("properties.ssl.key.password"));
        assert!(!is_secret_option("sasl_username"));
    }
}
