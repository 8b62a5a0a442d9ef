//! The `sluice` binary: `sluice serve` runs the server.
//!
//! Configuration comes from a TOML file (`--config`), then environment
//! variables (`SLUICE_*`), then flags; each later source overrides the
//! earlier ones. See `docs/config.md`.

mod bench;
mod nexmark;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_common::{AuthMethod, Config};

/// The engine allocates many small buffers per change (encoded rows and
/// state keys); with mimalloc instead of glibc's allocator, Nexmark q4 and
/// q5 run 40-60 % more events per CPU second (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a streaming SQL engine. Connect with psql, declare streams and
/// tables, and query them.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: pgwire on --listen, all state under --data-dir.
    Serve(ServeArgs),
    /// Run a benchmark (build with --release) and print its report as JSON.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// A stream through filter -> lookup join -> GROUP BY count, maintained
    /// as a materialized view, next to the same query as a DataFusion batch.
    Views {
        /// Number of events.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Events per write (one transaction each).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Rows in the customers table.
        #[arg(long, default_value_t = 10_000)]
        customers: usize,
        /// Where events come from: appended in process, or JSON records
        /// read from an in-process Kafka (MockCluster) by a Kafka source.
        #[arg(long, value_enum, default_value_t = bench::Source::Insert)]
        source: bench::Source,
        /// Also write the report to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The Nexmark queries (benchmarks/nexmark/) over the in-process
    /// generator, each in a fresh process, next to the same query as a
    /// DataFusion batch; prints a table and writes the reports as JSON.
    Nexmark {
        /// Queries to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "q0,q1,q2,q3,q4,q5,q7,q8")]
        queries: Vec<String>,
        /// Events of all kinds (92% bids, 6% auctions, 2% persons).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per second of event time (fixes how many windows a run covers).
        #[arg(long, default_value_t = 10_000_000)]
        event_rate: u64,
        /// Generator tasks per stream.
        #[arg(long, default_value_t = 1)]
        parallelism: usize,
        /// Compare each view with the batch result and fail on any difference.
        #[arg(long)]
        check: bool,
        /// RocksDB block cache of each query's process, MiB (as `serve
        /// --state-cache-mb`).
        #[arg(long, value_name = "MIB", default_value_t = Config::default().state_cache_mb)]
        state_cache_mb: usize,
        /// State each operator task keeps cached in memory, MiB (as `serve
        /// --operator-cache-mb`).
        #[arg(long, value_name = "MIB", default_value_t = Config::default().operator_cache_mb)]
        operator_cache_mb: usize,
        /// Where to write the JSON reports [default: benchmarks/results/nexmark-EVENTS.json].
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Run this one query in this process and print its report as JSON
        /// (what each child process does).
        #[arg(long, hide = true)]
        one: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file; its values are overridden by environment
    /// variables and flags.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address the Postgres protocol endpoint listens on
    /// [default: 127.0.0.1:4566, loopback only].
    #[arg(long, env = "SLUICE_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,

    /// Directory holding the catalog and all state (RocksDB); created if
    /// missing [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// User clients must log in as [default: any user].
    #[arg(long, env = "SLUICE_USER")]
    user: Option<String>,

    /// Password clients must give; prefer the environment variable over the
    /// flag [default: none, trust mode].
    #[arg(long, env = "SLUICE_PASSWORD", hide_env_values = true)]
    password: Option<String>,

    /// How a configured password is exchanged: md5 or cleartext [default: md5].
    #[arg(long, env = "SLUICE_AUTH_METHOD", value_name = "METHOD")]
    auth_method: Option<AuthMethod>,

    /// Log filter, e.g. `info` or `sluice_server=debug` [default: info].
    #[arg(long, env = "SLUICE_LOG", value_name = "FILTER")]
    log: Option<String>,

    /// Memory for hot state (RocksDB's block cache), in MiB [default: 256].
    #[arg(long, env = "SLUICE_STATE_CACHE_MB", value_name = "MIB")]
    state_cache_mb: Option<usize>,

    /// State each operator keeps in memory above RocksDB, in MiB [default: 64].
    #[arg(long, env = "SLUICE_OPERATOR_CACHE_MB", value_name = "MIB")]
    operator_cache_mb: Option<usize>,

    /// How often views checkpoint, in milliseconds [default: 1000].
    #[arg(long, env = "SLUICE_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    checkpoint_interval_ms: Option<u64>,

    /// How many late rows sluice_late_events keeps [default: 10000].
    #[arg(long, env = "SLUICE_LATE_EVENTS_RETENTION", value_name = "ROWS")]
    late_events_retention: Option<usize>,

    /// The longest a statement may run, in milliseconds; 0 means no limit
    /// [default: 0].
    #[arg(long, env = "SLUICE_STATEMENT_TIMEOUT_MS", value_name = "MS")]
    statement_timeout_ms: Option<u64>,

    /// The most client connections open at once [default: 100].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// How long a new connection may take to log in, in milliseconds
    /// [default: 10000].
    #[arg(long, env = "SLUICE_STARTUP_TIMEOUT_MS", value_name = "MS")]
    startup_timeout_ms: Option<u64>,

    /// A directory of certificate and key files Kafka and schema registry
    /// clients may open when SQL names them; repeat for more [default: none].
    #[arg(
        long = "client-file-dir",
        env = "SLUICE_CLIENT_FILE_DIRS",
        value_name = "DIR",
        value_delimiter = ','
    )]
    client_file_dirs: Vec<PathBuf>,

    /// A directory whose files the file connector may read into streams;
    /// repeat for more [default: none].
    #[arg(
        long = "source-file-dir",
        env = "SLUICE_SOURCE_FILE_DIRS",
        value_name = "DIR",
        value_delimiter = ','
    )]
    source_file_dirs: Vec<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.user {
            config.user = Some(v);
        }
        if let Some(v) = self.password {
            config.password = Some(v);
        }
        if let Some(v) = self.auth_method {
            config.auth_method = v;
        }
        if let Some(v) = self.log {
            config.log = v;
        }
        if let Some(v) = self.state_cache_mb {
            config.state_cache_mb = v;
        }
        if let Some(v) = self.operator_cache_mb {
            config.operator_cache_mb = v;
        }
        if let Some(v) = self.late_events_retention {
            config.late_events_retention = v;
        }
        if let Some(v) = self.checkpoint_interval_ms {
            config.checkpoint_interval_ms = v;
        }
        if let Some(v) = self.statement_timeout_ms {
            config.statement_timeout_ms = v;
        }
        if let Some(v) = self.max_connections {
            config.max_connections = v;
        }
        if let Some(v) = self.startup_timeout_ms {
            config.startup_timeout_ms = v;
        }
        if !self.client_file_dirs.is_empty() {
            config.client_file_dirs = self.client_file_dirs;
        }
        if !self.source_file_dirs.is_empty() {
            config.source_file_dirs = self.source_file_dirs;
        }
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log)
                        .with_context(|| format!("invalid log filter {:?}", config.log))?,
                )
                .init();
            // Statements are bounded in depth (sluice_sql::limits) so that
            // they plan in a default 2 MiB stack; the larger stack is margin.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_stack_size(8 << 20)
                .build()
                .context("cannot start the runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Bench {
            which:
                BenchCommand::Nexmark {
                    queries,
                    events,
                    event_rate,
                    parallelism,
                    check,
                    state_cache_mb,
                    operator_cache_mb,
                    output,
                    one,
                },
        } => {
            bench_logs();
            let settings = nexmark::Settings {
                events: events.max(1),
                event_rate: event_rate.max(1),
                parallelism: parallelism.clamp(1, 64),
                check,
                state_cache_mb: state_cache_mb.max(1),
                operator_cache_mb,
            };
            if let Some(query) = one {
                let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
                let report = runtime.block_on(nexmark::run_query(&query, &settings))?;
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", serde_json::to_string(&report)?);
                }
                return Ok(());
            }
            let reports = nexmark::run_all(&queries, &settings)?;
            let path = output.unwrap_or_else(|| {
                PathBuf::from(format!(
                    "benchmarks/results/nexmark-{}.json",
                    settings.events
                ))
            });
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, serde_json::to_string_pretty(&reports)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}", nexmark::table(&reports));
                println!("written to {}", path.display());
            }
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Views {
                    events,
                    batch,
                    customers,
                    source,
                    output,
                },
        } => {
            bench_logs();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let report =
                runtime.block_on(bench::run(events, batch.max(1), customers.max(1), source))?;
            let json = serde_json::to_string_pretty(&report)?;
            if let Some(path) = output {
                std::fs::write(&path, &json)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            #[allow(clippy::print_stdout)]
            {
                println!("{json}");
            }
            Ok(())
        }
    }
}

/// Benchmarks log warnings (or `SLUICE_LOG`) to stderr.
fn bench_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = sluice_server::Server::bind(&config).await?;
    tracing::info!(
        listen = %server.local_addr()?,
        data_dir = %config.data_dir.display(),
        auth = if config.password.is_some() { "password" } else { "trust" },
        "starting sluice"
    );
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
