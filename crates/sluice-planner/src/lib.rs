//! Sluice's planner: a view's SQL -> an optimized DataFusion `LogicalPlan`
//! -> a tree of incremental operators ([`sluice_dataflow::Node`]). It only
//! translates; `sluice_dataflow::Dataflow` runs what it builds.
//!
//! - `plan.rs`: the [`Builder`](plan::Builder), one function per plan node
//!   kind (projection, filter, aggregate, join, union, window, ...).
//! - `event_time.rs`: which columns are bounded by a watermark (what lets a
//!   join or an aggregate free its state).
//! - `temporal.rs`: `FOR SYSTEM_TIME AS OF` joins.
//! - `session_window.rs`: `SESSION` windows.
//! - `windows.rs`: the `HOP` / `CUMULATE` window-list functions.
//!
//! A view is planned again from its stored SQL after a restart; operator
//! ids (and so state prefixes) come out the same.

mod event_time;
mod plan;
mod session_window;
mod temporal;
#[cfg(test)]
mod tests;
mod windows;

pub use windows::register as register_functions;

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use sluice_catalog::{Catalog, Relation};
use sluice_common::{Result, SluiceError};
use sluice_dataflow::Node;
use sluice_sql::{CreateView, RelationKind};

use crate::plan::Builder;
use crate::temporal::AsOf;

/// A view's query as DataFusion plans it, with the tables it joins by
/// event time.
pub struct LogicalView {
    /// The optimized plan.
    pub plan: LogicalPlan,
    temporal: Vec<AsOf>,
}

/// A view's operators, ready for the dataflow.
pub struct PlannedView {
    /// The operator tree.
    pub root: Node,
    /// The names of the relations it reads.
    pub depends_on: Vec<String>,
    /// Whether its rows are only ever inserted.
    pub appended: bool,
    /// Its output schema.
    pub schema: Schema,
}

/// Plans views over the relations of a catalog.
pub struct Planner {
    catalog: Arc<Catalog>,
    ctx: SessionContext,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").finish_non_exhaustive()
    }
}

impl Planner {
    /// Plans in `ctx` (where the catalog's relations are registered), and
    /// registers Sluice's window functions in it.
    pub fn new(catalog: Arc<Catalog>, ctx: SessionContext) -> Self {
        windows::register(&ctx);
        Planner { catalog, ctx }
    }

    /// The optimized plan of a view's query.
    pub async fn logical_plan(&self, query: &ast::Query) -> Result<LogicalView> {
        let mut query = query.clone();
        let temporal = temporal::prepare(&self.catalog, &mut query)?;
        let mut statement = ast::Statement::Query(Box::new(query));
        sluice_sql::naming::apply_postgres_column_names(&mut statement);
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        Ok(LogicalView {
            plan: state.optimize(&plan)?,
            temporal,
        })
    }

    /// The operators of view `view_id` over `view`: refuses what cannot be
    /// maintained (a constant query, `EMIT ON WINDOW CLOSE` without a
    /// window, a temporal join that is not one).
    pub fn operators(
        &self,
        view: LogicalView,
        view_id: u64,
        emit_on_window_close: bool,
    ) -> Result<PlannedView> {
        let mut builder = Builder::new(&self.catalog, &self.ctx, view_id);
        builder.emit_on_window_close = emit_on_window_close;
        builder.temporal = view.temporal;
        let root = builder.build(&view.plan)?;
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
        let appended = builder.append_only(&view.plan);
        Ok(PlannedView {
            root,
            depends_on: builder.depends_on,
            appended,
            schema: view.plan.schema().as_arrow().clone(),
        })
    }

    /// `CREATE MATERIALIZED VIEW`'s plan, for view `view_id`.
    pub async fn plan_view(&self, create: &CreateView, view_id: u64) -> Result<PlannedView> {
        let view = self.logical_plan(&create.query).await?;
        self.operators(view, view_id, create.emit_on_window_close)
    }

    /// The operators of a stored view, planned again from its SQL (after a
    /// restart).
    pub async fn stored_view(&self, relation: &Relation) -> Result<Node> {
        let Some(sql) = relation.entry().query.clone() else {
            return Err(SluiceError::internal("a view without its query"));
        };
        let view = sluice_sql::parse_view_query(&sql)?;
        let logical = self.logical_plan(&view.query).await?;
        Ok(self
            .operators(logical, relation.entry().id, view.emit_on_window_close)?
            .root)
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
                let plan = self.logical_plan(&view.query).await?.plan;
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

    /// `EXPLAIN CREATE MATERIALIZED VIEW`: the operator tree, one operator a
    /// line with the state it keeps.
    pub async fn explain(&self, create: &CreateView) -> Result<Vec<String>> {
        let root = self.plan_view(create, 0).await?.root;
        let mut lines = vec![format!("Materialize: {}", create.name)];
        lines.extend(root.explain().into_iter().map(|l| format!("  {l}")));
        Ok(lines)
    }
}
