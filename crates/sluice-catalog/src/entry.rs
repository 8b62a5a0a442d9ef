//! A catalog entry: one stream or table, validated from its `CREATE`
//! statement and stored as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind, SqlType};

use crate::options;

/// A column of a stream or table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its SQL type.
    pub sql_type: SqlType,
    /// Whether NULL is rejected (declared `NOT NULL`, or part of the key).
    pub not_null: bool,
}

/// `WATERMARK FOR column AS expr`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The event-time column.
    pub column: String,
    /// The expression, as SQL text over that column.
    pub expr: String,
}

/// A stream or table as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationEntry {
    /// Unique, never reused; keys the relation's rows in the state store.
    pub id: u64,
    /// The name (normalized).
    pub name: String,
    /// Stream or table.
    pub kind: RelationKind,
    /// Columns in declaration order.
    pub columns: Vec<Column>,
    /// Indices into `columns` of the primary key (tables only).
    pub primary_key: Vec<usize>,
    /// The declared watermark, if any.
    pub watermark: Option<Watermark>,
    /// The `WITH` options.
    pub options: BTreeMap<String, String>,
    /// A view's query, as SQL.
    #[serde(default)]
    pub query: Option<String>,
    /// A view's output schema, in Arrow IPC form (its types need not be SQL
    /// column types: `array_agg` makes lists).
    #[serde(default)]
    pub view_schema: Option<Vec<u8>>,
    /// The relations a view reads, by name.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Kafka metadata columns: (key|partition|offset|timestamp, column).
    #[serde(default)]
    pub include: Vec<(String, String)>,
    /// A view whose rows are only ever inserted (it reads streams through
    /// nodes that never revise a row): its rows are kept as the Arrow IPC
    /// batches they arrived in, not as a multiset of rows.
    #[serde(default)]
    pub appended: bool,
}

/// A named set of client options (`CREATE CONNECTION name WITH (type =
/// 'kafka', ...)`) that sources and sinks refer to with `connection =
/// 'name'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEntry {
    /// The name (normalized).
    pub name: String,
    /// The connector it is for (`kafka`).
    pub kind: String,
    /// The options, without `type`.
    pub options: BTreeMap<String, String>,
}

impl RelationEntry {
    /// Validates a `CREATE STREAM|TABLE` and builds its entry.
    pub fn try_new(id: u64, create: &CreateRelation) -> Result<Self> {
        let kind = create.kind;
        let name = &create.name;
        if create.columns.is_empty() {
            return Err(SluiceError::InvalidDefinition {
                message: format!("{kind} \"{name}\" must have at least one column"),
                hint: None,
            });
        }
        let mut declared = create.columns.clone();
        if !create.include.is_empty()
            && !create
                .options
                .iter()
                .any(|(k, v)| k == "connector" && v == "kafka")
        {
            return Err(SluiceError::InvalidDefinition {
                message: format!("INCLUDE needs a Kafka source, but {kind} \"{name}\" has none"),
                hint: Some("add WITH (connector = 'kafka', ...)".into()),
            });
        }
        for (what, column) in &create.include {
            let sql_type = match what.as_str() {
                "key" => SqlType::Text,
                "partition" => SqlType::Int,
                "offset" => SqlType::BigInt,
                _ => SqlType::Timestamp,
            };
            declared.push(sluice_sql::ColumnDef {
                name: column.clone(),
                sql_type,
                not_null: false,
            });
        }
        let mut columns: Vec<Column> = Vec::with_capacity(declared.len());
        for c in &declared {
            if columns.iter().any(|existing| existing.name == c.name) {
                return Err(SluiceError::DuplicateColumn {
                    name: c.name.clone(),
                });
            }
            columns.push(Column {
                name: c.name.clone(),
                sql_type: c.sql_type,
                not_null: c.not_null,
            });
        }

        let mut primary_key = Vec::with_capacity(create.primary_key.len());
        for key in &create.primary_key {
            let idx = column_index(&columns, key)?;
            if primary_key.contains(&idx) {
                return Err(SluiceError::DuplicateColumn { name: key.clone() });
            }
            let column = &mut columns[idx];
            if !column.sql_type.can_be_key() {
                return Err(SluiceError::InvalidDefinition {
                    message: format!(
                        "column \"{key}\" of type {} cannot be part of a primary key",
                        column.sql_type
                    ),
                    hint: Some("use an integer, text, numeric, date or timestamp column".into()),
                });
            }
            column.not_null = true;
            primary_key.push(idx);
        }
        match kind {
            RelationKind::Table if primary_key.is_empty() => {
                return Err(SluiceError::InvalidDefinition {
                    message: format!("table \"{name}\" needs a primary key"),
                    hint: Some(format!(
                        "a table keeps the latest row per key: declare one, as in \
                         CREATE TABLE {name} (id BIGINT PRIMARY KEY, ...); \
                         for append-only events use CREATE STREAM"
                    )),
                })
            }
            RelationKind::Stream if !primary_key.is_empty() => {
                return Err(SluiceError::InvalidDefinition {
                    message: format!("stream \"{name}\" cannot have a primary key"),
                    hint: Some(
                        "streams are append-only; use CREATE TABLE for the latest row per key"
                            .into(),
                    ),
                })
            }
            _ => {}
        }

        let mut entry = RelationEntry {
            id,
            name: name.clone(),
            kind,
            columns,
            primary_key,
            watermark: None,
            options: options::validate(kind, name, &create.options)?,
            query: None,
            view_schema: None,
            depends_on: Vec::new(),
            include: create.include.clone(),
            appended: false,
        };
        if let Some(wm) = &create.watermark {
            entry.watermark = Some(entry.validate_watermark(&wm.column, &wm.expr.to_string())?);
        }
        if entry.options.contains_key("idle_timeout") && entry.watermark.is_none() {
            return Err(SluiceError::InvalidOption {
                message: format!(
                    "option \"idle_timeout\" needs a watermark, and {kind} \"{name}\" has none"
                ),
                hint: Some("declare one: WATERMARK FOR ts AS ts - INTERVAL '5 seconds'".to_owned()),
            });
        }
        Ok(entry)
    }

    /// A materialized view's entry.
    pub fn new_view(
        id: u64,
        name: &str,
        query: &str,
        schema: &Schema,
        depends_on: Vec<String>,
        appended: bool,
    ) -> Result<Self> {
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, schema)?;
            w.finish()?;
        }
        Ok(RelationEntry {
            id,
            name: name.to_owned(),
            kind: RelationKind::View,
            columns: Vec::new(),
            primary_key: Vec::new(),
            watermark: None,
            options: BTreeMap::new(),
            query: Some(query.to_owned()),
            view_schema: Some(ipc),
            depends_on,
            include: Vec::new(),
            appended,
        })
    }

    /// A sink writing the changes of `from` (whose schema it keeps), keyed
    /// by the columns at `key` for upsert formats.
    pub fn new_sink(
        id: u64,
        name: &str,
        from: &RelationEntry,
        options: BTreeMap<String, String>,
        key: Vec<usize>,
    ) -> Result<Self> {
        let schema = from.schema()?;
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &schema)?;
            w.finish()?;
        }
        Ok(RelationEntry {
            id,
            name: name.to_owned(),
            kind: RelationKind::Sink,
            columns: Vec::new(),
            primary_key: key,
            watermark: None,
            options,
            query: None,
            view_schema: Some(ipc),
            depends_on: vec![from.name.clone()],
            include: Vec::new(),
            appended: false,
        })
    }

    /// The Arrow schema rows of this relation have.
    pub fn schema(&self) -> Result<SchemaRef> {
        if let Some(ipc) = &self.view_schema {
            let reader = StreamReader::try_new(ipc.as_slice(), None)?;
            return Ok(reader.schema());
        }
        Ok(Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| c.sql_type.to_field(&c.name))
                .collect::<Vec<_>>(),
        )))
    }

    /// The primary key column names.
    pub fn key_names(&self) -> Vec<&str> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    /// The watermark must be an expression over its event-time column alone,
    /// of that column's type (typically `ts - INTERVAL '5 seconds'`).
    fn validate_watermark(&self, column: &str, expr_sql: &str) -> Result<Watermark> {
        let idx = column_index(&self.columns, column)?;
        let col_type = self.columns[idx].sql_type;
        if !col_type.is_timestamp() {
            return Err(SluiceError::DatatypeMismatch {
                message: format!(
                    "watermark column \"{column}\" must be a timestamp, but it is {col_type}"
                ),
            });
        }
        let arrow_schema = self.schema()?;
        let df_schema = DFSchema::try_from(arrow_schema.as_ref().clone())?;
        let expr = SessionContext::new().parse_sql_expr(expr_sql, &df_schema)?;
        for referenced in expr.column_refs() {
            if referenced.name != column {
                return Err(SluiceError::InvalidDefinition {
                    message: format!(
                        "watermark expression \"{expr_sql}\" may only use column \"{column}\", \
                         but it uses \"{}\"",
                        referenced.name
                    ),
                    hint: Some(format!(
                        "write WATERMARK FOR {column} AS {column} - INTERVAL '5 seconds'"
                    )),
                });
            }
        }
        let expr_type = expr.get_type(&df_schema)?;
        if expr_type != col_type.to_arrow() {
            return Err(SluiceError::DatatypeMismatch {
                message: format!(
                    "watermark expression \"{expr_sql}\" must be a {col_type}, but it is {expr_type}"
                ),
            });
        }
        Ok(Watermark {
            column: column.to_owned(),
            expr: expr_sql.to_owned(),
        })
    }
}

fn column_index(columns: &[Column], name: &str) -> Result<usize> {
    columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| SluiceError::UndefinedColumn {
            name: name.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sql::Statement;

    fn entry(sql: &str) -> Result<RelationEntry> {
        let Statement::CreateRelation(c) = sluice_sql::parse(sql).expect("parses").remove(0) else {
            panic!("not a create");
        };
        RelationEntry::try_new(7, &c)
    }

    #[test]
    fn valid_definitions() {
        let e = entry(
            "CREATE STREAM s (a BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5 seconds')",
        )
        .expect("valid");
        assert_eq!(e.watermark.expect("wm").column, "ts");
        let t = entry("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").expect("valid");
        assert_eq!(t.primary_key, vec![0]);
        assert!(t.columns[0].not_null);
    }

    #[test]
    fn invalid_definitions_name_the_problem() {
        let cases = [
            (
                "CREATE TABLE t (id BIGINT, v TEXT)",
                "42P16",
                "needs a primary key",
            ),
            (
                "CREATE STREAM s (id BIGINT PRIMARY KEY)",
                "42P16",
                "cannot have a primary key",
            ),
            (
                "CREATE TABLE t (id BIGINT, id TEXT, PRIMARY KEY (id))",
                "42701",
                "specified more than once",
            ),
            (
                "CREATE TABLE t (id BIGINT, PRIMARY KEY (nope))",
                "42703",
                "\"nope\" does not exist",
            ),
            (
                "CREATE STREAM s (a BIGINT, WATERMARK FOR b AS b)",
                "42703",
                "\"b\" does not exist",
            ),
            (
                "CREATE STREAM s (a BIGINT, WATERMARK FOR a AS a)",
                "42804",
                "must be a timestamp",
            ),
            (
                "CREATE STREAM s (a BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts + a)",
                "42P16",
                "may only use column",
            ),
            (
                "CREATE STREAM s (ts TIMESTAMP, WATERMARK FOR ts AS 5)",
                "42804",
                "must be a timestamp without time zone",
            ),
        ];
        for (sql, state, text) in cases {
            let err = entry(sql).expect_err(sql);
            assert_eq!(err.sqlstate(), state, "{sql}: {err}");
            assert!(err.to_string().contains(text), "{sql}: {err}");
        }
    }
}
