//! Postgres' names for unnamed result columns.
//!
//! DataFusion names `count(*)` as `count(*)` and `1 + 1` as `Int64(1) +
//! Int64(1)`; Postgres (and every client written against it) calls them
//! `count` and `?column?`. Before planning, select items without an alias get
//! the name Postgres would give them, as an explicit alias, when that name is
//! unique in its select list (DataFusion requires unique names).

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Query, Select, SelectItem, SetExpr, Statement, VisitMut, VisitorMut,
};

/// Gives unnamed result columns of every SELECT in `statement` their
/// Postgres names.
pub fn apply_postgres_column_names(statement: &mut Statement) {
    let _ = statement.visit(&mut Namer);
}

struct Namer;

impl VisitorMut for Namer {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(select) = leftmost_select(&mut query.body) {
            name_items(select);
        }
        ControlFlow::Continue(())
    }
}

fn leftmost_select(body: &mut SetExpr) -> Option<&mut Select> {
    match body {
        SetExpr::Select(select) => Some(select),
        SetExpr::SetOperation { left, .. } => leftmost_select(left),
        SetExpr::Query(query) => leftmost_select(&mut query.body),
        _ => None,
    }
}

fn name_items(select: &mut Select) {
    // A wildcard brings names we cannot see here: leave such lists alone.
    if select.projection.iter().any(|item| {
        matches!(
            item,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    }) {
        return;
    }
    let names: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) => Some(ident.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|i| i.value.to_lowercase())
            }
            SelectItem::UnnamedExpr(expr) => Some(postgres_name(expr)),
            _ => None,
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in names.iter().flatten() {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    for (item, name) in select.projection.iter_mut().zip(&names) {
        let (SelectItem::UnnamedExpr(expr), Some(name)) = (&*item, name) else {
            continue;
        };
        if matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            continue;
        }
        if counts.get(name.as_str()) == Some(&1) {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', name.clone()),
            };
        }
    }
}

/// The name Postgres gives an unnamed select item (`FigureColname`).
fn postgres_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident.value.to_lowercase(),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(|i| i.value.to_lowercase())
            .unwrap_or_else(|| "?column?".to_owned()),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|i| i.value.to_lowercase())
            .unwrap_or_else(|| "?column?".to_owned()),
        Expr::Cast {
            expr, data_type, ..
        } => match expr.as_ref() {
            Expr::Value(_) => data_type.to_string().to_lowercase(),
            inner => postgres_name(inner),
        },
        Expr::Nested(inner) => postgres_name(inner),
        Expr::Case { .. } => "case".to_owned(),
        Expr::Exists { .. } => "exists".to_owned(),
        Expr::Array(_) => "array".to_owned(),
        _ => "?column?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(sql: &str) -> String {
        let mut statements = crate::parse(sql).expect("parses");
        let crate::Statement::Sql(statement) = &mut statements[0] else {
            panic!("not standard SQL");
        };
        apply_postgres_column_names(statement);
        statement.to_string()
    }

    #[test]
    fn unnamed_items_get_postgres_names() {
        assert_eq!(
            named("SELECT country, count(*) FROM users GROUP BY country"),
            "SELECT country, count(*) AS \"count\" FROM users GROUP BY country"
        );
        assert_eq!(named("SELECT 1 + 1"), "SELECT 1 + 1 AS \"?column?\"");
        assert_eq!(
            named("SELECT x::TEXT FROM t"),
            "SELECT x::TEXT AS \"x\" FROM t"
        );
        assert_eq!(
            named("SELECT CASE WHEN a THEN 1 END, max(b) AS top FROM t"),
            "SELECT CASE WHEN a THEN 1 END AS \"case\", max(b) AS top FROM t"
        );
        // Duplicates keep DataFusion's names; aliases and wildcards are kept.
        assert_eq!(named("SELECT 1, 2"), "SELECT 1, 2");
        assert_eq!(named("SELECT *, now() FROM t"), "SELECT *, now() FROM t");
        // Subqueries in FROM are named too, as in Postgres.
        assert_eq!(
            named("SELECT count FROM (SELECT count(*) FROM t) AS s"),
            "SELECT count FROM (SELECT count(*) AS \"count\" FROM t) AS s"
        );
    }
}
