//! A schema registry for the tests: the Confluent REST API (subjects,
//! versions, schemas by id, BACKWARD compatibility, basic auth) in
//! process, on a free loopback port, with axum. Enough of it for Sluice's
//! sources and sinks: `GET /subjects`, `GET /subjects/{s}/versions`,
//! `GET /subjects/{s}/versions/latest`, `GET /schemas/ids/{id}`,
//! `POST /subjects/{s}/versions`; Avro and Protobuf (`schemaType`) schemas,
//! and references (the files a Protobuf schema imports).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A registered schema: its text, `schemaType` (None: Avro) and
/// references as the registry returns them.
#[derive(Clone, PartialEq)]
struct Schema {
    text: String,
    kind: Option<String>,
    references: Value,
}

impl Schema {
    /// The fields of an answer that carries it.
    fn answer(&self, mut out: Value) -> Value {
        out["schema"] = json!(self.text);
        if let Some(k) = &self.kind {
            out["schemaType"] = json!(k);
        }
        if self.references.as_array().is_some_and(|r| !r.is_empty()) {
            out["references"] = self.references.clone();
        }
        out
    }
}

#[derive(Default)]
struct Store {
    /// Schemas by global id (ids from 1).
    schemas: Vec<Schema>,
    /// Subject -> the ids of its versions, in order.
    subjects: BTreeMap<String, Vec<u32>>,
}

#[derive(Clone)]
struct App {
    store: Arc<Mutex<Store>>,
    /// `Basic <base64>` the requests must carry, if set.
    auth: Option<String>,
}

type Answer = (StatusCode, Json<Value>);

fn error(status: StatusCode, code: u32, message: &str) -> Answer {
    (
        status,
        Json(json!({ "error_code": code, "message": message })),
    )
}

impl App {
    fn check(&self, headers: &HeaderMap) -> Result<(), Answer> {
        match &self.auth {
            Some(want)
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want) =>
            {
                Err(error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized"))
            }
            _ => Ok(()),
        }
    }
}

/// The record fields of an Avro schema: name -> (type, has a default).
fn fields(schema: &str) -> Option<BTreeMap<String, (Value, bool)>> {
    let v: Value = serde_json::from_str(schema).ok()?;
    let mut out = BTreeMap::new();
    for f in v.get("fields")?.as_array()? {
        out.insert(
            f.get("name")?.as_str()?.to_owned(),
            (f.get("type")?.clone(), f.get("default").is_some()),
        );
    }
    Some(out)
}

/// BACKWARD: a reader with `new` can read data written with `old`: every
/// field `new` adds has a default, and shared fields keep their type.
fn backward_compatible(old: &str, new: &str) -> bool {
    let (Some(old), Some(new)) = (fields(old), fields(new)) else {
        return false;
    };
    new.iter()
        .all(|(name, (t, has_default))| match old.get(name) {
            Some((old_t, _)) => old_t == t,
            None => *has_default,
        })
}

async fn subjects(State(app): State<App>, headers: HeaderMap) -> Answer {
    if let Err(e) = app.check(&headers) {
        return e;
    }
    let store = app.store.lock().expect("registry lock");
    (
        StatusCode::OK,
        Json(json!(store.subjects.keys().collect::<Vec<_>>())),
    )
}

async fn versions(
    State(app): State<App>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Answer {
    if let Err(e) = app.check(&headers) {
        return e;
    }
    let store = app.store.lock().expect("registry lock");
    match store.subjects.get(&subject) {
        Some(ids) => (
            StatusCode::OK,
            Json(json!((1..=ids.len()).collect::<Vec<_>>())),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        ),
    }
}

async fn latest(
    State(app): State<App>,
    headers: HeaderMap,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    if let Err(e) = app.check(&headers) {
        return e;
    }
    let store = app.store.lock().expect("registry lock");
    let Some(ids) = store.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    let n = if version == "latest" {
        ids.len()
    } else {
        match version.parse::<usize>() {
            Ok(n) if (1..=ids.len()).contains(&n) => n,
            _ => return error(StatusCode::NOT_FOUND, 40402, "Version not found."),
        }
    };
    let id = ids[n - 1];
    (
        StatusCode::OK,
        Json(
            store.schemas[id as usize - 1]
                .answer(json!({ "subject": subject, "version": n, "id": id })),
        ),
    )
}

async fn by_id(State(app): State<App>, headers: HeaderMap, Path(id): Path<u32>) -> Answer {
    if let Err(e) = app.check(&headers) {
        return e;
    }
    let store = app.store.lock().expect("registry lock");
    match store.schemas.get((id as usize).wrapping_sub(1)) {
        Some(schema) => (StatusCode::OK, Json(schema.answer(json!({})))),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn register(
    State(app): State<App>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Answer {
    if let Err(e) = app.check(&headers) {
        return e;
    }
    let Some(schema) = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
        Some(Schema {
            text: v.get("schema")?.as_str()?.to_owned(),
            kind: v
                .get("schemaType")
                .and_then(|t| t.as_str())
                .filter(|t| *t != "AVRO")
                .map(str::to_owned),
            references: v.get("references").cloned().unwrap_or(json!([])),
        })
    }) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    };
    let avro = schema.kind.is_none();
    if avro && fields(&schema.text).is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema: not an Avro record",
        );
    }
    let mut store = app.store.lock().expect("registry lock");
    let existing = store
        .schemas
        .iter()
        .position(|s| *s == schema)
        .map(|i| i as u32 + 1);
    if let (Some(id), Some(ids)) = (existing, store.subjects.get(&subject)) {
        if ids.contains(&id) {
            return (StatusCode::OK, Json(json!({ "id": id })));
        }
    }
    if let Some(&last) = store.subjects.get(&subject).and_then(|ids| ids.last()) {
        let old = &store.schemas[last as usize - 1];
        // Compatibility is checked for Avro only.
        if avro && old.kind.is_none() && !backward_compatible(&old.text, &schema.text) {
            return error(
                StatusCode::CONFLICT,
                409,
                "Schema being registered is incompatible with an earlier schema for subject",
            );
        }
    }
    let id = match existing {
        Some(id) => id,
        None => {
            store.schemas.push(schema);
            store.schemas.len() as u32
        }
    };
    store.subjects.entry(subject).or_default().push(id);
    (StatusCode::OK, Json(json!({ "id": id })))
}

/// A running registry.
pub struct TestRegistry {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    store: Arc<Mutex<Store>>,
}

impl TestRegistry {
    /// Starts one; with `auth`, requests must log in as (user, password).
    pub async fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let store = Arc::new(Mutex::new(Store::default()));
        let app = App {
            store: store.clone(),
            auth: auth.map(|(u, p)| {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
        };
        let router = Router::new()
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}/versions", get(versions).post(register))
            .route("/subjects/{subject}/versions/{version}", get(latest))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(TestRegistry { url, store })
    }

    /// The subjects registered so far.
    pub fn subjects(&self) -> Vec<String> {
        self.store
            .lock()
            .map(|s| s.subjects.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl TestRegistry {
    /// Registers `text` (of `kind`, "PROTOBUF" say) under `subject` as
    /// its next version, importing `references` (import path, subject,
    /// version); returns its id.
    pub fn add(
        &self,
        subject: &str,
        text: &str,
        kind: &str,
        references: &[(&str, &str, u32)],
    ) -> u32 {
        let mut store = self.store.lock().expect("registry lock");
        store.schemas.push(Schema {
            text: text.to_owned(),
            kind: Some(kind.to_owned()),
            references: json!(references
                .iter()
                .map(|(name, subject, version)| json!({
                    "name": name, "subject": subject, "version": version
                }))
                .collect::<Vec<_>>()),
        });
        let id = store.schemas.len() as u32;
        store
            .subjects
            .entry(subject.to_owned())
            .or_default()
            .push(id);
        id
    }
}
