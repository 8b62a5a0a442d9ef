//! The `nexmark` connector: a stream of Nexmark events (persons, auctions
//! or bids) generated in process, for benchmarks and demos.
//!
//! ```sql
//! CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
//!                    date_time TIMESTAMP, extra TEXT,
//!                    WATERMARK FOR date_time AS date_time - INTERVAL '4 seconds')
//!   WITH (connector = 'nexmark', kind = 'bid', events = 10000000, event_rate = 10000000);
//! ```
//!
//! The events are those of the `nexmark` crate (`generate.rs`), numbered
//! across the three kinds, so that streams of different kinds with the
//! same options agree (a bid's auction is an auction of the auction
//! stream). `events` bounds the numbers (`events = 1000` gives 920 bids);
//! without it the source never ends. `parallelism` splits the kind's
//! events over that many tasks (split `i` takes every `parallelism`-th
//! event from the `i`-th).
//!
//! The events are not written anywhere: the source starts generating when
//! the first view reads the stream, hands each batch to the views with
//! `Catalog::ingest_generated`, and its position is stored with the
//! checkpoint that covers them; after a restart it goes on from there, and
//! a view created later back-fills by generating the past events again.

pub mod generate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{can_cast_types, cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use sluice_catalog::{Catalog, Relation};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};

use crate::status::SourceStatus;
pub use generate::{Generator, Kind, Timing, DEFAULT_BASE_TIME_MS};

/// The options of a nexmark source.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    /// The kind of events.
    pub kind: Kind,
    /// Events of all kinds to number, or unbounded.
    pub events: Option<u64>,
    /// Events (of all kinds) per second of event time.
    pub event_rate: u64,
    /// The first event's time, milliseconds since the epoch.
    pub base_time_ms: u64,
    /// Events per batch handed to the views.
    pub batch_size: usize,
    /// Tasks generating the events.
    pub parallelism: usize,
}

fn invalid(message: String, hint: &str) -> SluiceError {
    SluiceError::InvalidOption {
        message,
        hint: Some(hint.to_owned()),
    }
}

fn number(options: &BTreeMap<String, String>, key: &str, max: u64) -> Result<Option<u64>> {
    let Some(text) = options.get(key) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= max => Ok(Some(n)),
        _ => Err(invalid(
            format!("option \"{key}\" must be a whole number from 1 to {max}, not \"{text}\""),
            "for example events = 1000000",
        )),
    }
}

impl NexmarkSource {
    /// Checks the options of a `CREATE STREAM name ... WITH (connector =
    /// 'nexmark', ...)`.
    pub fn parse(
        kind: RelationKind,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        if kind != RelationKind::Stream {
            return Err(invalid(
                format!("the nexmark connector feeds a stream, and \"{name}\" is a {kind}"),
                "declare it as CREATE STREAM ... WITH (connector = 'nexmark', kind = 'bid')",
            ));
        }
        let kind = match options.get("kind") {
            Some(k) => Kind::parse(k).ok_or_else(|| {
                invalid(
                    format!("unknown nexmark kind \"{k}\" for stream \"{name}\""),
                    "kinds: person, auction, bid",
                )
            })?,
            None => {
                return Err(invalid(
                    format!("stream \"{name}\" needs option \"kind\""),
                    "add kind = 'person', 'auction' or 'bid' to WITH (...)",
                ))
            }
        };
        let base_time_ms = match options.get("base_time") {
            None => DEFAULT_BASE_TIME_MS,
            Some(text) => crate::kafka::options::parse_time(text)
                .and_then(|ms| u64::try_from(ms).ok())
                .ok_or_else(|| {
                    invalid(
                        format!("option \"base_time\" must be a time, not \"{text}\""),
                        "milliseconds since the epoch, or '2015-07-15 00:00:00'",
                    )
                })?,
        };
        Ok(NexmarkSource {
            kind,
            events: number(options, "events", u64::MAX / 2)?,
            event_rate: number(options, "event_rate", 1_000_000_000)?.unwrap_or(10_000_000),
            base_time_ms,
            batch_size: number(options, "batch_size", 1_000_000)?.unwrap_or(8192) as usize,
            parallelism: number(options, "parallelism", 64)?.unwrap_or(1) as usize,
        })
    }

    /// Checks the declared columns: each must be one of the kind's, of a
    /// type its values convert to.
    pub fn check_columns(&self, create: &CreateRelation) -> Result<()> {
        let all = self.kind.schema();
        if let Some((what, _)) = create.include.first() {
            return Err(invalid(
                format!("INCLUDE {what} is for Kafka sources, not nexmark"),
                "leave out INCLUDE",
            ));
        }
        for column in &create.columns {
            let Ok(field) = all.field_with_name(&column.name) else {
                return Err(SluiceError::InvalidDefinition {
                    message: format!(
                        "column \"{}\" is not a column of nexmark {} events",
                        column.name,
                        self.kind.name()
                    ),
                    hint: Some(format!(
                        "{} events have: {}",
                        self.kind.name(),
                        all.fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                });
            };
            let to = column.sql_type.to_arrow();
            if !can_cast_types(field.data_type(), &to) {
                return Err(SluiceError::InvalidDefinition {
                    message: format!(
                        "column \"{}\" of nexmark {} events cannot be {}",
                        column.name,
                        self.kind.name(),
                        sluice_sql::pg_type_name(&to)
                    ),
                    hint: Some(format!(
                        "declare it as {}",
                        sluice_sql::pg_type_name(field.data_type())
                    )),
                });
            }
        }
        Ok(())
    }

    fn generator(&self, schema: &SchemaRef) -> Generator {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Generator::new(
            self.kind,
            Timing::new(self.event_rate, self.base_time_ms),
            &names,
        )
    }

    /// How many events of the kind split `split` generates (None: no end).
    fn split_len(&self, split: usize) -> Option<u64> {
        let total = self.kind.count_below(self.events?);
        let (split, p) = (split as u64, self.parallelism as u64);
        Some(if total > split {
            (total - split).div_ceil(p)
        } else {
            0
        })
    }
}

/// A generated batch in the stream's declared column order and types.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = batch
                .column_by_name(f.name())
                .ok_or_else(|| SluiceError::internal("a nexmark column was not generated"))?;
            Ok(if c.data_type() == f.data_type() {
                c.clone()
            } else {
                cast(c, f.data_type())?
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// Generates the stream's events until the bound, the stream is dropped,
/// or the task is stopped.
pub(crate) async fn run(
    catalog: Arc<Catalog>,
    relation: Arc<Relation>,
    options: NexmarkSource,
    status: Arc<SourceStatus>,
) {
    let position = match catalog.source_position(relation.entry().id) {
        Ok(p) => p,
        Err(e) => {
            status.set_state(format!("failed: {e}"));
            return;
        }
    };
    // Dropping the set (when this task is stopped) stops every split.
    let mut splits = tokio::task::JoinSet::new();
    for split in 0..options.parallelism {
        let from = position.get(&(split as i32)).copied().unwrap_or(0) as u64;
        splits.spawn(run_split(
            catalog.clone(),
            relation.clone(),
            options.clone(),
            status.clone(),
            split,
            from,
        ));
    }
    status.set_state("waiting for a view".to_owned());
    let mut failed = None;
    while let Some(done) = splits.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e.to_string()),
            Err(e) => failed = Some(format!("generator task: {e}")),
        }
    }
    match failed {
        Some(e) => {
            tracing::warn!(source = %relation.name(), error = %e, "nexmark source stopped");
            status.set_state(format!("failed: {e}"));
        }
        None => {
            tracing::info!(source = %relation.name(), "nexmark source finished");
            status.set_state("finished".to_owned());
        }
    }
}

async fn run_split(
    catalog: Arc<Catalog>,
    relation: Arc<Relation>,
    options: NexmarkSource,
    status: Arc<SourceStatus>,
    split: usize,
    mut done: u64,
) -> Result<()> {
    let schema = relation.schema();
    let generator = options.generator(&schema);
    let end = options.split_len(split);
    let step = options.parallelism as u64;
    let id = relation.entry().id;
    let mut running = false;
    while end.is_none_or(|end| done < end) {
        if !catalog.is_followed(id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if !running {
            status.set_state("running".to_owned());
            running = true;
        }
        let n = end.map_or(options.batch_size as u64, |end| {
            (end - done).min(options.batch_size as u64)
        });
        let batch = conform(
            &generator.batch(split as u64 + done * step, step, n as usize)?,
            &schema,
        )?;
        let bytes = batch.get_array_memory_size() as u64;
        let next = i64::try_from(done + n)
            .map_err(|_| SluiceError::internal("nexmark position overflow"))?;
        if catalog
            .ingest_generated(&relation, batch, split as i32, next)
            .await?
        {
            done += n;
            status.add(n, bytes, 0);
        }
        // Let other tasks (the views) run between batches.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// The nexmark connector.
#[derive(Debug)]
pub struct Nexmark;

use crate::connector::OptionDoc as D;

impl crate::connector::Connector for Nexmark {
    fn regenerate(
        &self,
        stream: &Relation,
        position: &BTreeMap<i32, i64>,
    ) -> Option<Result<RecordBatch>> {
        let options = &stream.entry().options;
        Some((|| {
            let source = NexmarkSource::parse(RelationKind::Stream, stream.name(), options)?;
            let schema = stream.schema();
            let generator = source.generator(&schema);
            let step = source.parallelism as u64;
            let mut batches = Vec::new();
            for (split, done) in position {
                let done = u64::try_from(*done).unwrap_or(0);
                let mut at = 0;
                while at < done {
                    let n = (done - at).min(source.batch_size as u64);
                    let first = u64::try_from(*split).unwrap_or(0) + at * step;
                    batches.push(conform(
                        &generator.batch(first, step, n as usize)?,
                        &schema,
                    )?);
                    at += n;
                }
            }
            Ok(concat_batches(&schema, &batches)?)
        })())
    }

    fn name(&self) -> &'static str {
        "nexmark"
    }

    fn source_options(&self) -> Vec<crate::connector::OptionDoc> {
        vec![
            D::new("kind", "person, auction or bid"),
            D::new("events", "events of all kinds to number (default: no end)"),
            D::new(
                "event_rate",
                "events per second of event time (default 10000000)",
            ),
            D::new(
                "base_time",
                "the first event's time (default 2015-07-15 00:00:00)",
            ),
            D::new("batch_size", "events per batch (default 8192)"),
            D::new("parallelism", "tasks generating the events (default 1)"),
        ]
    }

    fn check_source(
        &self,
        _cx: &crate::connector::Context,
        create: &CreateRelation,
        options: &BTreeMap<String, String>,
    ) -> Result<()> {
        NexmarkSource::parse(create.kind, &create.name, options)?.check_columns(create)
    }

    fn start_source(
        &self,
        cx: &crate::connector::Context,
        relation: Arc<Relation>,
        options: &BTreeMap<String, String>,
    ) -> Result<crate::connector::Running> {
        let parsed = NexmarkSource::parse(relation.kind(), relation.name(), options)?;
        let topic = format!("nexmark {}", parsed.kind.name());
        let status = Arc::new(SourceStatus::new(relation.name(), &topic));
        // Said before the task runs, so that it holds from CREATE on.
        status.set_state("waiting for a view".to_owned());
        let task = tokio::spawn(run(cx.catalog.clone(), relation, parsed, status.clone()));
        Ok((status, task))
    }
}
