//! How deep a statement may nest. Parsing, planning and evaluation walk
//! expressions and set operations recursively (sqlparser's visitors,
//! DataFusion's planner, our operator builder, physical expressions), so a
//! statement nested thousands deep (`x + x + ... + x`, a long `UNION ALL`
//! chain) would overflow a worker's stack and abort the whole server. It
//! is refused here instead, with 54001 "statement too complex", before
//! anything recurses over it. Parentheses and subqueries are bounded by
//! sqlparser's own recursion limit (also 54001).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, SetExpr, Visit, Visitor};
use sluice_common::{Result, SluiceError};

use crate::ast::Statement;

/// The deepest expression tree a statement may hold: an operator chain of
/// this many terms still plans and evaluates in a 2 MiB stack in a debug
/// build, with room to spare.
pub const MAX_EXPRESSION_DEPTH: usize = 200;

/// The most set operations (`UNION`, `INTERSECT`, `EXCEPT`) chained in one
/// query body.
pub const MAX_SET_OPERATIONS: usize = 200;

/// Refuses `statement` if it nests deeper than the limits above.
pub fn check_depth(statement: &Statement) -> Result<()> {
    let flow = match statement {
        Statement::Sql(s) => s.visit(&mut Depth::default()),
        Statement::CreateView(c) | Statement::ExplainCreateView(c) => {
            c.query.visit(&mut Depth::default())
        }
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[derive(Default)]
struct Depth {
    expr: usize,
}

impl Visitor for Depth {
    type Break = SluiceError;

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<SluiceError> {
        let operations = set_operations(&query.body);
        if operations > MAX_SET_OPERATIONS {
            return ControlFlow::Break(SluiceError::TooComplex {
                message: format!(
                    "it chains {operations} set operations (UNION, INTERSECT, EXCEPT); \
                     the limit is {MAX_SET_OPERATIONS}"
                ),
            });
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _expr: &ast::Expr) -> ControlFlow<SluiceError> {
        self.expr += 1;
        if self.expr > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(SluiceError::TooComplex {
                message: format!(
                    "an expression is nested more than {MAX_EXPRESSION_DEPTH} levels deep"
                ),
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &ast::Expr) -> ControlFlow<SluiceError> {
        self.expr -= 1;
        ControlFlow::Continue(())
    }
}

/// The set operations in `body`, counted without recursion (the chain is
/// as deep as it is long).
fn set_operations(body: &SetExpr) -> usize {
    let mut count = 0;
    let mut pending = vec![body];
    while let Some(node) = pending.pop() {
        if let SetExpr::SetOperation { left, right, .. } = node {
            count += 1;
            pending.push(left);
            pending.push(right);
        }
    }
    count
}

#[cfg(test)]
mod tests {

    fn chain(op: &str, terms: usize) -> String {
        vec!["x"; terms].join(op)
    }

    #[test]
    fn deep_statements_are_refused_with_54001() {
        // (statement, refused)
        let table = [
            (format!("SELECT {} FROM t", chain(" + ", 150)), false),
            (format!("SELECT {} FROM t", chain(" + ", 1000)), true),
            (
                format!("SELECT * FROM t WHERE {}", chain(" AND ", 1000)),
                true,
            ),
            (
                format!(
                    "CREATE MATERIALIZED VIEW v AS SELECT {} FROM t",
                    chain(" || ", 1000)
                ),
                true,
            ),
            (vec!["SELECT 1"; 150].join(" UNION ALL "), false),
            (vec!["SELECT 1"; 1000].join(" UNION ALL "), true),
            (
                format!("SELECT {}1{} ", "(".repeat(500), ")".repeat(500)),
                true,
            ),
        ];
        for (sql, refused) in table {
            let result = crate::parse(&sql);
            match (refused, result) {
                (false, Ok(_)) => {}
                (true, Err(e)) => assert_eq!(e.sqlstate(), "54001", "{e}"),
                (false, Err(e)) => panic!("refused {}...: {e}", &sql[..40]),
                (true, Ok(_)) => panic!("accepted {}...", &sql[..40]),
            }
        }
    }
}
