//! `sluice bench views`: the materialized-view micro-benchmark, its events
//! appended in process (`--source insert`), read from Kafka as JSON
//! (`--source kafka`, an in-process MockCluster), as Avro or Protobuf
//! through a schema registry (`--source kafka-avro`, `--source
//! kafka-protobuf`, the registry a stub in the process), or read from
//! JSON-lines files (`--source file`).
//!
//! A stream of orders goes through filter -> lookup join with a customers
//! table -> GROUP BY count, maintained by Sluice batch by batch (each batch
//! one durable transaction, as a source would write it). The same query then
//! runs once as a DataFusion batch over the same rows, in the same process.
//! Reported: events/s (wall and per CPU second), the ratio to the batch run,
//! and peak RSS. Run it on a release build.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_common::ObjectKind;
use sluice_server::{DataflowOptions, Engine};
use sluice_state::{RocksBackend, StateBackend};

const VIEW: &str = "SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue \
     FROM orders o JOIN customers c ON o.customer = c.id \
     WHERE o.amount > 10 GROUP BY c.region";

/// What a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub source: Source,
    pub events: usize,
    pub batch_size: usize,
    pub customers: usize,
    pub streaming_wall_s: f64,
    pub streaming_cpu_s: f64,
    pub streaming_events_per_s: f64,
    pub streaming_events_per_cpu_s: f64,
    pub batch_wall_s: f64,
    pub batch_events_per_s: f64,
    pub ratio_streaming_to_batch: f64,
    pub peak_rss_mib: f64,
}

/// CPU seconds (user + system) this process used so far.
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn orders(
    schema: &Arc<Schema>,
    from: usize,
    n: usize,
    customers: usize,
) -> anyhow::Result<RecordBatch> {
    let ids: Vec<i64> = (from..from + n).map(|i| i as i64).collect();
    let customer: Vec<i64> = ids
        .iter()
        .map(|i| ((*i as u64).wrapping_mul(2_654_435_761) % customers as u64) as i64)
        .collect();
    let amount: Vec<i64> = ids.iter().map(|i| i % 100).collect();
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(Int64Array::from(customer)),
            Arc::new(Int64Array::from(amount)),
        ],
    )?)
}

/// Where the benchmark's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Batches appended in process, each one durable transaction.
    Insert,
    /// JSON records produced beforehand into a topic of an in-process Kafka
    /// (rdkafka's MockCluster, whose broker threads count in the CPU
    /// time), read by a Kafka source.
    Kafka,
    /// The same as Avro records in the schema registry's wire format.
    KafkaAvro,
    /// The same as Protobuf records in the schema registry's wire format.
    KafkaProtobuf,
    /// The same JSON lines, in files read by the file connector.
    File,
}

/// The Avro schema of the orders (what `--source kafka-avro` registers).
const ORDER_AVRO: &str = r#"{"type": "record", "name": "Order", "fields": [
  {"name": "id", "type": ["null", "long"]}, {"name": "customer", "type": ["null", "long"]},
  {"name": "amount", "type": ["null", "long"]}]}"#;

/// The Protobuf schema of the orders (what `--source kafka-protobuf`
/// registers).
const ORDER_PROTO: &str = "syntax = \"proto3\";\nmessage Order {\n  optional int64 id = 1;\n  \
    optional int64 customer = 2;\n  optional int64 amount = 3;\n}\n";

/// A schema registry stub that serves the orders' schema of `source` as
/// id 1 (`GET /schemas/ids/1`); returns its URL.
async fn registry_stub(source: Source) -> anyhow::Result<String> {
    use axum::routing::get;
    let body = match source {
        Source::KafkaProtobuf => {
            serde_json::json!({ "schema": ORDER_PROTO, "schemaType": "PROTOBUF" })
        }
        _ => serde_json::json!({ "schema": ORDER_AVRO }),
    }
    .to_string();
    let router = axum::Router::new().route("/schemas/ids/1", get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(url)
}

/// The records of a batch of orders: JSON lines, or Avro or Protobuf
/// frames of id 1 (as `source` reads them).
fn encode(batch: &RecordBatch, source: Source) -> anyhow::Result<Vec<Vec<u8>>> {
    if source == Source::KafkaProtobuf {
        let encoder = sluice_connectors::protobuf::ProtobufEncoder::new(ORDER_PROTO, 1)?;
        return Ok(encoder.encode(batch)?);
    }
    if source == Source::KafkaAvro {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("avro.schema".to_owned(), ORDER_AVRO.to_owned());
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
        let mut encoder = sluice_connectors::avro::AvroEncoder::new(&schema, 1)?;
        return Ok(encoder.encode(batch)?);
    }
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer
        .into_inner()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub(crate) async fn run_sql(engine: &Engine, sql: &str) -> anyhow::Result<sluice_server::Output> {
    let mut last = None;
    for statement in sluice_sql::parse(sql)? {
        last = Some(
            engine
                .run(statement)
                .await
                .with_context(|| sql.to_owned())?,
        );
    }
    last.context("no statement")
}

/// Produces the events as JSON records into `topic` (not timed), each
/// batch delivered (and what failed sent again) before the next.
async fn produce(
    servers: &str,
    partitions: i32,
    schema: &Arc<Schema>,
    events: usize,
    batch_size: usize,
    customers: usize,
    source: Source,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("queue.buffering.max.messages", "1000000")
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    let mut sent = 0;
    while sent < events {
        let n = batch_size.min(events - sent);
        let batch = orders(schema, sent, n, customers)?;
        let records = encode(&batch, source)?;
        // Round robin over the partitions, so that each gets its share.
        let mut todo: Vec<(i32, &[u8])> = records
            .iter()
            .enumerate()
            .map(|(i, l)| (((sent + i) % partitions as usize) as i32, l.as_slice()))
            .collect();
        let mut attempts = 0;
        while !todo.is_empty() {
            attempts += 1;
            anyhow::ensure!(attempts <= 20, "the broker keeps refusing records");
            let deliveries = todo.iter().map(|(partition, line)| {
                producer.send(
                    FutureRecord::<[u8], [u8]>::to("orders")
                        .partition(*partition)
                        .payload(*line),
                    std::time::Duration::from_secs(30),
                )
            });
            let results = futures::future::join_all(deliveries).await;
            todo = todo
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|(record, _)| record)
                .collect();
        }
        sent += n;
    }
    tracing::info!(events, "events produced");
    Ok(())
}

/// Runs the benchmark.
pub async fn run(
    events: usize,
    batch_size: usize,
    customers: usize,
    source: Source,
) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open(dir.path())?);
    let policy = sluice_connectors::Policy {
        extra_properties: Vec::new(),
        file_dirs: Vec::new(),
        source_dirs: vec![files.path().to_owned()],
    };
    let engine = Engine::open(store, DataflowOptions::default(), policy).await?;
    run_sql(
        &engine,
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, region TEXT)",
    )
    .await?;
    run_sql(
        &engine,
        &format!(
            "INSERT INTO customers SELECT value, 'region ' || (value % 50) FROM generate_series(0, {})",
            customers - 1
        ),
    )
    .await?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("customer", DataType::Int64, true),
        Field::new("amount", DataType::Int64, true),
    ]));
    let cluster = match source {
        Source::Insert => None,
        Source::File => {
            // Files of 100,000 lines, written before the clock starts.
            let mut made = 0;
            let mut n = 0;
            while made < events {
                let mut lines = Vec::new();
                let end = (made + 100_000).min(events);
                while made < end {
                    let k = batch_size.min(end - made);
                    for line in encode(&orders(&schema, made, k, customers)?, source)? {
                        lines.extend_from_slice(&line);
                        lines.push(b'\n');
                    }
                    made += k;
                }
                std::fs::write(files.path().join(format!("orders-{n:05}.jsonl")), lines)?;
                n += 1;
            }
            None
        }
        Source::Kafka | Source::KafkaAvro | Source::KafkaProtobuf => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            // A mock partition keeps at most 100,000 records or 5 MB (it
            // drops the oldest): spread the events so none is dropped.
            let partitions = events.div_ceil(50_000).max(2) as i32;
            cluster.create_topic("orders", partitions, 1)?;
            let servers = cluster.bootstrap_servers();
            produce(
                &servers, partitions, &schema, events, batch_size, customers, source,
            )
            .await?;
            Some(cluster)
        }
    };
    let registry = if matches!(source, Source::KafkaAvro | Source::KafkaProtobuf) {
        Some(registry_stub(source).await?)
    } else {
        None
    };

    let cpu = cpu_seconds();
    let start = Instant::now();
    let reader = match (&cluster, source) {
        (Some(cluster), Source::KafkaAvro | Source::KafkaProtobuf) => Some(format!(
            "CREATE STREAM orders (id BIGINT, customer BIGINT, amount BIGINT) \
             WITH (connector = 'kafka', topic = 'orders', bootstrap_servers = '{}', \
                   format = '{}', schema_registry = '{}')",
            cluster.bootstrap_servers(),
            if source == Source::KafkaAvro { "avro" } else { "protobuf" },
            registry.as_deref().unwrap_or_default()
        )),
        (Some(cluster), _) => Some(format!(
            "CREATE STREAM orders (id BIGINT, customer BIGINT, amount BIGINT) \
             WITH (connector = 'kafka', topic = 'orders', bootstrap_servers = '{}')",
            cluster.bootstrap_servers()
        )),
        (None, Source::File) => Some(format!(
            "CREATE STREAM orders (id BIGINT, customer BIGINT, amount BIGINT) \
             WITH (connector = 'file', path = '{}/orders-*.jsonl', poll_interval = '10 milliseconds')",
            files.path().display()
        )),
        (None, _) => None,
    };
    match reader {
        None => {
            run_sql(
                &engine,
                "CREATE STREAM orders (id BIGINT, customer BIGINT, amount BIGINT)",
            )
            .await?;
            run_sql(
                &engine,
                &format!("CREATE MATERIALIZED VIEW revenue AS {VIEW}"),
            )
            .await?;
            let stream = engine.catalog().require("orders", ObjectKind::Stream)?;
            let mut sent = 0;
            while sent < events {
                let n = batch_size.min(events - sent);
                let batch = orders(&stream.schema(), sent, n, customers)?;
                engine.catalog().append_to_stream(&stream, &batch).await?;
                sent += n;
            }
        }
        Some(create) => {
            run_sql(&engine, &create).await?;
            run_sql(
                &engine,
                &format!("CREATE MATERIALIZED VIEW revenue AS {VIEW}"),
            )
            .await?;
            let mut last = (0i64, Instant::now());
            loop {
                let read = match run_sql(&engine, "SELECT rows FROM sluice_sources").await? {
                    sluice_server::Output::Rows { batches, .. } => batches
                        .first()
                        .and_then(|b| {
                            b.column(0)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .map(|a| a.value(0))
                        })
                        .unwrap_or(0),
                    _ => 0,
                };
                if read as usize >= events {
                    break;
                }
                if read != last.0 {
                    last = (read, Instant::now());
                }
                anyhow::ensure!(
                    last.1.elapsed() < std::time::Duration::from_secs(30),
                    "the source stopped at {read} of {events} events"
                );
                if let sluice_server::Output::Rows { batches, .. } =
                    run_sql(&engine, "SELECT lag FROM sluice_sources").await?
                {
                    let lag = batches.first().and_then(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .map(|a| a.value(0))
                    });
                    tracing::debug!(read, ?lag, "events read so far");
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    engine.dataflow().flush().await?;
    let streaming_wall_s = start.elapsed().as_secs_f64();
    let streaming_cpu_s = cpu_seconds() - cpu;
    let schema = engine
        .catalog()
        .require("orders", ObjectKind::Stream)?
        .schema();

    // The same query as a DataFusion batch over the same rows.
    let ctx = SessionContext::new();
    // The functions HOP and CUMULATE are written with, as in the engine.
    sluice_server::register_functions(&ctx);
    let mut all = Vec::new();
    let mut made = 0;
    while made < events {
        let n = batch_size.min(events - made);
        all.push(orders(&schema, made, n, customers)?);
        made += n;
    }
    ctx.register_table(
        "orders",
        Arc::new(MemTable::try_new(schema.clone(), vec![all])?),
    )?;
    let customer_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
    ]));
    let customer_rows = RecordBatch::try_new(
        customer_schema.clone(),
        vec![
            Arc::new(Int64Array::from((0..customers as i64).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..customers)
                    .map(|i| format!("region {}", i % 50))
                    .collect::<Vec<_>>(),
            )),
        ],
    )?;
    ctx.register_table(
        "customers",
        Arc::new(MemTable::try_new(
            customer_schema,
            vec![vec![customer_rows]],
        )?),
    )?;
    let start = Instant::now();
    let expected = ctx.sql(VIEW).await?.collect().await?;
    let batch_wall_s = start.elapsed().as_secs_f64();

    // The view must hold exactly what the batch computed.
    let view = match engine
        .run(sluice_sql::parse("SELECT * FROM revenue ORDER BY region")?.remove(0))
        .await?
    {
        sluice_server::Output::Rows { batches, .. } => batches,
        _ => anyhow::bail!("SELECT from the view returned no rows"),
    };
    let sorted = ctx
        .sql(&format!("SELECT * FROM ({VIEW}) ORDER BY region"))
        .await?
        .collect()
        .await?;
    let text = |b: &[RecordBatch]| -> anyhow::Result<String> {
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(b)?.to_string())
    };
    anyhow::ensure!(
        text(&view)? == text(&sorted)?,
        "the view differs from the batch query:\n{}\n{}",
        text(&view)?,
        text(&sorted)?
    );
    drop(expected);
    engine.shutdown().await;
    drop(cluster);

    let streaming_events_per_s = events as f64 / streaming_wall_s;
    let batch_events_per_s = events as f64 / batch_wall_s;
    Ok(Report {
        source,
        events,
        batch_size,
        customers,
        streaming_wall_s,
        streaming_cpu_s,
        streaming_events_per_s,
        streaming_events_per_cpu_s: events as f64 / streaming_cpu_s.max(1e-9),
        batch_wall_s,
        batch_events_per_s,
        ratio_streaming_to_batch: streaming_events_per_s / batch_events_per_s,
        peak_rss_mib: peak_rss_mib(),
    })
}
