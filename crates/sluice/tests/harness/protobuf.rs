//! Protobuf through the schema registry: a stream whose columns come from
//! the registered `.proto` (importing another registered file), schema
//! evolution mid-topic, bad records to the dead-letter topic, a view over
//! it, and a Protobuf sink whose records decode back. The records read are
//! written here by hand in protobuf's wire format, not by Sluice's code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer};

use super::kafka::{producer, read_raw, read_topic, rows, wait_for};
use super::registry::TestRegistry;
use super::server::{connect, TestServer};

const KIND: &str = r#"syntax = "proto3";
package web;
enum Kind { VIEW = 0; BUY = 1; }
"#;

const CLICK_V1: &str = r#"syntax = "proto3";
package web;
import "google/protobuf/timestamp.proto";
import "web/kind.proto";
message Click {
  int64 user_id = 1;
  string url = 2;
  google.protobuf.Timestamp ts = 3;
  Kind kind = 4;
}
"#;

/// v2 adds a field.
const CLICK_V2: &str = r#"syntax = "proto3";
package web;
import "google/protobuf/timestamp.proto";
import "web/kind.proto";
message Click {
  int64 user_id = 1;
  string url = 2;
  google.protobuf.Timestamp ts = 3;
  Kind kind = 4;
  string referrer = 5;
}
"#;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn text_field(number: u64, text: &str, out: &mut Vec<u8>) {
    varint((number << 3) | 2, out);
    varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// A Click of schema `id` (its first message), framed for the registry.
fn click(
    id: u32,
    user_id: u64,
    url: &str,
    seconds: u64,
    buy: bool,
    referrer: Option<&str>,
) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0); // message indexes: [0]
    varint(1 << 3, &mut out);
    varint(user_id, &mut out);
    text_field(2, url, &mut out);
    let mut ts = Vec::new();
    varint(1 << 3, &mut ts);
    varint(seconds, &mut ts);
    varint((3 << 3) | 2, &mut out);
    varint(ts.len() as u64, &mut out);
    out.extend_from_slice(&ts);
    if buy {
        varint(4 << 3, &mut out);
        varint(1, &mut out);
    }
    if let Some(r) = referrer {
        text_field(5, r, &mut out);
    }
    out
}

pub async fn protobuf_through_the_registry() -> anyhow::Result<()> {
    let registry = TestRegistry::start(None).await?;
    let kind = registry.add("web-kind", KIND, "PROTOBUF", &[]);
    ensure!(kind == 1, "kind.proto got id {kind}");
    let refs = [("web/kind.proto", "web-kind", 1)];
    let v1 = registry.add("clicks-value", CLICK_V1, "PROTOBUF", &refs);
    let cluster = MockCluster::new(1)?;
    let servers = cluster.bootstrap_servers();
    for t in ["clicks", "clicks-bad", "buyers"] {
        cluster.create_topic(t, 1, 1)?;
    }
    let p = producer(&servers)?;
    let send = |value: &[u8]| -> anyhow::Result<()> {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("clicks").payload(value);
        p.send(record).map_err(|(e, _)| e)?;
        Ok(())
    };
    let t0 = 1_660_269_600; // 2022-08-12 02:00:00 UTC
    send(&click(v1, 1234, "/home", t0, false, None))?;
    send(&click(v1, 1234, "/cart", t0 + 60, true, None))?;
    send(&click(v1, 2345, "/home", t0 + 120, false, None))?;
    p.flush(Duration::from_secs(10))?;

    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    let url = registry.url.clone();
    // The registry is down at CREATE: a clear error naming it, nothing made.
    let down = client
        .batch_execute(&format!(
            "CREATE STREAM nowhere WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = 'clicks', format = 'protobuf', schema_registry = 'http://127.0.0.1:1')"
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
    // A message the schema does not define, and a subject of another type.
    let e = client
        .batch_execute(&format!(
            "CREATE STREAM wrong WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = 'clicks', format = 'protobuf', schema_registry = '{url}', message = 'web.Nope')"
        ))
        .await
        .expect_err("no such message");
    let db = e.as_db_error().context("a server error")?;
    ensure!(
        db.code().code() == "22023" && db.message().contains("no message \"web.Nope\""),
        "unknown message: {} {}",
        db.code().code(),
        db.message()
    );
    registry.add(
        "avro-topic-value",
        r#"{"type": "record", "name": "r", "fields": []}"#,
        "AVRO",
        &[],
    );
    let e = client
        .batch_execute(&format!(
            "CREATE STREAM wrong WITH (connector = 'kafka', bootstrap_servers = '{servers}', \
               topic = 'avro-topic', format = 'protobuf', schema_registry = '{url}')"
        ))
        .await
        .expect_err("an Avro subject");
    ensure!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("holds a AVRO schema, not PROTOBUF")),
        "an Avro subject read as Protobuf: {e:?}"
    );
    ensure!(
        rows(&client, "SHOW STREAMS").await?.is_empty(),
        "a stream was created"
    );

    client
        .batch_execute(&format!(
            "CREATE STREAM clicks WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'clicks', format = 'protobuf', schema_registry = '{url}', message = 'web.Click',
               on_error = 'dead_letter', dead_letter_topic = 'clicks-bad');
             CREATE STREAM clicks_wide (user_id BIGINT, referrer TEXT)
               WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'clicks', format = 'protobuf', schema_registry = '{url}');
             CREATE MATERIALIZED VIEW per_user AS
               SELECT user_id, count(*) AS clicks, count(*) FILTER (WHERE kind = 'BUY') AS buys,
                      max(ts) AS last_seen
               FROM clicks GROUP BY user_id;
             CREATE MATERIALIZED VIEW wide AS SELECT user_id, referrer FROM clicks_wide;"
        ))
        .await?;
    let described = rows(&client, "DESCRIBE clicks").await?;
    ensure!(
        described
            == [
                "user_id bigint t f NULL",
                "url text t f NULL",
                "ts timestamp with time zone t f NULL",
                "kind text t f NULL"
            ],
        "columns from the registered .proto: {described:?}"
    );
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'clicks'",
        3,
    )
    .await?;

    // v2 mid-topic, then bad records: not framed, truncated, an unknown
    // schema id, a message index the file does not have.
    let v2 = registry.add("clicks-value", CLICK_V2, "PROTOBUF", &refs);
    send(&click(
        v2,
        2345,
        "/buy",
        t0 + 180,
        true,
        Some("https://news"),
    ))?;
    send(b"{\"user_id\": 1}")?;
    let whole = click(v2, 1, "/truncated", t0, false, None);
    send(&whole[..whole.len() - 3])?;
    send(&click(999, 1, "/unknown-id", t0, false, None))?;
    let mut other = click(v2, 1, "/other-message", t0, false, None);
    let _replaced: Vec<u8> = other.splice(5..6, [2, 2]).collect(); // indexes [1]: no such message
    send(&other)?;
    send(&click(v2, 3456, "/home", t0 + 240, false, None))?;
    p.flush(Duration::from_secs(10))?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'clicks'",
        5,
    )
    .await?;
    wait_for(
        &client,
        "SELECT bad_records FROM sluice_sources WHERE source = 'clicks'",
        4,
    )
    .await?;
    wait_for(
        &client,
        "SELECT rows FROM sluice_sources WHERE source = 'clicks_wide'",
        5,
    )
    .await?;
    client.batch_execute("FLUSH").await?;
    let per_user = rows(
        &client,
        "SELECT user_id, clicks, buys, last_seen FROM per_user ORDER BY user_id",
    )
    .await?;
    ensure!(
        per_user
            == [
                "1234 2 1 2022-08-12 02:01:00+00",
                "2345 2 1 2022-08-12 02:03:00+00",
                "3456 1 0 2022-08-12 02:04:00+00"
            ],
        "per_user: {per_user:?}"
    );
    // referrer: proto3's default (empty) in v2 records without it, and
    // NULL in v1 records, whose schema has no such field.
    let wide = rows(
        &client,
        "SELECT user_id, coalesce(referrer, '-') FROM wide ORDER BY user_id, referrer",
    )
    .await?;
    ensure!(
        wide == ["1234 -", "1234 -", "2345 https://news", "2345 -", "3456 "],
        "wide: {wide:?}"
    );
    let dead = read_topic(&servers, "clicks-bad", 1, 4)?;
    ensure!(dead.len() == 4, "dead letters: {dead:?}");
    for needle in [
        "zero byte",
        "invalid Protobuf web.Click",
        "999",
        "no message at indexes [1]",
    ] {
        ensure!(
            dead.iter().any(|(_, h)| h
                .iter()
                .any(|x| x.starts_with("sluice_error=") && x.contains(needle))),
            "no dead letter says {needle:?}: {dead:?}"
        );
    }

    // The Protobuf sink registers buyers-value and writes the wire format.
    client
        .batch_execute(&format!(
            "CREATE SINK buyers FROM per_user WITH (connector = 'kafka', bootstrap_servers = '{servers}',
               topic = 'buyers', format = 'protobuf', schema_registry = '{url}');
             FLUSH;"
        ))
        .await?;
    let out = read_raw(&servers, "buyers", 3)?;
    ensure!(out.len() == 3, "protobuf sink wrote {} records", out.len());
    use sluice_connectors::registry::{Registry, RegistryOptions, SchemaType};
    let client_of = Registry::new(RegistryOptions {
        url: url.clone(),
        auth: None,
        ca_pem: None,
    })?;
    let latest = client_of
        .latest_of("buyers-value", SchemaType::Protobuf)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        latest.schema.contains("message Buyers {")
            && latest.schema.contains("optional int64 user_id = 1;"),
        "registered .proto:\n{}",
        latest.schema
    );
    ensure!(
        out.iter()
            .all(|r| r.len() > 6 && r[0] == 0 && r[1..5] == latest.id.to_be_bytes() && r[5] == 0),
        "records are not framed with the registered id {}",
        latest.id
    );
    let format = sluice_connectors::protobuf::ProtobufFormat::new(client_of, None);
    let refs: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
    format.prepare(&refs).await?;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let declared = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("buys", DataType::Int64, true),
        Field::new(
            "last_seen",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
        Field::new("op", DataType::Utf8, true),
    ]));
    let decoded = sluice_connectors::decode::decode(&declared, &format, &refs, &|_, _| Ok(()))?;
    ensure!(
        decoded.bad.is_empty() && decoded.batch.num_rows() == 3,
        "sink records: {:?}",
        decoded.bad
    );
    let text =
        datafusion::arrow::util::pretty::pretty_format_batches(&[decoded.batch])?.to_string();
    for want in [
        "| 1234    | 1    | 2022-08-12T02:01:00Z | insert |",
        "| 3456    | 0    | 2022-08-12T02:04:00Z | insert |",
    ] {
        ensure!(text.contains(want), "sink rows lack {want}:\n{text}");
    }
    Ok(())
}
