//! Statements about the connection's settings rather than the data: `SET`, `SHOW`
//! of a setting, and transaction blocks (`BEGIN` / `COMMIT` / `ROLLBACK`),
//! which drivers such as psycopg and JDBC send on their own.
//!
//! Sluice applies every statement as it runs (autocommit): a transaction
//! block is accepted so these clients work, but ROLLBACK undoes nothing.
//! Any other standard statement is reported as not supported.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;
use sluice_common::{Result, SluiceError};

use crate::engine::Output;

/// Settings `SHOW` answers, as a fresh Postgres would.
const SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    // Answered from the session (crate::limits); listed for its schema.
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
];

fn show_variable(variable: &[ast::Ident]) -> Result<(String, &'static str)> {
    let name = variable
        .iter()
        .map(|i| i.value.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let key = match name.as_str() {
        "transaction isolation level" => "transaction_isolation",
        "time zone" => "timezone",
        other => other,
    };
    SETTINGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(k, v)| (k.to_string(), *v))
        .ok_or_else(|| SluiceError::InvalidOption {
            message: format!("unrecognized configuration parameter \"{name}\""),
            hint: None,
        })
}

pub fn result_schema(statement: &ast::Statement) -> Option<SchemaRef> {
    match statement {
        ast::Statement::ShowVariable { variable } => show_variable(variable)
            .ok()
            .map(|(name, _)| super::text_schema(&[name.as_str()])),
        _ => None,
    }
}

pub fn execute(statement: &ast::Statement) -> Result<Output> {
    match statement {
        ast::Statement::Set(_) => Ok(Output::command("SET")),
        ast::Statement::ShowVariable { variable } => {
            let (name, value) = show_variable(variable)?;
            super::single_value(&name, value)
        }
        ast::Statement::StartTransaction { .. } => Ok(Output::TransactionStart),
        ast::Statement::Commit { .. } => Ok(Output::TransactionEnd("COMMIT")),
        ast::Statement::Rollback { .. } => Ok(Output::TransactionEnd("ROLLBACK")),
        ast::Statement::Discard { .. } => Ok(Output::command("DISCARD ALL")),
        other => Err(unsupported(other)),
    }
}

fn unsupported(statement: &ast::Statement) -> SluiceError {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    let what = match words.as_slice() {
        ["CREATE" | "DROP" | "ALTER", second, ..] => format!("{} {}", words[0], second),
        [first, ..] => first.to_string(),
        [] => "this statement".to_owned(),
    };
    SluiceError::not_supported(
        format!("statement {what}"),
        Some("Sluice supports CREATE/DROP STREAM|TABLE|MATERIALIZED VIEW, INSERT, UPDATE, DELETE, SELECT, SHOW, DESCRIBE and FLUSH"),
    )
}
