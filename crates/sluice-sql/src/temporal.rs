//! `FOR SYSTEM_TIME AS OF`: the two temporal joins of a stream with a table.
//!
//! - `AS OF PROCTIME()` spells out what a stream-table join is anyway (a
//!   lookup of the table's current row), as Flink and RisingWave write it:
//!   the clause is accepted and dropped.
//! - `AS OF s.ts` (a column of the stream) is the event-time temporal join:
//!   each event meets the table row that was current at its time. The
//!   PostgreSQL dialect does not parse the clause, so it is cut out of the
//!   tokens here and put back on the table's AST node
//!   ([`ast::TableVersion::ForSystemTimeAsOf`]), where the planner finds it
//!   and from where the view's stored text prints it again.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Ident, TableFactor, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};
use sluice_common::{Result, SluiceError};

use crate::ast::Statement;

/// An event-time `FOR SYSTEM_TIME AS OF` cut out of the tokens.
#[derive(Debug, Clone)]
pub(crate) struct AsOf {
    /// Where the name right before the clause (the table's or its alias)
    /// starts.
    pub before: Location,
    /// Where the clause starts.
    pub at: Location,
    /// The column it names, as written.
    pub column: Vec<Ident>,
}

fn lower(token: &Token) -> String {
    match token {
        Token::Word(w) => w.value.to_lowercase(),
        other => other.to_string(),
    }
}

/// Removes every `FOR SYSTEM_TIME AS OF ...` from `tokens`: `PROCTIME()`
/// for good, a column to be put back by [`attach`].
pub(crate) fn cut(tokens: &mut Vec<TokenWithSpan>) -> Result<Vec<AsOf>> {
    const CLAUSE: [&str; 4] = ["for", "system_time", "as", "of"];
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let text = |k: usize| significant.get(k).map(|&i| lower(&tokens[i].token));
    let mut doomed = Vec::new();
    let mut found = Vec::new();
    let mut k = 0;
    while k + CLAUSE.len() <= significant.len() {
        if !(0..CLAUSE.len()).all(|j| text(k + j).as_deref() == Some(CLAUSE[j])) {
            k += 1;
            continue;
        }
        let start = k;
        k += CLAUSE.len();
        if text(k).as_deref() == Some("proctime")
            && text(k + 1).as_deref() == Some("(")
            && text(k + 2).as_deref() == Some(")")
        {
            k += 3;
            doomed.extend_from_slice(&significant[start..k]);
            continue;
        }
        let mut column = Vec::new();
        while let Some(Token::Word(w)) = significant.get(k).map(|&i| &tokens[i].token) {
            column.push(Ident {
                value: w.value.clone(),
                quote_style: w.quote_style,
                span: tokens[significant[k]].span,
            });
            k += 1;
            if text(k).as_deref() != Some(".") {
                break;
            }
            k += 1;
        }
        if column.is_empty() || text(k).as_deref() == Some("(") || start == 0 {
            return Err(SluiceError::not_supported(
                "FOR SYSTEM_TIME AS OF an expression",
                Some(
                    "write FOR SYSTEM_TIME AS OF PROCTIME() for the table's current row, or \
                     FOR SYSTEM_TIME AS OF s.ts (the stream's event-time column) for the row \
                     current at each event's time",
                ),
            ));
        }
        found.push(AsOf {
            before: tokens[significant[start - 1]].span.start,
            at: tokens[significant[start]].span.start,
            column,
        });
        doomed.extend_from_slice(&significant[start..k]);
    }
    for i in doomed.into_iter().rev() {
        tokens.remove(i);
    }
    Ok(found)
}

/// Puts each clause of `clauses` back on the table it follows in
/// `statement`. Only a materialized view joins by event time.
pub(crate) fn attach(statement: &mut Statement, clauses: Vec<AsOf>) -> Result<()> {
    if clauses.is_empty() {
        return Ok(());
    }
    let view = match statement {
        Statement::CreateView(c) | Statement::ExplainCreateView(c) => c,
        _ => {
            return Err(SluiceError::not_supported(
                "FOR SYSTEM_TIME AS OF a stream's column outside a materialized view",
                Some("an event-time temporal join joins a stream: create a materialized view"),
            ))
        }
    };
    let mut attacher = Attacher { clauses };
    let _ = view.query.visit(&mut attacher);
    // The stored text shows the clause again.
    view.text = view.query.to_string();
    if let Some(left) = attacher.clauses.first() {
        return Err(SluiceError::not_supported(
            format!(
                "FOR SYSTEM_TIME AS OF at line {}, column {} (not after a table's name)",
                left.at.line, left.at.column
            ),
            Some("write it after the table: JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r"),
        ));
    }
    Ok(())
}

struct Attacher {
    clauses: Vec<AsOf>,
}

impl VisitorMut for Attacher {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            alias,
            version,
            ..
        } = factor
        {
            let mut starts = Vec::new();
            if let Some(ast::ObjectNamePart::Identifier(last)) = name.0.last() {
                starts.push(last.span.start);
            }
            if let Some(alias) = alias {
                starts.push(alias.name.span.start);
            }
            if let Some(i) = self.clauses.iter().position(|c| starts.contains(&c.before)) {
                let clause = self.clauses.remove(i);
                let column = match clause.column.len() {
                    1 => ast::Expr::Identifier(clause.column[0].clone()),
                    _ => ast::Expr::CompoundIdentifier(clause.column),
                };
                *version = Some(ast::TableVersion::ForSystemTimeAsOf(column));
            }
        }
        ControlFlow::Continue(())
    }
}

/// The event-time column a table is joined `AS OF`, if it is.
pub fn as_of_column(version: &Option<ast::TableVersion>) -> Option<&ast::Expr> {
    match version {
        Some(ast::TableVersion::ForSystemTimeAsOf(e)) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse, parse_view_query, Statement};

    fn view(sql: &str) -> crate::CreateView {
        match parse(sql).expect("parses").pop() {
            Some(Statement::CreateView(v)) => *v,
            other => panic!("not a view: {other:?}"),
        }
    }

    #[test]
    fn event_time_clause_lands_on_the_table_and_survives_the_stored_text() {
        for sql in [
            "CREATE MATERIALIZED VIEW v AS SELECT o.id, r.rate FROM orders o \
             JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.cur = r.cur",
            "CREATE MATERIALIZED VIEW v AS SELECT o.id, r.rate FROM orders o \
             JOIN rates AS r FOR SYSTEM_TIME AS OF o.ts ON o.cur = r.cur",
        ] {
            let v = view(sql);
            assert!(
                v.text.contains("rates AS r FOR SYSTEM_TIME AS OF o.ts ON"),
                "{}",
                v.text
            );
            let again = parse_view_query(&v.stored_query()).expect("stored text parses");
            assert_eq!(again.text, v.text);
        }
    }

    #[test]
    fn proctime_is_dropped_and_other_expressions_are_refused() {
        let v = view(
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM s \
             JOIN t FOR SYSTEM_TIME AS OF PROCTIME() ON s.k = t.k",
        );
        assert!(!v.text.contains("SYSTEM_TIME"), "{}", v.text);
        let err = parse(
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM s \
             JOIN t FOR SYSTEM_TIME AS OF now() ON s.k = t.k",
        )
        .expect_err("a function is not a column");
        assert_eq!(err.sqlstate(), "0A000");
        let err = parse("SELECT * FROM s JOIN t FOR SYSTEM_TIME AS OF s.ts ON s.k = t.k")
            .expect_err("ad hoc");
        assert_eq!(err.sqlstate(), "0A000");
    }

    #[test]
    fn clauses_go_to_their_own_statement() {
        let statements = parse(
            "CREATE MATERIALIZED VIEW a AS SELECT * FROM s JOIN t FOR SYSTEM_TIME AS OF s.ts \
             ON s.k = t.k; CREATE MATERIALIZED VIEW b AS SELECT * FROM s JOIN u \
             FOR SYSTEM_TIME AS OF s.ts ON s.k = u.k",
        )
        .expect("parses");
        let texts: Vec<String> = statements
            .into_iter()
            .map(|s| match s {
                Statement::CreateView(v) => v.text,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            texts[0].contains("t FOR SYSTEM_TIME AS OF s.ts"),
            "{}",
            texts[0]
        );
        assert!(
            texts[1].contains("u FOR SYSTEM_TIME AS OF s.ts"),
            "{}",
            texts[1]
        );
    }
}
