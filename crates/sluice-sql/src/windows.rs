//! Window table functions in `FROM`, rewritten into plain SQL before
//! planning, so that ad hoc queries and views both get them and the
//! streaming planner sees an ordinary projection:
//!
//! `TUMBLE(src, ts, size [, offset])` becomes
//! `(SELECT *, date_bin(size, ts, origin) AS window_start,
//!   date_bin(size, ts, origin) + size AS window_end FROM src) AS src`,
//! with `origin` the epoch (plus `offset`).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, TableAlias, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sluice_common::{Result, SluiceError};

use crate::ast::Statement;

/// Rewrites the window table functions of `statement`.
pub fn rewrite_windows(statement: &mut Statement) -> Result<()> {
    let mut rewriter = Rewriter;
    let flow = match statement {
        Statement::Sql(s) => s.visit(&mut rewriter),
        Statement::CreateView(c) | Statement::ExplainCreateView(c) => c.query.visit(&mut rewriter),
        _ => ControlFlow::Continue(()),
    };
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = SluiceError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<SluiceError> {
        match rewrite(factor) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

fn usage(function: &str) -> SluiceError {
    SluiceError::Syntax {
        message: match function {
            "tumble" => "TUMBLE takes (source, time_column, size [, offset])".to_owned(),
            other => format!("{} is not a window function", other.to_uppercase()),
        },
    }
}

fn rewrite(factor: &mut TableFactor) -> Result<()> {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = factor
    else {
        return Ok(());
    };
    let function = name.to_string().to_lowercase();
    match function.as_str() {
        "tumble" => {}
        "hop" | "session" | "cumulate" => {
            return Err(SluiceError::not_supported(
                format!("the window function {}", function.to_uppercase()),
                Some("TUMBLE is available; HOP, SESSION and CUMULATE come with event-time support"),
            ))
        }
        _ => return Ok(()),
    }
    let args: Vec<String> = args
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.to_string()),
            _ => Err(usage(&function)),
        })
        .collect::<Result<_>>()?;
    let (source, ts, size) = match args.as_slice() {
        [source, ts, size] | [source, ts, size, _] => (source, ts, size),
        _ => return Err(usage(&function)),
    };
    let origin = match args.get(3) {
        Some(offset) => format!("TIMESTAMP '1970-01-01 00:00:00' + {offset}"),
        None => "TIMESTAMP '1970-01-01 00:00:00'".to_owned(),
    };
    let start = format!("date_bin({size}, {ts}, {origin})");
    let sql =
        format!("SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM {source}");
    let query = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|_| usage(&function))?;
    let alias = alias.clone().or_else(|| {
        Some(TableAlias {
            explicit: true,
            at: None,
            name: ast::Ident::new(source.rsplit('.').next().unwrap_or(source)),
            columns: Vec::new(),
        })
    });
    *factor = TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias,
        sample: None,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_becomes_a_projection_with_window_bounds() {
        let mut statements =
            crate::parse("SELECT window_start, count(*) FROM TUMBLE(bids, ts, INTERVAL '10 seconds') GROUP BY window_start")
                .expect("parses");
        let Statement::Sql(s) = statements.remove(0) else {
            panic!("not a query");
        };
        let text = s.to_string();
        assert!(
            text.contains("FROM (SELECT *, date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start"),
            "{text}"
        );
        assert!(text.contains(") AS bids GROUP BY"), "{text}");
        let e = crate::parse("SELECT * FROM TUMBLE(bids, ts)").expect_err("too few arguments");
        assert_eq!(e.sqlstate(), "42601");
        let e =
            crate::parse("SELECT * FROM HOP(bids, ts, INTERVAL '1 second', INTERVAL '2 seconds')")
                .expect_err("not yet");
        assert_eq!(e.sqlstate(), "0A000");
    }
}
