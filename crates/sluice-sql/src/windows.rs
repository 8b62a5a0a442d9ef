//! Window table functions in `FROM`, rewritten into plain SQL before
//! planning, so that ad hoc queries and views both get them and the
//! streaming planner sees ordinary projections, unions and window
//! functions. `origin` is the epoch (plus the optional `offset`):
//!
//! - `TUMBLE(src, ts, size [, offset])`: one projection adding
//!   `window_start = date_bin(size, ts, origin)` and
//!   `window_end = window_start + size`.
//! - `HOP(src, ts, slide, size [, offset])`: each row unnested over the
//!   list of its `size / slide` window starts ([`HOP_FUNCTION`]), with
//!   `window_end = window_start + size`.
//! - `CUMULATE(src, ts, step, size [, offset])`: `window_start =
//!   date_bin(size, ts, origin)`, each row unnested over the ends of the
//!   windows of its period that hold it ([`CUMULATE_FUNCTION`]).
//!
//! One unnest, however many windows a row falls in (at most
//! [`MAX_WINDOWS_PER_ROW`]).
//! - `SESSION(src, ts, gap)`: window functions. Rows of one partition (the
//!   enclosing query's `GROUP BY` columns other than the window's) closer
//!   than `gap` to the previous one share a session; `window_start` is its
//!   first event time and `window_end` its last plus `gap`.

use std::ops::ControlFlow;

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, GroupByExpr, Query, SetExpr, TableAlias, TableFactor,
    VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
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

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<SluiceError> {
        match rewrite_query(query) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

/// Rewrites the window functions in the `FROM` of `query`'s SELECTs (a
/// session's partition comes from the SELECT's `GROUP BY`).
fn rewrite_query(query: &mut Query) -> Result<()> {
    let mut selects = Vec::new();
    collect_selects(&mut query.body, &mut selects);
    for select in selects {
        let partition = partition_of(&select.group_by);
        for from in &mut select.from {
            rewrite(&mut from.relation, &partition)?;
            for join in &mut from.joins {
                rewrite(&mut join.relation, &partition)?;
            }
        }
    }
    Ok(())
}

fn collect_selects<'a>(body: &'a mut SetExpr, out: &mut Vec<&'a mut ast::Select>) {
    match body {
        SetExpr::Select(s) => out.push(s),
        SetExpr::SetOperation { left, right, .. } => {
            collect_selects(left, out);
            collect_selects(right, out);
        }
        _ => {}
    }
}

/// The GROUP BY columns other than `window_start` / `window_end`, without
/// qualifiers (they name columns of the window's source).
fn partition_of(group_by: &GroupByExpr) -> Vec<String> {
    let GroupByExpr::Expressions(exprs, _) = group_by else {
        return Vec::new();
    };
    exprs
        .iter()
        .filter_map(|e| match e {
            ast::Expr::Identifier(i) => Some(i.clone()),
            ast::Expr::CompoundIdentifier(parts) => parts.last().cloned(),
            _ => None,
        })
        .filter(|i| {
            let name = i.value.to_lowercase();
            name != "window_start" && name != "window_end"
        })
        .map(|i| i.to_string())
        .collect()
}

fn usage(function: &str) -> SluiceError {
    SluiceError::Syntax {
        message: match function {
            "tumble" => "TUMBLE takes (source, time_column, size [, offset])".to_owned(),
            "hop" => "HOP takes (source, time_column, slide, size [, offset])".to_owned(),
            "cumulate" => "CUMULATE takes (source, time_column, step, size [, offset])".to_owned(),
            "session" => "SESSION takes (source, time_column, gap)".to_owned(),
            other => format!("{} is not a window function", other.to_uppercase()),
        },
    }
}

/// A positive interval without months, in microseconds.
fn micros(function: &str, what: &str, expr: &ast::Expr) -> Result<i64> {
    let bad = || SluiceError::InvalidOption {
        message: format!(
            "the {what} of {} must be a positive interval of fixed length, not {expr}",
            function.to_uppercase()
        ),
        hint: Some("write it as INTERVAL '10 seconds' (months vary in length)".to_owned()),
    };
    let ast::Expr::Interval(interval) = expr else {
        return Err(bad());
    };
    let value = match interval.value.as_ref() {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let text = match &interval.leading_field {
        Some(field) => format!("{value} {field}"),
        None => value,
    };
    let parsed = parse_interval_month_day_nano(&text).map_err(|_| bad())?;
    if parsed.months != 0 {
        return Err(bad());
    }
    let total = i64::from(parsed.days) * 86_400_000_000 + parsed.nanoseconds / 1000;
    if total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

/// `size` as a whole number of `unit`s.
fn multiple(function: &str, unit: (&str, i64), size: i64) -> Result<i64> {
    if size % unit.1 != 0 {
        return Err(SluiceError::InvalidOption {
            message: format!(
                "the size of {} must be a whole multiple of its {}",
                function.to_uppercase(),
                unit.0
            ),
            hint: None,
        });
    }
    Ok(size / unit.1)
}

/// The function a HOP becomes: the starts of a row's windows, as a list
/// (defined by the planner).
pub const HOP_FUNCTION: &str = "sluice_hop_windows";

/// The function a CUMULATE becomes: the ends of a row's windows.
pub const CUMULATE_FUNCTION: &str = "sluice_cumulate_windows";

/// The most windows one row may fall in: each is an output row.
pub const MAX_WINDOWS_PER_ROW: i64 = 10_000;

fn windows_per_row(function: &str, n: i64) -> Result<()> {
    if n > MAX_WINDOWS_PER_ROW {
        return Err(SluiceError::TooComplex {
            message: format!(
                "{} puts each row in {n} windows; the limit is {MAX_WINDOWS_PER_ROW}",
                function.to_uppercase()
            ),
        });
    }
    Ok(())
}

fn interval(us: i64) -> String {
    format!("INTERVAL '{us} microseconds'")
}

fn rewrite(factor: &mut TableFactor, partition: &[String]) -> Result<()> {
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
    if !matches!(function.as_str(), "tumble" | "hop" | "cumulate" | "session") {
        return Ok(());
    }
    let args: Vec<ast::Expr> = args
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
            _ => Err(usage(&function)),
        })
        .collect::<Result<_>>()?;
    let arity_ok = match function.as_str() {
        "tumble" => matches!(args.len(), 3 | 4),
        "session" => args.len() == 3,
        _ => matches!(args.len(), 4 | 5),
    };
    if !arity_ok {
        return Err(usage(&function));
    }
    let source = args[0].to_string();
    let ts = args[1].to_string();
    let offset_at = if function == "tumble" { 3 } else { 4 };
    let origin = match args.get(offset_at) {
        Some(offset) => format!("TIMESTAMP '1970-01-01 00:00:00' + {offset}"),
        None => "TIMESTAMP '1970-01-01 00:00:00'".to_owned(),
    };
    let sql = match function.as_str() {
        "tumble" => {
            let size = interval(micros(&function, "size", &args[2])?);
            let start = format!("date_bin({size}, {ts}, {origin})");
            format!(
                "SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM {source}"
            )
        }
        "hop" => {
            let slide = micros(&function, "slide", &args[2])?;
            let size = micros(&function, "size", &args[3])?;
            let n = multiple(&function, ("slide", slide), size)?;
            windows_per_row(&function, n)?;
            format!(
                "SELECT * EXCLUDE (__sluice_window), __sluice_window AS window_start, \
                   __sluice_window + {} AS window_end \
                 FROM (SELECT *, unnest({HOP_FUNCTION}({}, {}, {ts}, {origin})) AS __sluice_window \
                       FROM {source}) AS __sluice_windows",
                interval(size),
                interval(slide),
                interval(size),
            )
        }
        "cumulate" => {
            let step = micros(&function, "step", &args[2])?;
            let size = micros(&function, "size", &args[3])?;
            let n = multiple(&function, ("step", step), size)?;
            windows_per_row(&function, n)?;
            format!(
                "SELECT * EXCLUDE (__sluice_period, __sluice_window), \
                   __sluice_period AS window_start, __sluice_window AS window_end \
                 FROM (SELECT *, date_bin({}, {ts}, {origin}) AS __sluice_period, \
                         unnest({CUMULATE_FUNCTION}({}, {}, {ts}, {origin})) AS __sluice_window \
                       FROM {source}) AS __sluice_windows",
                interval(size),
                interval(step),
                interval(size),
            )
        }
        _ => {
            let gap_micros = micros(&function, "gap", &args[2])?;
            let gap = interval(gap_micros);
            let by = if partition.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {} ", partition.join(", "))
            };
            let session_by = if partition.is_empty() {
                "PARTITION BY __sluice_session".to_owned()
            } else {
                format!("PARTITION BY {}, __sluice_session", partition.join(", "))
            };
            format!(
                "SELECT * EXCLUDE (__sluice_new, __sluice_session), \
                   min({ts}) OVER ({session_by}) AS window_start, \
                   max({ts}) OVER ({session_by}) + {gap} AS window_end \
                 FROM (SELECT *, sum(__sluice_new) OVER ({by}ORDER BY {ts} \
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __sluice_session \
                       FROM (SELECT *, CASE WHEN {ts} - lag({ts}) OVER ({by}ORDER BY {ts}) < {gap} \
                                       THEN 0 ELSE 1 END AS __sluice_new \
                             FROM {source}) AS __sluice_gaps) AS {alias}",
                alias = session_alias(gap_micros)
            )
        }
    };
    let query = Parser::new(&GenericDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|_| usage(&function))?;
    let alias = alias.clone().or_else(|| {
        Some(TableAlias {
            explicit: true,
            at: None,
            name: ast::Ident::new(source.rsplit('.').next().unwrap_or(&source)),
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

/// The subquery alias the rewrite of `SESSION(src, ts, gap)` gets: how the
/// planner recognizes the shape and reads the gap back
/// ([`session_gap_of_alias`]). The two are the only place that knows it.
pub fn session_alias(gap_micros: i64) -> String {
    format!("{SESSION_ALIAS}{gap_micros}")
}

/// The gap (microseconds) of a [`session_alias`], or `None` for any other
/// alias.
pub fn session_gap_of_alias(alias: &str) -> Option<i64> {
    alias.strip_prefix(SESSION_ALIAS)?.parse().ok()
}

const SESSION_ALIAS: &str = "__sluice_sessions_";

#[cfg(test)]
mod tests {
    #[test]
    fn a_session_alias_gives_back_its_gap() {
        assert_eq!(session_gap_of_alias(&session_alias(-7)), Some(-7));
        assert_eq!(
            session_gap_of_alias(&session_alias(60_000_000)),
            Some(60_000_000)
        );
        assert_eq!(session_gap_of_alias("__sluice_gaps"), None);
        assert_eq!(session_gap_of_alias("__sluice_sessions_x"), None);
    }

    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statements = crate::parse(sql).expect("parses");
        let Statement::Sql(s) = statements.remove(0) else {
            panic!("not a query");
        };
        s.to_string()
    }

    #[test]
    fn tumble_becomes_a_projection_with_window_bounds() {
        let text = rewritten(
            "SELECT window_start, count(*) FROM TUMBLE(bids, ts, INTERVAL '10 seconds') GROUP BY window_start",
        );
        assert!(
            text.contains("FROM (SELECT *, date_bin(INTERVAL '10000000 microseconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start"),
            "{text}"
        );
        assert!(text.contains(") AS bids GROUP BY"), "{text}");
        let e = crate::parse("SELECT * FROM TUMBLE(bids, ts)").expect_err("too few arguments");
        assert_eq!(e.sqlstate(), "42601");
    }

    #[test]
    fn hop_and_cumulate_unnest_the_list_of_a_rows_windows() {
        let text =
            rewritten("SELECT * FROM HOP(bids, ts, INTERVAL '2 seconds', INTERVAL '10 seconds')");
        assert!(!text.contains("UNION"), "{text}");
        assert!(
            text.contains("unnest(sluice_hop_windows(INTERVAL '2000000 microseconds', INTERVAL '10000000 microseconds', ts,"),
            "{text}"
        );
        let text =
            rewritten("SELECT * FROM CUMULATE(bids, ts, INTERVAL '1' MINUTE, INTERVAL '1 hour')");
        assert!(!text.contains("UNION"), "{text}");
        assert!(
            text.contains("unnest(sluice_cumulate_windows(INTERVAL '60000000 microseconds'"),
            "{text}"
        );
        // (statement, SQLSTATE)
        let table = [
            (
                "SELECT * FROM HOP(bids, ts, INTERVAL '3 seconds', INTERVAL '10 seconds')",
                "22023",
            ),
            (
                "SELECT * FROM HOP(bids, ts, INTERVAL '1 month', INTERVAL '2 months')",
                "22023",
            ),
            (
                "SELECT * FROM CUMULATE(bids, ts, 5, INTERVAL '10 seconds')",
                "22023",
            ),
            (
                "SELECT * FROM HOP(bids, ts, INTERVAL '1 millisecond', INTERVAL '1 day')",
                "54001",
            ),
        ];
        for (bad, sqlstate) in table {
            assert_eq!(
                crate::parse(bad).expect_err(bad).sqlstate(),
                sqlstate,
                "{bad}"
            );
        }
        rewritten("SELECT * FROM HOP(bids, ts, INTERVAL '1 second', INTERVAL '10000 seconds')");
    }

    #[test]
    fn a_session_is_partitioned_by_the_other_group_columns() {
        let text = rewritten(
            "SELECT window_start, user_id, count(*) FROM SESSION(clicks, ts, INTERVAL '30 minutes') \
             GROUP BY window_start, window_end, c.user_id",
        );
        assert!(
            text.contains("lag(ts) OVER (PARTITION BY user_id ORDER BY ts)"),
            "{text}"
        );
        assert!(
            text.contains("PARTITION BY user_id, __sluice_session"),
            "{text}"
        );
    }
}
