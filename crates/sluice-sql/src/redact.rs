//! Statement text with secrets hidden, for logs: the string after
//! `<option> =` is replaced by `'***'` where the option's name says it is a
//! secret (`password`, `secret`, a private key). Statement text is logged
//! only through this.

use std::borrow::Cow;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Whether an option of this name holds a secret.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key_pem", "key.pem", "token"]
        .iter()
        .any(|s| name.contains(s))
}

/// `sql` with the values of secret options replaced by `'***'`.
pub fn redact(sql: &str) -> Cow<'_, str> {
    let lower = sql.to_ascii_lowercase();
    if !["password", "secret", "pem", "token"]
        .iter()
        .any(|s| lower.contains(s))
    {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Cow::Owned("<statement not shown: it may hold a secret>".to_owned());
    };
    let mut out = String::with_capacity(sql.len());
    // The option name being read (`a.b.c`), and whether `=` followed it.
    let mut name = String::new();
    let mut after_eq = false;
    for token in &tokens {
        // Whatever follows `<secret> =` (a string in any quoting, a
        // number, a bare word) is hidden.
        let shown = match token {
            Token::Whitespace(_) => token.to_string(),
            _ if after_eq && secret_name(&name) => "'***'".to_owned(),
            other => other.to_string(),
        };
        match token {
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => {}
            Token::Word(w) if !after_eq => name.push_str(&w.value),
            Token::Period if !after_eq => name.push('.'),
            Token::Eq if !name.is_empty() => after_eq = true,
            _ => {
                name.clear();
                after_eq = false;
            }
        }
        out.push_str(&shown);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_in_statement_text() {
        for (sql, shown) in [
            ("SELECT 1", "SELECT 1"),
            (
                "CREATE CONNECTION k WITH (type = 'kafka', sasl_username = 'u', sasl_password = 'hunter2')",
                "CREATE CONNECTION k WITH (type = 'kafka', sasl_username = 'u', sasl_password = '***')",
            ),
            (
                "create stream s (a int) with (properties.ssl.key.password='p w', topic='password')",
                "create stream s (a int) with (properties.ssl.key.password='***', topic='password')",
            ),
            ("SELECT 'password' = 'x'", "SELECT 'password' = 'x'"),
            (
                "CREATE CONNECTION r WITH (password = \"dq\", sasl_password = 12345, ssl_key_password = bare, x = 1)",
                "CREATE CONNECTION r WITH (password = '***', sasl_password = '***', ssl_key_password = '***', x = 1)",
            ),
            (
                "CREATE CONNECTION r WITH (password = $$dollar$$)",
                "CREATE CONNECTION r WITH (password = '***')",
            ),
        ] {
            assert_eq!(redact(sql), shown, "{sql}");
        }
        assert!(
            !redact("CREATE CONNECTION k WITH (password = 'unterminated").contains("unterminated")
        );
    }
}
