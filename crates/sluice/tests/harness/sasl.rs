//! SASL for the tests: rdkafka's mock cluster speaks no SASL, so a proxy
//! in front of it plays the broker's part of Kafka's SASL exchange
//! (KIP-43/KIP-152: `SaslHandshake` v0-1, then `SaslAuthenticate` v0-1)
//! for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802 / 7677, the server
//! side: salted password, client proof checked, server signature sent),
//! adds those two APIs to the mock's `ApiVersions` answer, and after a
//! successful login forwards the connection untouched. A failed login gets
//! Kafka's `SASL_AUTHENTICATION_FAILED` (58) and the connection closes, as
//! a broker does. The client side is librdkafka's own, as Sluice runs it.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::kafka::{producer, rows, wait_for, wait_until};
use super::server::{connect, TestServer};

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
const ITERATIONS: u32 = 4096;

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidData)?;
    if len > 64 << 20 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(body.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// A request's api key, version, correlation id and body (header v1: the
/// SASL requests up to the versions advertised are not flexible).
struct Request<'a> {
    key: i16,
    version: i16,
    correlation: i32,
    body: &'a [u8],
}

fn request(frame: &[u8]) -> Option<Request<'_>> {
    let key = i16::from_be_bytes(frame.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(frame.get(2..4)?.try_into().ok()?);
    let correlation = i32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
    let id_len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let body_at = 10 + usize::try_from(id_len.max(0)).ok()?;
    Some(Request {
        key,
        version,
        correlation,
        body: frame.get(body_at..)?,
    })
}

fn uvarint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_uvarint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The mock's `ApiVersions` answer with SaslHandshake and
/// SaslAuthenticate (v0-1) added to its list.
fn with_sasl_apis(response: &[u8], version: i16) -> Option<Vec<u8>> {
    // correlation id (4), error code (2), then the array.
    let (head, rest) = response.split_at_checked(6)?;
    if head[4..6] != [0, 0] {
        return Some(response.to_vec());
    }
    let ours: [(i16, i16, i16); 2] = [(SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1)];
    let mut out = head.to_vec();
    if version >= 3 {
        let mut at = 0;
        let n = uvarint(rest, &mut at)?.checked_sub(1)?;
        let entries_at = at;
        for _ in 0..n {
            at += 6;
            let tags = uvarint(rest, &mut at)?;
            for _ in 0..tags {
                uvarint(rest, &mut at)?;
                let size = uvarint(rest, &mut at)?;
                at += usize::try_from(size).ok()?;
            }
        }
        put_uvarint(n + ours.len() as u64 + 1, &mut out);
        out.extend_from_slice(rest.get(entries_at..at)?);
        for (key, min, max) in ours {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&min.to_be_bytes());
            out.extend_from_slice(&max.to_be_bytes());
            out.push(0); // no tagged fields
        }
        out.extend_from_slice(rest.get(at..)?);
    } else {
        let n = i32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
        let end = 4 + 6 * usize::try_from(n).ok()?;
        out.extend_from_slice(&(n + ours.len() as i32).to_be_bytes());
        out.extend_from_slice(rest.get(4..end)?);
        for (key, min, max) in ours {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&min.to_be_bytes());
            out.extend_from_slice(&max.to_be_bytes());
        }
        out.extend_from_slice(rest.get(end..)?);
    }
    Some(out)
}

fn handshake_response(correlation: i32, error: i16) -> Vec<u8> {
    let mut out = correlation.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(MECHANISMS.len() as i32).to_be_bytes());
    for m in MECHANISMS {
        out.extend_from_slice(&(m.len() as i16).to_be_bytes());
        out.extend_from_slice(m.as_bytes());
    }
    out
}

fn authenticate_response(
    r: &Request<'_>,
    error: i16,
    message: Option<&str>,
    bytes: &[u8],
) -> Vec<u8> {
    let mut out = r.correlation.to_be_bytes().to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    match message {
        Some(m) => {
            out.extend_from_slice(&(m.len() as i16).to_be_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
    if r.version >= 1 {
        out.extend_from_slice(&0i64.to_be_bytes()); // session lifetime: none
    }
    out
}

/// The bytes of a `SaslAuthenticate` request (BYTES: i32 length).
fn auth_bytes(body: &[u8]) -> Option<&[u8]> {
    let len = i32::from_be_bytes(body.get(0..4)?.try_into().ok()?);
    body.get(4..4 + usize::try_from(len).ok()?)
}

/// The server side of one SCRAM exchange.
struct Scram {
    hash: hmac::Algorithm,
    digest: &'static digest::Algorithm,
    pbkdf2: pbkdf2::Algorithm,
    /// client-first-bare, server-first, nonce: set after the first message.
    first: Option<(String, String, String)>,
}

impl Scram {
    fn new(mechanism: &str) -> Self {
        if mechanism == "SCRAM-SHA-512" {
            Scram {
                hash: hmac::HMAC_SHA512,
                digest: &digest::SHA512,
                pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
                first: None,
            }
        } else {
            Scram {
                hash: hmac::HMAC_SHA256,
                digest: &digest::SHA256,
                pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
                first: None,
            }
        }
    }

    fn attribute<'a>(message: &'a str, name: &str) -> Option<&'a str> {
        message
            .split(',')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
    }

    /// The answer to the client's message; `Err` when the login fails.
    fn step(&mut self, message: &str, user: &str, password: &str) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self.first.take() {
            None => {
                let bare = message
                    .strip_prefix("n,,")
                    .ok_or("bad client-first message")?;
                let name = Self::attribute(bare, "n").ok_or("no user name")?;
                if name != user {
                    return Err(format!("unknown user {name}"));
                }
                let client_nonce = Self::attribute(bare, "r").ok_or("no nonce")?;
                let nonce = format!("{client_nonce}sluicetestnonce");
                let server_first = format!(
                    "r={nonce},s={},i={ITERATIONS}",
                    b64.encode(b"sluice-test-salt")
                );
                self.first = Some((bare.to_owned(), server_first.clone(), nonce));
                Ok(server_first)
            }
            Some((bare, server_first, nonce)) => {
                if Self::attribute(message, "r") != Some(nonce.as_str()) {
                    return Err("nonce mismatch".to_owned());
                }
                let (without_proof, proof) = message.rsplit_once(",p=").ok_or("no client proof")?;
                let proof = b64.decode(proof).map_err(|e| e.to_string())?;
                let mut salted = vec![0u8; self.digest.output_len()];
                pbkdf2::derive(
                    self.pbkdf2,
                    std::num::NonZeroU32::new(ITERATIONS).ok_or("iterations")?,
                    b"sluice-test-salt",
                    password.as_bytes(),
                    &mut salted,
                );
                let salted = hmac::Key::new(self.hash, &salted);
                let client_key = hmac::sign(&salted, b"Client Key");
                let stored = digest::digest(self.digest, client_key.as_ref());
                let auth = format!("{bare},{server_first},{without_proof}");
                let signature =
                    hmac::sign(&hmac::Key::new(self.hash, stored.as_ref()), auth.as_bytes());
                if proof.len() != signature.as_ref().len() {
                    return Err("bad proof length".to_owned());
                }
                let recovered: Vec<u8> = proof
                    .iter()
                    .zip(signature.as_ref())
                    .map(|(a, b)| a ^ b)
                    .collect();
                if digest::digest(self.digest, &recovered).as_ref() != stored.as_ref() {
                    return Err("wrong password".to_owned());
                }
                let server_key = hmac::sign(&salted, b"Server Key");
                let server_signature = hmac::sign(
                    &hmac::Key::new(self.hash, server_key.as_ref()),
                    auth.as_bytes(),
                );
                Ok(format!("v={}", b64.encode(server_signature.as_ref())))
            }
        }
    }
}

/// Logs one client in (answering ApiVersions through `upstream`); true
/// when it may go on.
async fn login(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    user: &str,
    password: &str,
) -> anyhow::Result<bool> {
    let mut mechanism: Option<String> = None;
    let mut scram: Option<Scram> = None;
    loop {
        let frame = read_frame(client).await?;
        let r = request(&frame).context("a malformed request")?;
        match r.key {
            API_VERSIONS => {
                write_frame(upstream, &frame).await?;
                let answer = read_frame(upstream).await?;
                let answer = with_sasl_apis(&answer, r.version).context("ApiVersions answer")?;
                write_frame(client, &answer).await?;
            }
            SASL_HANDSHAKE => {
                let len = i16::from_be_bytes(r.body.get(0..2).context("handshake")?.try_into()?);
                let name = std::str::from_utf8(
                    r.body
                        .get(2..2 + len.max(0) as usize)
                        .context("handshake")?,
                )?;
                let known = MECHANISMS.contains(&name);
                write_frame(
                    client,
                    &handshake_response(
                        r.correlation,
                        if known { 0 } else { UNSUPPORTED_SASL_MECHANISM },
                    ),
                )
                .await?;
                if !known {
                    return Ok(false);
                }
                if name.starts_with("SCRAM") {
                    scram = Some(Scram::new(name));
                }
                mechanism = Some(name.to_owned());
            }
            SASL_AUTHENTICATE => {
                let Some(m) = &mechanism else {
                    write_frame(
                        client,
                        &authenticate_response(&r, ILLEGAL_SASL_STATE, Some("no handshake"), &[]),
                    )
                    .await?;
                    return Ok(false);
                };
                let bytes = auth_bytes(r.body).context("authenticate")?;
                let failed = format!(
                    "Authentication failed during authentication due to invalid credentials with SASL mechanism {m}"
                );
                if m == "PLAIN" {
                    let parts: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
                    let ok = parts.len() == 3
                        && parts[1] == user.as_bytes()
                        && parts[2] == password.as_bytes();
                    if !ok {
                        write_frame(
                            client,
                            &authenticate_response(
                                &r,
                                SASL_AUTHENTICATION_FAILED,
                                Some(&failed),
                                &[],
                            ),
                        )
                        .await?;
                        return Ok(false);
                    }
                    write_frame(client, &authenticate_response(&r, 0, None, &[])).await?;
                    return Ok(true);
                }
                let Some(s) = scram.as_mut() else {
                    bail!("SCRAM state missing");
                };
                let done = s.first.is_some();
                match s.step(&String::from_utf8_lossy(bytes), user, password) {
                    Ok(answer) => {
                        write_frame(
                            client,
                            &authenticate_response(&r, 0, None, answer.as_bytes()),
                        )
                        .await?;
                        if done {
                            return Ok(true);
                        }
                    }
                    Err(_) => {
                        write_frame(
                            client,
                            &authenticate_response(
                                &r,
                                SASL_AUTHENTICATION_FAILED,
                                Some(&failed),
                                &[],
                            ),
                        )
                        .await?;
                        return Ok(false);
                    }
                }
            }
            // Anything else before a login is refused: the connection ends.
            _ => return Ok(false),
        }
    }
}

/// A SASL-checking proxy on a free loopback port in front of `upstream`
/// (the mock cluster), for `user` / `password`.
pub async fn sasl_proxy(
    upstream: String,
    user: &'static str,
    password: &'static str,
) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if let Ok(true) = login(&mut client, &mut plain, user, password).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut plain).await;
                }
            });
        }
    });
    Ok(port)
}

/// Sources and a sink through SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512:
/// a one-broker mock cluster that advertises the port of the SASL proxy,
/// so every connection logs in. The right password reads and writes; a
/// wrong one reads nothing and the state says that the login failed; the
/// password is never shown.
pub async fn sasl_to_the_broker() -> anyhow::Result<()> {
    use rdkafka::bindings as rd;
    use rdkafka::producer::BaseProducer;
    let owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()?;
    let cluster = owner.client().mock_cluster().context("no mock cluster")?;
    let plain = cluster.bootstrap_servers();
    cluster.create_topic("events", 1, 1)?;
    cluster.create_topic("events-out", 1, 1)?;
    let p = producer(&plain)?;
    for i in 1..=3 {
        let value = format!(r#"{{"id": {i}, "name": "n{i}"}}"#);
        let record: rdkafka::producer::BaseRecord<'_, str, str> =
            rdkafka::producer::BaseRecord::to("events").payload(&value);
        p.send(record).map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(10))?;
    drop(p);
    let port = sasl_proxy(plain.clone(), "sluice", "s3cret-pw").await?;
    let host = std::ffi::CString::new("127.0.0.1")?;
    // SAFETY: the cluster handle belongs to `owner`, alive until the end;
    // the host string outlives the call (librdkafka copies it).
    unsafe {
        let handle = rd::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        ensure!(!handle.is_null(), "no mock cluster handle");
        rd::rd_kafka_mock_broker_set_host_port(handle, 1, host.as_ptr(), i32::from(port));
    }
    let sasl = format!("127.0.0.1:{port}");

    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    for (i, mechanism) in MECHANISMS.iter().enumerate() {
        // A sink through SCRAM-SHA-512 (a stream's sink writes the events
        // that arrive after it is created: create it with the stream).
        let sink = if *mechanism == "SCRAM-SHA-512" {
            format!("CREATE SINK out FROM s{i} WITH (connection = 'c{i}', topic = 'events-out');")
        } else {
            String::new()
        };
        client
            .batch_execute(&format!(
                "CREATE CONNECTION c{i} WITH (type = 'kafka', bootstrap_servers = '{sasl}', \
                   security_protocol = 'SASL_PLAINTEXT', sasl_mechanism = '{mechanism}', \
                   sasl_username = 'sluice', sasl_password = 's3cret-pw');
                 CREATE STREAM s{i} (id BIGINT, name TEXT) WITH (connection = 'c{i}', topic = 'events');
                 CREATE STREAM wrong{i} (id BIGINT, name TEXT) WITH (connector = 'kafka', \
                   bootstrap_servers = '{sasl}', topic = 'events', security_protocol = 'SASL_PLAINTEXT', \
                   sasl_mechanism = '{mechanism}', sasl_username = 'sluice', sasl_password = 'not-it');
                 {sink}"
            ))
            .await?;
        wait_for(
            &client,
            &format!("SELECT rows FROM sluice_sources WHERE source = 's{i}'"),
            3,
        )
        .await
        .with_context(|| format!("{mechanism}: reading"))?;
        let state = wait_until(
            &client,
            &format!("SELECT state FROM sluice_sources WHERE source = 'wrong{i}'"),
            |r| r.iter().any(|s| s.contains("Authentication failed")),
        )
        .await?;
        ensure!(
            state
                .iter()
                .any(|s| s.starts_with("retrying: ") && s.contains("Authentication failed")),
            "{mechanism} with a wrong password: state {state:?}"
        );
        ensure!(
            rows(
                &client,
                &format!("SELECT rows FROM sluice_sources WHERE source = 'wrong{i}'")
            )
            .await?
                == ["0"],
            "{mechanism}: rows read with a wrong password"
        );
    }
    // The sink's records, read back through SASL.
    client.batch_execute("FLUSH").await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &sasl)
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "sluice")
        .set("sasl.password", "s3cret-pw")
        .set("group.id", "sasl-reader")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("events-out", 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < 3 && std::time::Instant::now() < deadline {
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
        "sink over SASL wrote {out:?}"
    );
    // The password is nowhere to be seen.
    for sql in [
        "DESCRIBE CONNECTION c0",
        "SELECT * FROM sluice_sources",
        "SELECT * FROM sluice_sinks",
        "SHOW CONNECTIONS",
    ] {
        let shown = rows(&client, sql).await?;
        ensure!(
            !shown
                .iter()
                .any(|r| r.contains("s3cret-pw") || r.contains("not-it")),
            "{sql} shows a password: {shown:?}"
        );
    }
    Ok(())
}
