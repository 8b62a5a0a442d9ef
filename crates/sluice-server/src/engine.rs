//! The engine behind every session: the catalog, the state store, and the
//! DataFusion context that plans queries over them.
//!
//! Statements arrive parsed ([`sluice_sql::Statement`]); Sluice's own
//! statements go to their handler in [`crate::handlers`], standard SQL
//! (SELECT, INSERT, UPDATE, DELETE) is planned and run by DataFusion.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::ParamValues;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use sluice_catalog::{Catalog, SluiceSchema};
use sluice_common::{Result, SluiceError};
use sluice_connectors::{sinks_table, sources_table, Policy, Sources};
use sluice_dataflow::{Dataflow, DataflowOptions};
use sluice_planner::Planner;
use sluice_sql::{RelationKind, Statement};
use sluice_state::StateBackend;

use crate::handlers;

/// The name clients see as the database (`current_database()`).
pub const DATABASE: &str = "sluice";

/// What a statement produced.
#[derive(Debug)]
pub enum Output {
    /// Rows, all computed.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// A command tag such as `INSERT 0 3` or `CREATE STREAM`.
    Command {
        /// The command word(s).
        tag: String,
        /// Rows affected, for tags that report them.
        rows: Option<usize>,
    },
    /// `BEGIN`: Sluice applies every statement at once, so transactions only
    /// mark a block for clients that open one.
    TransactionStart,
    /// `COMMIT` or `ROLLBACK`.
    TransactionEnd(&'static str),
}

impl Output {
    /// A command tag without a row count.
    pub fn command(tag: &str) -> Self {
        Output::Command {
            tag: tag.to_owned(),
            rows: None,
        }
    }
}

/// A statement parsed, and planned when DataFusion runs it: what a prepared
/// statement holds.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The statement.
    pub statement: Statement,
    /// DataFusion's plan, for statements DataFusion runs.
    pub plan: Option<LogicalPlan>,
}

/// After a restart: plans every stored view again and re-attaches every
/// sink, in creation order (a view reads only older relations), then
/// replays the changes no checkpoint covered.
async fn resume(
    catalog: &Catalog,
    planner: &Planner,
    dataflow: &Dataflow,
    sources: &Sources,
) -> Result<()> {
    let mut relations = catalog.list(RelationKind::View)?;
    relations.extend(catalog.list(RelationKind::Sink)?);
    relations.sort_by_key(|r| r.entry().id);
    for relation in relations {
        if relation.failure().is_some() {
            continue;
        }
        if relation.kind() == RelationKind::Sink {
            let from = relation
                .entry()
                .depends_on
                .first()
                .and_then(|name| catalog.get(name).ok().flatten())
                .ok_or_else(|| SluiceError::internal("a sink's input vanished"))?;
            let spawn = sources.sink(
                relation.name(),
                &relation.entry().options,
                relation.entry().primary_key.clone(),
                from.kind(),
            )?;
            dataflow.resume_sink(relation, spawn).await?;
        } else {
            let root = planner.stored_view(&relation).await?;
            dataflow.resume_view(relation, root)?;
        }
    }
    dataflow.replay().await
}

/// Shared by every session of a server.
pub struct Engine {
    catalog: Arc<Catalog>,
    planner: Planner,
    dataflow: Arc<Dataflow>,
    sources: Arc<Sources>,
    ctx: SessionContext,
    pg_rewriter: PostgresCompatibilityParser,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the catalog in `store`, sets up the query context and resumes
    /// maintaining every view.
    pub async fn open(
        store: Arc<dyn StateBackend>,
        options: DataflowOptions,
        policy: Policy,
    ) -> Result<Self> {
        let catalog = Catalog::open(store)?;
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, "public")
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let provider = MemoryCatalogProvider::new();
        let schema = Arc::new(SluiceSchema::new(catalog.clone()));
        let sources = Sources::new(catalog.clone(), policy)?;
        schema.register_system_table("sluice_sources", Arc::new(sources_table(sources.clone())));
        schema.register_system_table("sluice_sinks", Arc::new(sinks_table(sources.clone())));
        provider.register_schema("public", schema.clone())?;
        ctx.register_catalog(DATABASE, Arc::new(provider));
        datafusion_pg_catalog::setup_pg_catalog(&ctx, DATABASE, EmptyContextProvider)
            .map_err(|e| SluiceError::from(*e))?;
        let planner = Planner::new(catalog.clone(), ctx.clone());
        let dataflow = Dataflow::new(catalog.clone(), ctx.clone(), options);
        schema.register_system_table("sluice_operators", dataflow.operators_table());
        schema.register_system_table("sluice_late_events", dataflow.late_events_table());
        schema.register_system_table("sluice_memory", dataflow.memory_table());
        resume(&catalog, &planner, &dataflow, &sources).await?;
        catalog.set_listener(Some(dataflow.clone()))?;
        sources.start_all()?;
        Ok(Engine {
            catalog,
            planner,
            dataflow,
            sources,
            ctx,
            pg_rewriter: PostgresCompatibilityParser::new(),
        })
    }

    /// Stops the views' tasks after a last checkpoint, so that the state
    /// store closes when the engine is dropped.
    pub async fn shutdown(&self) {
        self.sources.shutdown().await;
        self.dataflow.shutdown().await;
    }

    /// The running sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.sources
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The running views and sinks.
    pub fn dataflow(&self) -> &Arc<Dataflow> {
        &self.dataflow
    }

    /// Plans views.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// The DataFusion context queries are planned in.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans a statement: DataFusion's plan for standard SQL, nothing for
    /// Sluice's own statements (they are checked when they run).
    pub async fn prepare(&self, statement: Statement) -> Result<Prepared> {
        let plan = match &statement {
            Statement::Sql(sql) if runs_in_datafusion(sql) => {
                let mut rewritten = self.pg_rewriter.rewrite(sql.as_ref().clone());
                sluice_sql::naming::apply_postgres_column_names(&mut rewritten);
                let plan = self
                    .ctx
                    .state()
                    .statement_to_plan(DfStatement::Statement(Box::new(rewritten)))
                    .await?;
                Some(plan)
            }
            _ => None,
        };
        Ok(Prepared { statement, plan })
    }

    /// Runs a prepared statement with its parameter values. Returns once
    /// what it wrote is durable (its commit shares a disk sync with the
    /// statements that commit meanwhile).
    pub async fn execute(
        &self,
        prepared: &Prepared,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let output = self.execute_unsynced(prepared, params).await;
        self.catalog.durable().await?;
        output
    }

    async fn execute_unsynced(
        &self,
        prepared: &Prepared,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        match (&prepared.statement, &prepared.plan) {
            (_, Some(plan)) => {
                let plan = match params {
                    Some(params) => plan.clone().replace_params_with_values(&params)?,
                    None => plan.clone(),
                };
                self.run_plan(plan).await
            }
            (statement, None) => handlers::execute(self, statement).await,
        }
    }

    /// Parses, plans and runs one statement (simple query protocol).
    pub async fn run(&self, statement: Statement) -> Result<Output> {
        let prepared = self.prepare(statement).await?;
        self.execute(&prepared, None).await
    }

    async fn run_plan(&self, plan: LogicalPlan) -> Result<Output> {
        if let LogicalPlan::Dml(dml) = &plan {
            if matches!(dml.op, WriteOp::Update | WriteOp::Delete) {
                // Say "streams are append-only" before DataFusion tries to
                // scan the stream to find the rows.
                let verb = if dml.op == WriteOp::Update {
                    "update"
                } else {
                    "delete from"
                };
                let name = dml.table_name.table();
                if let Some(relation) = self.catalog.get(name)? {
                    relation.require_table(verb)?;
                }
            }
            if matches!(dml.op, WriteOp::Update | WriteOp::Delete) && self.matches_nothing(&plan)? {
                let tag = if dml.op == WriteOp::Update {
                    "UPDATE"
                } else {
                    "DELETE"
                };
                return Ok(Output::Command {
                    tag: tag.to_owned(),
                    rows: Some(0),
                });
            }
        }
        let dml = match &plan {
            LogicalPlan::Dml(dml) => Some(match dml.op {
                WriteOp::Insert(_) => "INSERT",
                WriteOp::Update => "UPDATE",
                WriteOp::Delete => "DELETE",
                _ => return Err(SluiceError::not_supported(format!("{}", dml.op), None)),
            }),
            _ => None,
        };
        // A query reads all its relations at one committed state; writes
        // (which hold the writer lock) need no snapshot. Relations are read
        // while the physical plan is made (`RelationTable::scan`), so the
        // snapshot is held only that long: a long query never keeps writers
        // (nor, behind them, other queries) waiting.
        let snapshot = match dml {
            None => Some(self.catalog.read_snapshot().await),
            Some(_) => None,
        };
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let task = df.task_ctx();
        let physical = df.create_physical_plan().await?;
        drop(snapshot);
        let batches = datafusion::physical_plan::collect(physical, Arc::new(task)).await?;
        match dml {
            Some(tag) => {
                let count = handlers::dml_count(&batches)?;
                Ok(Output::Command {
                    tag: tag.to_owned(),
                    rows: Some(count),
                })
            }
            None => Ok(Output::Rows { schema, batches }),
        }
    }
}

impl Engine {
    /// Whether the optimizer proved that an UPDATE or DELETE matches no row
    /// (`WHERE false`, `WHERE x = NULL`): it then removes the table scan, and
    /// DataFusion would hand the table no filter at all, which reads as
    /// "every row". Such a statement must change nothing.
    fn matches_nothing(&self, plan: &LogicalPlan) -> Result<bool> {
        let optimized = self.ctx.state().optimize(plan)?;
        let LogicalPlan::Dml(dml) = &optimized else {
            return Ok(false);
        };
        let scans_table = dml
            .input
            .exists(|node| Ok(matches!(node, LogicalPlan::TableScan(_))))?;
        Ok(!scans_table)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // pg_catalog's schema holds the context's catalog list, which holds
        // it: break that cycle so the catalog and the state store close.
        let _ = self.catalog.set_listener(None);
        if let Some(catalog) = self.ctx.catalog(DATABASE) {
            let _ = catalog.deregister_schema("pg_catalog", true);
            let _ = catalog.deregister_schema("public", true);
        }
    }
}

/// Whether DataFusion plans and runs this standard statement.
fn runs_in_datafusion(statement: &ast::Statement) -> bool {
    match statement {
        ast::Statement::Query(_)
        | ast::Statement::Insert(_)
        | ast::Statement::Update(_)
        | ast::Statement::Delete(_) => true,
        ast::Statement::Explain { statement, .. } => runs_in_datafusion(statement),
        _ => false,
    }
}
