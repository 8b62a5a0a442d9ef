//! The event-time temporal join in planning: `stream s JOIN t FOR
//! SYSTEM_TIME AS OF s.ts ON ...`.
//!
//! Before DataFusion plans the query, each such join gets `t.<event time>
//! <= s.ts` added to its `ON` condition. That is true of every row the join
//! emits (the version an event meets is never newer than the event), and it
//! keeps both times in the join's inputs, which the optimizer would
//! otherwise prune when the query does not select them. The join is then
//! planned as usual and the builder ([`crate::plan`]) makes a
//! [`TemporalJoin`](sluice_dataflow::operators::TemporalJoin) of it.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Ident, JoinConstraint, JoinOperator, Query, SetExpr, TableFactor,
    VisitMut, VisitorMut,
};
use sluice_catalog::Catalog;
use sluice_common::{Result, SluiceError};
use sluice_dataflow::operators::{TemporalJoin, TemporalSpec};
use sluice_dataflow::Node;
use sluice_sql::{normalize_ident, object_name, RelationKind};

use crate::plan::Builder;

/// A table joined `FOR SYSTEM_TIME AS OF` a stream's column.
#[derive(Debug, Clone)]
pub(crate) struct AsOf {
    /// The table's name in the query (its alias, or its name).
    pub qualifier: String,
    /// The table.
    pub table: String,
    /// The stream's column, as the plan names it.
    pub column: Column,
    /// The table's event-time column.
    pub table_time: String,
    /// The builder made a temporal join of it.
    pub used: bool,
}

fn not_supported(what: impl Into<String>, hint: &str) -> SluiceError {
    SluiceError::not_supported(what, Some(hint))
}

const SHAPE: &str = "write stream s [LEFT] JOIN table t FOR SYSTEM_TIME AS OF s.ts ON s.k = t.k";

/// Finds the tables of `query` joined by event time and adds each one's
/// time condition to its join.
pub(crate) fn prepare(catalog: &Catalog, query: &mut Query) -> Result<Vec<AsOf>> {
    let mut visitor = Prepare {
        catalog,
        found: Vec::new(),
    };
    match query.visit(&mut visitor) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(visitor.found),
    }
}

struct Prepare<'a> {
    catalog: &'a Catalog,
    found: Vec<AsOf>,
}

impl VisitorMut for Prepare<'_> {
    type Break = SluiceError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<SluiceError> {
        match self.query(&mut query.body) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

fn versioned(factor: &TableFactor) -> bool {
    matches!(
        factor,
        TableFactor::Table { version, .. } if sluice_sql::as_of_column(version).is_some()
    )
}

impl Prepare<'_> {
    fn query(&mut self, body: &mut SetExpr) -> Result<()> {
        match body {
            SetExpr::Select(select) => {
                for from in &mut select.from {
                    if versioned(&from.relation) {
                        return Err(not_supported(
                            "FOR SYSTEM_TIME AS OF on the first table of FROM",
                            SHAPE,
                        ));
                    }
                    for join in &mut from.joins {
                        if versioned(&join.relation) {
                            self.join(join)?;
                        }
                    }
                }
                Ok(())
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.query(left)?;
                self.query(right)
            }
            _ => Ok(()),
        }
    }

    fn join(&mut self, join: &mut ast::Join) -> Result<()> {
        let TableFactor::Table {
            name,
            alias,
            version,
            ..
        } = &mut join.relation
        else {
            return Ok(());
        };
        let Some(as_of) = sluice_sql::as_of_column(version).cloned() else {
            return Ok(());
        };
        let table = object_name(name)?;
        let relation = self
            .catalog
            .get(&table)?
            .ok_or_else(|| SluiceError::UndefinedObject {
                kind: sluice_common::ObjectKind::Relation,
                name: table.clone(),
            })?;
        if relation.kind() != RelationKind::Table {
            return Err(not_supported(
                format!("FOR SYSTEM_TIME AS OF on {} \"{table}\"", relation.kind()),
                "an event-time temporal join looks up the versions of a table",
            ));
        }
        let Some(watermark) = relation.entry().watermark.clone() else {
            return Err(SluiceError::InvalidDefinition {
                message: format!(
                    "table \"{table}\" has no watermark: an event-time temporal join keeps its \
                     versions by event time"
                ),
                hint: Some(
                    "declare one: CREATE TABLE ... (..., updated_at TIMESTAMP, WATERMARK FOR \
                     updated_at AS updated_at)"
                        .to_owned(),
                ),
            });
        };
        let qualifier = match alias {
            Some(a) => normalize_ident(&a.name),
            None => table.clone(),
        };
        let column = match &as_of {
            ast::Expr::Identifier(i) => Column::from_name(normalize_ident(i)),
            ast::Expr::CompoundIdentifier(parts) => {
                let (last, rest) = parts
                    .split_last()
                    .ok_or_else(|| SluiceError::internal("an empty AS OF column"))?;
                let relation = rest
                    .iter()
                    .map(normalize_ident)
                    .collect::<Vec<_>>()
                    .join(".");
                Column::new(Some(relation), normalize_ident(last))
            }
            other => {
                return Err(not_supported(
                    format!("FOR SYSTEM_TIME AS OF {other}"),
                    SHAPE,
                ))
            }
        };
        let time = ast::Expr::BinaryOp {
            left: Box::new(ast::Expr::CompoundIdentifier(vec![
                Ident::with_quote('"', qualifier.clone()),
                Ident::with_quote('"', watermark.column.clone()),
            ])),
            op: BinaryOperator::LtEq,
            right: Box::new(as_of),
        };
        let constraint = match &mut join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c) => c,
            _ => {
                return Err(not_supported(
                    "an event-time temporal join other than JOIN or LEFT JOIN",
                    SHAPE,
                ))
            }
        };
        match constraint {
            JoinConstraint::On(on) => {
                *on = ast::Expr::BinaryOp {
                    left: Box::new(ast::Expr::Nested(Box::new(on.clone()))),
                    op: BinaryOperator::And,
                    right: Box::new(time),
                };
            }
            _ => {
                return Err(not_supported(
                    "an event-time temporal join without ON",
                    SHAPE,
                ))
            }
        }
        *version = None;
        self.found.push(AsOf {
            qualifier,
            table,
            column,
            table_time: watermark.column,
            used: false,
        });
        Ok(())
    }
}

/// The name the rows of `plan` are qualified with, if it reads one table
/// (through aliases, projections and filters).
pub(crate) fn qualifier_of(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => Some(a.alias.table().to_owned()),
        LogicalPlan::TableScan(s) => Some(s.table_name.table().to_owned()),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) => qualifier_of(plan.inputs()[0]),
        _ => None,
    }
}

/// The watermark expression of table `table`, over a batch whose only
/// column is its event time.
pub(crate) fn table_watermark(
    catalog: &Catalog,
    ctx: &SessionContext,
    table: &str,
) -> Result<Arc<dyn PhysicalExpr>> {
    let relation = catalog
        .get(table)?
        .ok_or_else(|| SluiceError::UndefinedObject {
            kind: sluice_common::ObjectKind::Relation,
            name: table.to_owned(),
        })?;
    let watermark = relation
        .entry()
        .watermark
        .clone()
        .ok_or_else(|| SluiceError::internal("a versioned table lost its watermark"))?;
    let schema = relation.schema();
    let field = schema.field_with_name(&watermark.column)?;
    let one = DFSchema::try_from(Schema::new(vec![Field::new(
        &watermark.column,
        field.data_type().clone(),
        true,
    )]))?;
    let expr = ctx.parse_sql_expr(&watermark.expr, &one)?;
    Ok(ctx.create_physical_expr(expr, &one)?)
}

/// `e` without the casts type coercion put around it.
fn uncast(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => uncast(&c.expr),
        Expr::TryCast(c) => uncast(&c.expr),
        e => e,
    }
}

impl Builder<'_> {
    /// `j`, whose right input is the table `self.temporal[at]` joined by
    /// event time.
    pub(crate) fn temporal_join(
        &mut self,
        plan: &LogicalPlan,
        j: &Join,
        at: usize,
    ) -> Result<Node> {
        let as_of = self.temporal[at].clone();
        let shape = |what: String| not_supported(what, SHAPE);
        if !matches!(j.join_type, JoinType::Inner | JoinType::Left) {
            return Err(shape(format!(
                "{} JOIN ... FOR SYSTEM_TIME AS OF",
                j.join_type.to_string().to_uppercase()
            )));
        }
        if !self.append_only(&j.left) {
            return Err(shape(format!(
                "FOR SYSTEM_TIME AS OF {} where the left side of the join is not a stream",
                as_of.column
            )));
        }
        let relation = self
            .catalog
            .get(&as_of.table)?
            .ok_or_else(|| SluiceError::internal("a versioned table vanished"))?;
        // One current row per join key: the key must hold the primary key.
        let table_schema = relation.schema();
        let on_right: Vec<String> =
            j.on.iter()
                .filter_map(|(_, r)| match uncast(r) {
                    Expr::Column(c) => Some(c.name.clone()),
                    _ => None,
                })
                .collect();
        let pk: Vec<String> = relation
            .entry()
            .primary_key
            .iter()
            .map(|&i| table_schema.field(i).name().clone())
            .collect();
        if let Some(missing) = pk.iter().find(|c| !on_right.contains(c)) {
            return Err(not_supported(
                format!(
                    "an event-time temporal join whose ON does not equate the primary key of \
                     \"{}\" (column \"{missing}\")",
                    as_of.table
                ),
                "each event meets one version of one row: join on the table's whole primary key",
            ));
        }
        let stream_time = j.left.schema().index_of_column(&as_of.column)?;
        let is_event_time = crate::event_time::bounds(self.catalog, &j.left)?
            .get(stream_time)
            .cloned()
            .flatten()
            .is_some_and(|b| b.identity);
        if !is_event_time {
            return Err(SluiceError::InvalidDefinition {
                message: format!(
                    "FOR SYSTEM_TIME AS OF {} must name the event-time column of a stream with a \
                     watermark",
                    as_of.column
                ),
                hint: Some(
                    "declare WATERMARK FOR ts AS ... on the stream, and join AS OF its ts"
                        .to_owned(),
                ),
            });
        }
        let table_time = j.right.schema().index_of_column(&Column::new(
            Some(as_of.qualifier.clone()),
            &as_of.table_time,
        ))?;
        let stream_keys =
            j.on.iter()
                .map(|(l, _)| self.physical(l, j.left.schema()))
                .collect::<Result<Vec<_>>>()?;
        let table_keys =
            j.on.iter()
                .map(|(_, r)| self.physical(r, j.right.schema()))
                .collect::<Result<Vec<_>>>()?;
        let filter = j
            .filter
            .as_ref()
            .map(|f| self.physical(f, &j.schema))
            .transpose()?;
        let label = format!(
            "TemporalJoin {}: on [{}] as of {}",
            j.join_type,
            j.on.iter()
                .map(|(l, r)| format!("{l} = {r}"))
                .collect::<Vec<_>>()
                .join(", "),
            as_of.column
        );
        let op = TemporalJoin::try_new(TemporalSpec {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            left: j.join_type == JoinType::Left,
            stream_schema: Arc::new(j.left.schema().as_arrow().clone()),
            table_schema: Arc::new(j.right.schema().as_arrow().clone()),
            stream_keys,
            table_keys,
            stream_time,
            table_time,
            table_watermark: table_watermark(self.catalog, self.ctx, &as_of.table)?,
            filter,
            label,
        })?;
        self.temporal[at].used = true;
        let left = self.build(&j.left)?;
        let right = self.build(&j.right)?;
        Ok(self.op(Box::new(op), vec![left, right]))
    }
}
