//! The Nexmark check, small: `sluice bench nexmark --check` runs every
//! query of `benchmarks/nexmark/` over the generator, each in its own
//! process, and fails unless every view equals DataFusion's batch result
//! over the same events. Two event rates: at 10,000 events/s of event time
//! 40,000 events span 4 seconds and several windows close; at the default
//! 10,000,000/s they all fall in one window.

use anyhow::{ensure, Context};

pub async fn every_query_equals_batch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (events, rate) in [(40_000u64, 10_000u64), (20_000, 10_000_000)] {
        let out = dir.path().join(format!("nexmark-{events}.json"));
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["bench", "nexmark", "--check", "--parallelism", "2"])
            .args(["--events", &events.to_string()])
            .args(["--event-rate", &rate.to_string()])
            .arg("--output")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .context("cannot run sluice bench nexmark")?;
        ensure!(
            status.success(),
            "sluice bench nexmark --check failed: {status}"
        );
        let reports: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
        let reports = reports.as_array().context("reports")?;
        ensure!(reports.len() == 8, "8 queries, got {}", reports.len());
        for r in reports {
            ensure!(
                r["checked"] == serde_json::Value::Bool(true),
                "not checked: {r}"
            );
            ensure!(r["events"] == events, "{r}");
        }
        // q0 passes every bid through: 46 of every 50 events.
        let q0 = reports.iter().find(|r| r["query"] == "q0").context("q0")?;
        ensure!(q0["result_rows"] == events * 46 / 50, "{q0}");
    }
    Ok(())
}
