//! [`Dataflow`]: the running views and sinks. It starts a view's operator
//! tree as tasks (back-filling it first when the view is new), attaches
//! sinks, feeds every committed write in through the router, and takes the
//! graph apart on `DROP` and at shutdown. Planning is not its business: it
//! receives the [`Node`] tree the planner built.
//!
//! A write commits the relation's rows together with a changelog entry,
//! hands the change to the router and returns; the views catch up
//! asynchronously. Checkpoints (every `checkpoint_interval`, and at each
//! `FLUSH`) commit every operator's state and every view's rows as of one
//! cut of the inputs, together with the removal of the changelog entries
//! they cover: a SELECT sees all views at the same checkpoint, and after a
//! crash the changes since the last checkpoint are replayed
//! ([`Dataflow::replay`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_catalog::{Catalog, ChangeListener, LoggedChange, Relation};
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_sql::{Drop, RelationKind};
use sluice_state::StateTxn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::coordinator::{committed, Coordinator};
use super::registry::{poisoned, LiveView, Registry, SharedRegistry};
use super::router::{Command, Router};
use super::sink::{SinkInput, SpawnSink};
use super::{inbox, rows, spawn, system, Message, Report, Spawned, TaskEnv, INBOX_CAPACITY};
use crate::late::LateEvents;
use crate::{Node, OpContext};

/// How long startup waits for the checkpoint of the changes it replayed.
const REPLAY_CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// How the dataflow runs.
#[derive(Debug, Clone)]
pub struct DataflowOptions {
    /// How often to checkpoint when changes are flowing.
    pub checkpoint_interval: Duration,
    /// State each operator keeps in memory above the store, in bytes.
    pub operator_cache_bytes: usize,
    /// How many late rows `sluice_late_events` keeps (the newest).
    pub late_events_retention: usize,
}

impl Default for DataflowOptions {
    fn default() -> Self {
        DataflowOptions {
            checkpoint_interval: Duration::from_secs(1),
            operator_cache_bytes: 64 << 20,
            late_events_retention: 10_000,
        }
    }
}

/// The running views and sinks, and the listener that feeds them every
/// write.
pub struct Dataflow {
    pub(crate) catalog: Arc<Catalog>,
    datafusion: SessionContext,
    options: DataflowOptions,
    pub(crate) registry: SharedRegistry,
    router: mpsc::Sender<Command>,
    reports: mpsc::UnboundedSender<Report>,
    committed: watch::Receiver<u64>,
    services: std::sync::Mutex<Vec<JoinHandle<()>>>,
    pub(crate) late: Arc<LateEvents>,
    /// What the operators' state caches hold, in bytes (`sluice_memory`).
    pub(crate) cached: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataflow").finish_non_exhaustive()
    }
}

/// While held, the router is paused with nothing in flight; dropping it
/// resumes.
struct Paused {
    _resume: oneshot::Sender<()>,
}

impl Dataflow {
    /// The dataflow of `catalog`; operators evaluate expressions in
    /// `datafusion`. Starts the router and the coordinator; resume the
    /// stored views and sinks next, then [`Self::replay`].
    pub fn new(
        catalog: Arc<Catalog>,
        datafusion: SessionContext,
        options: DataflowOptions,
    ) -> Arc<Self> {
        let late = Arc::new(LateEvents::new(options.late_events_retention));
        let registry: SharedRegistry = Arc::new(RwLock::new(Registry::default()));
        let (router_tx, router_rx) = mpsc::channel(INBOX_CAPACITY);
        let (begins_tx, begins_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (committed_tx, committed_rx) = watch::channel(0u64);
        let router = Router {
            registry: registry.clone(),
            begins: begins_tx,
            committed: committed_rx.clone(),
            interval: options.checkpoint_interval,
        };
        let coordinator = Coordinator {
            catalog: catalog.clone(),
            committed: committed_tx,
        };
        let services = vec![
            tokio::spawn(router.run(router_rx)),
            tokio::spawn(coordinator.run(begins_rx, reports_rx)),
        ];
        Arc::new(Dataflow {
            catalog,
            datafusion,
            options,
            registry,
            router: router_tx,
            reports: reports_tx,
            committed: committed_rx,
            services: std::sync::Mutex::new(services),
            late,
            cached: Arc::default(),
        })
    }

    /// After a restart: runs a stored view's operators again (`root` is
    /// planned from its SQL with the same operator ids, so the state is
    /// found again). Call in creation order, before [`Self::replay`].
    pub fn resume_view(&self, relation: Arc<Relation>, root: Node) -> Result<()> {
        self.start(relation, root)
    }

    /// After a restart: runs a stored sink's task again on the changes of
    /// its input.
    pub async fn resume_sink(&self, relation: Arc<Relation>, spawn: SpawnSink) -> Result<()> {
        let from = self.sink_input(&relation)?;
        self.attach(relation, from.entry().id, spawn, None).await
    }

    /// After the views and sinks are resumed: replays the changes no
    /// checkpoint covered, and waits (a while) for their checkpoint.
    pub async fn replay(&self) -> Result<()> {
        let pending = self.catalog.pending_changes()?;
        if !pending.is_empty() {
            tracing::info!(
                changes = pending.len(),
                "replaying changes since the last checkpoint"
            );
        }
        for change in pending {
            self.send(Command::Change(change)).await?;
        }
        // Checkpoint the replay before serving, but never wait on it for
        // long: a sink retrying a broker that is down holds checkpoints
        // up, and the server must still open its port.
        match tokio::time::timeout(REPLAY_CHECKPOINT_WAIT, self.flush()).await {
            Ok(done) => done,
            Err(_) => {
                tracing::warn!(
                    waited_s = REPLAY_CHECKPOINT_WAIT.as_secs(),
                    "the replayed changes are not checkpointed yet (is a sink retrying?); serving meanwhile"
                );
                Ok(())
            }
        }
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.router
            .send(command)
            .await
            .map_err(|_| SluiceError::internal("the dataflow stopped"))
    }

    /// What the tasks of view (or sink) `id` share.
    fn task_env(&self, id: u64) -> TaskEnv {
        TaskEnv {
            store: self.catalog.store().clone(),
            datafusion: self.datafusion.clone(),
            reports: self.reports.clone(),
            committed: self.committed.clone(),
            view: id,
            cache_bytes: self.options.operator_cache_bytes,
            name: Arc::from(
                self.catalog
                    .get_by_id(id)
                    .ok()
                    .flatten()
                    .map(|r| r.entry().name.clone())
                    .unwrap_or_default()
                    .as_str(),
            ),
            late: self.late.clone(),
            cached: self.cached.clone(),
        }
    }

    /// Whether each input of `root` carries a watermark, and the watermark
    /// expressions and idle timeouts of the streams and tables among them.
    #[allow(clippy::type_complexity)]
    fn watermarks_of(
        &self,
        root: &Node,
    ) -> Result<(
        HashMap<u64, bool>,
        Vec<(u64, Arc<dyn PhysicalExpr>)>,
        Vec<(u64, Duration)>,
    )> {
        let registry = self.registry.read().map_err(|_| poisoned())?;
        let mut carries = HashMap::new();
        let mut event_time = Vec::new();
        let mut idle = Vec::new();
        for source in root.sources() {
            let Some(input) = self.catalog.get_by_id(source)? else {
                continue;
            };
            let carried = match input.kind() {
                // A table's watermark reaches the event-time temporal
                // joins that read it, but holds back no output watermark:
                // a join holds its own until the events waiting for the
                // table go out.
                RelationKind::Stream | RelationKind::Table => match self.watermark_expr(&input)? {
                    Some(expr) => {
                        event_time.push((source, expr));
                        if let Some(v) = input.entry().options.get("idle_timeout") {
                            idle.push((
                                source,
                                sluice_catalog::duration_option("idle_timeout", v)?,
                            ));
                        }
                        input.kind() == RelationKind::Stream
                    }
                    None => false,
                },
                RelationKind::View => registry.views.get(&source).is_some_and(|v| v.carries),
                RelationKind::Sink => false,
            };
            carries.insert(source, carried);
        }
        Ok((carries, event_time, idle))
    }

    /// Runs a view's operators as tasks, its output going to the view's rows.
    fn start(&self, relation: Arc<Relation>, root: Node) -> Result<()> {
        let id = relation.entry().id;
        let env = self.task_env(id);
        let (sink, sink_inbox) = inbox();
        let mut spawned = Spawned::default();
        let operators = system::operators_of(&relation, &root);
        let (carries, event_time, idle) = self.watermarks_of(&root)?;
        let carried = spawn(
            root,
            sink,
            &env,
            &|relation| carries.get(&relation).copied().unwrap_or(false),
            &mut spawned,
        );
        spawned.tasks.push(tokio::spawn(rows::keep_rows(
            relation.clone(),
            sink_inbox,
            self.registry.clone(),
            env,
        )));
        let mut registry = self.registry.write().map_err(|_| poisoned())?;
        for (source, outlet) in spawned.inlets {
            registry
                .inlets
                .entry(source)
                .or_default()
                .push((id, outlet));
        }
        registry.event_time.extend(event_time);
        registry.operators.extend(operators);
        registry.idle.extend(idle);
        let nodes = spawned.tasks.len();
        registry.views.insert(
            id,
            LiveView {
                tasks: spawned.tasks,
                nodes,
                carries: carried,
            },
        );
        Ok(())
    }

    fn sink_input(&self, sink: &Relation) -> Result<Arc<Relation>> {
        let name = sink
            .entry()
            .depends_on
            .first()
            .ok_or_else(|| SluiceError::internal("a sink without its input"))?;
        self.catalog
            .get(name)?
            .ok_or_else(|| SluiceError::internal("a sink's input vanished"))
    }

    /// Runs a sink's task on the changes of relation `from`, first handing
    /// it `snapshot` (the relation's current rows) if given.
    async fn attach(
        &self,
        relation: Arc<Relation>,
        from: u64,
        spawn: SpawnSink,
        snapshot: Option<RecordBatch>,
    ) -> Result<()> {
        let id = relation.entry().id;
        let env = self.task_env(id);
        let (outlet, inbox) = inbox();
        let task = spawn(SinkInput::new(inbox, env));
        if let Some(rows) = snapshot.filter(|r| r.num_rows() > 0) {
            outlet.send(Message::Data(ChangeBatch::inserts(rows))).await;
        }
        let mut registry = self.registry.write().map_err(|_| poisoned())?;
        registry.inlets.entry(from).or_default().push((id, outlet));
        registry.views.insert(
            id,
            LiveView {
                tasks: vec![task],
                nodes: 1,
                carries: false,
            },
        );
        Ok(())
    }

    /// `CREATE SINK`, once the catalog has the new sink `relation` reading
    /// `from`: records it, hands its task the current rows of its input (a
    /// table or view; a stream's sink starts with new events) and then
    /// every change. Call with the writer lock held.
    pub async fn install_sink(
        &self,
        relation: Arc<Relation>,
        from: &Relation,
        spawn: SpawnSink,
    ) -> Result<()> {
        let _paused = self.pause().await?;
        let snapshot = match from.kind() {
            RelationKind::Stream => None,
            _ => Some(from.read_contents(self.catalog.store())?),
        };
        let mut txn = StateTxn::new(self.catalog.store().clone());
        self.catalog.register_view(&relation, &mut txn)?;
        self.catalog.commit(txn).await?;
        self.catalog.publish(relation.clone())?;
        self.attach(relation, from.entry().id, spawn, snapshot)
            .await
    }

    /// `CREATE MATERIALIZED VIEW`, once the catalog has the new view
    /// `relation` and the planner its operators `root`: back-fills the view
    /// from the current contents of its inputs, records it, and follows
    /// the inputs from then on. Call with the writer lock held.
    pub async fn install_view(&self, relation: Arc<Relation>, root: Node) -> Result<()> {
        let mut inputs = Vec::new();
        for source in root.sources() {
            let Some(input) = self.catalog.get_by_id(source)? else {
                return Err(SluiceError::internal("a view's input vanished"));
            };
            input.check_not_failed()?;
            inputs.push(input);
        }
        // Every change before this point is in the inputs' views; none
        // arrives until the view is running.
        let _paused = self.pause().await?;
        let mut txn = StateTxn::new(self.catalog.store().clone());
        // No watermark has passed yet: nothing is late while back-filling.
        let mut late = Vec::new();
        // Back-fill tables and views first, streams last: a stream's past
        // events then join the tables' current rows (a lookup join keeps
        // no stream rows to join later).
        inputs.sort_by_key(|r| r.kind() == RelationKind::Stream);
        for input in inputs {
            let source = input.entry().id;
            let contents = self.catalog.contents(&input, &txn)?;
            if contents.num_rows() == 0 {
                continue;
            }
            let changes = ChangeBatch::inserts(contents);
            let mut ctx = OpContext {
                txn: &mut txn,
                datafusion: &self.datafusion,
                late: &mut late,
            };
            if let Some(out) = root.push(source, &changes, &mut ctx).await? {
                relation.apply_view_changes(&mut txn, &out)?;
            }
        }
        let mut ctx = OpContext {
            txn: &mut txn,
            datafusion: &self.datafusion,
            late: &mut late,
        };
        if let Some(out) = root.initialize(&mut ctx).await? {
            relation.apply_view_changes(&mut txn, &out)?;
        }
        self.catalog.register_view(&relation, &mut txn)?;
        self.catalog.commit(txn).await?;
        self.catalog.publish(relation.clone())?;
        self.start(relation, root)
    }

    /// A stream's `WATERMARK FOR` expression, ready to evaluate.
    fn watermark_expr(&self, stream: &Relation) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(watermark) = &stream.entry().watermark else {
            return Ok(None);
        };
        let schema = DFSchema::try_from(stream.schema().as_ref().clone())?;
        let expr = self.datafusion.parse_sql_expr(&watermark.expr, &schema)?;
        Ok(Some(self.datafusion.create_physical_expr(expr, &schema)?))
    }

    /// Checkpoints and holds the router until the result is dropped: no
    /// change or barrier is in flight, and every earlier change is in the
    /// views. Call with the writer lock held.
    async fn pause(&self) -> Result<Paused> {
        let (paused_tx, paused_rx) = oneshot::channel();
        let (resume_tx, resume_rx) = oneshot::channel();
        self.send(Command::Pause {
            paused: paused_tx,
            resume: resume_rx,
        })
        .await?;
        paused_rx
            .await
            .map_err(|_| SluiceError::internal("the dataflow stopped"))?;
        Ok(Paused { _resume: resume_tx })
    }

    /// `FLUSH`: returns once every change committed before it is in every
    /// view (a checkpoint that covers it has committed).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Checkpoint(tx)).await?;
        let epoch = rx
            .await
            .map_err(|_| SluiceError::internal("the dataflow stopped"))?;
        committed(self.committed.clone(), epoch).await
    }

    /// `DROP STREAM|TABLE|MATERIALIZED VIEW|SINK`: stops the views that go
    /// and drops the relations with their rows and state.
    pub async fn drop_relations(&self, drop: &Drop) -> Result<Vec<Arc<Relation>>> {
        let _writer = self.catalog.lock_writes().await;
        let _paused = self.pause().await?;
        let dropped = self.catalog.drop_relations_locked(drop)?;
        let mut stopped = Vec::new();
        {
            let mut registry = self.registry.write().map_err(|_| poisoned())?;
            for r in &dropped {
                stopped.extend(registry.remove_view(r.entry().id));
                registry.inlets.remove(&r.entry().id);
            }
        }
        for task in stopped {
            task.abort();
            let _ = task.await;
        }
        Ok(dropped)
    }

    /// Checkpoints what has arrived and stops every task, so that the
    /// store can close.
    pub async fn shutdown(&self) {
        let _ = self.catalog.set_listener(None);
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let views: Vec<LiveView> = match self.registry.write() {
            Ok(mut r) => {
                r.inlets.clear();
                std::mem::take(&mut r.views).into_values().collect()
            }
            Err(_) => Vec::new(),
        };
        let mut handles: Vec<JoinHandle<()>> = views.into_iter().flat_map(|v| v.tasks).collect();
        if let Ok(mut services) = self.services.lock() {
            handles.append(&mut services);
        }
        for handle in handles {
            handle.abort();
            let _ = handle.await;
        }
    }
}

#[async_trait]
impl ChangeListener for Dataflow {
    fn follows(&self, id: u64) -> bool {
        self.registry
            .read()
            .map(|r| r.inlets.contains_key(&id))
            .unwrap_or(true)
    }

    async fn on_committed(&self, change: LoggedChange) -> Result<()> {
        if self.send(Command::Change(change)).await.is_err() {
            // Committed and in the changelog: replayed at the next start.
            tracing::warn!("a change arrived while the dataflow was stopping");
        }
        Ok(())
    }
}
