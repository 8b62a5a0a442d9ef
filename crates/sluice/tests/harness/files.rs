//! The file connector over a growing directory: JSON lines, CSV and
//! Parquet files matched by a glob, read in name order; lines appended and
//! files added later are picked up; bad lines are counted; a restart goes
//! on after the last line written (nothing twice); paths outside
//! `source_file_dirs` are refused.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, ensure};

use super::kafka::{rows, wait_until};
use super::server::{connect, TestServer};

/// Polls `sql` until it returns `want` (one row), for at most 30 s.
async fn wait_for(client: &tokio_postgres::Client, sql: &str, want: &str) -> anyhow::Result<()> {
    let got = wait_until(client, sql, |r| r == [want]).await?;
    if got != [want] {
        let states = rows(client, "SELECT source || ': ' || state FROM sluice_sources").await?;
        bail!("{sql}: got {got:?}, want {want} (sources: {states:?})");
    }
    Ok(())
}

fn append(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn files_over_a_growing_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    append(
        &data.join("clicks-1.jsonl"),
        "{\"user_id\": 1, \"url\": \"/a\", \"ts\": \"2024-01-01 00:00:01\"}\n\
         {\"user_id\": 2, \"url\": \"/b\", \"ts\": \"2024-01-01 00:00:02\"}\n\
         this is not json\n\
         \n\
         {\"user_id\": 1.5, \"url\": \"/c\"}\n\
         {\"user_id\": 3, \"url\": \"/c\", \"ts\": \"2024-01-01 00:00:03\"}\n",
    )?;
    // Not matched by the glob.
    append(&data.join("other.txt"), "{\"user_id\": 99}\n")?;
    let mut server = TestServer::start_with(sluice_common::Config {
        source_file_dirs: vec![data.clone()],
        ..sluice_common::Config::default()
    })
    .await?;
    let client = connect(server.addr()).await?;
    let glob = format!("{}/clicks-*.jsonl", data.display());
    client
        .batch_execute(&format!(
            "CREATE STREAM backfill (user_id BIGINT, url TEXT, ts TIMESTAMP)
               WITH (connector = 'file', path = '{glob}', format = 'json', poll_interval = '100 milliseconds');
             CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n FROM backfill GROUP BY user_id;"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows || ' ' || bad_records FROM sluice_sources WHERE source = 'backfill'",
        "3 2",
    )
    .await?;
    // Lines appended (the last one without its newline yet), then a new file.
    append(
        &data.join("clicks-1.jsonl"),
        "{\"user_id\": 1, \"url\": \"/d\"}\n{\"user_id\": 4, \"url\": \"/e\"}",
    )?;
    append(
        &data.join("clicks-2.jsonl"),
        "{\"user_id\": 2, \"url\": \"/f\"}\n",
    )?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'backfill'",
        "6",
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let got = rows(&client, "SELECT user_id, n FROM per_user ORDER BY user_id").await?;
    ensure!(got == ["1 2", "2 2", "3 1", "4 1"], "per_user: {got:?}");

    // A restart goes on after the last line: nothing is read twice.
    server.restart().await?;
    let client = connect(server.addr()).await?;
    append(
        &data.join("clicks-3.jsonl"),
        "{\"user_id\": 3, \"url\": \"/g\"}\n",
    )?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'backfill'",
        "1",
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let got = rows(&client, "SELECT user_id, n FROM per_user ORDER BY user_id").await?;
    ensure!(
        got == ["1 2", "2 2", "3 2", "4 1"],
        "per_user after restart: {got:?}"
    );

    // CSV and Parquet.
    append(
        &data.join("rows.csv"),
        "5,/h,2024-01-01 00:00:05\n6,\"/i,j\",\n",
    )?;
    {
        use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("url", DataType::Utf8, true),
            Field::new("user_id", DataType::Int64, true),
            Field::new("extra", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(StringArray::from(vec!["/p", "/q", "/r"])),
                std::sync::Arc::new(Int64Array::from(vec![7, 8, 7])),
                std::sync::Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
        )?;
        let file = std::fs::File::create(data.join("part-0.parquet"))?;
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
        w.write(&batch)?;
        w.close()?;
    }
    client
        .batch_execute(&format!(
            "CREATE STREAM csv_rows (user_id BIGINT, url TEXT, ts TIMESTAMP)
               WITH (connector = 'file', path = '{d}/*.csv', format = 'csv', poll_interval = '100 milliseconds');
             CREATE STREAM pq (user_id BIGINT, url TEXT)
               WITH (connector = 'file', path = '{d}/part-*.parquet', format = 'parquet', poll_interval = '100 milliseconds');
             CREATE MATERIALIZED VIEW csv_v AS SELECT user_id, url FROM csv_rows;
             CREATE MATERIALIZED VIEW pq_v AS SELECT user_id, count(*) AS n FROM pq GROUP BY user_id;",
            d = data.display()
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'csv_rows'",
        "2",
    )
    .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pq'",
        "3",
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let got = rows(&client, "SELECT user_id, url FROM csv_v ORDER BY user_id").await?;
    ensure!(got == ["5 /h", "6 /i,j"], "csv: {got:?}");
    let got = rows(&client, "SELECT user_id, n FROM pq_v ORDER BY user_id").await?;
    ensure!(got == ["7 2", "8 1"], "parquet: {got:?}");

    // Outside the allowed directory: refused, whether it exists or not.
    for path in [
        format!("{}/*.jsonl", dir.path().display()),
        format!("{}/../*.jsonl", data.display()),
        "/etc/*.conf".to_owned(),
    ] {
        let e = client
            .batch_execute(&format!(
                "CREATE STREAM outside (user_id BIGINT) WITH (connector = 'file', path = '{path}')"
            ))
            .await
            .expect_err(&path);
        ensure!(
            e.as_db_error().is_some_and(|d| d.code().code() == "42501"),
            "{path}: {e:?}"
        );
    }
    // A symbolic link from inside to a file outside is not read.
    std::fs::write(dir.path().join("secret.jsonl"), "{\"user_id\": 666}\n")?;
    std::os::unix::fs::symlink(dir.path().join("secret.jsonl"), data.join("clicks-9.jsonl"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.batch_execute("FLUSH").await?;
    let got = rows(&client, "SELECT count(*) FROM per_user WHERE user_id = 666").await?;
    ensure!(
        got == ["0"],
        "a file outside the allowed directory was read: {got:?}"
    );
    Ok(())
}
