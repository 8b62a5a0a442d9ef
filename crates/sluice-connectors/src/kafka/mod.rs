//! Kafka, through rdkafka (librdkafka).

pub mod options;
pub mod sink;
pub(crate) mod source;
