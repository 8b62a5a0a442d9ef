//! A Kafka source: reads every partition of a topic from the position
//! stored with the rows it wrote (or from `scan_startup`), decodes each
//! poll's records into one Arrow batch, and writes rows and position in one
//! transaction, so a restart continues exactly where it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::{cast, concat, take, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sluice_catalog::{Catalog, Ingest, Relation};
use sluice_common::{Result, SluiceError};

use crate::avro::AvroFormat;
use crate::debezium;
use crate::decode::{decode, key_record, project, with_columns, Encoding, RecordFormat};
use crate::kafka::client::{config as client_config, Reporting};
use crate::kafka::options::{Format, KafkaSource, OnError, Startup};
use crate::protobuf::ProtobufFormat;
use crate::registry::Registry;
use crate::status::{bounded, SourceStatus};

/// Records that could not be read: index in the poll, and why.
type BadRecords = Vec<(usize, String)>;
/// What to write, and the bad records.
type Converted = (Vec<Ingest>, BadRecords);

/// At most this many records go into one transaction.
const MAX_BATCH: usize = 10_000;
/// How long a poll waits for more records after the first.
const LINGER: Duration = Duration::from_millis(20);

fn kafka(e: rdkafka::error::KafkaError) -> SluiceError {
    SluiceError::external("kafka", "delivery failed", e)
}

/// The consumer of a source.
type SourceConsumer = StreamConsumer<Reporting>;

/// Reads the source until it fails (with `on_error = 'fail'`), its relation
/// is dropped, or the task is stopped; client errors are retried.
pub(crate) async fn run(
    catalog: Arc<Catalog>,
    relation: Arc<Relation>,
    options: KafkaSource,
    registry: Option<Registry>,
    status: Arc<SourceStatus>,
) {
    let mut backoff = Duration::from_millis(200);
    // Kept across retries: the writer schemas fetched stay known.
    let avro = registry.map(|r| match options.format {
        Format::Protobuf => Schemas::Protobuf(ProtobufFormat::new(r, options.message.clone())),
        _ => Schemas::Avro(AvroFormat::new(r)),
    });
    loop {
        match read(&catalog, &relation, &options, avro.as_ref(), &status).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(source = %relation.name(), error = %e, "kafka source error; retrying");
                status.set_retrying(&e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn partitions(consumer: &Arc<SourceConsumer>, topic: &str) -> Result<Vec<i32>> {
    let c = consumer.clone();
    let topic = topic.to_owned();
    let fetch = tokio::task::spawn_blocking(move || -> Result<Vec<i32>> {
        let metadata = c
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(kafka)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    });
    tokio::pin!(fetch);
    loop {
        tokio::select! {
            done = &mut fetch => {
                return done.map_err(|e| SluiceError::internal(format!("metadata task: {e}")))?;
            }
            // The client's logs and errors (a refused certificate, a wrong
            // password) wait in its queue until it is polled: serve them
            // while the metadata is awaited, so the state can say why.
            _ = consumer.recv() => {}
        }
    }
}

/// The decoder of a format whose records name their schema in the
/// registry: fetches what a poll's records name, then decodes them.
enum Schemas {
    Avro(AvroFormat),
    Protobuf(ProtobufFormat),
}

impl Schemas {
    /// Fetches the schemas `records` name that are not known yet.
    async fn prepare(&self, records: &[&[u8]]) -> Result<()> {
        match self {
            Schemas::Avro(f) => f.prepare(records).await,
            Schemas::Protobuf(f) => f.prepare(records).await,
        }
    }

    fn format(&self) -> &dyn RecordFormat {
        match self {
            Schemas::Avro(f) => f,
            Schemas::Protobuf(f) => f,
        }
    }
}

async fn read(
    catalog: &Arc<Catalog>,
    relation: &Arc<Relation>,
    options: &KafkaSource,
    avro: Option<&Schemas>,
    status: &Arc<SourceStatus>,
) -> Result<()> {
    let mut config = client_config(&options.bootstrap_servers, &options.properties);
    config
        .set("group.id", format!("sluice-{}", relation.name()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: Arc<SourceConsumer> = Arc::new(
        config
            .create_with_context(Reporting::new(relation.name(), status))
            .map_err(kafka)?,
    );
    let parts = loop {
        let parts = partitions(&consumer, &options.topic).await?;
        if !parts.is_empty() {
            break parts;
        }
        status.set_state(format!("waiting for topic \"{}\"", options.topic));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut next = catalog.source_position(relation.entry().id)?;
    let mut tpl = TopicPartitionList::new();
    // A start time is applied here, record by record, rather than through
    // the broker's time index: it then works with every broker.
    let mut skip_before: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &parts {
        let offset = match (next.get(&p), options.startup) {
            (Some(o), _) => Offset::Offset(*o),
            (None, Startup::Earliest) => Offset::Beginning,
            (None, Startup::Latest) => Offset::End,
            (None, Startup::Timestamp(ms)) => {
                skip_before.insert(p, ms);
                Offset::Beginning
            }
        };
        tpl.add_partition_offset(&options.topic, p, offset)
            .map_err(kafka)?;
    }
    consumer.assign(&tpl).map_err(kafka)?;
    let dead_letters: Option<(FutureProducer<Reporting>, String)> = match &options.on_error {
        OnError::DeadLetter(topic) => Some((
            client_config(&options.bootstrap_servers, &options.properties)
                .create_with_context(Reporting::new(relation.name(), status))
                .map_err(kafka)?,
            topic.clone(),
        )),
        _ => None,
    };
    status.set_client_error(None);
    status.set_state("running".to_owned());
    tracing::info!(source = %relation.name(), topic = %options.topic, partitions = parts.len(), "kafka source started");
    let mut lag_ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = lag_ticker.tick() => {
                update_lag(&consumer, &options.topic, &parts, &next, status).await;
                continue;
            }
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(source = %relation.name(), error = %e, "kafka consumer error");
                status.set_state(format!("running (last client error: {e})"));
                continue;
            }
        };
        let mut messages = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while messages.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => messages.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(source = %relation.name(), error = %e, "kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        if !skip_before.is_empty() {
            messages.retain(|m| {
                let Some(before) = skip_before.get(&m.partition()).copied() else {
                    return true;
                };
                if m.timestamp().to_millis().is_some_and(|t| t >= before) {
                    skip_before.remove(&m.partition());
                    return true;
                }
                next.insert(m.partition(), m.offset() + 1);
                false
            });
            if messages.is_empty() {
                continue;
            }
        }
        tracing::debug!(source = %relation.name(), records = messages.len(), "poll");
        let bytes: u64 = messages
            .iter()
            .map(|m| m.payload().map_or(0, <[u8]>::len) as u64)
            .sum();
        if let Some(avro) = avro {
            // The writer schemas first: a registry that cannot be asked
            // retries the whole poll (nothing is skipped).
            let mut framed: Vec<&[u8]> = messages.iter().filter_map(|m| m.payload()).collect();
            if options.format == Format::UpsertAvro {
                framed.extend(messages.iter().filter_map(|m| m.key()));
            }
            avro.prepare(&framed).await?;
        }
        let registered = avro.map(Schemas::format);
        let (mut parts_out, bad) = convert(relation, options.format, registered, &messages)?;
        let mut upto = messages.len();
        if !bad.is_empty() {
            match &options.on_error {
                OnError::Skip => {
                    for (i, reason) in &bad {
                        let m = &messages[*i];
                        let reason = bounded(reason);
                        tracing::warn!(source = %relation.name(), topic = %m.topic(), partition = m.partition(),
                            offset = m.offset(), %reason, "bad record skipped");
                    }
                }
                OnError::DeadLetter(_) => {
                    if let Some((producer, topic)) = &dead_letters {
                        for (i, reason) in &bad {
                            if let Err(e) =
                                dead_letter(producer, topic, &messages[*i], reason).await
                            {
                                // Retrying the poll would write its other
                                // dead letters again: stop, and say why.
                                let m = &messages[*i];
                                let message = format!(
                                    "failed: cannot write a dead letter to {topic} for topic {} partition {} offset {}: {}",
                                    m.topic(),
                                    m.partition(),
                                    m.offset(),
                                    e.report()
                                );
                                tracing::error!(source = %relation.name(), %message, "kafka source stopped");
                                status.set_state(message);
                                return Ok(());
                            }
                        }
                    }
                }
                OnError::Fail => {
                    upto = bad[0].0;
                    (parts_out, _) =
                        convert(relation, options.format, registered, &messages[..upto])?;
                }
            }
        }
        for m in &messages[..upto] {
            next.insert(m.partition(), m.offset() + 1);
        }
        let rows: usize = parts_out
            .iter()
            .map(|p| match p {
                Ingest::Append(b) | Ingest::Upsert(b) | Ingest::DeleteKeys(b) => b.num_rows(),
            })
            .sum();
        match catalog.ingest(relation, parts_out, &next).await {
            Ok(()) => {}
            Err(SluiceError::UndefinedObject { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        tracing::debug!(source = %relation.name(), "written");
        if !status.state().starts_with("running") {
            // A client error reported earlier is over.
            status.set_client_error(None);
            status.set_state("running".to_owned());
        }
        status.add(
            rows as u64,
            bytes,
            if upto < messages.len() {
                1
            } else {
                bad.len() as u64
            },
        );
        if upto < messages.len() {
            let m = &messages[upto];
            let reason = bounded(&bad[0].1);
            let message = format!(
                "failed at topic {} partition {} offset {}: {reason}",
                m.topic(),
                m.partition(),
                m.offset()
            );
            tracing::error!(source = %relation.name(), %message, "kafka source stopped (on_error = 'fail')");
            status.set_state(format!("failed: {message}"));
            return Ok(());
        }
    }
}

async fn update_lag(
    consumer: &Arc<SourceConsumer>,
    topic: &str,
    parts: &[i32],
    next: &BTreeMap<i32, i64>,
    status: &SourceStatus,
) {
    let c = consumer.clone();
    let topic = topic.to_owned();
    let parts = parts.to_vec();
    let next = next.clone();
    let lag = tokio::task::spawn_blocking(move || {
        let mut lag = 0i64;
        for p in parts {
            let (low, high) = c.fetch_watermarks(&topic, p, Duration::from_secs(1)).ok()?;
            let at = next.get(&p).copied().unwrap_or(low).max(low);
            lag += (high - at).max(0);
        }
        Some(lag)
    })
    .await
    .ok()
    .flatten();
    if let Some(lag) = lag {
        status.set_lag(lag);
    }
}

async fn dead_letter(
    producer: &FutureProducer<Reporting>,
    topic: &str,
    message: &OwnedMessage,
    reason: &str,
) -> Result<()> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let reason = bounded(reason);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "sluice_error",
            value: Some(&reason),
        })
        .insert(Header {
            key: "sluice_topic",
            value: Some(message.topic()),
        })
        .insert(Header {
            key: "sluice_partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "sluice_offset",
            value: Some(&offset),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(p) = message.payload() {
        record = record.payload(p);
    }
    if let Some(k) = message.key() {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| kafka(e))?;
    Ok(())
}

/// Where a relation's Kafka metadata columns are, and the schema of the
/// rest (what records hold).
struct Layout {
    value_schema: SchemaRef,
    meta: Vec<(usize, String)>,
}

fn layout(relation: &Relation) -> Result<Layout> {
    let schema = relation.schema();
    let entry = relation.entry();
    let meta: Vec<(usize, String)> = entry
        .include
        .iter()
        .map(|(what, column)| Ok((schema.index_of(column)?, what.clone())))
        .collect::<Result<_>>()?;
    let rest: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !meta.iter().any(|(m, _)| m == i))
        .collect();
    Ok(Layout {
        value_schema: project(&schema, &rest)?,
        meta,
    })
}

/// The full rows: the decoded columns, and the metadata of each row's
/// record (`records[i]` is row `i`'s index in `messages`).
fn with_metadata(
    relation: &Relation,
    layout: &Layout,
    values: &RecordBatch,
    records: &[usize],
    messages: &[OwnedMessage],
) -> Result<RecordBatch> {
    if layout.meta.is_empty() {
        return Ok(values.clone());
    }
    let schema = relation.schema();
    let mut decoded = values.columns().iter();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for i in 0..schema.fields().len() {
        let Some((_, what)) = layout.meta.iter().find(|(m, _)| *m == i) else {
            columns.push(
                decoded
                    .next()
                    .cloned()
                    .ok_or_else(|| SluiceError::internal("decoded columns do not match"))?,
            );
            continue;
        };
        let of = records.iter().map(|&r| &messages[r]);
        columns.push(match what.as_str() {
            "key" => {
                Arc::new(StringArray::from_iter(of.map(|m| {
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned())
                })))
            }
            "partition" => Arc::new(Int32Array::from_iter_values(of.map(|m| m.partition()))),
            "offset" => Arc::new(Int64Array::from_iter_values(of.map(|m| m.offset()))),
            _ => Arc::new(TimestampMicrosecondArray::from_iter(
                of.map(|m| m.timestamp().to_millis().map(|ms| ms * 1000)),
            )),
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Turns messages into what to write, and the bad ones (index, reason).
fn convert(
    relation: &Relation,
    format: Format,
    registered: Option<&dyn RecordFormat>,
    messages: &[OwnedMessage],
) -> Result<Converted> {
    let layout = layout(relation)?;
    let check = |b: &RecordBatch, records: &[usize]| {
        relation.check_rows(&with_metadata(relation, &layout, b, records, messages)?)
    };
    match format {
        Format::Json | Format::Csv | Format::Avro | Format::Protobuf => {
            let encoding: &dyn RecordFormat = match (format, registered) {
                (Format::Csv, _) => &Encoding::Csv,
                (Format::Avro | Format::Protobuf, Some(registered)) => registered,
                (Format::Avro | Format::Protobuf, None) => {
                    return Err(SluiceError::internal(
                        "a source without its schema registry",
                    ))
                }
                _ => &Encoding::Json,
            };
            let records: Vec<&[u8]> = messages
                .iter()
                .map(|m| m.payload().unwrap_or(b""))
                .collect();
            let d = decode(&layout.value_schema, encoding, &records, &check)?;
            let batch = with_metadata(relation, &layout, &d.batch, &d.rows_of, messages)?;
            let batch = relation.normalize_rows(batch)?;
            Ok((vec![Ingest::Append(batch)], d.bad))
        }
        Format::DebeziumJson => debezium_changes(relation, &layout, messages, &DebeziumEnvelope),
        Format::DebeziumAvro => match registered {
            Some(avro) => debezium_changes(relation, &layout, messages, avro),
            None => Err(SluiceError::internal("an Avro source without a registry")),
        },
        Format::UpsertJson | Format::UpsertAvro => {
            let codecs = match (format, registered) {
                (Format::UpsertAvro, Some(avro)) => Codecs {
                    value: avro,
                    key: avro,
                    json_keys: false,
                },
                (Format::UpsertAvro, None) => {
                    return Err(SluiceError::internal("an Avro source without a registry"))
                }
                _ => Codecs {
                    value: &Encoding::Json,
                    key: &Encoding::Json,
                    json_keys: true,
                },
            };
            let mut out = Vec::new();
            let mut bad = Vec::new();
            let mut start = 0;
            while start < messages.len() {
                let deleting = messages[start].payload().is_none();
                let mut end = start;
                while end < messages.len() && messages[end].payload().is_none() == deleting {
                    end += 1;
                }
                let segment = &messages[start..end];
                let (part, seg_bad) = if deleting {
                    deletes(relation, segment, &codecs)?
                } else {
                    upserts(relation, &layout, segment, &codecs)?
                };
                out.extend(part);
                bad.extend(seg_bad.into_iter().map(|(i, r)| (i + start, r)));
                start = end;
            }
            bad.sort_by_key(|(i, _)| *i);
            Ok((out, bad))
        }
    }
}

/// Debezium envelopes: JSON, each one object with `op` (or a `payload`).
struct DebeziumEnvelope;

impl RecordFormat for DebeziumEnvelope {
    fn validate(&self, schema: &SchemaRef, record: &[u8]) -> Result<()> {
        Encoding::Json.validate(schema, record)?;
        debezium::validate_envelope(record)
    }

    fn decode_all(&self, schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch> {
        Encoding::Json.decode_all(schema, records)
    }
}

/// A poll of Debezium events as upserts and deletes, in record order.
fn debezium_changes(
    relation: &Relation,
    layout: &Layout,
    messages: &[OwnedMessage],
    envelopes: &dyn RecordFormat,
) -> Result<Converted> {
    let value = layout.value_schema.clone();
    let envelope = debezium::envelope_schema(&value);
    // Tombstones (a null value after each delete) are skipped.
    let present: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i].payload().is_some())
        .collect();
    let records: Vec<&[u8]> = present
        .iter()
        .map(|&i| messages[i].payload().unwrap_or_default())
        .collect();
    let d = decode(&envelope, envelopes, &records, &|_, _| Ok(()))?;
    let mut bad: BadRecords = d
        .bad
        .iter()
        .map(|(j, r)| (present[*j], r.clone()))
        .collect();
    let pk_names = key_names(relation);
    let key: Vec<usize> = pk_names
        .iter()
        .map(|n| value.index_of(n))
        .collect::<std::result::Result<_, _>>()?;
    let events = debezium::events(&d.batch, &value, &key)?;
    let message_of = |row: usize| present[d.rows_of[row]];
    for (row, reason) in &events.bad {
        bad.push((message_of(*row), reason.clone()));
    }
    // Consecutive upserts (or deletes) go together; order is kept.
    let mut out: Vec<Ingest> = Vec::new();
    let mut run: Vec<u32> = Vec::new();
    let mut deleting = false;
    let flush = |run: &mut Vec<u32>,
                 deleting: bool,
                 out: &mut Vec<Ingest>,
                 bad: &mut BadRecords|
     -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(std::mem::take(run));
        if deleting {
            let keys = take_record_batch(&events.before.project(&key)?, &idx)?;
            let mut keep = Vec::new();
            for r in 0..keys.num_rows() {
                if keys.columns().iter().any(|c| c.is_null(r)) {
                    bad.push((
                        message_of(idx.value(r) as usize),
                        "a Debezium delete whose \"before\" lacks the primary key".to_owned(),
                    ));
                } else {
                    keep.push(r as u32);
                }
            }
            let keys = take_record_batch(&keys, &UInt32Array::from(keep))?;
            let keys = RecordBatch::try_new(
                project(&relation.schema(), &relation.entry().primary_key)?,
                keys.columns()
                    .iter()
                    .zip(relation.entry().primary_key.iter())
                    .map(|(c, &i)| cast(c, relation.schema().field(i).data_type()))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )?;
            out.push(Ingest::DeleteKeys(keys));
        } else {
            let rows = take_record_batch(&events.after, &idx)?;
            let of: Vec<usize> = idx
                .values()
                .iter()
                .map(|&r| d.rows_of[r as usize])
                .collect();
            let of_messages: Vec<usize> = of.iter().map(|&j| present[j]).collect();
            let rows = relation.normalize_rows(with_metadata(
                relation,
                layout,
                &rows,
                &of_messages,
                messages,
            )?)?;
            let mut keep = Vec::new();
            if relation.check_rows(&rows).is_ok() {
                keep.extend(0..rows.num_rows() as u32);
            } else {
                for r in 0..rows.num_rows() {
                    match relation.check_rows(&rows.slice(r, 1)) {
                        Ok(()) => keep.push(r as u32),
                        Err(e) => bad.push((of_messages[r], e.to_string())),
                    }
                }
            }
            out.push(Ingest::Upsert(take_record_batch(
                &rows,
                &UInt32Array::from(keep),
            )?));
        }
        Ok(())
    };
    for (row, op) in events.ops.iter().enumerate() {
        let steps: &[bool] = match op {
            None => &[],
            Some(debezium::Op::Upsert) => &[false],
            Some(debezium::Op::Delete) => &[true],
            Some(debezium::Op::Move) => &[true, false],
        };
        for &del in steps {
            if del != deleting {
                flush(&mut run, deleting, &mut out, &mut bad)?;
                deleting = del;
            }
            run.push(row as u32);
        }
    }
    flush(&mut run, deleting, &mut out, &mut bad)?;
    bad.sort_by_key(|(i, _)| *i);
    Ok((out, bad))
}

fn key_names(relation: &Relation) -> Vec<String> {
    let entry = relation.entry();
    entry
        .primary_key
        .iter()
        .map(|&i| entry.columns[i].name.clone())
        .collect()
}

/// Key records (index in `messages`, JSON object) for messages that have a
/// usable key; the others are bad.
/// How the keys and values of an upsert source are decoded.
struct Codecs<'a> {
    value: &'a dyn RecordFormat,
    key: &'a dyn RecordFormat,
    /// JSON keys: a bare value is the one key column's.
    json_keys: bool,
}

fn key_records(
    relation: &Relation,
    messages: &[OwnedMessage],
    wanted: impl Iterator<Item = usize>,
    codecs: &Codecs<'_>,
) -> (Vec<(usize, Vec<u8>)>, BadRecords) {
    let names = key_names(relation);
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for i in wanted {
        match messages[i].key() {
            Some(k) if !codecs.json_keys => keys.push((i, k.to_vec())),
            Some(k) => match key_record(k, &names) {
                Ok(r) => keys.push((i, r)),
                Err(e) => bad.push((i, e.to_string())),
            },
            None => keys.push((i, Vec::new())),
        }
    }
    (keys, bad)
}

fn deletes(
    relation: &Relation,
    messages: &[OwnedMessage],
    codecs: &Codecs<'_>,
) -> Result<Converted> {
    let key_schema = project(&relation.schema(), &relation.entry().primary_key)?;
    let (keys, mut bad) = key_records(relation, messages, 0..messages.len(), codecs);
    let mut with_key = Vec::new();
    for (i, k) in keys {
        if k.is_empty() {
            bad.push((
                i,
                "a record with a null value (a delete) needs a key".to_owned(),
            ));
        } else {
            with_key.push((i, k));
        }
    }
    let records: Vec<&[u8]> = with_key.iter().map(|(_, k)| k.as_slice()).collect();
    let no_nulls = |b: &RecordBatch, _: &[usize]| -> Result<()> {
        if b.columns().iter().any(|c| c.null_count() > 0) {
            return Err(SluiceError::InvalidText {
                message: "the key has a null primary key column".to_owned(),
            });
        }
        Ok(())
    };
    let d = decode(&key_schema, codecs.key, &records, &no_nulls)?;
    bad.extend(
        d.bad
            .into_iter()
            .map(|(j, r)| (with_key[j].0, format!("bad key: {r}"))),
    );
    bad.sort_by_key(|(i, _)| *i);
    Ok((vec![Ingest::DeleteKeys(d.batch)], bad))
}

fn upserts(
    relation: &Relation,
    layout: &Layout,
    messages: &[OwnedMessage],
    codecs: &Codecs<'_>,
) -> Result<Converted> {
    let schema = relation.schema();
    let pk = relation.entry().primary_key.clone();
    let check = |b: &RecordBatch| relation.check_rows(b);
    let records: Vec<&[u8]> = messages
        .iter()
        .map(|m| m.payload().unwrap_or(b""))
        .collect();
    let mut values = decode(&layout.value_schema, codecs.value, &records, &|_, _| Ok(()))?;
    values.batch = with_metadata(relation, layout, &values.batch, &values.rows_of, messages)?;
    let mut bad = values.bad;
    // Keys: decoded for the rows whose record has one.
    let (keys, key_bad) = key_records(relation, messages, values.rows_of.iter().copied(), codecs);
    let key_schema = project(&schema, &pk)?;
    let present: Vec<(usize, &[u8])> = keys
        .iter()
        .filter(|(_, k)| !k.is_empty())
        .map(|(i, k)| (*i, k.as_slice()))
        .collect();
    let key_rows = decode(
        &key_schema,
        codecs.key,
        &present.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        &|_, _| Ok(()),
    )?;
    let mut bad_records: std::collections::HashSet<usize> =
        key_bad.iter().map(|(i, _)| *i).collect();
    bad.extend(key_bad);
    for (j, r) in key_rows.bad {
        bad.push((present[j].0, format!("bad key: {r}")));
        bad_records.insert(present[j].0);
    }
    // For each value row: its key row (index past the value rows) or its
    // own key columns.
    let key_row_of: BTreeMap<usize, usize> = key_rows
        .rows_of
        .iter()
        .enumerate()
        .map(|(row, &j)| (present[j].0, row))
        .collect();
    let n = values.batch.num_rows();
    let mut keep = Vec::new();
    let mut pick = Vec::new();
    for (row, &record) in values.rows_of.iter().enumerate() {
        if bad_records.contains(&record) {
            continue;
        }
        keep.push(row as u32);
        pick.push(match key_row_of.get(&record) {
            Some(k) => (n + k) as u32,
            None => row as u32,
        });
    }
    let kept_records: Vec<usize> = keep.iter().map(|&r| values.rows_of[r as usize]).collect();
    let mut key_columns: Vec<ArrayRef> = Vec::with_capacity(pk.len());
    for (c, &i) in pk.iter().enumerate() {
        let own = values.batch.column(i);
        let given = cast(key_rows.batch.column(c), own.data_type())?;
        let both = concat(&[own.as_ref(), given.as_ref()])?;
        key_columns.push(take(&both, &UInt32Array::from(pick.clone()), None)?);
    }
    let rows = take_record_batch(&values.batch, &UInt32Array::from(keep))?;
    let rows = relation.normalize_rows(with_columns(&rows, &pk, &key_columns)?)?;
    if check(&rows).is_ok() {
        bad.sort_by_key(|(i, _)| *i);
        return Ok((vec![Ingest::Upsert(rows)], bad));
    }
    let mut good = Vec::new();
    for (row, record) in kept_records.iter().enumerate() {
        match check(&rows.slice(row, 1)) {
            Ok(()) => good.push(row as u32),
            Err(e) => bad.push((*record, e.to_string())),
        }
    }
    bad.sort_by_key(|(i, _)| *i);
    Ok((
        vec![Ingest::Upsert(take_record_batch(
            &rows,
            &UInt32Array::from(good),
        )?)],
        bad,
    ))
}
