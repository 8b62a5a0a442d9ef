//! The behaviour tests: every `sql-tests/**/*.slt` file runs against a real
//! Sluice server started in this process on a free port, over tokio-postgres,
//! once with the simple and once with the extended query protocol, each run
//! in a fresh data directory. Then the crash test: a `sluice serve` child
//! process killed with SIGKILL loses no acknowledged row or definition.
//!
//! ```text
//! cargo test -p sluice --test sqllogictests                  # everything
//! cargo test -p sluice --test sqllogictests -- ddl           # files whose path contains "ddl"
//! cargo test -p sluice --test sqllogictests -- --complete    # rewrite expected output
//! ```
//!
//! Harness directives inside `.slt` files are described in `sql-tests/README.md`.

#![allow(clippy::print_stdout)]

mod harness;

use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::{
    crash, differential, drivers, files, fuzz, kafka, limits, nexmark, protobuf, sasl, slt,
};

fn slt_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "scratch") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "slt") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    // libtest flags that cargo may pass through are ignored.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let matches =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql-tests");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut failures = Vec::new();
    let mut passed = 0;
    let started = Instant::now();

    for file in slt_files(&root) {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if !matches(&name) {
            continue;
        }
        let modes: &[slt::Protocol] = if complete {
            &[slt::Protocol::Simple]
        } else {
            &[slt::Protocol::Simple, slt::Protocol::Extended]
        };
        for &mode in modes {
            let t = Instant::now();
            let result = runtime.block_on(slt::run_file(&file, mode, complete));
            match result {
                Ok(()) => {
                    passed += 1;
                    println!(
                        "ok      {name} [{mode}] ({:.1}s)",
                        t.elapsed().as_secs_f64()
                    );
                }
                Err(e) => {
                    println!("FAILED  {name} [{mode}]\n{e}\n");
                    failures.push(format!("{name} [{mode}]"));
                }
            }
        }
    }

    if !complete {
        type Scenario =
            fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;
        let scenarios: [(&str, Scenario); 21] = [
            ("differential: views equal batch queries", || {
                Box::pin(differential::random_changes_match_batch())
            }),
            ("drivers: binary parameters round-trip", || {
                Box::pin(drivers::binary_parameters_round_trip())
            }),
            ("drivers: passwords are enforced", || {
                Box::pin(drivers::passwords_are_enforced())
            }),
            ("limits: cancel and statement_timeout stop queries", || {
                Box::pin(limits::cancel_and_timeout_stop_queries())
            }),
            ("limits: max_connections and startup timeout", || {
                Box::pin(limits::connection_limits())
            }),
            ("limits: malformed messages close with 08P01", || {
                Box::pin(limits::malformed_messages_close_with_08p01())
            }),
            (
                "fuzz: random statements and messages never break the server",
                || Box::pin(fuzz::random_statements_never_break_the_server()),
            ),
            ("crash: kill -9 loses nothing", || {
                Box::pin(crash::kill_9_loses_nothing())
            }),
            (
                "kafka: json and upsert sources, dead letters, restart",
                || Box::pin(kafka::sources_read_json_and_upserts()),
            ),
            ("kafka: on_error skip and fail", || {
                Box::pin(kafka::on_error_skip_and_fail())
            }),
            ("kafka: json and upsert sinks", || {
                Box::pin(kafka::sinks_write_json_and_upserts())
            }),
            ("kafka: sinks route records the broker refuses", || {
                Box::pin(kafka::sinks_route_refused_records())
            }),
            ("kafka: avro through the schema registry", || {
                Box::pin(kafka::avro_through_the_registry())
            }),
            ("kafka: protobuf through the schema registry", || {
                Box::pin(protobuf::protobuf_through_the_registry())
            }),
            ("kafka: debezium changelogs in and out", || {
                Box::pin(kafka::debezium_changelog())
            }),
            (
                "files: json, csv and parquet over a growing directory",
                || Box::pin(files::files_over_a_growing_directory()),
            ),
            ("kafka: a stuck sink holds up nothing", || {
                Box::pin(kafka::stuck_sink_holds_up_nothing())
            }),
            ("kafka: sources and sinks over TLS", || {
                Box::pin(kafka::tls_to_the_broker())
            }),
            ("kafka: sources and sinks over SASL", || {
                Box::pin(sasl::sasl_to_the_broker())
            }),
            ("kafka: scan_startup, csv, metadata columns", || {
                Box::pin(kafka::startup_csv_and_metadata())
            }),
            ("nexmark: every query equals batch", || {
                Box::pin(nexmark::every_query_equals_batch())
            }),
        ];
        for (name, scenario) in scenarios {
            if !matches(name) {
                continue;
            }
            let t = Instant::now();
            match runtime.block_on(scenario()) {
                Ok(()) => {
                    passed += 1;
                    println!("ok      {name} ({:.1}s)", t.elapsed().as_secs_f64());
                }
                Err(e) => {
                    println!("FAILED  {name}\n{e:?}\n");
                    failures.push(name.to_owned());
                }
            }
        }
    }

    // Stop every server before exiting: RocksDB must close before the
    // process's destructors run.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    println!(
        "\n{passed} passed, {} failed in {:.1}s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for f in &failures {
            println!("  failed: {f}");
        }
        std::process::exit(1);
    }
    if passed == 0 {
        println!("no test matched the filter");
        std::process::exit(1);
    }
}
