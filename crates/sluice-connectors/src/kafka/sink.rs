//! A Kafka sink: the changes of a stream, table or view, written to a topic
//! at least once. Records are produced as changes arrive; at each
//! checkpoint barrier the sink waits until every record is delivered
//! (retrying with backoff, and saying so in `sluice_sinks`) before it lets
//! the checkpoint commit, so a crash can only repeat records, never lose
//! them. A record the broker refuses for good (too large, invalid) is not
//! retried: it goes per the sink's `on_error` (`fail`, the default, stops
//! the sink with the reason in `sluice_sinks`; `skip` counts and logs it;
//! `dead_letter` writes it, cut to 64 KiB, to `dead_letter_topic`).
//!
//! `json`: one record per changed row, the row as a JSON object; for a
//! table or view each carries `"op": "insert"` or `"delete"` (an update is
//! a delete and an insert). `upsert_json`: keyed by the key columns (a JSON
//! object), the value the new row, or a tombstone when the key is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_dataflow::{SinkEvent, SinkInput};

use crate::avro::{avro_schema_for, AvroEncoder};
use crate::kafka::client::{config as client_config, Reporting};
use crate::kafka::options::{Format, KafkaSink, OnError};
use crate::kafka::outbox::{Outbox, Outcome, Record};
use crate::protobuf::{proto_schema_for, ProtobufEncoder};
use crate::registry::{Registry, RegistryError, SchemaType};
use crate::status::{bounded, SourceStatus};

/// How a sink encodes the changes of its input.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The options.
    pub options: KafkaSink,
    /// The key columns (for `upsert_json`).
    pub key: Vec<usize>,
    /// Whether `json` records carry an `op` field (the input can retract).
    pub with_op: bool,
    /// The schema registry of an Avro or Protobuf sink.
    pub registry: Option<Registry>,
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

/// Keyed records for the changes of one batch (row `i` has key `keys[i]`
/// and value `values[i]`): the net effect per key, in first-seen order,
/// its inserted row if it has one, else a tombstone.
fn net_per_key(changes: &ChangeBatch, keys: Vec<Vec<u8>>, values: Vec<Vec<u8>>) -> Vec<Record> {
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
    order
        .into_iter()
        .map(|key| {
            let value = last.remove(&key).flatten();
            Record {
                key: Some(key),
                value,
            }
        })
        .collect()
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
            Ok(net_per_key(changes, keys, values))
        }
        Format::Avro | Format::Protobuf => Err(SluiceError::internal(
            "avro and protobuf changes are encoded by the sink's encoder",
        )),
        Format::DebeziumJson => debezium_records(spec, changes),
        Format::UpsertAvro => Err(SluiceError::internal(
            "upsert_avro changes are encoded by the sink's encoder",
        )),
        Format::DebeziumAvro => Err(SluiceError::internal(
            "debezium_avro changes are encoded by the sink's encoder",
        )),
        Format::Json | Format::Csv => {
            let batch = with_op(spec, changes)?;
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

/// Debezium envelopes: `{"before": ..., "after": ..., "op": "c"|"u"|"d"}`
/// per change; with key columns, a deleted row and an inserted row of the
/// same key in one batch are one update (`u`), and records are keyed by
/// the key (a JSON object), as Debezium keys them.
/// One Debezium change: the rows before and after (indexes into the
/// batch), `op`, and the row whose key keys the record.
struct Change {
    before: Option<usize>,
    after: Option<usize>,
    op: &'static str,
    key_row: usize,
}

/// The Debezium changes of a batch: with key columns (`keys[i]` the key
/// of row `i`), a deleted row and an inserted row of the same key are one
/// update (`u`), written where the delete is; a row deleted and inserted
/// unchanged (`rows[i]` compares rows) is no update.
fn debezium_changes(
    changes: &ChangeBatch,
    rows: &[Vec<u8>],
    keys: Option<&[Vec<u8>]>,
) -> Vec<Change> {
    // For each key, the inserted rows not yet paired with a delete.
    let mut inserts: HashMap<&[u8], std::collections::VecDeque<usize>> = HashMap::new();
    if let Some(keys) = keys {
        for (i, k) in keys.iter().enumerate() {
            if changes.sign(i) > 0 {
                inserts.entry(k.as_slice()).or_default().push_back(i);
            }
        }
    }
    let mut partner: Vec<Option<usize>> = vec![None; rows.len()];
    let mut taken = vec![false; rows.len()];
    if let Some(keys) = keys {
        for i in 0..rows.len() {
            if changes.sign(i) < 0 {
                if let Some(q) = inserts.get_mut(keys[i].as_slice()) {
                    if let Some(p) = q.iter().position(|&j| rows[j] != rows[i]) {
                        if let Some(j) = q.remove(p) {
                            partner[i] = Some(j);
                            taken[j] = true;
                        }
                    }
                }
            }
        }
    }
    (0..rows.len())
        .filter(|&i| !taken[i])
        .map(|i| match (changes.sign(i) > 0, partner[i]) {
            (true, _) => Change {
                before: None,
                after: Some(i),
                op: "c",
                key_row: i,
            },
            (false, Some(j)) => Change {
                before: Some(i),
                after: Some(j),
                op: "u",
                key_row: i,
            },
            (false, None) => Change {
                before: Some(i),
                after: None,
                op: "d",
                key_row: i,
            },
        })
        .collect()
}

/// Debezium envelopes in JSON: `{"before": ..., "after": ..., "op": "c"|"u"|"d"}`
/// per change, keyed by the key (a JSON object) when there is one, as
/// Debezium keys them.
fn debezium_records(spec: &SinkSpec, changes: &ChangeBatch) -> Result<Vec<Record>> {
    let batch = &changes.batch;
    let rows = json_lines(batch)?;
    let keys = if spec.key.is_empty() {
        None
    } else {
        Some(json_lines(&batch.project(&spec.key)?)?)
    };
    let envelope = |before: Option<&[u8]>, after: Option<&[u8]>, op: &str| {
        let mut v =
            Vec::with_capacity(32 + before.map_or(4, <[u8]>::len) + after.map_or(4, <[u8]>::len));
        v.extend_from_slice(b"{\"before\":");
        v.extend_from_slice(before.unwrap_or(b"null"));
        v.extend_from_slice(b",\"after\":");
        v.extend_from_slice(after.unwrap_or(b"null"));
        v.extend_from_slice(format!(",\"op\":\"{op}\"}}").as_bytes());
        v
    };
    Ok(debezium_changes(changes, &rows, keys.as_deref())
        .into_iter()
        .map(|c| Record {
            key: keys.as_ref().map(|k| k[c.key_row].clone()),
            value: Some(envelope(
                c.before.map(|i| rows[i].as_slice()),
                c.after.map(|i| rows[i].as_slice()),
                c.op,
            )),
        })
        .collect())
}

/// Debezium envelopes as rows: `before` and `after` (the input's row as a
/// struct, or NULL) and `op`, one per change, and the key row of each.
fn debezium_batch(spec: &SinkSpec, changes: &ChangeBatch) -> Result<(RecordBatch, Vec<usize>)> {
    let batch = &changes.batch;
    // Rows compared (and keys matched) by their JSON text, as for JSON.
    let rows = json_lines(batch)?;
    let keys = if spec.key.is_empty() {
        None
    } else {
        Some(json_lines(&batch.project(&spec.key)?)?)
    };
    let list = debezium_changes(changes, &rows, keys.as_deref());
    let rows_struct = datafusion::arrow::array::StructArray::from(batch.clone());
    let side = |pick: &dyn Fn(&Change) -> Option<usize>| -> Result<ArrayRef> {
        let at = UInt32Array::from_iter(
            list.iter()
                .map(|c| pick(c).and_then(|i| u32::try_from(i).ok())),
        );
        Ok(datafusion::arrow::compute::take(&rows_struct, &at, None)?)
    };
    let before = side(&|c| c.before)?;
    let after = side(&|c| c.after)?;
    let op: ArrayRef = Arc::new(StringArray::from_iter_values(list.iter().map(|c| c.op)));
    let fields = vec![
        Field::new("before", before.data_type().clone(), true),
        Field::new("after", after.data_type().clone(), true),
        Field::new("op", DataType::Utf8, false),
    ];
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), vec![before, after, op])?;
    Ok((out, list.iter().map(|c| c.key_row).collect()))
}

/// The changed rows, with an `op` column (`insert` or `delete`) when the
/// input can retract.
fn with_op(spec: &SinkSpec, changes: &ChangeBatch) -> Result<RecordBatch> {
    let batch = &changes.batch;
    if !spec.with_op {
        return Ok(batch.clone());
    }
    let ops: ArrayRef = Arc::new(StringArray::from_iter_values((0..batch.num_rows()).map(
        |i| {
            if changes.sign(i) > 0 {
                "insert"
            } else {
                "delete"
            }
        },
    )));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("op", DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(ops);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The encoder of a sink writing a registered schema.
enum SchemaEncoder {
    Avro(AvroEncoder),
    Protobuf(ProtobufEncoder),
    /// `upsert_avro`: the key columns and the row, each its own schema.
    UpsertAvro {
        key: AvroEncoder,
        value: AvroEncoder,
    },
    /// `debezium_avro`: the envelope, and the key columns when known.
    DebeziumAvro {
        key: Option<AvroEncoder>,
        value: AvroEncoder,
    },
}

/// An Avro or Protobuf sink's encoder, made at its first change: the
/// schema of its rows (with `op`, or for `upsert_avro` without, and the
/// key's as `<topic>-key`) registered as `<topic>-value`.
struct RegistrySink {
    registry: Registry,
    encoder: Option<SchemaEncoder>,
}

impl RegistrySink {
    /// Registers `text` under `subject`, retried while the registry is
    /// unreachable.
    async fn register(
        &self,
        subject: &str,
        text: &str,
        kind: SchemaType,
        status: &SourceStatus,
        name: &str,
    ) -> Result<u32> {
        let mut backoff = Duration::from_millis(200);
        let id = loop {
            match self.registry.register_as(subject, text, kind).await {
                Ok(id) => break id,
                Err(RegistryError::Unavailable(e)) => {
                    tracing::warn!(sink = %name, error = %e, "cannot register the sink's schema; retrying");
                    status.set_state(format!("retrying: {}", bounded(&e)));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(SluiceError::from(e)),
            }
        };
        tracing::info!(sink = %name, %subject, schema_id = id, kind = kind.name(), "schema registered");
        status.set_state("running".to_owned());
        Ok(id)
    }

    /// An Avro encoder for rows of `schema`, its schema registered under
    /// `subject`.
    async fn avro(
        &self,
        subject: &str,
        schema: &Schema,
        status: &SourceStatus,
        name: &str,
    ) -> Result<AvroEncoder> {
        let (schema, avro) = avro_schema_for(schema)?;
        let id = self
            .register(subject, &avro.json_string, SchemaType::Avro, status, name)
            .await?;
        AvroEncoder::new(&schema, id)
    }

    /// The encoder for batches like `batch` (as the sink writes them).
    async fn encoder_for(
        &self,
        spec: &SinkSpec,
        batch: &RecordBatch,
        rows: &RecordBatch,
        status: &SourceStatus,
        name: &str,
    ) -> Result<SchemaEncoder> {
        let topic = &spec.options.topic;
        let value_subject = format!("{topic}-value");
        Ok(match spec.options.format {
            Format::Protobuf => {
                let text = proto_schema_for(&batch.schema(), topic)?;
                let id = self
                    .register(&value_subject, &text, SchemaType::Protobuf, status, name)
                    .await?;
                SchemaEncoder::Protobuf(ProtobufEncoder::new(&text, id)?)
            }
            Format::DebeziumAvro => SchemaEncoder::DebeziumAvro {
                key: if spec.key.is_empty() {
                    None
                } else {
                    let key = rows.project(&spec.key)?.schema();
                    Some(
                        self.avro(&format!("{topic}-key"), &key, status, name)
                            .await?,
                    )
                },
                value: self
                    .avro(&value_subject, &batch.schema(), status, name)
                    .await?,
            },
            Format::UpsertAvro => {
                let key = batch.project(&spec.key)?.schema();
                SchemaEncoder::UpsertAvro {
                    key: self
                        .avro(&format!("{topic}-key"), &key, status, name)
                        .await?,
                    value: self
                        .avro(&value_subject, &batch.schema(), status, name)
                        .await?,
                }
            }
            _ => SchemaEncoder::Avro(
                self.avro(&value_subject, &batch.schema(), status, name)
                    .await?,
            ),
        })
    }

    /// Records for `changes`, registering the schemas first if needed.
    async fn encode(
        &mut self,
        spec: &SinkSpec,
        changes: &ChangeBatch,
        status: &SourceStatus,
        name: &str,
    ) -> Result<Vec<Record>> {
        if changes.batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let (batch, key_rows) = match spec.options.format {
            Format::UpsertAvro => (changes.batch.clone(), Vec::new()),
            Format::DebeziumAvro => debezium_batch(spec, changes)?,
            _ => (with_op(spec, changes)?, Vec::new()),
        };
        if self.encoder.is_none() {
            self.encoder = Some(
                self.encoder_for(spec, &batch, &changes.batch, status, name)
                    .await?,
            );
        }
        let values = match self.encoder.as_mut() {
            Some(SchemaEncoder::Avro(e)) => e.encode(&batch)?,
            Some(SchemaEncoder::Protobuf(e)) => e.encode(&batch)?,
            Some(SchemaEncoder::UpsertAvro { key, value }) => {
                let keys = key.encode(&batch.project(&spec.key)?)?;
                let values = value.encode(&batch)?;
                return Ok(net_per_key(changes, keys, values));
            }
            Some(SchemaEncoder::DebeziumAvro { key, value }) => {
                let values = value.encode(&batch)?;
                let keys = match key {
                    Some(k) => {
                        let at = UInt32Array::from_iter_values(
                            key_rows.iter().filter_map(|&i| u32::try_from(i).ok()),
                        );
                        let rows = datafusion::arrow::compute::take_record_batch(
                            &changes.batch.project(&spec.key)?,
                            &at,
                        )?;
                        k.encode(&rows)?.into_iter().map(Some).collect()
                    }
                    None => vec![None; values.len()],
                };
                return Ok(keys
                    .into_iter()
                    .zip(values)
                    .map(|(key, v)| Record {
                        key,
                        value: Some(v),
                    })
                    .collect());
            }
            None => return Err(SluiceError::internal("sink encoder missing")),
        };
        Ok(values
            .into_iter()
            .map(|v| Record {
                key: None,
                value: Some(v),
            })
            .collect())
    }
}

fn producer(
    options: &KafkaSink,
    name: &str,
    status: &Arc<SourceStatus>,
) -> Result<FutureProducer<Reporting>> {
    let config = client_config(&options.bootstrap_servers, &options.properties);
    config
        .create_with_context(Reporting::new(name, status))
        .map_err(|e| SluiceError::external("kafka", "cannot create the producer", e))
}

/// Whether the broker (or librdkafka) refuses this record for good, so
/// that retrying it can never succeed.
pub(crate) fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// The most of a refused record's value a dead letter carries: enough to
/// see what it was, small enough for any broker.
const DEAD_LETTER_VALUE_BYTES: usize = 64 * 1024;

/// Writes a record the sink's topic refused to the dead-letter topic: its
/// key, its value (cut to [`DEAD_LETTER_VALUE_BYTES`]), and headers saying
/// why (bounded), from which sink and how long the value was.
async fn dead_letter(
    producer: &FutureProducer<Reporting>,
    dead_letters: &str,
    sink: &str,
    topic: &str,
    record: &Record,
    reason: &str,
) -> std::result::Result<(), KafkaError> {
    let reason = bounded(reason);
    let length = record.value.as_ref().map_or(0, Vec::len).to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "sluice_error",
            value: Some(&reason),
        })
        .insert(Header {
            key: "sluice_sink",
            value: Some(sink),
        })
        .insert(Header {
            key: "sluice_topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "sluice_value_bytes",
            value: Some(&length),
        });
    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dead_letters).headers(headers);
    if let Some(k) = &record.key {
        out = out.key(&k[..k.len().min(DEAD_LETTER_VALUE_BYTES)]);
    }
    if let Some(v) = &record.value {
        out = out.payload(&v[..v.len().min(DEAD_LETTER_VALUE_BYTES)]);
    }
    producer
        .send(out, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// What the sink does after a record could not be encoded or delivered.
enum Routed {
    /// Go on.
    Continue,
    /// Stop delivering: the sink failed (its state says why).
    Failed,
}

async fn route(
    spec: &SinkSpec,
    producer: &FutureProducer<Reporting>,
    name: &str,
    status: &SourceStatus,
    refused: Vec<(Option<Record>, String)>,
) -> Routed {
    let topic = &spec.options.topic;
    for (record, reason) in refused {
        status.add_rejected(1);
        match (&spec.options.on_error, record) {
            (OnError::Fail, _) => {
                let message = format!("failed: {} (on_error = 'fail')", bounded(&reason));
                tracing::error!(sink = %name, %topic, reason = %bounded(&reason), "kafka sink stopped at a record it cannot deliver");
                status.set_state(message);
                return Routed::Failed;
            }
            (OnError::DeadLetter(dead_letters), Some(record)) => {
                if let Err(e) =
                    dead_letter(producer, dead_letters, name, topic, &record, &reason).await
                {
                    tracing::error!(sink = %name, topic = %dead_letters, error = %e, "kafka sink stopped: cannot write a dead letter");
                    status.set_state(format!(
                        "failed: cannot write a dead letter to {dead_letters}: {e}; the record was refused: {}",
                        bounded(&reason)
                    ));
                    return Routed::Failed;
                }
                tracing::warn!(sink = %name, %topic, reason = %bounded(&reason), "record sent to the dead-letter topic");
            }
            (OnError::Skip | OnError::DeadLetter(_), _) => {
                tracing::warn!(sink = %name, %topic, reason = %bounded(&reason), "record skipped");
            }
        }
    }
    Routed::Continue
}

/// How long a barrier waits for deliveries while the broker answers.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// How long it waits once records are known to be stuck.
const STUCK_WAIT: Duration = Duration::from_millis(200);
/// Past this many bytes of undelivered records, barriers wait until the
/// broker takes them, rather than the backlog growing without bound.
const MAX_BACKLOG_BYTES: usize = 256 << 20;

/// The sink's task: encodes changes as they arrive and hands them to
/// librdkafka; at each barrier waits for the deliveries, for a while
/// ([`Outbox`]), and writes what is still undelivered into its state with
/// the checkpoint, so a broker that is down holds up neither the views'
/// checkpoints nor startup. A record the broker refuses for good (or a
/// change that cannot be encoded) goes per `on_error`; a failed sink keeps
/// acknowledging barriers.
pub async fn run(spec: SinkSpec, name: String, status: Arc<SourceStatus>, mut input: SinkInput) {
    let producer = loop {
        match producer(&spec.options, &name, &status) {
            Ok(p) => break p,
            Err(e) => {
                status.set_state(format!("retrying: {}", e.report()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    status.set_state("running".to_owned());
    let topic = spec.options.topic.clone();
    let mut avro = spec.registry.clone().map(|registry| RegistrySink {
        registry,
        encoder: None,
    });
    let mut txn = input.txn();
    let backlog_key = input.state_key(b"sink-backlog");
    let mut outbox = Outbox::default();
    // What the last checkpoint left undelivered goes first.
    let mut saved = false;
    match txn.multi_get(std::slice::from_ref(&backlog_key)) {
        Ok(found) => {
            if let Some(bytes) = found.into_iter().flatten().next() {
                match Outbox::load(&bytes) {
                    Some(records) => {
                        tracing::info!(sink = %name, records = records.len(), "sending the backlog of the last run");
                        outbox.push(records);
                        saved = true;
                    }
                    None => {
                        tracing::error!(sink = %name, "the sink's backlog is corrupt; it is dropped")
                    }
                }
            }
        }
        Err(e) => tracing::error!(sink = %name, error = %e, "cannot read the sink's backlog"),
    }
    // A sink stopped by on_error = 'fail' stays stopped across restarts.
    let failed_key = input.state_key(b"sink-failed");
    let mut failed = false;
    if let Ok(found) = txn.multi_get(std::slice::from_ref(&failed_key)) {
        if let Some(reason) = found.into_iter().flatten().next() {
            failed = true;
            outbox = Outbox::default();
            status.set_state(String::from_utf8_lossy(&reason).into_owned());
        }
    }
    let mut failure_saved = failed;
    outbox.send(&producer, &topic);
    while let Some(event) = input.next().await {
        match event {
            SinkEvent::Changes(_) if failed => {}
            SinkEvent::Changes(changes) => match match avro.as_mut() {
                Some(a) => a.encode(&spec, &changes, &status, &name).await,
                None => encode(&spec, &changes),
            } {
                Ok(records) => {
                    outbox.push(records);
                    outbox.send(&producer, &topic);
                }
                Err(e) => {
                    let reason =
                        format!("cannot encode a change of {} rows: {e}", changes.num_rows());
                    let refused = vec![(None, reason)];
                    if let Routed::Failed = route(&spec, &producer, &name, &status, refused).await {
                        failed = true;
                        outbox = Outbox::default();
                    }
                }
            },
            SinkEvent::Barrier(epoch) => {
                if !failed {
                    let mut wait = if saved { STUCK_WAIT } else { DELIVERY_WAIT };
                    loop {
                        let refused = outbox.settle(&producer, &topic, &status, &name, wait).await;
                        let refused = refused
                            .into_iter()
                            .map(|Outcome::Refused(r, e)| (Some(r), e))
                            .collect();
                        if let Routed::Failed =
                            route(&spec, &producer, &name, &status, refused).await
                        {
                            failed = true;
                            outbox = Outbox::default();
                        }
                        if outbox.bytes() <= MAX_BACKLOG_BYTES {
                            break;
                        }
                        status.set_state(format!(
                            "retrying: {} records ({} MiB) wait for the broker; checkpoints wait for them",
                            outbox.len(),
                            outbox.bytes() >> 20
                        ));
                        wait = DELIVERY_WAIT;
                    }
                    if !outbox.is_empty() {
                        tracing::warn!(sink = %name, records = outbox.len(), "records not yet delivered kept with the checkpoint");
                        txn.put(backlog_key.clone(), outbox.save());
                        saved = true;
                    } else if saved {
                        txn.delete(backlog_key.clone());
                        saved = false;
                    }
                }
                if failed && !failure_saved {
                    txn.put(failed_key.clone(), status.state().into_bytes());
                    txn.delete(backlog_key.clone());
                    failure_saved = true;
                }
                if !input.checkpoint(epoch, &mut txn) {
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
                on_error: OnError::Fail,
                properties: Default::default(),
                schema_registry: None,
            },
            key: vec![0],
            with_op,
            registry: None,
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
        let dbz = encode(&spec(Format::DebeziumJson, true), &changes).expect("debezium");
        assert_eq!(
            dbz.iter()
                .map(|r| text(&r.value).unwrap_or_default())
                .collect::<Vec<_>>(),
            vec![
                r#"{"before":{"k":1,"n":5},"after":{"k":1,"n":6},"op":"u"}"#,
                r#"{"before":{"k":2,"n":null},"after":null,"op":"d"}"#
            ]
        );
        assert_eq!(text(&dbz[1].key).as_deref(), Some(r#"{"k":2}"#));
        let upsert = encode(&spec(Format::UpsertJson, false), &changes).expect("upsert");
        assert_eq!(upsert.len(), 2);
        assert_eq!(text(&upsert[0].key).as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(text(&upsert[0].value).as_deref(), Some(r#"{"k":1,"n":6}"#));
        assert_eq!(text(&upsert[1].key).as_deref(), Some(r#"{"k":2}"#));
        assert_eq!(upsert[1].value, None, "a deleted key is a tombstone");
    }
}
