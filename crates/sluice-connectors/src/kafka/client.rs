//! The librdkafka client context of Sluice's sources and sinks: what the
//! client reports on its own (a refused TLS certificate, a wrong SASL
//! password, a broker it cannot reach) goes to the log and to the state
//! of the source or sink in `sluice_sources` / `sluice_sinks`, in
//! librdkafka's words, which name the setting to fix.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::properties::Settings;
use crate::status::SourceStatus;

/// Reports client errors into a status.
#[derive(Clone)]
pub struct Reporting {
    name: String,
    status: Arc<SourceStatus>,
}

impl Reporting {
    /// Reports for the source or sink `name` into `status`.
    pub fn new(name: &str, status: &Arc<SourceStatus>) -> Self {
        Reporting {
            name: name.to_owned(),
            status: status.clone(),
        }
    }
}

impl ClientContext for Reporting {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Handshake and authentication failures come as logs (facility
        // FAIL, SSL, SASL...), not always as errors: keep them for the state.
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if serious
            && (log_message.contains("SSL")
                || log_message.contains("SASL")
                || log_message.contains("uthenticat"))
        {
            self.status.set_client_error(Some(log_message.to_owned()));
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(client = %self.name, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(client = %self.name, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(client = %self.name, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(client = %self.name, facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(client = %self.name, %error, reason, "kafka client error");
        // "1/1 brokers are down" follows the handshake failure that took
        // them down; librdkafka suppresses that failure when it repeats,
        // so the generic report must not replace the one naming the cause.
        let generic = matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        if generic {
            self.status.note_client_error(reason);
        } else {
            self.status.set_client_error(Some(reason.to_owned()));
        }
        self.status.set_retrying(reason);
    }
}

impl ConsumerContext for Reporting {}

/// The client configuration of a source or sink: its servers and settings.
pub fn config(servers: &str, properties: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    for (k, v) in properties.iter() {
        config.set(k, v);
    }
    config
}
