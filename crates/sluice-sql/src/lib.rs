//! The Sluice SQL dialect: PostgreSQL as sqlparser (the version DataFusion
//! re-exports) parses it, plus Sluice's streaming statements. Parsing only:
//! no catalog lookups and no planning happen here.

pub mod ast;
pub mod limits;
pub mod naming;
pub mod parser;
pub mod redact;
mod temporal;
pub mod types;
pub mod windows;

pub use ast::{
    ColumnDef, CreateConnection, CreateRelation, CreateSink, CreateView, Drop, RelationKind,
    Statement, WatermarkDef,
};
pub use parser::{normalize_ident, object_name, parse, parse_view_query};
pub use temporal::as_of_column;
pub use types::{pg_type_name, SqlType};
