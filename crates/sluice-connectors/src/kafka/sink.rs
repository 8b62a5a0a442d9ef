//! A Kafka sink: the changes of a stream, table or view, written to a topic
//! at least once. Records are produced as changes arrive; at each
//! checkpoint barrier the sink waits until every record is delivered
//! (retrying with backoff, and saying so in `sluice_sinks`) before it lets
//! the checkpoint commit, so a crash can only repeat records, never lose
//! them.
//!
//! `json`: one record per changed row, the row as a JSON object; for a
//! table or view each carries `"op": "insert"` or `"delete"` (an update is
//! a delete and an insert). `upsert_json`: keyed by the key columns (a JSON
//! object), the value the new row, or a tombstone when the key is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_dataflow::runtime::{Inbox, Message, TaskEnv};
use sluice_state::StateTxn;

use crate::kafka::options::{Format, KafkaSink};
use crate::kafka::source::client_config;
use crate::status::SourceStatus;

/// One record to produce.
#[derive(Debug, Clone)]
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// How a sink encodes the changes of its input.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The options.
    pub options: KafkaSink,
    /// The key columns (for `upsert_json`).
    pub key: Vec<usize>,
    /// Whether `json` records carry an `op` field (the input can retract).
    pub with_op: bool,
}

fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let buf = writer.into_inner();
    Ok(buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

fn encode(spec: &SinkSpec, changes: &ChangeBatch) -> Result<Vec<Record>> {
    let batch = &changes.batch;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    match spec.options.format {
        Format::UpsertJson => {
            let keys = json_lines(&batch.project(&spec.key)?)?;
            let values = json_lines(batch)?;
            // The net effect per key: its inserted row if it has one, else
            // a tombstone.
            let mut order: Vec<Vec<u8>> = Vec::new();
            let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
            for (i, (key, value)) in keys.into_iter().zip(values).enumerate() {
                let insert = changes.sign(i) > 0;
                match last.get_mut(&key) {
                    Some(slot) => {
                        if insert {
                            *slot = Some(value);
                        }
                    }
                    None => {
                        order.push(key.clone());
                        last.insert(key, insert.then_some(value));
                    }
                }
            }
            Ok(order
                .into_iter()
                .map(|key| {
                    let value = last.remove(&key).flatten();
                    Record {
                        key: Some(key),
                        value,
                    }
                })
                .collect())
        }
        _ => {
            let batch = if spec.with_op {
                let ops: ArrayRef = Arc::new(StringArray::from_iter_values(
                    (0..batch.num_rows()).map(|i| {
                        if changes.sign(i) > 0 {
                            "insert"
                        } else {
                            "delete"
                        }
                    }),
                ));
                let mut fields: Vec<Field> = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new("op", DataType::Utf8, false));
                let mut columns = batch.columns().to_vec();
                columns.push(ops);
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?
            } else {
                batch.clone()
            };
            Ok(json_lines(&batch)?
                .into_iter()
                .map(|v| Record {
                    key: None,
                    value: Some(v),
                })
                .collect())
        }
    }
}

fn producer(options: &KafkaSink) -> Result<FutureProducer> {
    client_config(&options.bootstrap_servers, &options.properties)
        .create()
        .map_err(|e| SluiceError::Storage(format!("kafka: {e}")))
}

/// Produces `records`, retrying each failed one with backoff until it is
/// delivered.
async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<Record>,
    status: &SourceStatus,
    name: &str,
) {
    let mut backoff = Duration::from_millis(100);
    let mut todo = records;
    while !todo.is_empty() {
        let mut futures = Vec::with_capacity(todo.len());
        for r in &todo {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            futures.push(producer.send(record, Duration::from_secs(5)));
        }
        let results = futures::future::join_all(futures).await;
        let mut failed = Vec::new();
        let mut last_error = None;
        for (r, result) in todo.into_iter().zip(results) {
            match result {
                Ok(_) => status.add(1, r.value.as_ref().map_or(0, Vec::len) as u64, 0),
                Err((e, _)) => {
                    last_error = Some(e);
                    failed.push(r);
                }
            }
        }
        if let Some(e) = last_error {
            status.add(0, 0, failed.len() as u64);
            tracing::warn!(sink = %name, %topic, error = %e, records = failed.len(), "kafka sink delivery failed; retrying");
            status.set_state(format!("retrying: {e}"));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            status.set_state("running".to_owned());
        }
        todo = failed;
    }
}

/// The sink's task: encodes changes as they arrive, delivers them all at
/// each barrier, then reports the barrier.
pub async fn run(
    spec: SinkSpec,
    name: String,
    status: Arc<SourceStatus>,
    mut inbox: Inbox,
    env: TaskEnv,
) {
    let producer = loop {
        match producer(&spec.options) {
            Ok(p) => break p,
            Err(e) => {
                status.set_state(format!("retrying: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    status.set_state("running".to_owned());
    let mut txn = StateTxn::new(env.store.clone());
    let mut pending: Vec<Record> = Vec::new();
    while let Some((_, message)) = inbox.recv().await {
        match message {
            Message::Data(changes) => match encode(&spec, &changes) {
                Ok(records) => pending.extend(records),
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot encode a change");
                    status.set_state(format!("failed to encode a change: {e}"));
                }
            },
            Message::Watermark(_) => {}
            Message::Barrier(epoch) => {
                deliver(
                    &producer,
                    &spec.options.topic,
                    std::mem::take(&mut pending),
                    &status,
                    &name,
                )
                .await;
                if !env.checkpoint(epoch, &mut txn, None) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn spec(format: Format, with_op: bool) -> SinkSpec {
        SinkSpec {
            options: KafkaSink {
                topic: "t".into(),
                bootstrap_servers: "x".into(),
                format,
                properties: vec![],
            },
            key: vec![0],
            with_op,
        }
    }

    #[test]
    fn changes_become_json_or_upsert_records() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 2])),
                Arc::new(Int64Array::from(vec![Some(5), Some(6), None])),
            ],
        )
        .expect("batch");
        // k=1 updated 5 -> 6 (delete then insert), k=2 deleted.
        let changes = ChangeBatch::new(batch, vec![-1, 1, -1]);
        let text =
            |r: &Option<Vec<u8>>| r.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
        let json = encode(&spec(Format::Json, true), &changes).expect("json");
        assert_eq!(
            json.iter()
                .map(|r| text(&r.value).unwrap_or_default())
                .collect::<Vec<_>>(),
            vec![
                r#"{"k":1,"n":5,"op":"delete"}"#,
                r#"{"k":1,"n":6,"op":"insert"}"#,
                r#"{"k":2,"n":null,"op":"delete"}"#
            ]
        );
        let upsert = encode(&spec(Format::UpsertJson, false), &changes).expect("upsert");
        assert_eq!(upsert.len(), 2);
        assert_eq!(text(&upsert[0].key).as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(text(&upsert[0].value).as_deref(), Some(r#"{"k":1,"n":6}"#));
        assert_eq!(text(&upsert[1].key).as_deref(), Some(r#"{"k":2}"#));
        assert_eq!(upsert[1].value, None, "a deleted key is a tombstone");
    }
}
