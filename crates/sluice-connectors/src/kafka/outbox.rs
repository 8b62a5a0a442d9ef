//! A sink's records on their way to Kafka: handed to librdkafka as they
//! are encoded, their deliveries followed across checkpoints.
//!
//! At a checkpoint barrier the sink waits for the deliveries for a while
//! (long while all goes well, briefly once the broker is known to be
//! stuck); what is still not delivered then is written into the sink's
//! state with the checkpoint (the backlog), and the barrier passes. So a
//! broker that is down holds up neither the checkpoints of the views nor
//! `FLUSH`, and nothing is lost: a restart sends the backlog again first
//! (at least once). librdkafka keeps retrying the records it holds, in
//! order; a record it gives up on is handed to it again.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::client::Reporting;
use crate::status::SourceStatus;

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

impl Record {
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// Records not yet delivered: not yet handed to librdkafka, or handed and
/// not yet acknowledged.
#[derive(Default)]
pub struct Outbox {
    unsent: VecDeque<Record>,
    inflight: VecDeque<(Record, DeliveryFuture)>,
    /// Records librdkafka refused at once (too large): reported by the
    /// next `settle`.
    refused: Vec<Outcome>,
    bytes: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("unsent", &self.unsent.len())
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

/// What the delivery of a record came to.
pub enum Outcome {
    /// The broker refused it for good (too large, invalid): the reason.
    Refused(Record, String),
}

impl Outbox {
    /// Queues `records` after those already queued.
    pub fn push(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            self.bytes += r.size();
            self.unsent.push_back(r);
        }
    }

    /// Records not yet acknowledged.
    pub fn len(&self) -> usize {
        self.unsent.len() + self.inflight.len()
    }

    /// Whether every record was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the records not yet acknowledged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hands queued records to librdkafka until its queue is full.
    pub fn send(&mut self, producer: &FutureProducer<Reporting>, topic: &str) {
        while let Some(r) = self.unsent.pop_front() {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            match producer.send_result(record) {
                Ok(delivery) => self.inflight.push_back((r, delivery)),
                Err((e, _)) if super::sink::refused_for_good(&e) => {
                    self.bytes -= r.size();
                    let size = r.size();
                    self.refused.push(Outcome::Refused(
                        r,
                        format!("{e} (a record of {size} bytes)"),
                    ));
                }
                Err((e, _)) => {
                    // The local queue is full (or the client cannot take
                    // it now): keep it for later.
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        tracing::warn!(%topic, error = %e, "kafka sink cannot hand a record to the client; retrying");
                    }
                    self.unsent.push_front(r);
                    return;
                }
            }
        }
    }

    /// Waits up to `wait` for the deliveries (sending what is queued as
    /// room frees up); returns the records refused for good. Failed
    /// deliveries are queued again. Delivered records are counted in
    /// `status`.
    pub async fn settle(
        &mut self,
        producer: &FutureProducer<Reporting>,
        topic: &str,
        status: &SourceStatus,
        name: &str,
        wait: Duration,
    ) -> Vec<Outcome> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut refused = std::mem::take(&mut self.refused);
        let mut backoff = Duration::from_millis(100);
        loop {
            self.send(producer, topic);
            refused.append(&mut self.refused);
            let Some((_, delivery)) = self.inflight.front_mut() else {
                if self.unsent.is_empty() {
                    return refused;
                }
                // Nothing in flight but records queued: librdkafka's queue
                // was full a moment ago.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
                    .await
                    .is_err()
                {
                    return refused;
                }
                continue;
            };
            let result = match tokio::time::timeout_at(deadline, delivery).await {
                Ok(r) => r,
                Err(_) => return refused,
            };
            let Some((record, _)) = self.inflight.pop_front() else {
                return refused;
            };
            match result {
                Ok(Ok(_)) => {
                    self.bytes -= record.size();
                    status.add(1, record.value.as_ref().map_or(0, Vec::len) as u64, 0);
                    if !status.state().starts_with("running") {
                        status.set_client_error(None);
                        status.set_state("running".to_owned());
                    }
                }
                Ok(Err((e, _))) if super::sink::refused_for_good(&e) => {
                    self.bytes -= record.size();
                    let size = record.size();
                    refused.push(Outcome::Refused(
                        record,
                        format!("{e} (a record of {size} bytes)"),
                    ));
                }
                Ok(Err((e, _))) => {
                    status.add(0, 0, 1);
                    tracing::warn!(sink = %name, %topic, error = %e, "kafka sink delivery failed; retrying");
                    status.set_retrying(&e.to_string());
                    // Again, before those not yet handed over (librdkafka,
                    // idempotent, kept the order of those it still holds).
                    self.unsent.push_front(record);
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
                        .await
                        .is_err()
                    {
                        return refused;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(_canceled) => {
                    // The producer went away: keep the record.
                    self.unsent.push_back(record);
                    return refused;
                }
            }
        }
    }

    /// The records not yet acknowledged, in order, encoded for the state
    /// store (the backlog).
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 9 * self.len());
        for r in self
            .inflight
            .iter()
            .map(|(r, _)| r)
            .chain(self.unsent.iter())
        {
            for part in [&r.key, &r.value] {
                match part {
                    Some(bytes) => {
                        out.push(1);
                        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    /// Records saved by [`Self::save`]; `None` if the bytes are corrupt.
    pub fn load(mut bytes: &[u8]) -> Option<Vec<Record>> {
        fn part(bytes: &mut &[u8]) -> Option<Option<Vec<u8>>> {
            let (&flag, rest) = bytes.split_first()?;
            *bytes = rest;
            if flag == 0 {
                return Some(None);
            }
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let value = bytes.get(4..4 + len)?.to_vec();
            *bytes = &bytes[4 + len..];
            Some(Some(value))
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let key = part(&mut bytes)?;
            let value = part(&mut bytes)?;
            out.push(Record { key, value });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_round_trips() {
        let records = vec![
            Record {
                key: Some(b"k".to_vec()),
                value: Some(b"v1".to_vec()),
            },
            Record {
                key: None,
                value: Some(Vec::new()),
            },
            Record {
                key: Some(b"gone".to_vec()),
                value: None,
            },
        ];
        let mut outbox = Outbox::default();
        outbox.push(records.clone());
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.bytes(), 7);
        assert_eq!(Outbox::load(&outbox.save()), Some(records));
        assert_eq!(Outbox::load(&[]), Some(vec![]));
        assert_eq!(Outbox::load(&[1, 0, 0, 0, 9, 1]), None, "truncated");
    }
}
