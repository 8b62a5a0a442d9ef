//! sqllogictest over tokio-postgres, in either query protocol.
//!
//! Errors read `SQLSTATE: message (hint: ...)`, so a file can check the code
//! and the message: `statement error 42P01: relation "nope" does not exist`,
//! or the code alone: `statement error (42P01)`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio::sync::Mutex;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::server::{connect, TestServer};
use super::values::cell;

/// Which query protocol a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `Query` messages; rows come as text.
    Simple,
    /// Parse/Bind/Execute; rows come as binary.
    Extended,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        })
    }
}

/// An error as the client saw it.
#[derive(Debug)]
pub struct DbError {
    sqlstate: Option<String>,
    text: String,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for DbError {}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut text = format!("{}: {}", db.code().code(), db.message());
                if let Some(hint) = db.hint() {
                    text.push_str(&format!(" (hint: {hint})"));
                }
                DbError {
                    sqlstate: Some(db.code().code().to_owned()),
                    text,
                }
            }
            None => DbError {
                sqlstate: None,
                text: format!("client error: {e}"),
            },
        }
    }
}

impl From<anyhow::Error> for DbError {
    fn from(e: anyhow::Error) -> Self {
        DbError {
            sqlstate: None,
            text: format!("harness error: {e:#}"),
        }
    }
}

/// One connection of a test file to the shared server.
pub struct SluiceDb {
    server: Arc<Mutex<TestServer>>,
    client: Client,
    protocol: Protocol,
}

fn column_type(ty: &Type) -> DefaultColumnType {
    match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => DefaultColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DefaultColumnType::FloatingPoint,
        Type::TEXT | Type::VARCHAR => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn display(value: Option<String>) -> String {
    match value {
        None => "NULL".to_owned(),
        Some(s) if s.is_empty() => "(empty)".to_owned(),
        Some(s) => s,
    }
}

impl SluiceDb {
    async fn simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut types = None;
        let mut count = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    types = Some(vec![DefaultColumnType::Any; columns.len()]);
                }
                SimpleQueryMessage::Row(row) => {
                    rows.push(
                        (0..row.len())
                            .map(|i| display(row.get(i).map(str::to_owned)))
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(match types {
            Some(types) => DBOutput::Rows { types, rows },
            None => DBOutput::StatementComplete(count),
        })
    }

    async fn extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let statement = self.client.prepare(sql).await?;
        if statement.columns().is_empty() {
            let n = self.client.execute(&statement, &[]).await?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let types = statement
            .columns()
            .iter()
            .map(|c| column_type(c.type_()))
            .collect();
        let mut rows = Vec::new();
        for row in self.client.query(&statement, &[]).await? {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                values.push(display(cell(&row, i)?));
            }
            rows.push(values);
        }
        Ok(DBOutput::Rows { types, rows })
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for SluiceDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        if sql.trim().eq_ignore_ascii_case("RESTART SERVER") {
            let mut server = self.server.lock().await;
            server.restart().await?;
            self.client = connect(server.addr()).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        match self.protocol {
            Protocol::Simple => self.simple(sql).await,
            Protocol::Extended => self.extended(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }

    fn error_sql_state(err: &Self::Error) -> Option<String> {
        err.sqlstate.clone()
    }
}

/// Runs (or with `complete`, rewrites the expected output of) one file
/// against a fresh server.
pub async fn run_file(path: &Path, protocol: Protocol, complete: bool) -> Result<(), String> {
    // SQL may name files under sql-tests/files (as `$ALLOWED_DIR`).
    let allowed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sql-tests/files")
        .canonicalize()
        .map_err(|e| format!("sql-tests/files: {e}"))?;
    let server = TestServer::start_with(sluice_common::Config {
        client_file_dirs: vec![allowed.clone()],
        ..sluice_common::Config::default()
    })
    .await
    .map_err(|e| format!("cannot start sluice: {e:#}"))?;
    let server = Arc::new(Mutex::new(server));
    let mut runner = sqllogictest::Runner::new(move || {
        let server = server.clone();
        async move {
            let addr = server.lock().await.addr();
            let client = connect(addr).await?;
            Ok(SluiceDb {
                server,
                client,
                protocol,
            })
        }
    });
    runner.with_column_validator(|_, _| true);
    runner.add_label(&protocol.to_string());
    runner.set_var("ALLOWED_DIR".to_owned(), allowed.display().to_string());
    if complete {
        runner
            .update_test_file(
                path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                |_, _| true,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner
            .run_file_async(path)
            .await
            .map_err(|e| e.display(true).to_string())
    }
}
