//! The tasks around the views' operators: the router that feeds committed
//! changes and barriers into the graph, the sink of each view that keeps
//! its rows, and the coordinator that commits checkpoints.
//!
//! ```text
//! writers --changelog--> router --Data/Barrier--> operator tasks --> view sink --> views on views
//!                          |                                          |
//!                          +--Begin(epoch)--> coordinator <--Report---+ (every task)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::physical_plan::PhysicalExpr;
use sluice_catalog::{changelog_key, failure_key, Catalog, LoggedChange, Relation};
use sluice_common::{Result, SluiceError};
use sluice_dataflow::runtime::{max_event_time, Inbox, Message, Outlet, Report, TaskEnv};
use sluice_state::WriteBatch;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

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
    pub operators: Vec<crate::system::OperatorInfo>,
}

impl Registry {
    /// How many tasks report at each barrier.
    fn nodes(&self) -> usize {
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
    fn base_outlets(&self) -> Vec<Outlet> {
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

/// What the router is asked to do.
pub(crate) enum Command {
    /// Feed a committed change into the graph.
    Change(LoggedChange),
    /// Start a checkpoint now; reply with its epoch.
    Checkpoint(oneshot::Sender<u64>),
    /// Checkpoint, then stop until `resume` fires (or is dropped), so the
    /// graph can be changed.
    Pause {
        paused: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    },
    /// Checkpoint and end.
    Stop(oneshot::Sender<()>),
}

/// The router tells the coordinator an epoch began: how many reports to
/// expect and which changelog entries it covers.
pub(crate) struct Begin {
    epoch: u64,
    expected: usize,
    seqs: Vec<u64>,
    /// Writes the covered changes asked for (generated sources' positions).
    writes: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct Router {
    pub registry: SharedRegistry,
    pub begins: mpsc::UnboundedSender<Begin>,
    pub committed: watch::Receiver<u64>,
    pub interval: Duration,
}

impl Router {
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let mut next_epoch = *self.committed.borrow() + 1;
        let mut seqs: Vec<u64> = Vec::new();
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut watermarks: HashMap<u64, i64> = HashMap::new();
        // For idle_timeout: when each stream last had events, and its
        // watermark then.
        let mut arrivals: HashMap<u64, (tokio::time::Instant, i64)> = HashMap::new();
        let mut ticker = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    match command {
                        Command::Change(change) => {
                            let (outlets, event_time) = match self.registry.read() {
                                Ok(r) => (r.outlets(change.source), r.event_time.get(&change.source).cloned()),
                                Err(_) => break,
                            };
                            let watermark = event_time.and_then(|expr| {
                                let max = max_event_time(&expr, &change.changes.batch)
                                    .map_err(|e| tracing::warn!(error = %e, "watermark not computed"))
                                    .ok()??;
                                let current = watermarks.entry(change.source).or_insert(i64::MIN);
                                (max > *current).then(|| {
                                    *current = max;
                                    max
                                })
                            });
                            for outlet in outlets {
                                outlet.send(Message::Data(change.changes.clone())).await;
                                if let Some(w) = watermark {
                                    outlet.send(Message::Watermark(w)).await;
                                }
                            }
                            if let Some(w) = watermarks.get(&change.source) {
                                arrivals.insert(change.source, (tokio::time::Instant::now(), *w));
                            }
                            seqs.push(change.seq);
                            writes.extend(change.checkpoint);
                        }
                        Command::Checkpoint(reply) => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            let _ = reply.send(epoch);
                        }
                        Command::Pause { paused, resume } => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            self.wait_for(epoch).await;
                            let _ = paused.send(());
                            let _ = resume.await;
                        }
                        Command::Stop(done) => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            self.wait_for(epoch).await;
                            let _ = done.send(());
                            break;
                        }
                    }
                }
                _ = ticker.tick() => {
                    let idle = self.advance_idle(&arrivals, &mut watermarks).await;
                    if !seqs.is_empty() || idle {
                        self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                    }
                }
            }
        }
        tracing::debug!("dataflow router stopped");
    }

    /// Moves the watermark of every stream that has been quiet for its
    /// `idle_timeout` on with the wall clock (by the time since its last
    /// events), so that its windows close when traffic stops. Returns
    /// whether any moved.
    async fn advance_idle(
        &self,
        arrivals: &HashMap<u64, (tokio::time::Instant, i64)>,
        watermarks: &mut HashMap<u64, i64>,
    ) -> bool {
        let idle: Vec<(u64, Duration, Vec<Outlet>)> = match self.registry.read() {
            Ok(r) => r
                .idle
                .iter()
                .map(|(s, d)| (*s, *d, r.outlets(*s)))
                .collect(),
            Err(_) => return false,
        };
        let mut moved = false;
        for (source, timeout, outlets) in idle {
            let Some((arrived, base)) = arrivals.get(&source) else {
                continue;
            };
            let quiet = arrived.elapsed();
            if quiet < timeout {
                continue;
            }
            let quiet = i64::try_from(quiet.as_micros()).unwrap_or(i64::MAX);
            let w = base.saturating_add(quiet);
            let current = watermarks.entry(source).or_insert(i64::MIN);
            if w <= *current {
                continue;
            }
            *current = w;
            tracing::debug!(
                source,
                watermark = w,
                "idle stream: watermark follows the clock"
            );
            for outlet in outlets {
                outlet.send(Message::Watermark(w)).await;
            }
            moved = true;
        }
        moved
    }

    async fn wait_for(&self, epoch: u64) {
        let mut committed = self.committed.clone();
        let _ = committed.wait_for(|c| *c >= epoch).await;
    }

    /// Starts checkpoint epoch `next_epoch` at every source.
    async fn barrier(
        &self,
        next_epoch: &mut u64,
        seqs: &mut Vec<u64>,
        writes: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> u64 {
        let epoch = *next_epoch;
        *next_epoch += 1;
        let (expected, outlets) = match self.registry.read() {
            Ok(r) => (r.nodes(), r.base_outlets()),
            Err(_) => (0, Vec::new()),
        };
        let _ = self.begins.send(Begin {
            epoch,
            expected,
            seqs: std::mem::take(seqs),
            writes: std::mem::take(writes),
        });
        for outlet in outlets {
            outlet.send(Message::Barrier(epoch)).await;
        }
        epoch
    }
}

/// Keeps a view's rows and passes its changes on to the views that read it.
pub(crate) async fn run_sink(
    relation: Arc<Relation>,
    mut inbox: Inbox,
    registry: SharedRegistry,
    env: TaskEnv,
) {
    let id = relation.entry().id;
    let mut txn = env.txn();
    let mut failed = false;
    let mut failure = None;
    while let Some((_, message)) = inbox.recv().await {
        let outlets = match registry.read() {
            Ok(r) => r.outlets(id),
            Err(_) => break,
        };
        match message {
            Message::Data(changes) => {
                if failed {
                    continue;
                }
                if let Err(e) = relation.apply_view_changes(&mut txn, &changes) {
                    failed = true;
                    failure = Some(e);
                    continue;
                }
                for outlet in outlets {
                    outlet.send(Message::Data(changes.clone())).await;
                }
            }
            Message::Watermark(w) => {
                for outlet in outlets {
                    outlet.send(Message::Watermark(w)).await;
                }
            }
            Message::Barrier(epoch) => {
                if !env.checkpoint(epoch, &mut txn, failure.take()) {
                    break;
                }
                for outlet in outlets {
                    outlet.send(Message::Barrier(epoch)).await;
                }
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    expected: Option<usize>,
    reported: usize,
    writes: WriteBatch,
    seqs: Vec<u64>,
    begin_writes: Vec<(Vec<u8>, Vec<u8>)>,
    failures: Vec<(u64, SluiceError)>,
}

pub(crate) struct Coordinator {
    pub catalog: Arc<Catalog>,
    pub committed: watch::Sender<u64>,
}

impl Coordinator {
    pub async fn run(
        self,
        mut begins: mpsc::UnboundedReceiver<Begin>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        loop {
            tokio::select! {
                begin = begins.recv() => {
                    let Some(begin) = begin else { break };
                    let p = pending.entry(begin.epoch).or_default();
                    p.expected = Some(begin.expected);
                    p.seqs = begin.seqs;
                    p.begin_writes = begin.writes;
                }
                report = reports.recv() => {
                    let Some(report) = report else { break };
                    let p = pending.entry(report.epoch).or_default();
                    p.reported += 1;
                    p.writes.append(report.writes);
                    if let Some(e) = report.failure {
                        p.failures.push((report.view, e));
                    }
                }
            }
            while let Some(entry) = pending.first_entry() {
                let p = entry.get();
                if p.expected.is_none_or(|n| p.reported < n) {
                    break;
                }
                let (epoch, p) = entry.remove_entry();
                self.commit(epoch, p).await;
            }
        }
        tracing::debug!("dataflow coordinator stopped");
    }

    async fn commit(&self, epoch: u64, p: Pending) {
        let mut batch = p.writes;
        for seq in &p.seqs {
            batch.delete(changelog_key(*seq));
        }
        for (k, v) in p.begin_writes {
            batch.put(k, v);
        }
        let mut failed: Vec<(Arc<Relation>, String)> = Vec::new();
        for (view, error) in &p.failures {
            let reason = format!("{}: {error}", error.sqlstate());
            for relation in self.with_dependents(*view) {
                if relation.failure().is_none()
                    && !failed.iter().any(|(r, _)| Arc::ptr_eq(r, &relation))
                {
                    batch.put(
                        failure_key(relation.entry().id),
                        reason.clone().into_bytes(),
                    );
                    failed.push((relation, reason.clone()));
                }
            }
        }
        let changes = p.seqs.len();
        if let Err(e) = self.catalog.commit_checkpoint(batch).await {
            tracing::error!(epoch, error = %e, "checkpoint failed: views stop");
            for relation in self.with_dependents_all() {
                relation.set_failure(format!("{}: checkpoint failed: {e}", e.sqlstate()));
            }
        }
        for (relation, reason) in failed {
            tracing::warn!(view = %relation.name(), %reason, "materialized view stopped");
            relation.set_failure(reason);
        }
        tracing::trace!(epoch, changes, "checkpoint committed");
        self.committed.send_replace(epoch);
    }

    /// The view `id` and every view that reads it, transitively.
    fn with_dependents(&self, id: u64) -> Vec<Arc<Relation>> {
        let mut out = Vec::new();
        let mut todo: Vec<Arc<Relation>> = self
            .catalog
            .get_by_id(id)
            .ok()
            .flatten()
            .into_iter()
            .collect();
        while let Some(r) = todo.pop() {
            if out.iter().any(|o: &Arc<Relation>| Arc::ptr_eq(o, &r)) {
                continue;
            }
            todo.extend(self.catalog.dependents(r.name()).unwrap_or_default());
            out.push(r);
        }
        out
    }

    fn with_dependents_all(&self) -> Vec<Arc<Relation>> {
        self.catalog
            .list(sluice_sql::RelationKind::View)
            .unwrap_or_default()
    }
}

/// Waits until `epoch` is committed.
pub(crate) async fn committed(mut rx: watch::Receiver<u64>, epoch: u64) -> Result<()> {
    rx.wait_for(|c| *c >= epoch)
        .await
        .map(|_| ())
        .map_err(|_| SluiceError::internal("the dataflow stopped"))
}
