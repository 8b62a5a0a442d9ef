//! One shape for every connector: the options it takes (with their
//! documentation), their check at CREATE time, the start of a source task
//! and of a sink task. [`registry`] lists them; `Sources` finds a
//! relation's connector there by name, so the catalog keeps no list of
//! connector options of its own.
//!
//! A new connector is a folder (`src/<name>/`) with a type implementing
//! [`Connector`], plus one line in [`registry`].

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use sluice_catalog::{Catalog, Relation, Replay};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};
use tokio::task::JoinHandle;

use crate::kafka::properties::Policy;
use crate::status::SourceStatus;
use crate::SpawnSink;

/// One option a connector takes: its name and what it does.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    /// The name in `WITH (...)`.
    pub name: &'static str,
    /// One line for `docs/` and errors.
    pub doc: &'static str,
}

impl OptionDoc {
    /// An option and its one line.
    pub const fn new(name: &'static str, doc: &'static str) -> Self {
        OptionDoc { name, doc }
    }
}

/// What a connector's checks and tasks may use besides the options.
#[derive(Debug, Clone)]
pub struct Context {
    /// The catalog (sources write through it).
    pub catalog: Arc<Catalog>,
    /// What the operator allows (client settings, file directories).
    pub policy: Arc<Policy>,
}

/// A running source: its status (in `sluice_sources`) and its task.
pub type Running = (Arc<SourceStatus>, JoinHandle<()>);

/// A source and/or sink of records outside Sluice.
pub trait Connector: Send + Sync + 'static {
    /// The value of `connector = '...'`.
    fn name(&self) -> &'static str;

    /// The options a stream or table fed by it takes (besides `connector`
    /// and `connection`); empty when it is not a source.
    fn source_options(&self) -> Vec<OptionDoc>;

    /// The options a sink writing to it takes; empty when it is not a sink.
    fn sink_options(&self) -> Vec<OptionDoc> {
        Vec::new()
    }

    /// The options a `CREATE CONNECTION ... WITH (type = '<name>', ...)`
    /// holds for the sources and sinks that name it (client settings
    /// shared by many); empty when the connector has no connections.
    fn connection_options(&self) -> Vec<OptionDoc> {
        Vec::new()
    }

    /// Whether a source or sink that names a connection may not set option
    /// `key` itself: the connection's client options (servers, security)
    /// come only from the connection, so that its secrets cannot be sent
    /// elsewhere or over a weaker channel.
    fn locked_by_connection(&self, key: &str) -> bool {
        self.connection_options().iter().any(|o| o.name == key)
    }

    /// Option prefixes passed through to a client (`properties.`), checked
    /// by the connector itself.
    fn prefixes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks a `CREATE STREAM|TABLE` (option values, columns) before
    /// anything is stored.
    fn check_source(
        &self,
        cx: &Context,
        create: &CreateRelation,
        options: &BTreeMap<String, String>,
    ) -> Result<()>;

    /// Starts feeding `relation` (with its options, connection resolved).
    fn start_source(
        &self,
        cx: &Context,
        relation: Arc<Relation>,
        options: &BTreeMap<String, String>,
    ) -> Result<Running>;

    /// Checks the options of sink `name` and returns its status and the
    /// function that starts its task; `key` are the columns that identify
    /// a row of its input, of kind `from`.
    fn sink(
        &self,
        cx: &Context,
        name: &str,
        options: &BTreeMap<String, String>,
        key: Vec<usize>,
        from: RelationKind,
    ) -> Result<(Arc<SourceStatus>, SpawnSink)> {
        let _ = (cx, options, key, from);
        Err(not_a_sink(self.name(), &format!("sink \"{name}\"")))
    }

    /// For a source that generates its events instead of reading them (so
    /// its stream keeps no log, only the position): the events of `stream`
    /// before `position` (partition -> next offset), generated again for a
    /// view that back-fills. `None` for a source whose rows are stored.
    fn regenerate(
        &self,
        stream: &Relation,
        position: &BTreeMap<i32, i64>,
    ) -> Option<Result<RecordBatch>> {
        let _ = (stream, position);
        None
    }
}

/// The catalog's [`Replay`] hook: asks the connector of the stream (by its
/// `connector` option) to [`Connector::regenerate`] its past events.
#[derive(Debug)]
pub(crate) struct Regenerate;

impl Replay for Regenerate {
    fn replay(
        &self,
        stream: &Relation,
        position: &BTreeMap<i32, i64>,
    ) -> Option<Result<RecordBatch>> {
        let name = stream.entry().options.get("connector")?;
        registry()
            .iter()
            .find(|c| c.name() == name)?
            .regenerate(stream, position)
    }
}

fn not_a_sink(connector: &str, what: &str) -> SluiceError {
    SluiceError::InvalidOption {
        message: format!("connector \"{connector}\" cannot be written to, so {what} cannot use it"),
        hint: Some(format!("connectors with sinks: {}", names(true).join(", "))),
    }
}

/// Every connector, by name.
pub fn registry() -> &'static [&'static dyn Connector] {
    &[
        &crate::kafka::Kafka,
        &crate::nexmark::Nexmark,
        &crate::file::Files,
    ]
}

/// The names of the connectors (only those with sinks, if `sinks`).
fn names(sinks: bool) -> Vec<&'static str> {
    registry()
        .iter()
        .filter(|c| !sinks || !c.sink_options().is_empty())
        .map(|c| c.name())
        .collect()
}

/// Which option list of a connector applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A stream or table it feeds.
    Source,
    /// A sink writing to it.
    Sink,
    /// A `CREATE CONNECTION` of its type.
    Connection,
}

/// The connector named by `options` (`connector = '...'`), after checking
/// that every option is one it takes as `usage`. `what` names the object
/// for errors.
pub fn find(
    options: &BTreeMap<String, String>,
    what: &str,
    usage: Use,
) -> Result<Option<&'static dyn Connector>> {
    let sink = usage == Use::Sink;
    let Some(name) = options.get("connector") else {
        return Ok(None);
    };
    let Some(connector) = registry().iter().copied().find(|c| c.name() == name) else {
        return Err(SluiceError::InvalidOption {
            message: format!("unknown connector \"{name}\" for {what}"),
            hint: Some(format!("available connectors: {}", names(sink).join(", "))),
        });
    };
    let accepted = match usage {
        Use::Source => connector.source_options(),
        Use::Sink => connector.sink_options(),
        Use::Connection => connector.connection_options(),
    };
    if sink && accepted.is_empty() {
        return Err(not_a_sink(connector.name(), what));
    }
    for key in options.keys() {
        let known = matches!(key.as_str(), "connector" | "connection")
            || (usage == Use::Source && key == "idle_timeout")
            || accepted.iter().any(|o| o.name == key)
            || connector
                .prefixes()
                .iter()
                .any(|p| key.starts_with(p) && key.len() > p.len());
        if !known {
            let mut all: Vec<String> = accepted.iter().map(|o| o.name.to_owned()).collect();
            all.extend(connector.prefixes().iter().map(|p| format!("{p}*")));
            return Err(SluiceError::InvalidOption {
                message: format!("unrecognized option \"{key}\" for {what}"),
                hint: Some(format!("accepted options: {}", all.join(", "))),
            });
        }
    }
    Ok(Some(connector))
}
