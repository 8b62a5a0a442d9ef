//! Sluice's connectors: Kafka sources for streams and tables (and, with
//! `sinks`, Kafka sinks for views and streams).
//!
//! A source is a task per stream or table declared `WITH (connector =
//! 'kafka', ...)`: it reads the topic, decodes records into Arrow
//! (`decode.rs`) and writes them with its position through
//! `Catalog::ingest`; what it did shows in the system table
//! `sluice_sources` (`status.rs`).

pub mod decode;
pub mod kafka;
pub mod nexmark;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sluice_catalog::{Catalog, Relation};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};
use tokio::task::JoinHandle;

pub use kafka::options::{KafkaSink, KafkaSource};
pub use nexmark::NexmarkSource;
pub use status::{sinks_table, sources_table, SourceStatus, StatusList};

/// Starts a sink's task on its inbox (what `Dataflow::load` and
/// `Dataflow::create_sink` take).
pub type SpawnSink = Box<
    dyn FnOnce(sluice_dataflow::runtime::Inbox, sluice_dataflow::runtime::TaskEnv) -> JoinHandle<()>
        + Send,
>;

/// A source's status and task.
type Running = (Arc<SourceStatus>, JoinHandle<()>);

/// The running sources, and the status of every sink.
#[derive(Debug)]
pub struct Sources {
    catalog: Arc<Catalog>,
    running: Mutex<BTreeMap<u64, Running>>,
    sinks: Mutex<BTreeMap<String, Arc<SourceStatus>>>,
}

fn poisoned() -> SluiceError {
    SluiceError::internal("sources lock poisoned")
}

impl Sources {
    /// No sources yet.
    pub fn new(catalog: Arc<Catalog>) -> Result<Arc<Self>> {
        catalog.set_replay(Arc::new(nexmark::NexmarkReplay))?;
        Ok(Arc::new(Sources {
            catalog,
            running: Mutex::new(BTreeMap::new()),
            sinks: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The task of sink `name` with these options, keyed by the columns at
    /// `key`, reading a relation of kind `from`.
    pub fn sink(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
        key: Vec<usize>,
        from: RelationKind,
    ) -> Result<SpawnSink> {
        let options = KafkaSink::parse(name, options)?;
        let status = Arc::new(SourceStatus::new(name, &options.topic));
        self.sinks
            .lock()
            .map_err(|_| poisoned())?
            .insert(name.to_owned(), status.clone());
        let spec = kafka::sink::SinkSpec {
            options,
            key,
            with_op: from != RelationKind::Stream,
        };
        let name = name.to_owned();
        Ok(Box::new(move |inbox, env| {
            tokio::spawn(kafka::sink::run(spec, name, status, inbox, env))
        }))
    }

    /// Checks the connector options of a stream or table about to be
    /// created (before anything is stored).
    pub fn check(create: &CreateRelation, options: &BTreeMap<String, String>) -> Result<()> {
        let (kind, name) = (create.kind, create.name.as_str());
        match options.get("connector").map(String::as_str) {
            Some("kafka") => KafkaSource::parse(kind, name, options).map(|_| ()),
            Some("nexmark") => NexmarkSource::parse(kind, name, options)?.check_columns(create),
            _ => Ok(()),
        }
    }

    /// Starts reading into `relation` if it has a connector.
    pub fn start(&self, relation: Arc<Relation>) -> Result<()> {
        let options = &relation.entry().options;
        let (status, task) = match options.get("connector").map(String::as_str) {
            Some("kafka") => {
                let parsed = KafkaSource::parse(relation.kind(), relation.name(), options)?;
                let status = Arc::new(SourceStatus::new(relation.name(), &parsed.topic));
                let task = tokio::spawn(kafka::source::run(
                    self.catalog.clone(),
                    relation.clone(),
                    parsed,
                    status.clone(),
                ));
                (status, task)
            }
            Some("nexmark") => {
                let parsed = NexmarkSource::parse(relation.kind(), relation.name(), options)?;
                let topic = format!("nexmark {}", parsed.kind.name());
                let status = Arc::new(SourceStatus::new(relation.name(), &topic));
                // Said before the task runs, so that it holds from CREATE on.
                status.set_state("waiting for a view".to_owned());
                let task = tokio::spawn(nexmark::run(
                    self.catalog.clone(),
                    relation.clone(),
                    parsed,
                    status.clone(),
                ));
                (status, task)
            }
            _ => return Ok(()),
        };
        if let Some((_, old)) = self
            .running
            .lock()
            .map_err(|_| poisoned())?
            .insert(relation.entry().id, (status, task))
        {
            old.abort();
        }
        Ok(())
    }

    /// Starts every stored source (at server start).
    pub fn start_all(&self) -> Result<()> {
        for kind in [RelationKind::Stream, RelationKind::Table] {
            for relation in self.catalog.list(kind)? {
                self.start(relation)?;
            }
        }
        Ok(())
    }

    /// Stops the source of relation `relation`, if it has one (and forgets
    /// the status of a dropped sink).
    pub async fn stop(&self, relation: &Relation) {
        let id = relation.entry().id;
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.remove(relation.name());
        }
        let stopped = self.running.lock().ok().and_then(|mut r| r.remove(&id));
        if let Some((_, task)) = stopped {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops every source.
    pub async fn shutdown(&self) {
        let all: Vec<_> = match self.running.lock() {
            Ok(mut r) => std::mem::take(&mut *r).into_values().collect(),
            Err(_) => Vec::new(),
        };
        for (_, task) in all {
            task.abort();
            let _ = task.await;
        }
    }
}

impl StatusList for Sources {
    fn statuses(&self, sinks: bool) -> Vec<Arc<SourceStatus>> {
        if sinks {
            return self
                .sinks
                .lock()
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default();
        }
        self.running
            .lock()
            .map(|r| r.values().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default()
    }
}
