//! A client of a Confluent-compatible schema registry (the REST API that
//! Confluent Schema Registry, Redpanda, Apicurio's ccompat and Karapace
//! serve): the latest schema of a subject, a schema by id (cached: ids
//! never change meaning), and registering a schema under a subject.
//!
//! `CREATE CONNECTION name WITH (type = 'schema_registry', url = '...',
//! [username = '...', password = '...'] [, ssl_ca_location = '...'])`
//! holds where it is; a source or sink names it with `schema_registry =
//! 'name'` (or gives `schema_registry_url = 'http://...'` directly).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_common::{Result, SluiceError};

use crate::kafka::properties::Policy;

/// Where a registry is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// The base URL (`http://host:8081`).
    pub url: String,
    /// Basic-auth user and password.
    pub auth: Option<(String, String)>,
    /// A CA certificate (PEM) to trust for `https`, read from a file under
    /// `client_file_dirs`.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("url", &self.url)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// The options a `schema_registry` connection takes.
pub const CONNECTION_OPTIONS: &[&str] = &["url", "username", "password", "ssl_ca_location"];

fn invalid(message: String, hint: &str) -> SluiceError {
    SluiceError::InvalidOption {
        message,
        hint: Some(hint.to_owned()),
    }
}

impl RegistryOptions {
    /// Reads the options of a `schema_registry` connection (without `type`).
    pub fn parse(what: &str, options: &BTreeMap<String, String>, policy: &Policy) -> Result<Self> {
        for key in options.keys() {
            if !CONNECTION_OPTIONS.contains(&key.as_str()) {
                return Err(invalid(
                    format!("unrecognized option \"{key}\" for {what}"),
                    "accepted options: url, username, password, ssl_ca_location",
                ));
            }
        }
        let url = options.get("url").ok_or_else(|| {
            invalid(
                format!("{what} needs option \"url\""),
                "add url = 'http://host:8081'",
            )
        })?;
        let url = url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                format!("the url of {what} must start with http:// or https://"),
                "for example url = 'http://localhost:8081'",
            ));
        }
        // Credentials in the URL would be shown wherever the URL is.
        let authority = url
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("");
        if authority.contains('@') {
            return Err(invalid(
                format!("the url of {what} must not hold a user or password"),
                "give them as username = '...' and password = '...' (the password is then never shown)",
            ));
        }
        let auth = match (options.get("username"), options.get("password")) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    format!("{what} needs both username and password, or neither"),
                    "add the missing one",
                ))
            }
        };
        let ca_pem = match options.get("ssl_ca_location") {
            Some(path) => {
                let path = policy.check_file("ssl_ca_location", path)?;
                Some(std::fs::read(&path).map_err(|e| {
                    invalid(
                        format!("cannot read the CA file of {what}: {e}"),
                        "check the file's permissions",
                    )
                })?)
            }
            None => None,
        };
        Ok(RegistryOptions { url, auth, ca_pem })
    }
}

/// A registered schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its global id (what the wire format carries).
    pub id: u32,
    /// The schema text (Avro JSON, or a Protobuf file).
    pub schema: String,
}

/// A registry client with a cache of schemas by id.
#[derive(Debug, Clone)]
pub struct Registry {
    options: RegistryOptions,
    http: reqwest::Client,
    by_id: Arc<Mutex<HashMap<u32, Arc<str>>>>,
}

/// What went wrong talking to the registry: unreachable (retry later) or
/// an answer that settles it (not found, refused).
#[derive(Debug)]
pub enum RegistryError {
    /// The registry did not answer (or answered 5xx): retry.
    Unavailable(String),
    /// The registry answered that it does not have it (404).
    NotFound(String),
    /// Any other answer (401, 409 incompatible, 422 invalid, bad JSON).
    Refused(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Unavailable(m)
            | RegistryError::NotFound(m)
            | RegistryError::Refused(m) => f.write_str(m),
        }
    }
}

impl From<RegistryError> for SluiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(m) => SluiceError::Unreachable(m),
            RegistryError::NotFound(m) | RegistryError::Refused(m) => SluiceError::InvalidOption {
                message: m,
                hint: None,
            },
        }
    }
}

#[derive(serde::Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default)]
    id: Option<u32>,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// A schema another one imports: `name` is the import path, the text is
/// version `version` of `subject`.
#[derive(serde::Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

/// What kind of schema a subject holds (the registry's `schemaType`;
/// absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    /// Avro (JSON schema text).
    Avro,
    /// Protobuf (a `.proto` file).
    Protobuf,
}

impl SchemaType {
    /// The registry's name for it.
    pub fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }

    fn of(answer: &SchemaAnswer) -> Option<Self> {
        match answer.schema_type.as_deref() {
            None | Some("AVRO") => Some(SchemaType::Avro),
            Some("PROTOBUF") => Some(SchemaType::Protobuf),
            Some(_) => None,
        }
    }
}

/// The most schemas one Protobuf schema may import, directly or not.
const MAX_REFERENCES: usize = 64;

#[derive(serde::Deserialize)]
struct IdAnswer {
    id: u32,
}

impl Registry {
    /// A client for the registry at `options`.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            // Only the registry itself is asked: a redirect elsewhere is an error.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &options.ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| SluiceError::InvalidOption {
                    message: format!("the schema registry's CA certificate is not PEM: {e}"),
                    hint: None,
                })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| SluiceError::internal(format!("http client: {e}")))?;
        Ok(Registry {
            options,
            http,
            by_id: Arc::default(),
        })
    }

    /// The registry's URL (for messages).
    pub fn url(&self) -> &str {
        &self.options.url
    }

    async fn get(&self, path: &str) -> std::result::Result<String, RegistryError> {
        let url = format!("{}{path}", self.options.url);
        let mut request = self.http.get(&url);
        if let Some((u, p)) = &self.options.auth {
            request = request.basic_auth(u, Some(p));
        }
        let response = request
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .send()
            .await
            .map_err(|e| {
                RegistryError::Unavailable(format!(
                    "schema registry {url} is unreachable: {}",
                    reqwest_reason(&e)
                ))
            })?;
        answer(&url, response).await
    }

    /// The latest version of `subject`, an Avro schema.
    pub async fn latest(&self, subject: &str) -> std::result::Result<Registered, RegistryError> {
        self.latest_of(subject, SchemaType::Avro).await
    }

    /// The latest version of `subject`, which must be of type `want`.
    pub async fn latest_of(
        &self,
        subject: &str,
        want: SchemaType,
    ) -> std::result::Result<Registered, RegistryError> {
        let a = self.version(subject, "latest").await?;
        if SchemaType::of(&a) != Some(want) {
            return Err(RegistryError::Refused(format!(
                "subject \"{subject}\" holds a {} schema, not {}",
                a.schema_type.as_deref().unwrap_or("AVRO"),
                want.name()
            )));
        }
        let id = a.id.ok_or_else(|| {
            RegistryError::Refused("schema registry answer without an id".to_owned())
        })?;
        self.remember(id, &a.schema);
        Ok(Registered {
            id,
            schema: a.schema,
        })
    }

    async fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> std::result::Result<SchemaAnswer, RegistryError> {
        let body = self
            .get(&format!(
                "/subjects/{}/versions/{version}",
                path_segment(subject)
            ))
            .await?;
        serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("schema registry answer: {e}")))
    }

    /// The Protobuf schema with global id `id` and the files it imports
    /// (its references, and theirs), as (import path, text).
    pub async fn protobuf_files(
        &self,
        id: u32,
    ) -> std::result::Result<(String, Vec<(String, String)>), RegistryError> {
        let body = self.get(&format!("/schemas/ids/{id}")).await?;
        let main: SchemaAnswer = serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("schema registry answer: {e}")))?;
        if SchemaType::of(&main) != Some(SchemaType::Protobuf) {
            return Err(RegistryError::Refused(format!(
                "schema {id} is a {} schema, not PROTOBUF",
                main.schema_type.as_deref().unwrap_or("AVRO")
            )));
        }
        let mut files: Vec<(String, String)> = Vec::new();
        let mut todo = main.references;
        while let Some(r) = todo.pop() {
            if files.iter().any(|(name, _)| *name == r.name) {
                continue;
            }
            if files.len() >= MAX_REFERENCES {
                return Err(RegistryError::Refused(format!(
                    "schema {id} imports more than {MAX_REFERENCES} schemas"
                )));
            }
            let a = self.version(&r.subject, &r.version.to_string()).await?;
            todo.extend(a.references);
            files.push((r.name, a.schema));
        }
        Ok((main.schema, files))
    }

    /// The schema with global id `id` (cached).
    pub async fn by_id(&self, id: u32) -> std::result::Result<Arc<str>, RegistryError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let body = self.get(&format!("/schemas/ids/{id}")).await?;
        let a: SchemaAnswer = serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("schema registry answer: {e}")))?;
        Ok(self.remember(id, &a.schema))
    }

    /// The schema of id `id` if it was fetched before.
    pub fn cached(&self, id: u32) -> Option<Arc<str>> {
        self.by_id.lock().ok().and_then(|m| m.get(&id).cloned())
    }

    fn remember(&self, id: u32, schema: &str) -> Arc<str> {
        let schema: Arc<str> = Arc::from(schema);
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, schema.clone());
        }
        schema
    }

    /// Registers an Avro `schema` under `subject` (or finds it there) and
    /// returns its id.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> std::result::Result<u32, RegistryError> {
        self.register_as(subject, schema, SchemaType::Avro).await
    }

    /// Registers `schema`, of type `kind`, under `subject` (or finds it
    /// there) and returns its id.
    pub async fn register_as(
        &self,
        subject: &str,
        schema: &str,
        kind: SchemaType,
    ) -> std::result::Result<u32, RegistryError> {
        let url = format!(
            "{}/subjects/{}/versions",
            self.options.url,
            path_segment(subject)
        );
        let mut request = self.http.post(&url);
        if let Some((u, p)) = &self.options.auth {
            request = request.basic_auth(u, Some(p));
        }
        let body = match kind {
            SchemaType::Avro => serde_json::json!({ "schema": schema }),
            other => serde_json::json!({ "schema": schema, "schemaType": other.name() }),
        }
        .to_string();
        let response = request
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                RegistryError::Unavailable(format!(
                    "schema registry {url} is unreachable: {}",
                    reqwest_reason(&e)
                ))
            })?;
        let body = answer(&url, response).await?;
        let a: IdAnswer = serde_json::from_str(&body)
            .map_err(|e| RegistryError::Refused(format!("schema registry answer: {e}")))?;
        self.remember(a.id, schema);
        Ok(a.id)
    }
}

/// What a source made of the schema ids its records name: a decoder (or
/// compiled file) per usable id, and for the others why not (the registry
/// does not have it, or it does not parse), so their records are bad.
#[derive(Debug)]
pub struct SchemaCache<T> {
    ready: Mutex<HashMap<u32, T>>,
    unusable: Mutex<HashMap<u32, String>>,
}

impl<T> Default for SchemaCache<T> {
    fn default() -> Self {
        SchemaCache {
            ready: Mutex::default(),
            unusable: Mutex::default(),
        }
    }
}

impl<T> SchemaCache<T> {
    /// Makes what `ids` need and is not known yet with `make` (its fetch
    /// from the registry, then the build). Fails only when the registry
    /// cannot be asked (the poll is then retried); an id the registry
    /// does not have, or whose schema does not build, is kept unusable.
    /// `registry` names the registry and `what` the kind in messages.
    pub async fn prepare<F, Fut>(
        &self,
        ids: HashSet<u32>,
        registry: &Registry,
        what: &str,
        make: F,
    ) -> Result<()>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = std::result::Result<Result<T>, RegistryError>>,
    {
        for id in ids {
            let known = self
                .ready
                .lock()
                .map(|m| m.contains_key(&id))
                .unwrap_or(false)
                || self
                    .unusable
                    .lock()
                    .map(|u| u.contains_key(&id))
                    .unwrap_or(false);
            if known {
                continue;
            }
            let result = match make(id).await {
                Ok(built) => built,
                Err(RegistryError::Unavailable(m)) => return Err(SluiceError::Unreachable(m)),
                Err(RegistryError::NotFound(_)) => Err(SluiceError::InvalidText {
                    message: format!(
                        "schema id {id} is not in the schema registry {}",
                        registry.url()
                    ),
                }),
                Err(RegistryError::Refused(m)) => Err(SluiceError::InvalidText { message: m }),
            };
            match result {
                Ok(t) => self.insert(id, t),
                Err(e) => {
                    tracing::warn!(schema_id = id, error = %e, "unusable {what} schema");
                    if let Ok(mut map) = self.unusable.lock() {
                        map.insert(id, e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// Why `id` is unusable, if it is.
    pub fn unusable(&self, id: u32) -> Option<String> {
        self.unusable.lock().ok().and_then(|u| u.get(&id).cloned())
    }

    /// The usable ids' decoders.
    pub fn ready(&self) -> Result<MutexGuard<'_, HashMap<u32, T>>> {
        self.ready
            .lock()
            .map_err(|_| SluiceError::internal("schema cache lock poisoned"))
    }

    /// Keeps `t` for `id`.
    pub fn insert(&self, id: u32, t: T) {
        if let Ok(mut map) = self.ready.lock() {
            map.insert(id, t);
        }
    }
}

/// The most bytes of an answer read (a schema is a few KiB).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The body of a 2xx answer, or the error an answer means.
async fn answer(
    url: &str,
    mut response: reqwest::Response,
) -> std::result::Result<String, RegistryError> {
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        RegistryError::Unavailable(format!("schema registry {url}: {}", reqwest_reason(&e)))
    })? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(RegistryError::Refused(format!(
                "schema registry {url} answered more than {} MiB",
                MAX_ANSWER_BYTES >> 20
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() {
        return Ok(body);
    }
    // The registry's own message ({"error_code": ..., "message": ...}),
    // bounded: it is shown to users.
    let message: String = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or(body)
        .chars()
        .take(200)
        .collect();
    let text = format!("schema registry {url} answered {status}: {message}");
    Err(match status.as_u16() {
        404 => RegistryError::NotFound(text),
        // Not settled either: the operator fixes the password or the
        // registry, and sources retry (no record is skipped meanwhile).
        s if s >= 500 || s == 429 || s == 401 || s == 403 => RegistryError::Unavailable(text),
        _ => RegistryError::Refused(text),
    })
}

/// The innermost cause of a client error (reqwest's own text is generic).
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

/// `subject` as one URL path segment.
fn path_segment(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn registry_options_are_checked_and_the_password_hidden() {
        let p = Policy::default();
        let o = RegistryOptions::parse(
            "r",
            &opts(&[
                ("url", "http://sr:8081/"),
                ("username", "u"),
                ("password", "hunter2"),
            ]),
            &p,
        )
        .expect("valid");
        assert_eq!(o.url, "http://sr:8081");
        assert!(!format!("{o:?}").contains("hunter2"));
        for (bad, needle) in [
            (vec![], "needs option \"url\""),
            (vec![("url", "sr:8081")], "must start with http"),
            (
                vec![("url", "http://x"), ("username", "u")],
                "both username and password",
            ),
            (
                vec![("url", "http://x"), ("topic", "t")],
                "unrecognized option \"topic\"",
            ),
            (
                vec![("url", "http://u:secret@sr:8081")],
                "must not hold a user or password",
            ),
        ] {
            let e = RegistryOptions::parse("r", &opts(&bad), &p).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert_eq!(path_segment("pg.public/x-value"), "pg.public%2Fx-value");
    }
}
