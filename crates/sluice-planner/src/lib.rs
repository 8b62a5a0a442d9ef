//! Sluice's planner: a view's SQL -> DataFusion `LogicalPlan` -> a tree of
//! incremental operators (`plan.rs`), and the running views ([`Dataflow`]).
//!
//! A write commits the relation's rows together with a changelog entry,
//! hands the change to the dataflow's router and returns; each view's
//! operators run as tasks (`sluice_dataflow::runtime`) and catch up
//! asynchronously. Checkpoints (every `checkpoint_interval`, and at each
//! `FLUSH`) commit every operator's state and every view's rows as of one
//! cut of the inputs, together with the removal of the changelog entries
//! they cover: a SELECT sees all views at the same checkpoint, and after a
//! crash the changes since the last checkpoint are replayed (`tasks.rs`).
//! After a restart, views are planned again from their SQL (operator ids
//! are the same, so their state is found again).

mod event_time;
mod plan;
mod session;
mod system;
mod tasks;
mod temporal;
mod windows;

pub use windows::register as register_functions;

use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long startup waits for the checkpoint of the changes it replayed.
const REPLAY_CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

use async_trait::async_trait;
use datafusion::common::DFSchema;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use sluice_catalog::{Catalog, ChangeListener, Created, LoggedChange, Relation};
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_dataflow::late::LateEvents;
use sluice_dataflow::runtime::{self, Report, Spawned, TaskEnv};
use sluice_dataflow::{Node, OpContext};
use sluice_sql::{CreateView, Drop, RelationKind};
use sluice_state::StateTxn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::plan::Builder;
use crate::tasks::{poisoned, Command, Coordinator, LiveView, Registry, Router, SharedRegistry};
use crate::temporal::AsOf;

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

/// The running views, and the listener that feeds them every write.
pub struct Dataflow {
    catalog: Arc<Catalog>,
    ctx: SessionContext,
    options: DataflowOptions,
    registry: SharedRegistry,
    router: mpsc::Sender<Command>,
    reports: mpsc::UnboundedSender<Report>,
    committed: watch::Receiver<u64>,
    services: std::sync::Mutex<Vec<JoinHandle<()>>>,
    late: Arc<LateEvents>,
    /// What the operators' state caches hold, in bytes (`sluice_memory`).
    cached: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataflow").finish_non_exhaustive()
    }
}

/// Starts a task that takes the changes of a relation (a sink): it gets
/// its inbox and its environment, reports at every barrier, and may delay
/// a checkpoint until what it wrote out is safe.
pub type SpawnSink = Box<dyn FnOnce(runtime::Inbox, TaskEnv) -> JoinHandle<()> + Send>;

/// While held, the router is paused with nothing in flight; dropping it
/// resumes.
struct Paused {
    _resume: oneshot::Sender<()>,
}

impl Dataflow {
    /// The dataflow of `catalog`; queries are planned in `ctx`. Starts the
    /// router and the coordinator; call [`Self::load`] next.
    pub fn new(catalog: Arc<Catalog>, ctx: SessionContext, options: DataflowOptions) -> Arc<Self> {
        windows::register(&ctx);
        let late = Arc::new(LateEvents::new(options.late_events_retention));
        let registry: SharedRegistry = Arc::new(RwLock::new(Registry::default()));
        let (router_tx, router_rx) = mpsc::channel(runtime::INBOX_CAPACITY);
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
            ctx,
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

    /// The optimized plan of a view's query, with the tables it joins by
    /// event time.
    async fn logical_plan(&self, query: &ast::Query) -> Result<(LogicalPlan, Vec<AsOf>)> {
        let mut query = query.clone();
        let temporal = temporal::prepare(&self.catalog, &mut query)?;
        let mut statement = ast::Statement::Query(Box::new(query));
        sluice_sql::naming::apply_postgres_column_names(&mut statement);
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        Ok((state.optimize(&plan)?, temporal))
    }

    /// The view's operators, the relations it reads, and whether its rows
    /// are only ever inserted.
    fn build(
        &self,
        plan: &LogicalPlan,
        temporal: Vec<AsOf>,
        view_id: u64,
        emit_on_window_close: bool,
    ) -> Result<(Node, Vec<String>, bool)> {
        let mut builder = Builder::new(&self.catalog, &self.ctx, view_id);
        builder.emit_on_window_close = emit_on_window_close;
        builder.temporal = temporal;
        let root = builder.build(plan)?;
        if let Some(unused) = builder.temporal.iter().find(|t| !t.used) {
            return Err(SluiceError::not_supported(
                format!(
                    "FOR SYSTEM_TIME AS OF on \"{}\" where it is not joined with a stream",
                    unused.qualifier
                ),
                Some("an event-time temporal join joins a stream (on the left) with a table"),
            ));
        }
        if emit_on_window_close && builder.windows == 0 {
            return Err(SluiceError::InvalidDefinition {
                message: "EMIT ON WINDOW CLOSE needs a GROUP BY on the window of a stream with a \
                          watermark, and this view has none"
                    .to_owned(),
                hint: Some(
                    "group by window_start/window_end of TUMBLE, HOP or CUMULATE over a stream \
                     that declares WATERMARK FOR its event time"
                        .to_owned(),
                ),
            });
        }
        if builder.depends_on.is_empty() {
            return Err(SluiceError::not_supported(
                "a materialized view that reads no stream, table or view",
                Some("a constant query needs no view: SELECT it directly"),
            ));
        }
        let appended = builder.append_only(plan);
        Ok((root, builder.depends_on, appended))
    }

    /// Re-plans every stored view (after a restart) and re-attaches every
    /// sink (`sinks` starts its task), in creation order, then replays the
    /// changes no checkpoint covered.
    pub async fn load(
        &self,
        sinks: &(dyn Fn(&Arc<Relation>) -> Result<SpawnSink> + Send + Sync),
    ) -> Result<()> {
        let mut views = self.catalog.list(RelationKind::View)?;
        views.extend(self.catalog.list(RelationKind::Sink)?);
        views.sort_by_key(|v| v.entry().id);
        for relation in views {
            if relation.failure().is_some() {
                continue;
            }
            if relation.kind() == RelationKind::Sink {
                let from = self.sink_input(&relation)?;
                let spawn = sinks(&relation)?;
                self.attach(relation, from.entry().id, spawn, None).await?;
                continue;
            }
            let Some(sql) = relation.entry().query.clone() else {
                return Err(SluiceError::internal("a view without its query"));
            };
            let view = sluice_sql::parse_view_query(&sql)?;
            let (plan, temporal) = self.logical_plan(&view.query).await?;
            let (root, _, _) = self.build(
                &plan,
                temporal,
                relation.entry().id,
                view.emit_on_window_close,
            )?;
            self.start(relation, root)?;
        }
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
            session: self.ctx.clone(),
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

    /// Runs a view's operators as tasks, its output going to the view's rows.
    fn start(&self, relation: Arc<Relation>, root: Node) -> Result<()> {
        let id = relation.entry().id;
        let env = self.task_env(id);
        let (sink, sink_inbox) = runtime::inbox();
        let mut spawned = Spawned::default();
        let operators = system::operators_of(&relation, &root);
        let mut event_time = Vec::new();
        let mut idle = Vec::new();
        let carries = {
            let registry = self.registry.read().map_err(|_| poisoned())?;
            let mut carries = std::collections::HashMap::new();
            for source in root.sources() {
                let Some(input) = self.catalog.get_by_id(source)? else {
                    continue;
                };
                let carried = match input.kind() {
                    // A table's watermark reaches the event-time temporal
                    // joins that read it, but holds back no output
                    // watermark: a join holds its own until the events
                    // waiting for the table go out.
                    RelationKind::Stream | RelationKind::Table => {
                        match self.watermark_expr(&input)? {
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
                        }
                    }
                    RelationKind::View => registry.views.get(&source).is_some_and(|v| v.carries),
                    RelationKind::Sink => false,
                };
                carries.insert(source, carried);
            }
            carries
        };
        let carried = runtime::spawn(
            root,
            sink,
            &env,
            &|relation| carries.get(&relation).copied().unwrap_or(false),
            &mut spawned,
        );
        spawned.tasks.push(tokio::spawn(tasks::run_sink(
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
        snapshot: Option<datafusion::arrow::array::RecordBatch>,
    ) -> Result<()> {
        let id = relation.entry().id;
        let env = self.task_env(id);
        let (outlet, inbox) = runtime::inbox();
        let task = spawn(inbox, env);
        if let Some(rows) = snapshot.filter(|r| r.num_rows() > 0) {
            outlet
                .send(runtime::Message::Data(ChangeBatch::inserts(rows)))
                .await;
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

    /// The columns that identify a row of `relation`, if it has such: a
    /// table's primary key, the GROUP BY columns of an aggregate view (as
    /// DataFusion's functional dependencies tell).
    pub async fn unique_key(&self, relation: &Relation) -> Result<Option<Vec<usize>>> {
        match relation.kind() {
            RelationKind::Table => Ok(Some(relation.entry().primary_key.clone())),
            RelationKind::View => {
                let Some(sql) = relation.entry().query.clone() else {
                    return Ok(None);
                };
                let view = sluice_sql::parse_view_query(&sql)?;
                let (plan, _) = self.logical_plan(&view.query).await?;
                let n = plan.schema().fields().len();
                Ok(plan
                    .schema()
                    .functional_dependencies()
                    .iter()
                    .filter(|d| {
                        d.mode == datafusion::common::Dependency::Single
                            && d.target_indices.len() == n
                            && !d.source_indices.is_empty()
                    })
                    .map(|d| d.source_indices.clone())
                    .min_by_key(Vec::len))
            }
            _ => Ok(None),
        }
    }

    /// `CREATE SINK`: records the sink, hands its task the current rows of
    /// its input (a table or view; a stream's sink starts with new events)
    /// and then every change.
    pub async fn create_sink(
        &self,
        create: &sluice_sql::CreateSink,
        key: Vec<usize>,
        spawn: SpawnSink,
    ) -> Result<Created> {
        let _writer = self.catalog.lock_writes().await;
        if let Some(existing) = self.catalog.get(&create.name)? {
            if create.if_not_exists && existing.kind() == RelationKind::Sink {
                return Ok(Created::AlreadyExisted);
            }
            return Err(SluiceError::DuplicateObject {
                kind: existing.kind().into(),
                name: create.name.clone(),
            });
        }
        let from = self
            .catalog
            .get(&create.from)?
            .ok_or_else(|| SluiceError::UndefinedObject {
                kind: sluice_common::ObjectKind::Relation,
                name: create.from.clone(),
            })?;
        if from.kind() == RelationKind::Sink {
            return Err(SluiceError::WrongObjectType {
                message: format!(
                    "\"{}\" is a sink: a sink reads a stream, table or view",
                    from.name()
                ),
                hint: None,
            });
        }
        from.check_not_failed()?;
        let options = create.options.iter().cloned().collect();
        let relation = self.catalog.new_sink(&create.name, &from, options, key)?;
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
            .await?;
        Ok(Created::New)
    }

    /// A stream's `WATERMARK FOR` expression, ready to evaluate.
    fn watermark_expr(&self, stream: &Relation) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(watermark) = &stream.entry().watermark else {
            return Ok(None);
        };
        let schema = DFSchema::try_from(stream.schema().as_ref().clone())?;
        let expr = self.ctx.parse_sql_expr(&watermark.expr, &schema)?;
        Ok(Some(self.ctx.create_physical_expr(expr, &schema)?))
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
        tasks::committed(self.committed.clone(), epoch).await
    }

    /// `CREATE MATERIALIZED VIEW`: plans the query, back-fills the view from
    /// the current contents of its inputs, and follows them from then on.
    pub async fn create_view(&self, create: &CreateView) -> Result<Created> {
        let _writer = self.catalog.lock_writes().await;
        if let Some(existing) = self.catalog.get(&create.name)? {
            if create.if_not_exists && existing.kind() == RelationKind::View {
                return Ok(Created::AlreadyExisted);
            }
            return Err(SluiceError::DuplicateObject {
                kind: existing.kind().into(),
                name: create.name.clone(),
            });
        }
        let (plan, temporal) = self.logical_plan(&create.query).await?;
        let id = self.catalog.next_id()?;
        let (root, depends_on, appended) =
            self.build(&plan, temporal, id, create.emit_on_window_close)?;
        let schema = plan.schema().as_arrow().clone();
        let relation = self.catalog.new_view(
            &create.name,
            &create.stored_query(),
            &schema,
            depends_on,
            appended,
        )?;
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
                session: &self.ctx,
                late: &mut late,
            };
            if let Some(out) = root.push(source, &changes, &mut ctx).await? {
                relation.apply_view_changes(&mut txn, &out)?;
            }
        }
        let mut ctx = OpContext {
            txn: &mut txn,
            session: &self.ctx,
            late: &mut late,
        };
        if let Some(out) = root.initialize(&mut ctx).await? {
            relation.apply_view_changes(&mut txn, &out)?;
        }
        self.catalog.register_view(&relation, &mut txn)?;
        self.catalog.commit(txn).await?;
        self.catalog.publish(relation.clone())?;
        self.start(relation, root)?;
        Ok(Created::New)
    }

    /// `EXPLAIN CREATE MATERIALIZED VIEW`: the operator tree, one operator a
    /// line with the state it keeps.
    pub async fn explain(&self, create: &CreateView) -> Result<Vec<String>> {
        let (plan, temporal) = self.logical_plan(&create.query).await?;
        let (root, _, _) = self.build(&plan, temporal, 0, create.emit_on_window_close)?;
        let mut lines = vec![format!("Materialize: {}", create.name)];
        lines.extend(root.explain().into_iter().map(|l| format!("  {l}")));
        Ok(lines)
    }

    /// `DROP STREAM|TABLE|MATERIALIZED VIEW`: stops the views that go and
    /// drops the relations with their rows and state.
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
