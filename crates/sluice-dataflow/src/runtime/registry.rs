//! The shape of the running graph: which outlets take the changes of each
//! relation, the running views and their tasks, and what the system tables
//! show of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::physical_plan::PhysicalExpr;
use sluice_common::SluiceError;
use tokio::task::JoinHandle;

use super::system::OperatorInfo;
use super::Outlet;

/// A running view: its tasks and how many of them report at a barrier.
pub(crate) struct LiveView {
    pub tasks: Vec<JoinHandle<()>>,
    pub nodes: usize,
    /// Whether the view's output carries a watermark.
    pub carries: bool,
}

/// The shape of the running graph. Changed only while the router is paused
/// (no change or barrier in flight).
#[derive(Default)]
pub(crate) struct Registry {
    /// Where changes of each relation go: (owning view, outlet).
    pub inlets: HashMap<u64, Vec<(u64, Outlet)>>,
    /// The running views, by id.
    pub views: BTreeMap<u64, LiveView>,
    /// The watermark expression of each stream a running view reads that
    /// declares one.
    pub event_time: HashMap<u64, Arc<dyn PhysicalExpr>>,
    /// The `idle_timeout` of each stream with a watermark that has one.
    pub idle: HashMap<u64, Duration>,
    /// Every running view's operators, for `sluice_operators`.
    pub operators: Vec<OperatorInfo>,
}

impl Registry {
    /// How many tasks report at each barrier.
    pub fn nodes(&self) -> usize {
        self.views.values().map(|v| v.nodes).sum()
    }

    /// The outlets that take changes of `relation`.
    pub fn outlets(&self, relation: u64) -> Vec<Outlet> {
        self.inlets
            .get(&relation)
            .map(|v| v.iter().map(|(_, o)| o.clone()).collect())
            .unwrap_or_default()
    }

    /// The outlets fed by the router (streams and tables, not views).
    pub fn base_outlets(&self) -> Vec<Outlet> {
        self.inlets
            .iter()
            .filter(|(relation, _)| !self.views.contains_key(relation))
            .flat_map(|(_, v)| v.iter().map(|(_, o)| o.clone()))
            .collect()
    }

    /// Removes a view: its inlets, and its tasks (returned, to be stopped).
    pub fn remove_view(&mut self, id: u64) -> Vec<JoinHandle<()>> {
        for outlets in self.inlets.values_mut() {
            outlets.retain(|(owner, _)| *owner != id);
        }
        self.inlets.retain(|_, v| !v.is_empty());
        self.operators.retain(|o| o.view != id);
        self.views.remove(&id).map(|v| v.tasks).unwrap_or_default()
    }
}

pub(crate) type SharedRegistry = Arc<RwLock<Registry>>;

pub(crate) fn poisoned() -> SluiceError {
    SluiceError::internal("dataflow lock poisoned")
}
