//! What each source and sink has done, as the system tables
//! `sluice_sources` and `sluice_sinks`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_catalog::SystemTable;

/// Counters and state of one running source.
#[derive(Debug)]
pub struct SourceStatus {
    /// The stream or table it feeds.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    rows: AtomicU64,
    bytes: AtomicU64,
    bad: AtomicU64,
    lag: AtomicI64,
    rejected: AtomicU64,
    state: Mutex<String>,
    /// What the client last reported on its own (a refused certificate or
    /// password), until the next success.
    client_error: Mutex<Option<String>>,
}

/// The most bytes of an error text a status, a log line or a dead-letter
/// header carries: errors can quote a whole record.
pub const MAX_REASON_BYTES: usize = 300;

/// `reason` cut to [`MAX_REASON_BYTES`] (at a character boundary), marked
/// when cut.
pub fn bounded(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &reason[..end], reason.len() - end)
}

impl SourceStatus {
    pub(crate) fn new(name: &str, topic: &str) -> Self {
        SourceStatus {
            name: name.to_owned(),
            topic: topic.to_owned(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            rejected: AtomicU64::new(0),
            state: Mutex::new("starting".to_owned()),
            client_error: Mutex::new(None),
        }
    }

    pub(crate) fn add(&self, rows: u64, bytes: u64, bad: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.bad.fetch_add(bad, Ordering::Relaxed);
    }

    /// Records a sink could not deliver for good (routed per `on_error`).
    pub(crate) fn add_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Records what the client reported on its own (shown with the next
    /// retry), or clears it after a success.
    pub(crate) fn set_client_error(&self, reason: Option<String>) {
        if let Ok(mut e) = self.client_error.lock() {
            *e = reason;
        }
    }

    /// Records a generic client report (all brokers down) unless a more
    /// specific one (a refused certificate, a wrong password) is already
    /// recorded.
    pub(crate) fn note_client_error(&self, reason: &str) {
        if let Ok(mut e) = self.client_error.lock() {
            if e.is_none() {
                *e = Some(reason.to_owned());
            }
        }
    }

    /// `retrying: <error>`, led by the client's own report when there is
    /// one (librdkafka's words name the setting to fix; the error of the
    /// failed call is often only "transport failure").
    pub(crate) fn set_retrying(&self, error: &str) {
        let client = self.client_error.lock().ok().and_then(|e| e.clone());
        self.set_state(match client {
            Some(c) => format!("retrying: {} ({})", bounded(&c), bounded(error)),
            None => format!("retrying: {}", bounded(error)),
        });
    }

    pub(crate) fn set_state(&self, state: String) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    /// Rows written so far (since the server started).
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Bad records so far (since the server started).
    pub fn bad_records(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    /// `running`, `waiting for topic ...`, `retrying: ...` or `failed: ...`.
    pub fn state(&self) -> String {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Where the statuses come from when the table is read.
pub trait StatusList: Send + Sync + std::fmt::Debug {
    /// Every source's (or, with `sinks`, sink's) status.
    fn statuses(&self, sinks: bool) -> Vec<Arc<SourceStatus>>;
}

/// `sluice_sources` (one row per source of `list`): rows written, their
/// bytes, bad records, and the consumer lag.
pub fn sources_table(list: Arc<dyn StatusList>) -> SystemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("bad_records", DataType::Int64, false),
        Field::new("lag", DataType::Int64, true),
    ]));
    status_table(schema, list, false)
}

/// `sluice_sinks` (one row per sink of `list`): records delivered, their
/// bytes, failed deliveries (each retried), and records refused for good
/// (routed per the sink's `on_error`).
pub fn sinks_table(list: Arc<dyn StatusList>) -> SystemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sink", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("records", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("failed_deliveries", DataType::Int64, false),
        Field::new("rejected_records", DataType::Int64, false),
    ]));
    status_table(schema, list, true)
}

fn status_table(schema: SchemaRef, list: Arc<dyn StatusList>, sinks: bool) -> SystemTable {
    SystemTable::new(
        schema,
        Box::new(move || {
            let mut all = list.statuses(sinks);
            all.sort_by(|a, b| a.name.cmp(&b.name));
            let i64_of = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    all.iter().map(|s| s.name.clone()),
                )),
                Arc::new(StringArray::from_iter_values(
                    all.iter().map(|s| s.topic.clone()),
                )),
                Arc::new(StringArray::from_iter_values(all.iter().map(|s| s.state()))),
                Arc::new(Int64Array::from_iter_values(
                    all.iter().map(|s| i64_of(s.rows())),
                )),
                Arc::new(Int64Array::from_iter_values(
                    all.iter().map(|s| i64_of(s.bytes.load(Ordering::Relaxed))),
                )),
                Arc::new(Int64Array::from_iter_values(
                    all.iter().map(|s| i64_of(s.bad_records())),
                )),
            ];
            if !sinks {
                columns.push(Arc::new(Int64Array::from_iter(all.iter().map(|s| {
                    let lag = s.lag.load(Ordering::Relaxed);
                    (lag >= 0).then_some(lag)
                }))));
            } else {
                columns.push(Arc::new(Int64Array::from_iter_values(
                    all.iter()
                        .map(|s| i64_of(s.rejected.load(Ordering::Relaxed))),
                )));
            }
            Ok(columns)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client reports, in order, and the state shown after it.
    #[test]
    fn client_reports_keep_the_cause() {
        enum Report {
            Specific(&'static str),
            Generic(&'static str),
            Retry(&'static str),
            Cleared,
        }
        use Report::*;
        let cases: &[(&[Report], &str)] = &[
            (&[Retry("timed out")], "retrying: timed out"),
            (
                &[
                    Specific("SSL handshake failed"),
                    Generic("1/1 brokers are down"),
                    Retry("transport failure"),
                ],
                "retrying: SSL handshake failed (transport failure)",
            ),
            (
                &[
                    Generic("1/1 brokers are down"),
                    Specific("SASL authentication failed"),
                    Retry("transport failure"),
                ],
                "retrying: SASL authentication failed (transport failure)",
            ),
            (
                &[Generic("1/1 brokers are down"), Retry("transport failure")],
                "retrying: 1/1 brokers are down (transport failure)",
            ),
            (
                &[
                    Specific("SSL handshake failed"),
                    Cleared,
                    Generic("1/1 brokers are down"),
                    Retry("x"),
                ],
                "retrying: 1/1 brokers are down (x)",
            ),
        ];
        for (reports, want) in cases {
            let status = SourceStatus::new("s", "t");
            for r in reports.iter() {
                match r {
                    Specific(m) => status.set_client_error(Some((*m).to_owned())),
                    Generic(m) => status.note_client_error(m),
                    Retry(m) => status.set_retrying(m),
                    Cleared => status.set_client_error(None),
                }
            }
            assert_eq!(status.state(), *want);
        }
    }
}
