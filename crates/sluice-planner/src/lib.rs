//! Sluice's planner: a view's SQL -> DataFusion `LogicalPlan` -> a tree of
//! incremental operators (`plan.rs`), and the set of live views that every
//! write flows through ([`Dataflow`]).
//!
//! Views are maintained synchronously inside the writer's transaction: an
//! INSERT, UPDATE or DELETE commits together with the state of every
//! operator and the rows of every view it changed, so a view is up to date
//! (and durable) when the write returns, and every SELECT sees all views at
//! the same point. After a restart, views are planned again from their SQL
//! (operator ids are the same, so their state is found again).

mod plan;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use sluice_catalog::{Catalog, ChangeListener, Created, Relation};
use sluice_common::{ChangeBatch, Result, SluiceError};
use sluice_dataflow::{Node, OpContext};
use sluice_sql::{CreateView, RelationKind};
use sluice_state::StateTxn;

use crate::plan::Builder;

/// One maintained view.
struct ViewGraph {
    relation: Arc<Relation>,
    root: Node,
    sources: Vec<u64>,
}

/// Every live view, and the listener that pushes each write through them.
pub struct Dataflow {
    catalog: Arc<Catalog>,
    ctx: SessionContext,
    views: RwLock<BTreeMap<u64, Arc<ViewGraph>>>,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataflow").finish_non_exhaustive()
    }
}

fn poisoned() -> SluiceError {
    SluiceError::internal("dataflow lock poisoned")
}

impl Dataflow {
    /// The dataflow of `catalog`; queries are planned in `ctx`.
    pub fn new(catalog: Arc<Catalog>, ctx: SessionContext) -> Arc<Self> {
        Arc::new(Dataflow {
            catalog,
            ctx,
            views: RwLock::new(BTreeMap::new()),
        })
    }

    async fn logical_plan(&self, query: &ast::Query) -> Result<LogicalPlan> {
        let mut statement = ast::Statement::Query(Box::new(query.clone()));
        sluice_sql::naming::apply_postgres_column_names(&mut statement);
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        Ok(state.optimize(&plan)?)
    }

    fn build(&self, plan: &LogicalPlan, view_id: u64) -> Result<(Node, Vec<String>)> {
        let mut builder = Builder::new(&self.catalog, &self.ctx, view_id);
        let root = builder.build(plan)?;
        if builder.depends_on.is_empty() {
            return Err(SluiceError::not_supported(
                "a materialized view that reads no stream, table or view",
                Some("a constant query needs no view: SELECT it directly"),
            ));
        }
        Ok((root, builder.depends_on))
    }

    /// Re-plans every stored view (after a restart), in creation order.
    pub async fn load(&self) -> Result<()> {
        let mut views = self.catalog.list(RelationKind::View)?;
        views.sort_by_key(|v| v.entry().id);
        for relation in views {
            let Some(sql) = relation.entry().query.clone() else {
                return Err(SluiceError::internal("a view without its query"));
            };
            let query = match sluice_sql::parse(&sql)?.pop() {
                Some(sluice_sql::Statement::Sql(s)) => match *s {
                    ast::Statement::Query(q) => q,
                    _ => return Err(SluiceError::internal("a view's query is not a query")),
                },
                _ => return Err(SluiceError::internal("a view's query does not parse")),
            };
            let plan = self.logical_plan(&query).await?;
            let (root, _) = self.build(&plan, relation.entry().id)?;
            self.install(relation, root)?;
        }
        Ok(())
    }

    fn install(&self, relation: Arc<Relation>, root: Node) -> Result<()> {
        let sources = root.sources();
        let id = relation.entry().id;
        self.views.write().map_err(|_| poisoned())?.insert(
            id,
            Arc::new(ViewGraph {
                relation,
                root,
                sources,
            }),
        );
        Ok(())
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
        let plan = self.logical_plan(&create.query).await?;
        let id = self.catalog.next_id()?;
        let (root, depends_on) = self.build(&plan, id)?;
        let schema = plan.schema().as_arrow().clone();
        let relation =
            self.catalog
                .new_view(&create.name, &create.query.to_string(), &schema, depends_on)?;
        let mut txn = StateTxn::new(self.catalog.store().clone());
        // Back-fill tables and views first, streams last: a stream's past
        // events then join the tables' current rows (a lookup join keeps
        // no stream rows to join later).
        let mut inputs = Vec::new();
        for source in root.sources() {
            let Some(input) = self.catalog.get_by_id(source)? else {
                return Err(SluiceError::internal("a view's input vanished"));
            };
            inputs.push(input);
        }
        inputs.sort_by_key(|r| r.kind() == RelationKind::Stream);
        for input in inputs {
            let source = input.entry().id;
            let contents = input.read_contents(&txn)?;
            if contents.num_rows() == 0 {
                continue;
            }
            let changes = ChangeBatch::inserts(contents);
            let mut ctx = OpContext {
                txn: &mut txn,
                session: &self.ctx,
            };
            if let Some(out) = root.push(source, &changes, &mut ctx).await? {
                relation.apply_view_changes(&mut txn, &out)?;
            }
        }
        let mut ctx = OpContext {
            txn: &mut txn,
            session: &self.ctx,
        };
        if let Some(out) = root.initialize(&mut ctx).await? {
            relation.apply_view_changes(&mut txn, &out)?;
        }
        self.catalog.register_view(&relation, &mut txn)?;
        self.catalog.commit(txn).await?;
        self.catalog.publish(relation.clone())?;
        self.install(relation, root)?;
        Ok(Created::New)
    }

    /// `EXPLAIN CREATE MATERIALIZED VIEW`: the operator tree, one operator a
    /// line with the state it keeps.
    pub async fn explain(&self, create: &CreateView) -> Result<Vec<String>> {
        let plan = self.logical_plan(&create.query).await?;
        let (root, _) = self.build(&plan, 0)?;
        let mut lines = vec![format!("Materialize: {}", create.name)];
        lines.extend(root.explain().into_iter().map(|l| format!("  {l}")));
        Ok(lines)
    }

    /// Stops maintaining views that were dropped.
    pub fn forget(&self, ids: &[u64]) -> Result<()> {
        let mut views = self.views.write().map_err(|_| poisoned())?;
        for id in ids {
            views.remove(id);
        }
        Ok(())
    }
}

#[async_trait]
impl ChangeListener for Dataflow {
    async fn on_changes(
        &self,
        source: &Arc<Relation>,
        changes: ChangeBatch,
        txn: &mut StateTxn,
    ) -> Result<()> {
        // Views only read views created before them, so creation order is a
        // topological order; a view's output change queues behind the
        // changes of its other inputs.
        let mut queue = VecDeque::from([(source.entry().id, changes)]);
        while let Some((id, changes)) = queue.pop_front() {
            let graphs: Vec<Arc<ViewGraph>> = self
                .views
                .read()
                .map_err(|_| poisoned())?
                .values()
                .filter(|g| g.sources.contains(&id))
                .cloned()
                .collect();
            for graph in graphs {
                let mut ctx = OpContext {
                    txn,
                    session: &self.ctx,
                };
                let Some(out) = graph.root.push(id, &changes, &mut ctx).await? else {
                    continue;
                };
                if out.is_empty() {
                    continue;
                }
                graph.relation.apply_view_changes(txn, &out)?;
                queue.push_back((graph.relation.entry().id, out));
            }
        }
        Ok(())
    }
}
