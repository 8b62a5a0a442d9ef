//! Sluice's catalog: streams and tables, persisted in the state store with
//! their rows, and resolved by name for DataFusion.
//!
//! Tables keep the latest row per primary key (an INSERT of an existing key
//! replaces the row); streams keep an append-only log of inserted batches
//! that the dataflow will consume.

mod catalog;
mod changelog;
mod changes;
mod entry;
mod ingest;
mod options;

pub use options::{duration as duration_option, validate as validate_options};
mod provider;
mod rows;
mod system;

pub use catalog::{sync_store, Catalog, Created, Relation};
pub use changelog::{changelog_key, failure_key, ChangeListener, LoggedChange};
pub use changes::{state_prefix, RowSource};
pub use entry::{Column, ConnectionEntry, RelationEntry, Watermark};
pub use ingest::{Ingest, Replay};
pub use provider::{RelationTable, SluiceSchema};
pub use rows::RowCodec;
pub use system::{SystemRows, SystemTable};
