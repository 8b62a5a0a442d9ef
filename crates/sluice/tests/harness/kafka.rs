//! Kafka sources against rdkafka's in-process `MockCluster` (the real Kafka
//! protocol, nothing to install): the issue's pageviews/profiles example,
//! JSON and upsert sources, tombstones, several partitions, every
//! `on_error` mode, `sluice_sources`, and a restart that continues from the
//! stored offsets without reading anything twice.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;

use super::registry::TestRegistry;
use super::server::{connect, TestServer};

pub fn producer(servers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?)
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer.send(record).map_err(|(e, _)| e)?;
    Ok(())
}

/// Polls `sql` until its rows (as text, cells joined by spaces) satisfy
/// `done`, for at most 30 seconds; returns the last rows either way.
pub async fn wait_until(
    client: &tokio_postgres::Client,
    sql: &str,
    done: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rows(client, sql).await?;
        if done(&got) || Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `sql` (one bigint) until it returns `want`.
pub async fn wait_for(client: &tokio_postgres::Client, sql: &str, want: i64) -> anyhow::Result<()> {
    let want_rows = vec![want.to_string()];
    let got = wait_until(client, sql, |r| r == want_rows.as_slice()).await?;
    if got != want_rows {
        let states = rows(client, "SELECT source || ': ' || state FROM sluice_sources").await?;
        bail!("{sql}: got {got:?}, want {want} (sources: {states:?})");
    }
    Ok(())
}

pub async fn rows(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for message in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = message {
            let cells: Vec<String> = (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                .collect();
            out.push(cells.join(" "));
        }
    }
    Ok(out)
}

/// Every record of `topic` (value, headers as `k=v`), from the start.
pub fn read_topic(
    servers: &str,
    topic: &str,
    partitions: i32,
    want: usize,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    read_topic_for(servers, topic, partitions, want, Duration::from_secs(20))
}

/// [`read_topic`], giving up after `wait`.
fn read_topic_for(
    servers: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    wait: Duration,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "test-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            let value = m
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_else(|| "<tombstone>".to_owned());
            let mut headers = Vec::new();
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    headers.push(format!(
                        "{}={}",
                        header.key,
                        String::from_utf8_lossy(header.value.unwrap_or_default())
                    ));
                }
            }
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            out.push((
                format!(
                    "{}{value}",
                    key.map(|k| format!("{k} => ")).unwrap_or_default()
                ),
                headers,
            ));
        }
    }
    Ok(out)
}

pub async fn sources_read_json_and_upserts() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("pageviews", 3, 1)?;
    cluster.create_topic("profile-edits", 1, 1)?;
    cluster.create_topic("pageviews-bad", 1, 1)?;
    cluster.create_topic("enriched", 1, 1)?;
    cluster.create_topic("views-by-job", 1, 1)?;
    let p = producer(&servers)?;
    // Profiles: a JSON-object key, a bare key, an update, a tombstone.
    send(
        &p,
        "profile-edits",
        None,
        Some(r#"{"user_id": 1234}"#),
        Some(r#"{"job": "Google"}"#),
    )?;
    send(
        &p,
        "profile-edits",
        None,
        Some("2345"),
        Some(r#"{"user_id": 2345, "job": "ACME"}"#),
    )?;
    send(
        &p,
        "profile-edits",
        None,
        Some("3456"),
        Some(r#"{"job": "Gone"}"#),
    )?;
    send(&p, "profile-edits", None, Some("3456"), None)?;
    send(
        &p,
        "profile-edits",
        None,
        None,
        Some(r#"{"job": "no key"}"#),
    )?;
    // Page views over three partitions, one of them not JSON, one with a
    // string for a number.
    for (i, (viewer, viewed)) in [(1234, 4567), (2345, 4567), (1234, 1), (9999, 4567)]
        .iter()
        .enumerate()
    {
        let ts = format!("2022-08-12 02:0{i}:00");
        let v = format!(r#"{{"viewer_id": {viewer}, "viewed_id": {viewed}, "ts": "{ts}"}}"#);
        send(&p, "pageviews", Some(i as i32 % 3), None, Some(&v))?;
    }
    send(&p, "pageviews", Some(1), None, Some("this is not json"))?;
    send(
        &p,
        "pageviews",
        Some(2),
        None,
        Some(r#"{"viewer_id": "x", "viewed_id": 1}"#),
    )?;
    p.flush(Duration::from_secs(10))?;

    let mut server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    // The table first, so that the enrichment below is deterministic.
    client
        .batch_execute(&format!(
            "CREATE TABLE profiles (user_id BIGINT PRIMARY KEY, job TEXT)
               WITH (connector = 'kafka', topic = 'profile-edits', bootstrap_servers = '{servers}',
                     format = 'upsert_json');"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'profiles'",
        4,
    )
    .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'profiles'",
        1,
    )
    .await?;
    ensure!(
        rows(&client, "SELECT * FROM profiles ORDER BY user_id").await?
            == vec!["1234 Google", "2345 ACME"],
        "profiles: {:?}",
        rows(&client, "SELECT * FROM profiles ORDER BY user_id").await?
    );
    client
        .batch_execute(&format!(
            "CREATE STREAM pageviews (viewer_id BIGINT, viewed_id BIGINT, ts TIMESTAMP,
                                      WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
               WITH (connector = 'kafka', topic = 'pageviews', bootstrap_servers = '{servers}',
                     format = 'json', scan_startup = 'earliest', on_error = 'dead_letter',
                     dead_letter_topic = 'pageviews-bad');
             CREATE MATERIALIZED VIEW enriched AS
               SELECT v.*, p.job FROM pageviews v LEFT JOIN profiles p ON v.viewer_id = p.user_id;
             CREATE MATERIALIZED VIEW views_by_job AS
               SELECT viewed_id, job, count(*) AS views FROM enriched GROUP BY viewed_id, job;"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pageviews'",
        4,
    )
    .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'pageviews'",
        2,
    )
    .await?;
    wait_for(
        &client,
        "SELECT lag FROM sluice_sources WHERE source = 'pageviews'",
        0,
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let enriched = rows(
        &client,
        "SELECT viewer_id, viewed_id, job FROM enriched ORDER BY ts",
    )
    .await?;
    ensure!(
        enriched.len() == 4 && enriched.contains(&"9999 4567 NULL".to_owned()),
        "enriched: {enriched:?}"
    );
    let dead = read_topic(&servers, "pageviews-bad", 1, 2)?;
    ensure!(dead.len() == 2, "dead letters: {dead:?}");
    ensure!(
        dead.iter().any(|(v, h)| v == "this is not json"
            && h.contains(&"sluice_topic=pageviews".to_owned())
            && h.contains(&"sluice_partition=1".to_owned())
            && h.iter().any(|x| x.starts_with("sluice_error="))),
        "dead letter lacks the record or its coordinates: {dead:?}"
    );

    // The issue's sinks: every enriched event, and views_by_job as upserts
    // keyed by its GROUP BY columns.
    client
        .batch_execute(&format!(
            "CREATE SINK enriched_out FROM enriched
               WITH (connector = 'kafka', topic = 'enriched', bootstrap_servers = '{servers}', format = 'json');
             CREATE SINK jobs_out FROM views_by_job
               WITH (connector = 'kafka', topic = 'views-by-job', bootstrap_servers = '{servers}',
                     format = 'upsert_json');
             FLUSH;"
        ))
        .await?;
    let out = read_topic(&servers, "enriched", 1, 4)?;
    ensure!(
        out.len() == 4
            && out.iter().any(|(v, _)| v
                == r#"{"viewer_id":9999,"viewed_id":4567,"ts":"2022-08-12T02:03:00","job":null,"op":"insert"}"#),
        "enriched topic: {out:?}"
    );
    let mut jobs: Vec<String> = read_topic(&servers, "views-by-job", 1, 4)?
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    jobs.sort();
    ensure!(
        jobs == vec![
            r#"{"viewed_id":1,"job":"Google"} => {"viewed_id":1,"job":"Google","views":1}"#,
            r#"{"viewed_id":4567,"job":"ACME"} => {"viewed_id":4567,"job":"ACME","views":1}"#,
            r#"{"viewed_id":4567,"job":"Google"} => {"viewed_id":4567,"job":"Google","views":1}"#,
            r#"{"viewed_id":4567,"job":null} => {"viewed_id":4567,"job":null,"views":1}"#,
        ],
        "views-by-job topic: {jobs:?}"
    );

    // A restart continues from the stored offsets: nothing twice.
    server.restart().await?;
    let client = connect(server.addr()).await?;
    send(
        &p,
        "pageviews",
        Some(0),
        None,
        Some(r#"{"viewer_id": 2345, "viewed_id": 4567, "ts": "2022-08-12 03:00:00"}"#),
    )?;
    send(
        &p,
        "profile-edits",
        None,
        Some("1234"),
        Some(r#"{"job": "Meta"}"#),
    )?;
    p.flush(Duration::from_secs(10))?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pageviews'",
        1,
    )
    .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'profiles'",
        1,
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let by_job = rows(
        &client,
        "SELECT viewed_id, job, views FROM views_by_job ORDER BY viewed_id, job",
    )
    .await?;
    ensure!(
        by_job == vec!["1 Google 1", "4567 ACME 2", "4567 Google 1", "4567 NULL 1"],
        "views_by_job after restart: {by_job:?}"
    );
    ensure!(
        rows(&client, "SELECT job FROM profiles WHERE user_id = 1234").await? == vec!["Meta"],
        "the profile update after the restart is missing"
    );
    let jobs = read_topic(&servers, "views-by-job", 1, 5)?;
    ensure!(
        jobs.last().map(|(v, _)| v.as_str())
            == Some(
                r#"{"viewed_id":4567,"job":"ACME"} => {"viewed_id":4567,"job":"ACME","views":2}"#
            ),
        "views-by-job after the restart: {jobs:?}"
    );
    drop(cluster);
    Ok(())
}

pub async fn on_error_skip_and_fail() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("events", 1, 1)?;
    let p = producer(&servers)?;
    for v in [
        r#"{"id": 1}"#,
        r#"{"id": 2}"#,
        "garbage",
        r#"{"id": 4}"#,
        "{}",
    ] {
        send(&p, "events", Some(0), None, Some(v))?;
    }
    p.flush(Duration::from_secs(10))?;
    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE STREAM skipping (id BIGINT NOT NULL)
               WITH (connector = 'kafka', topic = 'events', bootstrap_servers = '{servers}');
             CREATE STREAM failing (id BIGINT NOT NULL)
               WITH (connector = 'kafka', topic = 'events', bootstrap_servers = '{servers}',
                     on_error = 'fail');
             CREATE MATERIALIZED VIEW skipped AS SELECT count(*) AS n, sum(id) AS s FROM skipping;
             CREATE MATERIALIZED VIEW failed AS SELECT count(*) AS n, sum(id) AS s FROM failing;"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'skipping'",
        2,
    )
    .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'skipping'",
        3,
    )
    .await?;
    let state = wait_until(
        &client,
        "SELECT state FROM sluice_sources WHERE source = 'failing'",
        |r| r.first().is_some_and(|s| s.starts_with("failed")),
    )
    .await?
    .join("");
    ensure!(
        state.starts_with("failed: failed at topic events partition 0 offset 2: "),
        "state of the failing source: {state}"
    );
    client.batch_execute("FLUSH").await?;
    ensure!(
        rows(&client, "SELECT n, s FROM skipped").await? == vec!["3 7"],
        "skipped"
    );
    ensure!(
        rows(&client, "SELECT n, s FROM failed").await? == vec!["2 3"],
        "failed"
    );
    // Bad options are refused before anything is created.
    let e = client
        .batch_execute("CREATE STREAM x (id BIGINT) WITH (connector = 'kafka', topic = 't', on_error = 'ignore')")
        .await
        .err()
        .context("a bad on_error was accepted")?;
    ensure!(
        e.as_db_error().map(|d| d.code().code()) == Some("22023"),
        "bad option: {e}"
    );
    drop(cluster);
    Ok(())
}

pub async fn sinks_write_json_and_upserts() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("enriched", 1, 1)?;
    cluster.create_topic("jobs", 1, 1)?;
    cluster.create_topic("raw", 1, 1)?;
    let mut server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE STREAM pageviews (viewer_id BIGINT, viewed_id BIGINT, ts TIMESTAMP);
             CREATE TABLE profiles (user_id BIGINT PRIMARY KEY, job TEXT);
             CREATE MATERIALIZED VIEW enriched AS
               SELECT v.viewer_id, v.viewed_id, p.job FROM pageviews v LEFT JOIN profiles p ON v.viewer_id = p.user_id;
             CREATE MATERIALIZED VIEW jobs AS SELECT job, count(*) AS people FROM profiles GROUP BY job;
             INSERT INTO profiles VALUES (1234, 'Google'), (2345, 'ACME');
             INSERT INTO pageviews VALUES (1234, 4567, '2022-08-12 02:06:49');
             FLUSH;
             CREATE SINK enriched_out FROM enriched
               WITH (connector = 'kafka', topic = 'enriched', bootstrap_servers = '{servers}', format = 'json',
                     properties.message.timeout.ms = '300');
             CREATE SINK jobs_out FROM jobs
               WITH (connector = 'kafka', topic = 'jobs', bootstrap_servers = '{servers}', format = 'upsert_json');
             INSERT INTO pageviews VALUES (2345, 4567, '2022-08-12 02:07:00');
             UPDATE profiles SET job = 'Meta' WHERE user_id = 1234;
             FLUSH;"
        ))
        .await?;
    let enriched = read_topic(&servers, "enriched", 1, 2)?;
    let values: Vec<&str> = enriched.iter().map(|(v, _)| v.as_str()).collect();
    ensure!(
        values
            == vec![
                r#"{"viewer_id":1234,"viewed_id":4567,"job":"Google","op":"insert"}"#,
                r#"{"viewer_id":2345,"viewed_id":4567,"job":"ACME","op":"insert"}"#
            ],
        "enriched topic: {values:?}"
    );
    // Keyed by the GROUP BY column; the update of 1234 retracts Google.
    let jobs = read_topic(&servers, "jobs", 1, 4)?;
    let mut jobs: Vec<&str> = jobs.iter().map(|(v, _)| v.as_str()).collect();
    jobs[..2].sort();
    jobs[2..].sort();
    ensure!(
        jobs == vec![
            r#"{"job":"ACME"} => {"job":"ACME","people":1}"#,
            r#"{"job":"Google"} => {"job":"Google","people":1}"#,
            r#"{"job":"Google"} => <tombstone>"#,
            r#"{"job":"Meta"} => {"job":"Meta","people":1}"#,
        ],
        "jobs topic: {jobs:?}"
    );
    let sinks = rows(
        &client,
        "SELECT sink, records, failed_deliveries FROM sluice_sinks ORDER BY sink",
    )
    .await?;
    ensure!(
        sinks == vec!["enriched_out 2 0", "jobs_out 4 0"],
        "sluice_sinks: {sinks:?}"
    );
    ensure!(
        rows(&client, "SHOW SINKS").await? == vec!["enriched_out", "jobs_out"],
        "SHOW SINKS"
    );
    let e = client
        .batch_execute("DROP MATERIALIZED VIEW jobs")
        .await
        .err()
        .context("dropped a view a sink reads")?;
    ensure!(
        e.as_db_error().map(|d| d.code().code()) == Some("2BP01"),
        "{e}"
    );
    client
        .batch_execute("DROP SINK jobs_out; DROP MATERIALIZED VIEW jobs")
        .await?;
    for (sql, code) in [
        (format!("CREATE SINK s FROM pageviews WITH (connector = 'kafka', topic = 'x', bootstrap_servers = '{servers}', format = 'upsert_json')"), "22023"),
        ("CREATE SINK s FROM pageviews WITH (connector = 'kafka', topic = 'x', format = 'avro')".to_owned(), "22023"),
        ("CREATE SINK s FROM nowhere WITH (connector = 'kafka', topic = 'x')".to_owned(), "42P01"),
        ("CREATE SINK s FROM pageviews WITH (connector = 'kafka')".to_owned(), "22023"),
        ("CREATE SINK enriched_out FROM pageviews WITH (connector = 'kafka', topic = 'x')".to_owned(), "42P07"),
        ("SELECT * FROM enriched_out".to_owned(), "42809"),
    ] {
        let e = client.batch_execute(&sql).await.err().with_context(|| format!("accepted: {sql}"))?;
        ensure!(e.as_db_error().map(|d| d.code().code()) == Some(code), "{sql}: {e}");
    }
    // The sink survives a restart and neither repeats nor loses records.
    server.restart().await?;
    let client = connect(server.addr()).await?;
    // A stream's sink: its events as they are, from now on.
    client
        .batch_execute(&format!(
            "CREATE SINK raw_out FROM pageviews
               WITH (connector = 'kafka', topic = 'raw', bootstrap_servers = '{servers}');"
        ))
        .await?;
    client
        .batch_execute("INSERT INTO pageviews VALUES (1234, 1, '2022-08-12 03:00:00'); FLUSH")
        .await?;
    let raw = read_topic(&servers, "raw", 1, 1)?;
    ensure!(
        raw.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>()
            == vec![r#"{"viewer_id":1234,"viewed_id":1,"ts":"2022-08-12T03:00:00"}"#],
        "raw topic: {raw:?}"
    );
    // Three records, and no fourth (a repeat) within two seconds.
    let enriched = read_topic_for(&servers, "enriched", 1, 4, Duration::from_secs(2))?;
    let values: Vec<&str> = enriched.iter().map(|(v, _)| v.as_str()).collect();
    ensure!(
        values.len() == 3
            && values[2] == r#"{"viewer_id":1234,"viewed_id":1,"job":"Meta","op":"insert"}"#,
        "enriched topic after the restart: {values:?}"
    );
    // The broker goes away: deliveries fail, are retried and reported, and
    // nothing is lost once it is back.
    cluster.broker_down(1)?;
    client
        .batch_execute("INSERT INTO pageviews VALUES (2345, 2, '2022-08-12 04:00:00')")
        .await?;
    let state = wait_until(
        &client,
        "SELECT state, failed_deliveries > 0 FROM sluice_sinks WHERE sink = 'enriched_out'",
        |r| {
            r.first()
                .is_some_and(|s| s.starts_with("retrying: ") && s.ends_with(" t"))
        },
    )
    .await?;
    ensure!(
        state
            .first()
            .is_some_and(|s| s.starts_with("retrying: ") && s.ends_with(" t")),
        "a failing sink is not reported: {state:?}"
    );
    cluster.broker_up(1)?;
    client.batch_execute("FLUSH").await?;
    let values = read_topic(&servers, "enriched", 1, 4)?;
    ensure!(
        values.len() == 4
            && values[3].0 == r#"{"viewer_id":2345,"viewed_id":2,"job":"ACME","op":"insert"}"#,
        "enriched topic after the broker came back: {values:?}"
    );
    drop(cluster);
    Ok(())
}

pub async fn startup_csv_and_metadata() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("csv-events", 1, 1)?;
    let p = producer(&servers)?;
    // 2024-05-01 10:00:00 and 11:00:00 UTC.
    for (key, value, ts) in [
        ("k1", "1,a", 1_714_557_600_000i64),
        ("k2", "2,b", 1_714_561_200_000),
    ] {
        p.send(
            BaseRecord::to("csv-events")
                .key(key)
                .payload(value)
                .timestamp(ts),
        )
        .map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(10))?;
    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE STREAM c (id BIGINT, name TEXT, WATERMARK FOR kts AS kts - INTERVAL '1 second')
               INCLUDE timestamp AS kts INCLUDE partition INCLUDE offset INCLUDE key
               WITH (connector = 'kafka', topic = 'csv-events', format = 'csv',
                     bootstrap_servers = '{servers}');
             CREATE STREAM recent (id BIGINT, name TEXT)
               WITH (connector = 'kafka', topic = 'csv-events', format = 'csv',
                     bootstrap_servers = '{servers}', scan_startup = '2024-05-01 10:30:00');
             CREATE STREAM newest (id BIGINT, name TEXT)
               WITH (connector = 'kafka', topic = 'csv-events', format = 'csv',
                     bootstrap_servers = '{servers}', scan_startup = 'latest');
             CREATE MATERIALIZED VIEW all_c AS SELECT * FROM c;
             CREATE MATERIALIZED VIEW recent_ids AS SELECT id FROM recent;
             CREATE MATERIALIZED VIEW newest_ids AS SELECT id FROM newest;"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'c'",
        2,
    )
    .await?;
    let state = wait_until(
        &client,
        "SELECT state FROM sluice_sources WHERE source = 'newest'",
        |r| r == ["running"],
    )
    .await?;
    ensure!(
        state == vec!["running"],
        "the 'latest' source never started: {state:?}"
    );
    // Give the consumer a moment past its assignment before producing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&p, "csv-events", Some(0), Some("k3"), Some("3,c"))?;
    p.flush(Duration::from_secs(10))?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'newest'",
        1,
    )
    .await?;
    if let Err(e) = wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'recent'",
        2,
    )
    .await
    {
        client.batch_execute("FLUSH").await?;
        bail!(
            "{e}: {:?}",
            rows(&client, "SELECT id FROM recent_ids").await?
        );
    }
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'c'",
        3,
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let got = rows(&client, "SELECT id, name, kts, kafka_partition, kafka_offset, kafka_key FROM all_c WHERE id < 3 ORDER BY id").await?;
    ensure!(
        got == vec![
            "1 a 2024-05-01 10:00:00 0 0 k1",
            "2 b 2024-05-01 11:00:00 0 1 k2"
        ],
        "metadata columns: {got:?}"
    );
    ensure!(
        rows(&client, "SELECT id FROM recent_ids ORDER BY id").await? == vec!["2", "3"],
        "scan_startup time"
    );
    ensure!(
        rows(&client, "SELECT id FROM newest_ids").await? == vec!["3"],
        "scan_startup latest"
    );
    for (sql, code) in [
        ("CREATE STREAM x (id BIGINT) INCLUDE offset", "42P16"),
        (
            "CREATE STREAM x (id BIGINT) INCLUDE headers WITH (connector = 'kafka', topic = 't')",
            "42P16",
        ),
    ] {
        let e = client
            .batch_execute(sql)
            .await
            .err()
            .with_context(|| format!("accepted: {sql}"))?;
        ensure!(
            e.as_db_error().map(|d| d.code().code()) == Some(code),
            "{sql}: {e}"
        );
    }
    drop(cluster);
    Ok(())
}

/// A record the broker refuses for good (here: over `message.max.bytes`)
/// goes per the sink's `on_error` and never holds up anything else: FLUSH
/// returns, other views update, DROP SINK works, and a restart opens its
/// port (issue 17).
pub async fn sinks_route_refused_records() -> anyhow::Result<()> {
    let hang = Duration::from_secs(60);
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    for topic in ["big-fail", "big-skip", "big-dlq", "big-dead"] {
        cluster.create_topic(topic, 1, 1)?;
    }
    let mut server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE STREAM big_in (id BIGINT, s TEXT);
             CREATE STREAM other (id BIGINT);
             CREATE MATERIALIZED VIEW other_count AS SELECT count(*) AS n FROM other;
             CREATE SINK big_fail FROM big_in
               WITH (connector = 'kafka', topic = 'big-fail', bootstrap_servers = '{servers}');
             CREATE SINK big_skip FROM big_in
               WITH (connector = 'kafka', topic = 'big-skip', bootstrap_servers = '{servers}', on_error = 'skip');
             CREATE SINK big_dlq FROM big_in
               WITH (connector = 'kafka', topic = 'big-dlq', bootstrap_servers = '{servers}',
                     on_error = 'dead_letter', dead_letter_topic = 'big-dead');"
        ))
        .await?;
    tokio::time::timeout(
        hang,
        client.batch_execute(
            "INSERT INTO big_in VALUES (1, repeat('q', 1572864));
             INSERT INTO big_in VALUES (2, 'small');
             INSERT INTO other VALUES (1), (2);
             FLUSH;",
        ),
    )
    .await
    .context("FLUSH hung behind a record the broker refuses")??;
    ensure!(
        rows(&client, "SELECT n FROM other_count").await? == vec!["2"],
        "another view stopped updating"
    );
    let sinks = rows(
        &client,
        "SELECT sink, records, rejected_records, split_part(state, ':', 1) FROM sluice_sinks ORDER BY sink",
    )
    .await?;
    ensure!(
        sinks
            == vec![
                "big_dlq 1 1 running",
                "big_fail 1 1 failed",
                "big_skip 1 1 running"
            ],
        "sluice_sinks: {sinks:?}"
    );
    let state = rows(
        &client,
        "SELECT state FROM sluice_sinks WHERE sink = 'big_fail'",
    )
    .await?;
    ensure!(
        state
            .first()
            .is_some_and(|s| s.contains("too large") && s.len() < 600),
        "the failed sink's state: {state:?}"
    );
    ensure!(
        read_topic(&servers, "big-skip", 1, 1)?
            .first()
            .map(|r| r.0.as_str())
            == Some(r#"{"id":2,"s":"small"}"#),
        "the skipping sink lost the good record"
    );
    let dead = read_topic(&servers, "big-dead", 1, 1)?;
    let (value, headers) = dead.first().context("no dead letter")?;
    ensure!(
        value.len() == 64 * 1024,
        "dead letter value of {} bytes",
        value.len()
    );
    ensure!(
        headers.contains(&"sluice_sink=big_dlq".to_owned())
            && headers.contains(&"sluice_value_bytes=1572879".to_owned())
            && headers
                .iter()
                .any(|h| h.starts_with("sluice_error=") && h.len() < 400),
        "dead letter headers: {headers:?}"
    );
    // Writes go on, the failed sink can be dropped, and a restart serves.
    tokio::time::timeout(
        hang,
        client.batch_execute("INSERT INTO other VALUES (3); FLUSH; DROP SINK big_fail"),
    )
    .await
    .context("writes or DROP SINK hung")??;
    ensure!(rows(&client, "SELECT n FROM other_count").await? == vec!["3"]);
    tokio::time::timeout(hang, server.restart())
        .await
        .context("the restarted server did not come up")??;
    let client = connect(server.addr()).await?;
    ensure!(rows(&client, "SELECT n FROM other_count").await? == vec!["3"]);
    for (sql, code) in [
        (format!("CREATE SINK x FROM big_in WITH (connector = 'kafka', topic = 'x', bootstrap_servers = '{servers}', on_error = 'retry')"), "22023"),
        (format!("CREATE SINK x FROM big_in WITH (connector = 'kafka', topic = 'x', bootstrap_servers = '{servers}', on_error = 'dead_letter')"), "22023"),
    ] {
        let e = client.batch_execute(&sql).await.err().with_context(|| format!("accepted: {sql}"))?;
        ensure!(e.as_db_error().map(|d| d.code().code()) == Some(code), "{sql}: {e}");
    }
    drop(cluster);
    Ok(())
}

/// A TLS-terminating proxy on a free loopback port in front of `upstream`
/// (plaintext), with the test server certificate of `tests/fixtures/tls`.
async fn tls_proxy(upstream: String) -> anyhow::Result<u16> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = fixtures();
    let certs =
        CertificateDer::pem_file_iter(dir.join("server.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A handshake the client aborts (an untrusted certificate)
                // just ends this connection.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    Ok(port)
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls")
}

/// Sources and sinks over TLS: a one-broker mock cluster that advertises
/// the port of a TLS proxy in front of it, so that every connection of
/// the client (bootstrap and broker) goes through TLS. A trusted CA
/// reads and writes; an untrusted one fails with a state that says so;
/// the CA file must be under `client_file_dirs`.
pub async fn tls_to_the_broker() -> anyhow::Result<()> {
    use rdkafka::bindings as rd;
    use rdkafka::producer::BaseProducer;
    // The cluster belongs to this producer; topics and records are set up
    // in plaintext before it advertises the proxy.
    let owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()?;
    let cluster = owner.client().mock_cluster().context("no mock cluster")?;
    let plain = cluster.bootstrap_servers();
    cluster.create_topic("secure", 1, 1)?;
    cluster.create_topic("secure-out", 1, 1)?;
    let p = producer(&plain)?;
    for i in 1..=3 {
        send(
            &p,
            "secure",
            None,
            None,
            Some(&format!(r#"{{"id": {i}, "name": "n{i}"}}"#)),
        )?;
    }
    p.flush(Duration::from_secs(10))?;
    drop(p);
    let port = tls_proxy(plain.clone()).await?;
    let host = std::ffi::CString::new("127.0.0.1")?;
    // SAFETY: the cluster handle belongs to `owner`, alive until the end;
    // the host string outlives the call (librdkafka copies it).
    unsafe {
        let handle = rd::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        ensure!(!handle.is_null(), "no mock cluster handle");
        rd::rd_kafka_mock_broker_set_host_port(handle, 1, host.as_ptr(), i32::from(port));
    }
    let tls = format!("127.0.0.1:{port}");

    let server = TestServer::start_with(sluice_common::Config {
        client_file_dirs: vec![fixtures()],
        ..sluice_common::Config::default()
    })
    .await?;
    let client = connect(server.addr()).await?;
    let ca = fixtures().join("ca.pem");
    client
        .batch_execute(&format!(
            "CREATE CONNECTION secure_kafka WITH (type = 'kafka', bootstrap_servers = '{tls}', \
               security_protocol = 'SSL', ssl_ca_location = '{}');
             CREATE STREAM secure (id BIGINT, name TEXT) WITH (connection = 'secure_kafka', topic = 'secure');
             CREATE SINK secure_out FROM secure WITH (connection = 'secure_kafka', topic = 'secure-out');",
            ca.display()
        ))
        .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'secure'",
        3,
    )
    .await?;
    let states = rows(&client, "SELECT source, state FROM sluice_sources").await?;
    ensure!(states == ["secure running"], "{states:?}");
    client.batch_execute("FLUSH").await?;

    // The sink wrote through TLS: read it back through TLS.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &tls)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_string_lossy().as_ref())
        .set("group.id", "tls-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("secure-out", 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < 3 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out.sort();
    ensure!(
        out == [
            r#"{"id":1,"name":"n1"}"#,
            r#"{"id":2,"name":"n2"}"#,
            r#"{"id":3,"name":"n3"}"#
        ],
        "sink over TLS wrote {out:?}"
    );

    // An untrusted certificate: nothing is read, and the state says why.
    let other = std::fs::read_to_string(fixtures().join("other-ca.pem"))?;
    client
        .batch_execute(&format!(
            "CREATE STREAM untrusted (id BIGINT, name TEXT) WITH (connector = 'kafka', \
               bootstrap_servers = '{tls}', topic = 'secure', security_protocol = 'SSL', \
               ssl_ca_pem = '{other}')"
        ))
        .await?;
    let state = wait_until(
        &client,
        "SELECT state FROM sluice_sources WHERE source = 'untrusted'",
        |r| r.iter().any(|s| s.contains("certificate verify failed")),
    )
    .await?;
    ensure!(
        state
            .iter()
            .any(|s| s.starts_with("retrying: ") && s.contains("certificate verify failed")),
        "untrusted certificate: state {state:?}"
    );
    ensure!(
        rows(
            &client,
            "SELECT rows FROM sluice_sources WHERE source = 'untrusted'"
        )
        .await?
            == ["0"],
        "rows read through an untrusted certificate"
    );
    Ok(())
}

/// Every record (key, value) of partition 0 of `topic`, raw, from the
/// start; a tombstone has no value.
#[allow(clippy::type_complexity)]
fn read_keyed(
    servers: &str,
    topic: &str,
    want: usize,
) -> anyhow::Result<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "test-keyed-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
        }
    }
    Ok(out)
}

/// Every record value of partition 0 of `topic`, raw, from the start.
pub fn read_raw(servers: &str, topic: &str, want: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "test-raw-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(m?.payload().unwrap_or_default().to_vec());
        }
    }
    Ok(out)
}

/// Rows of `batch` as Confluent-framed Avro records of the Avro schema
/// `avro_json` (registered as `id`), encoded by arrow-avro.
fn avro_records(
    avro_json: &str,
    id: u32,
    batch: &datafusion::arrow::array::RecordBatch,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("avro.schema".to_owned(), avro_json.to_owned());
    let schema = std::sync::Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
    let mut encoder = sluice_connectors::avro::AvroEncoder::new(&schema, id)?;
    Ok(encoder.encode(batch)?)
}

const PROFILE_KEY: &str =
    r#"{"type": "record", "name": "ProfileKey", "fields": [{"name": "user_id", "type": "long"}]}"#;
const PROFILE_VALUE: &str = r#"{"type": "record", "name": "Profile", "fields": [
  {"name": "job", "type": ["null", "string"], "default": null}]}"#;

/// Avro keys and values of profile edits.
fn profiles(
    rows: &[(i64, &str)],
    key_id: u32,
    value_id: u32,
) -> anyhow::Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let keys = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int64,
            false,
        )])),
        vec![std::sync::Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.0),
        ))],
    )?;
    let values = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new("job", DataType::Utf8, true)])),
        vec![std::sync::Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1),
        ))],
    )?;
    Ok((
        avro_records(PROFILE_KEY, key_id, &keys)?,
        avro_records(PROFILE_VALUE, value_id, &values)?,
    ))
}

/// A Debezium envelope in Avro: `before`/`after` records of the source
/// table (with a column, `created`, the Sluice table does not declare; and
/// without `balance` in `before`, which the table does declare).
const ACCOUNT_ENVELOPE: &str = r#"{"type": "record", "name": "Envelope", "namespace": "pg.public.accounts", "fields": [
  {"name": "before", "type": ["null", {"type": "record", "name": "Before", "fields": [
     {"name": "id", "type": "long"}, {"name": "owner", "type": ["null", "string"], "default": null}]}], "default": null},
  {"name": "after", "type": ["null", {"type": "record", "name": "After", "fields": [
     {"name": "id", "type": "long"}, {"name": "owner", "type": ["null", "string"], "default": null},
     {"name": "balance", "type": ["null", "long"], "default": null},
     {"name": "created", "type": ["null", "string"], "default": null}]}], "default": null},
  {"name": "op", "type": "string"},
  {"name": "ts_ms", "type": ["null", "long"], "default": null}]}"#;

/// Creates 1, 2, 3; updates 1; deletes 2.
fn account_events() -> anyhow::Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, StructArray};
    use datafusion::arrow::buffer::NullBuffer;
    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
    let before_fields = Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("owner", DataType::Utf8, true),
    ]);
    let after_fields = Fields::from(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("owner", DataType::Utf8, true),
        Field::new("balance", DataType::Int64, true),
        Field::new("created", DataType::Utf8, true),
    ]);
    // (before id, owner) / (after id, owner, balance), op
    let before = StructArray::try_new(
        before_fields.clone(),
        vec![
            std::sync::Arc::new(Int64Array::from(vec![0, 0, 0, 1, 2])) as ArrayRef,
            std::sync::Arc::new(StringArray::from(vec![
                None,
                None,
                None,
                Some("ann"),
                Some("bob"),
            ])),
        ],
        Some(NullBuffer::from(vec![false, false, false, true, true])),
    )?;
    let after = StructArray::try_new(
        after_fields.clone(),
        vec![
            std::sync::Arc::new(Int64Array::from(vec![1, 2, 3, 1, 0])) as ArrayRef,
            std::sync::Arc::new(StringArray::from(vec![
                Some("ann"),
                Some("bob"),
                Some("cy"),
                Some("ann"),
                None,
            ])),
            std::sync::Arc::new(Int64Array::from(vec![
                Some(100),
                Some(5),
                None,
                Some(150),
                None,
            ])),
            std::sync::Arc::new(StringArray::from(vec![
                Some("2024"),
                None,
                None,
                None,
                None,
            ])),
        ],
        Some(NullBuffer::from(vec![true, true, true, true, false])),
    )?;
    let schema = Schema::new(vec![
        Field::new("before", DataType::Struct(before_fields), true),
        Field::new("after", DataType::Struct(after_fields), true),
        Field::new("op", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, true),
    ]);
    Ok(datafusion::arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![
            std::sync::Arc::new(before),
            std::sync::Arc::new(after),
            std::sync::Arc::new(StringArray::from(vec!["c", "c", "c", "u", "d"])),
            std::sync::Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
            ])),
        ],
    )?)
}

const PAGEVIEW_V1: &str = r#"{"type": "record", "name": "PageView", "namespace": "web", "fields": [
  {"name": "viewer_id", "type": "long"},
  {"name": "viewed_id", "type": "long"},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;

/// v2 adds an optional field (BACKWARD compatible).
const PAGEVIEW_V2: &str = r#"{"type": "record", "name": "PageView", "namespace": "web", "fields": [
  {"name": "viewer_id", "type": "long"},
  {"name": "viewed_id", "type": "long"},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "referrer", "type": ["null", "string"], "default": null}]}"#;

fn pageviews(
    rows: &[(i64, i64, i64)],
    referrer: Option<&[Option<&str>]>,
) -> anyhow::Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let mut fields = vec![
        Field::new("viewer_id", DataType::Int64, false),
        Field::new("viewed_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        std::sync::Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.2))
                .with_timezone("+00:00"),
        ),
    ];
    if let Some(r) = referrer {
        fields.push(Field::new("referrer", DataType::Utf8, true));
        columns.push(std::sync::Arc::new(StringArray::from(r.to_vec())));
    }
    Ok(datafusion::arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The seeds' enrichment with Avro through a schema registry: a stream
/// whose columns come from the registered schema, schema evolution mid
/// topic (an optional field added), bad records (not Avro, truncated, an
/// id the registry does not have) routed to dead letters, an Avro sink
/// that registers `<topic>-value`, a registry that needs a password (shown
/// as ***), and a registry that cannot be reached at CREATE.
pub async fn avro_through_the_registry() -> anyhow::Result<()> {
    use sluice_connectors::registry::{Registry, RegistryOptions};
    let registry = TestRegistry::start(Some(("sluice", "hunter2"))).await?;
    let client_of = Registry::new(RegistryOptions {
        url: registry.url.clone(),
        auth: Some(("sluice".into(), "hunter2".into())),
        ca_pem: None,
    })?;
    let v1 = client_of
        .register("pageviews-value", PAGEVIEW_V1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    for t in [
        "pageviews",
        "pageviews-bad",
        "profile-edits",
        "enriched",
        "profiles-out",
    ] {
        cluster.create_topic(t, 1, 1)?;
    }
    let p = producer(&servers)?;
    let send_bytes = |value: &[u8]| -> anyhow::Result<()> {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("pageviews").payload(value);
        p.send(record).map_err(|(e, _)| e)?;
        Ok(())
    };
    let t0 = 1_660_269_600_000; // 2022-08-12 02:00:00 UTC
    for r in avro_records(
        PAGEVIEW_V1,
        v1,
        &pageviews(&[(1234, 4567, t0), (2345, 4567, t0 + 60_000)], None)?,
    )? {
        send_bytes(&r)?;
    }
    // Profiles as upsert_avro: an Avro key (user_id) and an Avro value;
    // 3456 is deleted by a tombstone.
    let key_id = client_of
        .register("profile-edits-key", PROFILE_KEY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let value_id = client_of
        .register("profile-edits-value", PROFILE_VALUE)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (keys, values) = profiles(
        &[(1234, "Google"), (2345, "ACME"), (3456, "Gone")],
        key_id,
        value_id,
    )?;
    for (k, v) in keys.iter().zip(&values) {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("profile-edits")
            .key(k.as_slice())
            .payload(v.as_slice());
        p.send(record).map_err(|(e, _)| e)?;
    }
    let tombstone: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to("profile-edits").key(keys[2].as_slice());
    p.send(tombstone).map_err(|(e, _)| e)?;
    p.flush(Duration::from_secs(10))?;

    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    // The registry is down at CREATE: a clear error naming it, nothing made.
    let down = client
        .batch_execute(&format!(
            "CREATE STREAM nowhere WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = 'pageviews', format = 'avro', schema_registry = 'http://127.0.0.1:1')"
        ))
        .await
        .expect_err("registry down");
    let db = down.as_db_error().context("a server error")?;
    ensure!(
        db.code().code() == "58000" && db.message().contains("http://127.0.0.1:1"),
        "registry down at CREATE: {} {}",
        db.code().code(),
        db.message()
    );
    ensure!(
        rows(&client, "SHOW STREAMS").await?.is_empty(),
        "a stream was created"
    );
    // A wrong password: refused at CREATE with the registry's answer.
    client
        .batch_execute(&format!(
            "CREATE CONNECTION wrong WITH (type = 'schema_registry', url = '{}', username = 'sluice', password = 'nope')",
            registry.url
        ))
        .await?;
    let refused = client
        .batch_execute(&format!(
            "CREATE STREAM pv WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = 'pageviews', format = 'avro', schema_registry = 'wrong')"
        ))
        .await
        .expect_err("wrong password");
    ensure!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("401")),
        "wrong registry password: {refused:?}"
    );

    // The profiles first: page views are enriched with the profiles known
    // when they are processed.
    client
        .batch_execute(&format!(
            "CREATE CONNECTION registry WITH (type = 'schema_registry', url = '{url}', \
               username = 'sluice', password = 'hunter2');
             CREATE TABLE profiles (PRIMARY KEY (user_id))
               WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = 'profile-edits',
                     format = 'upsert_avro', schema_registry = 'registry');",
            url = registry.url
        ))
        .await?;
    let got = wait_until(
        &client,
        "SELECT user_id, job FROM profiles ORDER BY user_id",
        |r| r.len() == 2,
    )
    .await?;
    ensure!(
        got == ["1234 Google", "2345 ACME"],
        "upsert_avro profiles: {got:?}"
    );
    let described = rows(&client, "DESCRIBE profiles").await?;
    ensure!(
        described == ["user_id bigint f t NULL", "job text t f NULL"],
        "profiles' columns from the key and value schemas: {described:?}"
    );
    client
        .batch_execute(&format!(
            "CREATE STREAM pageviews WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'pageviews', format = 'avro', schema_registry = 'registry',
               on_error = 'dead_letter', dead_letter_topic = 'pageviews-bad');
             CREATE STREAM pageviews_wide (viewer_id BIGINT, referrer TEXT, ts TIMESTAMPTZ)
               WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'pageviews', format = 'avro', schema_registry = 'registry');
             CREATE MATERIALIZED VIEW enriched AS
               SELECT v.viewer_id, v.viewed_id, v.ts, p.job FROM pageviews v
               LEFT JOIN profiles p ON v.viewer_id = p.user_id;
             CREATE MATERIALIZED VIEW wide AS SELECT viewer_id, referrer, ts FROM pageviews_wide;"
        ))
        .await?;
    let described = rows(&client, "DESCRIBE pageviews").await?;
    ensure!(
        described
            == [
                "viewer_id bigint f f NULL",
                "viewed_id bigint f f NULL",
                "ts timestamp with time zone f f NULL"
            ],
        "columns from the registry: {described:?}"
    );
    let shown = rows(&client, "DESCRIBE CONNECTION registry").await?;
    ensure!(
        shown.contains(&"password ***".to_owned()) && !shown.iter().any(|r| r.contains("hunter2")),
        "registry password shown: {shown:?}"
    );
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pageviews'",
        2,
    )
    .await?;

    // v2 mid-topic, then three bad records.
    let v2 = client_of
        .register("pageviews-value", PAGEVIEW_V2)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(v2 != v1, "v2 got v1's id");
    let later = pageviews(
        &[(1234, 1, t0 + 120_000), (9999, 4567, t0 + 180_000)],
        Some(&[Some("https://news"), None]),
    )?;
    let v2_records = avro_records(PAGEVIEW_V2, v2, &later)?;
    for r in &v2_records {
        send_bytes(r)?;
    }
    send_bytes(b"{\"viewer_id\": 1}")?;
    send_bytes(&v2_records[0][..v2_records[0].len() - 3])?;
    let mut unknown = v2_records[1].clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    send_bytes(&unknown)?;
    p.flush(Duration::from_secs(10))?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pageviews'",
        4,
    )
    .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'pageviews'",
        3,
    )
    .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'pageviews_wide'",
        4,
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let enriched = rows(
        &client,
        "SELECT viewer_id, viewed_id, job FROM enriched ORDER BY ts",
    )
    .await?;
    ensure!(
        enriched
            == [
                "1234 4567 Google",
                "2345 4567 ACME",
                "1234 1 Google",
                "9999 4567 NULL"
            ],
        "enriched: {enriched:?}"
    );
    // Declared columns: referrer is NULL in v1 records, a value in v2's.
    let wide = rows(
        &client,
        "SELECT viewer_id, coalesce(referrer, '-') FROM wide ORDER BY ts",
    )
    .await?;
    ensure!(
        wide == ["1234 -", "2345 -", "1234 https://news", "9999 -"],
        "wide: {wide:?}"
    );
    let dead = read_topic(&servers, "pageviews-bad", 1, 3)?;
    ensure!(dead.len() == 3, "dead letters: {dead:?}");
    ensure!(
        dead.iter().any(|(_, h)| h
            .iter()
            .any(|x| x.starts_with("sluice_error=") && x.contains("999"))),
        "the unknown schema id is named: {dead:?}"
    );

    // The Avro sink registers enriched-value and writes the wire format.
    client
        .batch_execute(&format!(
            "CREATE SINK enriched_out FROM enriched WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'enriched', format = 'avro', schema_registry = 'registry');
             FLUSH;"
        ))
        .await?;
    let out = read_raw(&servers, "enriched", 4)?;
    ensure!(out.len() == 4, "avro sink wrote {} records", out.len());
    ensure!(
        registry.subjects().contains(&"enriched-value".to_owned()),
        "subjects: {:?}",
        registry.subjects()
    );
    let latest = client_of
        .latest("enriched-value")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        out.iter()
            .all(|r| r.len() > 5 && r[0] == 0 && r[1..5] == latest.id.to_be_bytes()),
        "records are not framed with the registered id {}",
        latest.id
    );
    let format = sluice_connectors::avro::AvroFormat::new(client_of.clone());
    let refs: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
    format.prepare(&refs).await?;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let declared = std::sync::Arc::new(Schema::new(vec![
        Field::new("viewer_id", DataType::Int64, true),
        Field::new("job", DataType::Utf8, true),
        Field::new("op", DataType::Utf8, true),
    ]));
    let decoded = sluice_connectors::decode::decode(&declared, &format, &refs, &|_, _| Ok(()))?;
    ensure!(
        decoded.bad.is_empty() && decoded.batch.num_rows() == 4,
        "sink records: {:?}",
        decoded.bad
    );
    let text =
        datafusion::arrow::util::pretty::pretty_format_batches(&[decoded.batch])?.to_string();
    for want in [
        "| 1234      | Google | insert |",
        "| 9999      |        | insert |",
    ] {
        ensure!(text.contains(want), "sink rows lack {want}:\n{text}");
    }

    // An upsert_avro sink of the profiles: keyed by an Avro key (subject
    // profiles-out-key), a tombstone when a profile is deleted.
    client
        .batch_execute(&format!(
            "CREATE SINK profiles_out FROM profiles WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'profiles-out', format = 'upsert_avro', schema_registry = 'registry');
             FLUSH;
             DELETE FROM profiles WHERE user_id = 2345;
             FLUSH;"
        ))
        .await?;
    let keyed = read_keyed(&servers, "profiles-out", 3)?;
    ensure!(keyed.len() == 3, "upsert_avro sink wrote {keyed:?}");
    let subjects = registry.subjects();
    ensure!(
        subjects.contains(&"profiles-out-key".to_owned())
            && subjects.contains(&"profiles-out-value".to_owned()),
        "subjects: {subjects:?}"
    );
    let key_refs: Vec<&[u8]> = keyed.iter().filter_map(|(k, _)| k.as_deref()).collect();
    let value_refs: Vec<&[u8]> = keyed.iter().filter_map(|(_, v)| v.as_deref()).collect();
    ensure!(
        key_refs.len() == 3 && value_refs.len() == 2,
        "every record keyed, one tombstone: {keyed:?}"
    );
    format.prepare(&key_refs).await?;
    format.prepare(&value_refs).await?;
    let key_schema = std::sync::Arc::new(Schema::new(vec![Field::new(
        "user_id",
        DataType::Int64,
        true,
    )]));
    let keys = sluice_connectors::decode::decode(&key_schema, &format, &key_refs, &|_, _| Ok(()))?;
    let value_schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("job", DataType::Utf8, true),
    ]));
    let values =
        sluice_connectors::decode::decode(&value_schema, &format, &value_refs, &|_, _| Ok(()))?;
    ensure!(
        keys.bad.is_empty() && values.bad.is_empty(),
        "undecodable: {:?} {:?}",
        keys.bad,
        values.bad
    );
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&[values.batch])?.to_string();
    ensure!(keys.batch.num_rows() == 3, "keys: {:?}", keys.batch);
    let tombstone_key = keyed
        .iter()
        .position(|(_, v)| v.is_none())
        .context("no tombstone")?;
    ensure!(
        tombstone_key == 2
            && text.contains("| 1234    | Google |")
            && text.contains("| 2345    | ACME   |"),
        "upsert_avro records (tombstone at {tombstone_key}):\n{text}"
    );
    let deleted =
        sluice_connectors::decode::decode(&key_schema, &format, &key_refs[2..], &|_, _| Ok(()))?;
    let deleted =
        datafusion::arrow::util::pretty::pretty_format_batches(&[deleted.batch])?.to_string();
    ensure!(deleted.contains("| 2345    |"), "tombstone key: {deleted}");

    // Debezium envelopes in Avro through the registry (debezium_avro): the
    // row records matched by name, like the top level.
    cluster.create_topic("pg.public.accounts", 1, 1)?;
    let envelope_id = client_of
        .register("pg.public.accounts-value", ACCOUNT_ENVELOPE)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for r in avro_records(ACCOUNT_ENVELOPE, envelope_id, &account_events()?)? {
        let record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to("pg.public.accounts").payload(r.as_slice());
        p.send(record).map_err(|(e, _)| e)?;
    }
    let tombstone: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to("pg.public.accounts").key(b"{}".as_slice());
    p.send(tombstone).map_err(|(e, _)| e)?;
    p.flush(Duration::from_secs(10))?;
    client
        .batch_execute(&format!(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT, balance BIGINT)
               WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = 'pg.public.accounts',
                     format = 'debezium_avro', schema_registry = 'registry');"
        ))
        .await?;
    let got = wait_until(
        &client,
        "SELECT id, owner, balance FROM accounts ORDER BY id",
        |r| r == ["1 ann 150", "3 cy NULL"],
    )
    .await?;
    ensure!(
        got == ["1 ann 150", "3 cy NULL"],
        "debezium_avro accounts: {got:?}"
    );

    // A debezium_avro sink: the accounts as Debezium envelopes in Avro
    // (a snapshot of creates, then an update and a delete), keyed by id,
    // read back into a debezium_avro table that ends up equal.
    cluster.create_topic("accounts-out", 1, 1)?;
    client
        .batch_execute(&format!(
            "CREATE SINK accounts_out FROM accounts WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'accounts-out', format = 'debezium_avro', schema_registry = 'registry');
             FLUSH;
             UPDATE accounts SET balance = 175 WHERE id = 1;
             DELETE FROM accounts WHERE id = 3;
             INSERT INTO accounts VALUES (4, 'di', 5);
             FLUSH;
             CREATE TABLE accounts_copy (id BIGINT PRIMARY KEY, owner TEXT, balance BIGINT)
               WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = 'accounts-out',
                     format = 'debezium_avro', schema_registry = 'registry');"
        ))
        .await?;
    let copy = wait_until(
        &client,
        "SELECT id, owner, balance FROM accounts_copy ORDER BY id",
        |r| r == ["1 ann 175", "4 di 5"],
    )
    .await?;
    ensure!(
        copy == ["1 ann 175", "4 di 5"],
        "accounts read back from the debezium_avro sink: {copy:?}"
    );
    let keyed = read_keyed(&servers, "accounts-out", 5)?;
    ensure!(
        keyed.len() == 5 && keyed.iter().all(|(k, v)| k.is_some() && v.is_some()),
        "2 snapshot creates, an update, a delete and a create, keyed: {} records",
        keyed.len()
    );
    let subjects = registry.subjects();
    ensure!(
        subjects.contains(&"accounts-out-key".to_owned())
            && subjects.contains(&"accounts-out-value".to_owned()),
        "subjects: {subjects:?}"
    );
    Ok(())
}

/// A Debezium changelog (JSON, bare and wrapped envelopes) into a table:
/// snapshot reads, creates, updates in place and to a new key, deletes,
/// tombstones skipped, bad events counted; and a view written back out as
/// Debezium JSON (updates paired into `u`).
pub async fn debezium_changelog() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("pg.public.customers", 1, 1)?;
    cluster.create_topic("customers-out", 1, 1)?;
    let p = producer(&servers)?;
    let topic = "pg.public.customers";
    let events: [(Option<&str>, Option<&str>); 12] = [
        (
            Some(r#"{"id": 1}"#),
            Some(
                r#"{"before": null, "after": {"id": 1, "name": "Ann", "tier": "gold"}, "op": "r", "source": {"snapshot": "true"}}"#,
            ),
        ),
        (
            Some(r#"{"id": 2}"#),
            Some(
                r#"{"before": null, "after": {"id": 2, "name": "Bob", "tier": "free"}, "op": "c"}"#,
            ),
        ),
        (
            Some(r#"{"id": 3}"#),
            Some(
                r#"{"schema": {"type": "struct"}, "payload": {"before": null, "after": {"id": 3, "name": "Cy", "tier": "free"}, "op": "c"}}"#,
            ),
        ),
        (
            Some(r#"{"id": 2}"#),
            Some(
                r#"{"before": {"id": 2, "name": "Bob", "tier": "free"}, "after": {"id": 2, "name": "Bob", "tier": "gold"}, "op": "u"}"#,
            ),
        ),
        // The key moves from 3 to 30.
        (
            Some(r#"{"id": 3}"#),
            Some(
                r#"{"before": {"id": 3, "name": "Cy", "tier": "free"}, "after": {"id": 30, "name": "Cy", "tier": "free"}, "op": "u"}"#,
            ),
        ),
        (
            Some(r#"{"id": 1}"#),
            Some(
                r#"{"before": {"id": 1, "name": "Ann", "tier": "gold"}, "after": null, "op": "d"}"#,
            ),
        ),
        (Some(r#"{"id": 1}"#), None),
        // Bad: create without after, not JSON, delete without before, 1.5 for BIGINT.
        (
            Some(r#"{"id": 4}"#),
            Some(r#"{"before": null, "after": null, "op": "c"}"#),
        ),
        (Some(r#"{"id": 5}"#), Some("this is not json")),
        (
            Some(r#"{"id": 6}"#),
            Some(r#"{"before": null, "after": null, "op": "d"}"#),
        ),
        (
            Some(r#"{"id": 7}"#),
            Some(r#"{"before": null, "after": {"id": 7.5, "name": "x"}, "op": "c"}"#),
        ),
        (
            Some(r#"{"id": 8}"#),
            Some(
                r#"{"before": null, "after": {"id": 8, "name": "Dee", "tier": "free"}, "op": "c"}"#,
            ),
        ),
    ];
    for (key, value) in events {
        send(&p, topic, None, key, value)?;
    }
    p.flush(Duration::from_secs(10))?;
    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, tier TEXT)
               WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', format = 'debezium_json');"
        ))
        .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'customers'",
        4,
    )
    .await?;
    let got = wait_until(
        &client,
        "SELECT id, name, tier FROM customers ORDER BY id",
        |r| r.len() == 3,
    )
    .await?;
    ensure!(
        got == ["2 Bob gold", "8 Dee free", "30 Cy free"],
        "customers after the changelog: {got:?}"
    );
    let bad = rows(
        &client,
        "SELECT state FROM sluice_sources WHERE source = 'customers'",
    )
    .await?;
    ensure!(bad == ["running"], "state: {bad:?}");

    // Out again as Debezium JSON: the current rows, then an update.
    client
        .batch_execute(&format!(
            "CREATE MATERIALIZED VIEW gold AS SELECT id, name FROM customers WHERE tier = 'gold';
             CREATE SINK gold_out FROM gold WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'customers-out', format = 'debezium_json', primary_key = 'id');
             FLUSH;"
        ))
        .await?;
    send(
        &p,
        topic,
        None,
        Some(r#"{"id": 2}"#),
        Some(
            r#"{"before": {"id": 2, "name": "Bob", "tier": "gold"}, "after": {"id": 2, "name": "Robert", "tier": "gold"}, "op": "u"}"#,
        ),
    )?;
    p.flush(Duration::from_secs(10))?;
    wait_until(&client, "SELECT name FROM customers WHERE id = 2", |r| {
        r == ["Robert"]
    })
    .await?;
    client.batch_execute("FLUSH").await?;
    let out = read_topic(&servers, "customers-out", 1, 2)?;
    ensure!(
        out.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>()
            == [
                r#"{"id":2} => {"before":null,"after":{"id":2,"name":"Bob"},"op":"c"}"#,
                r#"{"id":2} => {"before":{"id":2,"name":"Bob"},"after":{"id":2,"name":"Robert"},"op":"u"}"#,
            ],
        "debezium sink: {out:?}"
    );
    Ok(())
}

/// A sink whose broker is down holds up nothing: `FLUSH` returns, other
/// views keep up, the server restarts at once, and the records it could
/// not deliver are kept with the checkpoints and delivered once the broker
/// is back (at least once: none lost).
pub async fn stuck_sink_holds_up_nothing() -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    cluster.create_topic("out", 1, 1)?;
    let mut server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(&format!(
            "CREATE STREAM s (id BIGINT);
             CREATE STREAM other (id BIGINT);
             CREATE MATERIALIZED VIEW other_count AS SELECT count(*) AS n FROM other;
             CREATE SINK out FROM s WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = 'out');
             INSERT INTO s VALUES (1), (2), (3);
             FLUSH;"
        ))
        .await?;
    ensure!(
        read_topic(&servers, "out", 1, 3)?.len() == 3,
        "the first records"
    );
    cluster.broker_down(1)?;
    // Far more than a barrier waits for deliveries; FLUSH must come back
    // well before it.
    let limit = Duration::from_secs(60);
    let flushed = tokio::time::timeout(
        limit,
        client.batch_execute(
            "INSERT INTO s VALUES (4), (5); INSERT INTO other VALUES (1); FLUSH; FLUSH;",
        ),
    )
    .await;
    ensure!(
        flushed.is_ok(),
        "FLUSH hung behind a sink whose broker is down"
    );
    flushed??;
    ensure!(
        rows(&client, "SELECT n FROM other_count").await? == ["1"],
        "other views stopped"
    );
    // A restart while the broker is down: the server answers, and the
    // undelivered records are in the sink's state.
    drop(client);
    tokio::time::timeout(limit, server.restart()).await??;
    let client = connect(server.addr()).await?;
    ensure!(
        rows(&client, "SELECT 1").await? == ["1"],
        "no answer after the restart"
    );
    tokio::time::timeout(
        limit,
        client.batch_execute("INSERT INTO s VALUES (6); FLUSH;"),
    )
    .await??;
    cluster.broker_up(1)?;
    let got = read_topic_for(&servers, "out", 1, 6, Duration::from_secs(60))?;
    let mut ids: Vec<String> = got.iter().map(|(v, _)| v.clone()).collect();
    ids.sort();
    ids.dedup();
    ensure!(
        ids == [
            r#"{"id":1}"#,
            r#"{"id":2}"#,
            r#"{"id":3}"#,
            r#"{"id":4}"#,
            r#"{"id":5}"#,
            r#"{"id":6}"#
        ],
        "records lost while the broker was down: {got:?}"
    );
    wait_until(
        &client,
        "SELECT state FROM sluice_sinks WHERE sink = 'out'",
        |r| r == ["running"],
    )
    .await?;
    Ok(())
}
