//! `sluice bench nexmark`: the Nexmark queries of `benchmarks/nexmark/`
//! over the in-process `nexmark` connector, each in a fresh process with
//! fresh state, next to DataFusion running the same query as a batch over
//! the same events in the same process.
//!
//! Per query it reports events/s per core (all events over the process's
//! user+sys CPU seconds), wall events/s, peak RSS, the views' final state
//! size and the ratio to the batch run; `--check` also compares the view
//! with the batch result row by row and fails on any difference.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_connectors::nexmark::{Generator, Kind, Timing, DEFAULT_BASE_TIME_MS};
use sluice_server::{DataflowOptions, Engine, Output};
use sluice_state::{RocksBackend, StateBackend};

use crate::bench::{cpu_seconds, peak_rss_mib, run_sql};

/// The queries, their SQL (`benchmarks/nexmark/`), and the streams they read.
pub const QUERIES: &[(&str, &str, &[Kind])] = &[
    (
        "q0",
        include_str!("../../../benchmarks/nexmark/q0.sql"),
        &[Kind::Bid],
    ),
    (
        "q1",
        include_str!("../../../benchmarks/nexmark/q1.sql"),
        &[Kind::Bid],
    ),
    (
        "q2",
        include_str!("../../../benchmarks/nexmark/q2.sql"),
        &[Kind::Bid],
    ),
    (
        "q3",
        include_str!("../../../benchmarks/nexmark/q3.sql"),
        &[Kind::Auction, Kind::Person],
    ),
    (
        "q4",
        include_str!("../../../benchmarks/nexmark/q4.sql"),
        &[Kind::Auction, Kind::Bid],
    ),
    (
        "q5",
        include_str!("../../../benchmarks/nexmark/q5.sql"),
        &[Kind::Bid],
    ),
    (
        "q7",
        include_str!("../../../benchmarks/nexmark/q7.sql"),
        &[Kind::Bid],
    ),
    (
        "q8",
        include_str!("../../../benchmarks/nexmark/q8.sql"),
        &[Kind::Person, Kind::Auction],
    ),
];

const STREAMS: &str = include_str!("../../../benchmarks/nexmark/streams.sql");

/// What one run of the benchmark is asked to do.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Events of all kinds generated (numbers 0 to events - 1).
    pub events: u64,
    /// Events per second of event time.
    pub event_rate: u64,
    /// Generator tasks per stream.
    pub parallelism: usize,
    /// Compare the view with the batch result.
    pub check: bool,
    /// RocksDB block cache, MiB.
    pub state_cache_mb: usize,
    /// Each operator task's state cache, MiB.
    pub operator_cache_mb: usize,
}

/// What one query measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueryReport {
    pub query: String,
    pub events: u64,
    pub event_rate: u64,
    /// Events of the kinds the query reads (all of them count in events/s).
    pub events_read: u64,
    pub streaming_wall_s: f64,
    pub streaming_cpu_s: f64,
    pub events_per_s: f64,
    pub events_per_core_s: f64,
    pub batch_wall_s: f64,
    pub batch_events_per_s: f64,
    pub ratio_streaming_to_batch: f64,
    pub peak_rss_mib: f64,
    pub state_keys: i64,
    pub state_bytes: i64,
    pub result_rows: usize,
    /// `Some(true)` when checked and equal.
    pub checked: Option<bool>,
}

/// The SQL of a query file without its comments and final semicolon.
fn query_sql(file: &str) -> String {
    file.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .trim_end_matches(';')
        .to_owned()
}

fn lookup(name: &str) -> anyhow::Result<(&'static str, &'static [Kind])> {
    QUERIES
        .iter()
        .find(|(q, _, _)| *q == name)
        .map(|(_, sql, kinds)| (*sql, *kinds))
        .with_context(|| {
            format!(
                "unknown query {name}; queries: {}",
                QUERIES.iter().map(|q| q.0).collect::<Vec<_>>().join(",")
            )
        })
}

/// The statement creating the stream of `kind` (from `streams.sql`).
fn stream_ddl(kind: Kind, s: &Settings) -> anyhow::Result<String> {
    let all = STREAMS
        .replace("{events}", &s.events.to_string())
        .replace("{event_rate}", &s.event_rate.to_string())
        .replace("{parallelism}", &s.parallelism.to_string());
    all.split(';')
        .map(str::trim)
        .find(|stmt| stmt.contains(&format!("kind = '{}'", kind.name())))
        .map(|stmt| {
            stmt.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .with_context(|| format!("no {} stream in streams.sql", kind.name()))
}

fn rows(output: Output) -> anyhow::Result<Vec<RecordBatch>> {
    match output {
        Output::Rows { batches, .. } => Ok(batches),
        _ => anyhow::bail!("the statement returned no rows"),
    }
}

/// Each row as text, floats to 9 significant digits (a sum may add in
/// another order), sorted: the multiset of rows.
fn canonical(batches: &[RecordBatch]) -> anyhow::Result<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let mut columns: Vec<Box<dyn Fn(usize) -> String + '_>> = Vec::new();
        for column in batch.columns() {
            if column.data_type() == &DataType::Float64 {
                let a = column.as_primitive::<Float64Type>();
                columns.push(Box::new(move |i| {
                    if a.is_null(i) {
                        "NULL".to_owned()
                    } else {
                        format!("{:.8e}", a.value(i))
                    }
                }));
            } else {
                let f = ArrayFormatter::try_new(column.as_ref(), &options)?;
                columns.push(Box::new(move |i| f.value(i).to_string()));
            }
        }
        for i in 0..batch.num_rows() {
            out.push(columns.iter().map(|c| c(i)).collect::<Vec<_>>().join("|"));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Runs one query in this process.
pub async fn run_query(name: &str, s: &Settings) -> anyhow::Result<QueryReport> {
    let (file, kinds) = lookup(name)?;
    let sql = query_sql(file);
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open_with_cache(
        dir.path(),
        s.state_cache_mb << 20,
    )?);
    let options = DataflowOptions {
        operator_cache_bytes: s.operator_cache_mb << 20,
        ..DataflowOptions::default()
    };
    let engine = Engine::open(store, options, Default::default()).await?;
    for kind in kinds {
        run_sql(&engine, &stream_ddl(*kind, s)?).await?;
    }
    let events_read: u64 = kinds.iter().map(|k| k.count_below(s.events)).sum();

    let cpu = cpu_seconds();
    let start = Instant::now();
    // The sources start generating when the view reads them.
    run_sql(
        &engine,
        &format!("CREATE MATERIALIZED VIEW {name} AS {sql}"),
    )
    .await?;
    let mut last = (0i64, Instant::now());
    loop {
        let status = rows(run_sql(&engine, "SELECT state, rows FROM sluice_sources").await?)?;
        let mut finished = 0;
        let mut read = 0;
        for b in &status {
            let states = b.column(0).as_string::<i32>();
            let counts = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let state = states.value(i);
                anyhow::ensure!(!state.starts_with("failed"), "source {state}");
                finished += usize::from(state == "finished");
                read += counts.value(i);
            }
        }
        if finished == kinds.len() {
            break;
        }
        if read != last.0 {
            last = (read, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < std::time::Duration::from_secs(60),
            "the sources stopped at {read} events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    engine.dataflow().flush().await?;
    let streaming_wall_s = start.elapsed().as_secs_f64();
    let streaming_cpu_s = cpu_seconds() - cpu;
    let peak = peak_rss_mib();

    let state = rows(
        run_sql(
            &engine,
            &format!(
                "SELECT coalesce(sum(state_keys), 0), coalesce(sum(state_bytes), 0) \
                 FROM sluice_operators WHERE view = '{name}'"
            ),
        )
        .await?,
    )?;
    let cell = |c: usize| {
        state
            .first()
            .filter(|b| b.num_rows() > 0)
            .map_or(0, |b| b.column(c).as_primitive::<Int64Type>().value(0))
    };
    let (state_keys, state_bytes) = (cell(0), cell(1));
    let view = rows(run_sql(&engine, &format!("SELECT * FROM {name}")).await?)?;
    let result_rows = view.iter().map(RecordBatch::num_rows).sum();
    engine.shutdown().await;

    // The same query as a DataFusion batch over the same events, generated
    // beforehand (not timed).
    let ctx = SessionContext::new();
    // The functions HOP and CUMULATE are written with, as in the engine.
    sluice_server::register_functions(&ctx);
    let timing = Timing::new(s.event_rate, DEFAULT_BASE_TIME_MS);
    for kind in kinds {
        let schema = kind.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let generator = Generator::new(*kind, timing, &names);
        let total = kind.count_below(s.events);
        let mut batches = Vec::new();
        let mut at = 0;
        while at < total {
            let n = (total - at).min(65_536);
            batches.push(generator.batch(at, 1, n as usize)?);
            at += n;
        }
        let partitions = batches.len().max(1);
        let split: Vec<Vec<RecordBatch>> = (0..2.min(partitions))
            .map(|p| batches.iter().skip(p).step_by(2).cloned().collect())
            .collect();
        ctx.register_table(kind.name(), Arc::new(MemTable::try_new(schema, split)?))?;
    }
    let batch_sql = match sluice_sql::parse(&sql)?.pop() {
        Some(sluice_sql::Statement::Sql(statement)) => statement.to_string(),
        _ => anyhow::bail!("{name} is not a query"),
    };
    let start = Instant::now();
    let expected = ctx.sql(&batch_sql).await?.collect().await?;
    let batch_wall_s = start.elapsed().as_secs_f64();

    let checked = if s.check {
        let (got, want) = (canonical(&view)?, canonical(&expected)?);
        if got != want {
            // Both are sorted.
            let missing: Vec<_> = want
                .iter()
                .filter(|r| got.binary_search(r).is_err())
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|r| want.binary_search(r).is_err())
                .take(5)
                .collect();
            anyhow::bail!(
                "{name}: the view ({} rows) differs from the batch query ({} rows); \
                 missing from the view, e.g. {missing:?}; not in the batch result, e.g. {extra:?}",
                got.len(),
                want.len()
            );
        }
        Some(true)
    } else {
        None
    };
    let events_per_s = s.events as f64 / streaming_wall_s;
    let batch_events_per_s = s.events as f64 / batch_wall_s;
    Ok(QueryReport {
        query: name.to_owned(),
        events: s.events,
        event_rate: s.event_rate,
        events_read,
        streaming_wall_s,
        streaming_cpu_s,
        events_per_s,
        events_per_core_s: s.events as f64 / streaming_cpu_s.max(1e-9),
        batch_wall_s,
        batch_events_per_s,
        ratio_streaming_to_batch: events_per_s / batch_events_per_s,
        peak_rss_mib: peak,
        state_keys,
        state_bytes,
        result_rows,
        checked,
    })
}

/// Runs each query in a child process of this binary (fresh state, its own
/// peak RSS) and collects the reports.
pub fn run_all(queries: &[String], s: &Settings) -> anyhow::Result<Vec<QueryReport>> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut reports = Vec::new();
    for q in queries {
        lookup(q)?;
        tracing::info!(query = %q, events = s.events, "running");
        let mut command = std::process::Command::new(&exe);
        command
            .args(["bench", "nexmark", "--one", q])
            .args(["--events", &s.events.to_string()])
            .args(["--event-rate", &s.event_rate.to_string()])
            .args(["--parallelism", &s.parallelism.to_string()])
            .args(["--state-cache-mb", &s.state_cache_mb.to_string()])
            .args(["--operator-cache-mb", &s.operator_cache_mb.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if s.check {
            command.arg("--check");
        }
        let out = command.output().context("cannot run the query's process")?;
        anyhow::ensure!(out.status.success(), "{q} failed ({})", out.status);
        let report: QueryReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{q}: unreadable report"))?;
        reports.push(report);
    }
    Ok(reports)
}

/// The reports as a Markdown table.
pub fn table(reports: &[QueryReport]) -> String {
    let mut out = String::from(
        "| query | events | events/s per core | wall events/s | batch events/s | streaming / batch | peak RSS MiB | state keys | state MiB | rows | check |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.4} | {:.0} | {} | {:.1} | {} | {} |\n",
            r.query,
            r.events,
            r.events_per_core_s,
            r.events_per_s,
            r.batch_events_per_s,
            r.ratio_streaming_to_batch,
            r.peak_rss_mib,
            r.state_keys,
            r.state_bytes as f64 / 1_048_576.0,
            r.result_rows,
            match r.checked {
                Some(true) => "equal",
                Some(false) => "DIFFERENT",
                None => "-",
            }
        ));
    }
    out
}
