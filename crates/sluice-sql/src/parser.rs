//! Parses the Sluice dialect: sqlparser's PostgreSQL dialect, with Sluice's
//! statements (`CREATE STREAM`, `WATERMARK FOR`, `FLUSH`, `SHOW STREAMS`, ...)
//! parsed here on top of sqlparser's own building blocks.

use datafusion::sql::sqlparser::ast::{self, Ident};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{IsOptional, Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use sluice_common::{Result, SluiceError};

use crate::ast::{
    ColumnDef, CreateConnection, CreateRelation, CreateSink, CreateView, Drop, RelationKind,
    Statement, WatermarkDef,
};
use crate::types::SqlType;

/// Parses a string holding zero or more `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| ParserError::TokenizerError(e.to_string()))?;
    let mut clauses = crate::temporal::cut(&mut tokens)?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        let mut statement = parse_statement(&mut parser)?;
        let end = parser.peek_token().span.start;
        let ours = clauses
            .iter()
            .take_while(|c| c.at < end || end.line == 0)
            .count();
        crate::temporal::attach(&mut statement, clauses.drain(..ours).collect())?;
        crate::limits::check_depth(&statement)?;
        crate::windows::rewrite_windows(&mut statement)?;
        statements.push(statement);
        if !parser.consume_token(&Token::SemiColon) && parser.peek_token().token != Token::EOF {
            let found = parser.peek_token();
            return Err(ParserError::ParserError(format!(
                "expected end of statement, found: {found}"
            ))
            .into());
        }
    }
    Ok(statements)
}

/// A view's query as the catalog stores it ([`CreateView::stored_query`]),
/// parsed and rewritten again.
pub fn parse_view_query(sql: &str) -> Result<CreateView> {
    match parse(&format!("CREATE MATERIALIZED VIEW stored AS {sql}"))?.pop() {
        Some(Statement::CreateView(view)) => Ok(*view),
        _ => Err(SluiceError::internal("a stored view query does not parse")),
    }
}

/// Folds an identifier the way Postgres does: lower case unless quoted.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The relation name an object name refers to. Sluice has a single schema,
/// so `public.x` and `x` are the same object.
pub fn object_name(name: &ast::ObjectName) -> Result<String> {
    let parts: Vec<&Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    match parts.as_slice() {
        [ident] => Ok(normalize_ident(ident)),
        [schema, ident] if normalize_ident(schema) == "public" => Ok(normalize_ident(ident)),
        _ => Err(SluiceError::not_supported(
            format!("qualified name \"{name}\""),
            Some("Sluice has a single schema, \"public\""),
        )),
    }
}

fn parse_statement(parser: &mut Parser) -> Result<Statement> {
    if peek_words(parser, &["create", "stream"]) || peek_words(parser, &["create", "table"]) {
        parser.next_token();
        let kind = if next_word(parser, "stream") {
            RelationKind::Stream
        } else {
            parser.next_token();
            RelationKind::Table
        };
        return parse_create_relation(parser, kind);
    }
    if peek_words(parser, &["create", "sink"]) {
        parser.next_token();
        parser.next_token();
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = object_name(&parser.parse_object_name(false)?)?;
        parser.expect_keyword_is(Keyword::FROM)?;
        let from = object_name(&parser.parse_object_name(false)?)?;
        parser.expect_keyword_is(Keyword::WITH)?;
        let options = with_options(parser)?;
        return Ok(Statement::CreateSink(Box::new(CreateSink {
            name,
            if_not_exists,
            from,
            options,
        })));
    }
    if peek_words(parser, &["create", "connection"]) {
        parser.next_token();
        parser.next_token();
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = object_name(&parser.parse_object_name(false)?)?;
        parser.expect_keyword_is(Keyword::WITH)?;
        let options = with_options(parser)?;
        return Ok(Statement::CreateConnection(Box::new(CreateConnection {
            name,
            if_not_exists,
            options,
        })));
    }
    if peek_words(parser, &["drop", "connection"]) {
        parser.next_token();
        parser.next_token();
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let names = parser
            .parse_comma_separated(|p| p.parse_object_name(false))?
            .iter()
            .map(object_name)
            .collect::<Result<Vec<_>>>()?;
        return Ok(Statement::DropConnection { if_exists, names });
    }
    if peek_words(parser, &["show", "connections"]) {
        parser.next_token();
        parser.next_token();
        return Ok(Statement::ShowConnections);
    }
    if peek_words(parser, &["describe", "connection"])
        || peek_words(parser, &["desc", "connection"])
    {
        parser.next_token();
        parser.next_token();
        let name = object_name(&parser.parse_object_name(false)?)?;
        return Ok(Statement::DescribeConnection(name));
    }
    if peek_words(parser, &["show", "sinks"]) {
        parser.next_token();
        parser.next_token();
        return Ok(Statement::ShowRelations(RelationKind::Sink));
    }
    if peek_words(parser, &["create", "materialized", "view"]) {
        return Ok(Statement::CreateView(Box::new(parse_create_view(parser)?)));
    }
    if peek_words(parser, &["explain", "create", "materialized", "view"]) {
        parser.next_token();
        return Ok(Statement::ExplainCreateView(Box::new(parse_create_view(
            parser,
        )?)));
    }
    if peek_words(parser, &["show", "materialized", "views"]) {
        for _ in 0..3 {
            parser.next_token();
        }
        return Ok(Statement::ShowRelations(RelationKind::View));
    }
    if peek_words(parser, &["drop", "stream"])
        || peek_words(parser, &["drop", "table"])
        || peek_words(parser, &["drop", "materialized", "view"])
        || peek_words(parser, &["drop", "sink"])
    {
        parser.next_token();
        let kind = if next_word(parser, "stream") {
            RelationKind::Stream
        } else if next_word(parser, "table") {
            RelationKind::Table
        } else if next_word(parser, "sink") {
            RelationKind::Sink
        } else {
            parser.next_token();
            parser.next_token();
            RelationKind::View
        };
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let names = parser
            .parse_comma_separated(|p| p.parse_object_name(false))?
            .iter()
            .map(object_name)
            .collect::<Result<Vec<_>>>()?;
        let cascade = parser.parse_keyword(Keyword::CASCADE);
        if !cascade {
            let _ = parser.parse_keyword(Keyword::RESTRICT);
        }
        return Ok(Statement::Drop(Drop {
            kind,
            if_exists,
            names,
            cascade,
        }));
    }
    if peek_words(parser, &["show", "streams"]) {
        parser.next_token();
        parser.next_token();
        return Ok(Statement::ShowRelations(RelationKind::Stream));
    }
    if peek_words(parser, &["show", "tables"]) {
        parser.next_token();
        parser.next_token();
        return Ok(Statement::ShowRelations(RelationKind::Table));
    }
    if peek_words(parser, &["describe"]) || peek_words(parser, &["desc"]) {
        parser.next_token();
        let _ = parser.parse_keyword(Keyword::TABLE);
        let name = parser.parse_object_name(false)?;
        return Ok(Statement::Describe(name));
    }
    if next_word(parser, "flush") {
        return Ok(Statement::Flush);
    }
    Ok(Statement::Sql(Box::new(parser.parse_statement()?)))
}

/// `CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query`.
fn parse_create_view(parser: &mut Parser) -> Result<CreateView> {
    for _ in 0..3 {
        parser.next_token();
    }
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(&parser.parse_object_name(false)?)?;
    parser.expect_keyword_is(Keyword::AS)?;
    let query = parser.parse_query()?;
    let emit_on_window_close = parse_emit(parser)?;
    Ok(CreateView {
        name,
        if_not_exists,
        text: query.to_string(),
        query,
        emit_on_window_close,
    })
}

/// `[EMIT ON WINDOW CLOSE | EMIT ON UPDATE]` after a view's query.
fn parse_emit(parser: &mut Parser) -> Result<bool> {
    if !next_word(parser, "emit") {
        return Ok(false);
    }
    parser.expect_keyword_is(Keyword::ON)?;
    if parser.parse_keyword(Keyword::UPDATE) {
        return Ok(false);
    }
    if next_word(parser, "window") && next_word(parser, "close") {
        return Ok(true);
    }
    Err(SluiceError::Syntax {
        message: "expected EMIT ON WINDOW CLOSE or EMIT ON UPDATE".to_owned(),
    })
}

fn parse_create_relation(parser: &mut Parser, kind: RelationKind) -> Result<Statement> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = object_name(&parser.parse_object_name(false)?)?;
    if parser.parse_keyword(Keyword::AS) {
        return Err(SluiceError::not_supported(
            format!("CREATE {} AS", kind.keyword().to_uppercase()),
            Some("declare the columns, then fill it with INSERT INTO ... SELECT"),
        ));
    }
    let mut columns = Vec::new();
    let mut primary_key = Vec::new();
    let mut watermark = None;
    // No column list: the columns come from the source (an Avro schema in
    // the registry), or the statement is refused later.
    let declared = parser.consume_token(&Token::LParen);
    while declared {
        if next_word(parser, "watermark") {
            parser.expect_keyword_is(Keyword::FOR)?;
            let column = normalize_ident(&parser.parse_identifier()?);
            parser.expect_keyword_is(Keyword::AS)?;
            let expr = parser.parse_expr()?;
            if watermark.is_some() {
                return Err(SluiceError::InvalidDefinition {
                    message: format!("{kind} \"{name}\" declares more than one watermark"),
                    hint: None,
                });
            }
            watermark = Some(WatermarkDef { column, expr });
        } else if parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            let key = parser.parse_parenthesized_column_list(IsOptional::Mandatory, false)?;
            set_primary_key(&mut primary_key, key.iter().map(normalize_ident).collect())?;
        } else {
            let def = parser.parse_column_def()?;
            let column = column_def(&def, &mut primary_key)?;
            columns.push(column);
        }
        if !parser.consume_token(&Token::Comma) {
            parser.expect_token(&Token::RParen)?;
            break;
        }
    }
    let mut include: Vec<(String, String)> = Vec::new();
    while next_word(parser, "include") {
        let what = normalize_ident(&parser.parse_identifier()?);
        if !["key", "partition", "offset", "timestamp"].contains(&what.as_str()) {
            return Err(SluiceError::InvalidDefinition {
                message: format!("unknown metadata \"{what}\" in INCLUDE"),
                hint: Some("INCLUDE key, partition, offset or timestamp [AS name]".into()),
            });
        }
        let column = if parser.parse_keyword(Keyword::AS) {
            normalize_ident(&parser.parse_identifier()?)
        } else {
            format!("kafka_{what}")
        };
        include.push((what, column));
    }
    let options = if parser.parse_keyword(Keyword::WITH) {
        with_options(parser)?
    } else {
        Vec::new()
    };
    Ok(Statement::CreateRelation(Box::new(CreateRelation {
        kind,
        name,
        if_not_exists,
        columns,
        primary_key,
        watermark,
        options,
        include,
    })))
}

fn column_def(def: &ast::ColumnDef, primary_key: &mut Vec<String>) -> Result<ColumnDef> {
    let name = normalize_ident(&def.name);
    let sql_type = SqlType::from_ast(&def.data_type)?;
    let mut not_null = false;
    for option in &def.options {
        match &option.option {
            ast::ColumnOption::NotNull => not_null = true,
            ast::ColumnOption::Null => not_null = false,
            ast::ColumnOption::PrimaryKey(_) => {
                set_primary_key(primary_key, vec![name.clone()])?;
            }
            other => {
                return Err(SluiceError::not_supported(
                    format!("column option \"{other}\""),
                    Some("columns accept NOT NULL, NULL and PRIMARY KEY"),
                ))
            }
        }
    }
    Ok(ColumnDef {
        name,
        sql_type,
        not_null,
    })
}

fn set_primary_key(primary_key: &mut Vec<String>, key: Vec<String>) -> Result<()> {
    if !primary_key.is_empty() {
        return Err(SluiceError::InvalidDefinition {
            message: "multiple primary keys are not allowed".to_owned(),
            hint: Some("declare a composite key once, as PRIMARY KEY (a, b)".to_owned()),
        });
    }
    *primary_key = key;
    Ok(())
}

/// `(key = value, ...)` after `WITH`: keys may be dotted
/// (`properties.fetch.max.bytes`) and are lower-cased; values are strings,
/// numbers, booleans or bare words, kept as text.
fn with_options(parser: &mut Parser) -> Result<Vec<(String, String)>> {
    parser.expect_token(&Token::LParen)?;
    let mut options = Vec::new();
    loop {
        let mut key = normalize_ident(&parser.parse_identifier()?);
        while parser.consume_token(&Token::Period) {
            key.push('.');
            key.push_str(&normalize_ident(&parser.parse_identifier()?));
        }
        parser.expect_token(&Token::Eq)?;
        let value = match parser.parse_expr()? {
            ast::Expr::Value(v) => match v.value {
                ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s,
                ast::Value::Number(n, _) => n,
                ast::Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            ast::Expr::Identifier(ident) => ident.value,
            other => other.to_string(),
        };
        options.push((key, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(options)
}

/// Whether the next tokens are these words (keywords or not), case-insensitively.
fn peek_words(parser: &Parser, words: &[&str]) -> bool {
    words.iter().enumerate().all(|(i, word)| {
        matches!(&parser.peek_nth_token(i).token,
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    })
}

/// Consumes the next token if it is this word.
fn next_word(parser: &mut Parser, word: &str) -> bool {
    if peek_words(parser, &[word]) {
        parser.next_token();
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse(sql).expect(sql);
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    }

    #[test]
    fn dotted_option_keys() {
        let Statement::CreateSink(sink) = one(
            "CREATE SINK s FROM v WITH (connector = 'kafka', properties.message.timeout.ms = 300, Topic = t)",
        ) else {
            panic!("not a sink");
        };
        assert_eq!(
            sink.options,
            vec![
                ("connector".to_owned(), "kafka".to_owned()),
                ("properties.message.timeout.ms".to_owned(), "300".to_owned()),
                ("topic".to_owned(), "t".to_owned()),
            ]
        );
    }

    #[test]
    fn create_stream_with_watermark_and_options() {
        let Statement::CreateRelation(c) = one(
            "CREATE STREAM Clicks (user_id BIGINT, url TEXT, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '5 seconds') WITH (connector = 'x', Rate = 5)",
        ) else {
            panic!("not a create");
        };
        assert_eq!(c.kind, RelationKind::Stream);
        assert_eq!(c.name, "clicks");
        assert_eq!(c.columns.len(), 3);
        assert_eq!(c.columns[2].sql_type, SqlType::Timestamp);
        let wm = c.watermark.expect("watermark");
        assert_eq!(wm.column, "ts");
        assert_eq!(wm.expr.to_string(), "ts - INTERVAL '5 seconds'");
        assert_eq!(
            c.options,
            vec![
                ("connector".to_owned(), "x".to_owned()),
                ("rate".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn create_table_keys_in_column_or_constraint() {
        let Statement::CreateRelation(c) =
            one("create table if not exists u (id bigint primary key, name text not null)")
        else {
            panic!("not a create");
        };
        assert!(c.if_not_exists);
        assert_eq!(c.primary_key, vec!["id"]);
        assert!(c.columns[1].not_null);
        let Statement::CreateRelation(c) =
            one("create table u (a int, b text, primary key (a, b))")
        else {
            panic!("not a create");
        };
        assert_eq!(c.primary_key, vec!["a", "b"]);
        let err = parse("create table u (a int primary key, b int, primary key (b))").unwrap_err();
        assert_eq!(err.sqlstate(), "42P16");
    }

    #[test]
    fn dialect_statements_and_passthrough() {
        assert!(matches!(one("FLUSH"), Statement::Flush));
        assert!(matches!(
            one("show streams"),
            Statement::ShowRelations(RelationKind::Stream)
        ));
        assert!(matches!(
            one("SHOW TABLES"),
            Statement::ShowRelations(RelationKind::Table)
        ));
        assert!(matches!(one("describe clicks"), Statement::Describe(_)));
        assert!(matches!(
            one("show materialized views"),
            Statement::ShowRelations(RelationKind::View)
        ));
        let Statement::CreateView(v) =
            one("CREATE MATERIALIZED VIEW V AS SELECT a, count(*) FROM t GROUP BY a")
        else {
            panic!("not a view");
        };
        assert_eq!(v.name, "v");
        assert!(matches!(
            one("EXPLAIN CREATE MATERIALIZED VIEW v AS SELECT 1"),
            Statement::ExplainCreateView(_)
        ));
        let Statement::Drop(d) = one("DROP MATERIALIZED VIEW IF EXISTS v CASCADE") else {
            panic!("not a drop");
        };
        assert!(d.cascade && d.if_exists && d.kind == RelationKind::View);
        let Statement::Drop(d) = one("DROP STREAM IF EXISTS a, b") else {
            panic!("not a drop");
        };
        assert!(d.if_exists);
        assert_eq!(d.names, vec!["a", "b"]);
        assert!(matches!(one("SELECT 1"), Statement::Sql(_)));
        assert_eq!(parse("select 1; select 2;").expect("parses").len(), 2);
        assert!(parse("  ;  ").expect("parses").is_empty());
    }

    #[test]
    fn syntax_errors_are_42601() {
        for bad in [
            "CREATE STREAM s (a BIGINT",
            "SELEC 1",
            "CREATE STREAM s (a)",
            "FLUSH now",
        ] {
            assert_eq!(parse(bad).unwrap_err().sqlstate(), "42601", "{bad}");
        }
    }
}
