//! Statements of the Sluice dialect.
//!
//! Sluice's own statements get their own nodes; everything standard
//! (queries, INSERT, UPDATE, DELETE, SET, transactions) stays a sqlparser
//! statement and is planned by DataFusion.

use std::fmt;

use datafusion::sql::sqlparser::ast;

use crate::types::SqlType;

/// One parsed statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// `CREATE STREAM` or `CREATE TABLE`.
    CreateRelation(Box<CreateRelation>),
    /// `DROP STREAM|TABLE [IF EXISTS] name [, ...]`.
    Drop(Drop),
    /// `SHOW STREAMS` / `SHOW TABLES` / `SHOW MATERIALIZED VIEWS`.
    ShowRelations(RelationKind),
    /// `CREATE MATERIALIZED VIEW`.
    CreateView(Box<CreateView>),
    /// `CREATE SINK name FROM relation WITH (...)`.
    CreateSink(Box<CreateSink>),
    /// `EXPLAIN CREATE MATERIALIZED VIEW`: the operator graph, not created.
    ExplainCreateView(Box<CreateView>),
    /// `DESCRIBE name`.
    Describe(ast::ObjectName),
    /// `FLUSH`: returns once everything inserted before it is reflected in
    /// every view.
    Flush,
    /// `CREATE CONNECTION [IF NOT EXISTS] name WITH (type = '...', ...)`.
    CreateConnection(Box<CreateConnection>),
    /// `DROP CONNECTION [IF EXISTS] name [, ...]`.
    DropConnection {
        /// `IF EXISTS`.
        if_exists: bool,
        /// The connections.
        names: Vec<String>,
    },
    /// `SHOW CONNECTIONS`.
    ShowConnections,
    /// `DESCRIBE CONNECTION name`: its options, secrets hidden.
    DescribeConnection(String),
    /// Any other statement, as sqlparser parsed it.
    Sql(Box<ast::Statement>),
}

/// `CREATE CONNECTION name WITH (...)`: client options that many sources
/// and sinks share.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateConnection {
    /// The name (normalized).
    pub name: String,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The options, as written.
    pub options: Vec<(String, String)>,
}

/// Streams are append-only; tables hold the latest row per primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationKind {
    /// Append-only events.
    Stream,
    /// A changelog keyed by its primary key.
    Table,
    /// A query kept up to date incrementally.
    View,
    /// The changes of a stream, table or view, written out (to Kafka).
    Sink,
}

impl RelationKind {
    /// The keyword, lower case: `stream` or `table`.
    pub fn keyword(self) -> &'static str {
        match self {
            RelationKind::Stream => "stream",
            RelationKind::Table => "table",
            RelationKind::View => "materialized view",
            RelationKind::Sink => "sink",
        }
    }
}

impl fmt::Display for RelationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

impl From<RelationKind> for sluice_common::ObjectKind {
    fn from(kind: RelationKind) -> Self {
        match kind {
            RelationKind::Stream => sluice_common::ObjectKind::Stream,
            RelationKind::Table => sluice_common::ObjectKind::Table,
            RelationKind::View => sluice_common::ObjectKind::View,
            RelationKind::Sink => sluice_common::ObjectKind::Sink,
        }
    }
}

/// `CREATE STREAM|TABLE [IF NOT EXISTS] name (columns, [PRIMARY KEY (...)],
/// [WATERMARK FOR col AS expr]) [WITH (...)]`.
#[derive(Debug, Clone)]
pub struct CreateRelation {
    /// Stream or table.
    pub kind: RelationKind,
    /// The name, unqualified.
    pub name: String,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The declared columns, in order.
    pub columns: Vec<ColumnDef>,
    /// Primary key column names, from the column or table constraint.
    pub primary_key: Vec<String>,
    /// `WATERMARK FOR column AS expr`.
    pub watermark: Option<WatermarkDef>,
    /// `WITH (key = value, ...)`, keys lower-cased, values as text.
    pub options: Vec<(String, String)>,
    /// `INCLUDE key|partition|offset|timestamp [AS name]`: Kafka metadata
    /// as extra columns, (what, column name).
    pub include: Vec<(String, String)>,
}

/// One declared column.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    /// The name, as Postgres folds it (lower case unless quoted).
    pub name: String,
    /// Its type.
    pub sql_type: SqlType,
    /// `NOT NULL` was declared (primary key columns are never null either).
    pub not_null: bool,
}

/// `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkDef {
    /// The event-time column.
    pub column: String,
    /// The watermark expression over that column.
    pub expr: ast::Expr,
}

/// `CREATE SINK [IF NOT EXISTS] name FROM relation WITH (...)`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    /// The name (normalized).
    pub name: String,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The stream, table or view whose changes it writes.
    pub from: String,
    /// `WITH (key = value, ...)`, keys lower-cased, values as text.
    pub options: Vec<(String, String)>,
}

/// `CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query`.
#[derive(Debug, Clone)]
pub struct CreateView {
    /// The name (normalized).
    pub name: String,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// The query.
    pub query: Box<ast::Query>,
    /// `EMIT ON WINDOW CLOSE`: one final row per window once the watermark
    /// passes its end, instead of rows that update as events arrive.
    pub emit_on_window_close: bool,
    /// The query as written, before window functions were rewritten.
    pub text: String,
}

impl CreateView {
    /// The query as stored in the catalog: as written, with its emit mode
    /// ([`crate::parse_view_query`] reads it back).
    pub fn stored_query(&self) -> String {
        if self.emit_on_window_close {
            format!("{} EMIT ON WINDOW CLOSE", self.text)
        } else {
            self.text.clone()
        }
    }
}

/// `DROP STREAM|TABLE|MATERIALIZED VIEW [IF EXISTS] names [CASCADE]`.
#[derive(Debug, Clone)]
pub struct Drop {
    /// What kind of object the statement names.
    pub kind: RelationKind,
    /// `IF EXISTS` was given.
    pub if_exists: bool,
    /// The objects to drop.
    pub names: Vec<String>,
    /// `CASCADE`: also drop the views that depend on them.
    pub cascade: bool,
}
