//! What bounds one session's statements: `statement_timeout` (a session
//! setting over the server's default) and cancellation by a pgwire
//! CancelRequest. Both stop queries (SELECT, EXPLAIN, SHOW, DESCRIBE):
//! dropping a query stops DataFusion's execution. A write (INSERT, UPDATE,
//! DELETE, DDL, FLUSH) runs to its end, because Sluice has no rollback and
//! a write stopped half-way could be durable without reaching its views.

use std::sync::Arc;
use std::time::Duration;

use datafusion::sql::sqlparser::ast;
use pgwire::api::{ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager};
use sluice_common::{catch_panic, Result, SluiceError};
use sluice_sql::Statement;

use crate::engine::Output;

/// The metadata key holding a session's `statement_timeout` (as a client
/// may also send it among its startup parameters).
const TIMEOUT_KEY: &str = "statement_timeout";

/// A connection's cancel handle, registered under its backend key once it
/// logged in. Kept apart from pgwire's own `Arc<ConnectionHandle>`
/// extension so that pgwire does not drop writes on a cancel.
pub struct SessionCancel {
    handle: Arc<ConnectionHandle>,
    _guard: ConnectionGuard,
}

/// Registers `client` (just logged in) for cancellation.
pub fn register<C: ClientInfo>(client: &C, manager: &Arc<ConnectionManager>) {
    let (pid, secret) = client.pid_and_secret_key();
    let (handle, guard) = manager.register(pid, secret);
    client.session_extensions().insert(SessionCancel {
        handle,
        _guard: guard,
    });
}

/// Whether `statement` only reads, so that stopping it loses nothing.
pub fn read_only(statement: &Statement) -> bool {
    match statement {
        Statement::ShowRelations(_)
        | Statement::Describe(_)
        | Statement::ExplainCreateView(_)
        | Statement::ShowConnections
        | Statement::DescribeConnection(_) => true,
        Statement::Sql(sql) => match sql.as_ref() {
            ast::Statement::Query(_) | ast::Statement::ShowVariable { .. } => true,
            ast::Statement::Explain {
                statement, analyze, ..
            } => !analyze || matches!(statement.as_ref(), ast::Statement::Query(_)),
            _ => false,
        },
        _ => false,
    }
}

/// Parses a `statement_timeout` value as Postgres does: a bare number is
/// milliseconds; units `ms`, `s`, `min`, `h`, `d`; `0` means no limit.
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let invalid = || SluiceError::InvalidOption {
        message: format!("invalid value for parameter \"statement_timeout\": \"{text}\""),
        hint: Some(
            "Valid units for this parameter are \"ms\", \"s\", \"min\", \"h\", and \"d\".".into(),
        ),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(invalid()),
    };
    let ms = (number * factor).round();
    if !(0.0..=i32::MAX as f64).contains(&ms) {
        return Err(SluiceError::InvalidOption {
            message: format!(
                "{ms} ms is outside the valid range for parameter \"statement_timeout\" (0 .. {})",
                i32::MAX
            ),
            hint: None,
        });
    }
    Ok(Duration::from_millis(ms as u64))
}

/// A timeout as `SHOW` prints it (`0`, `250ms`, `5s`, `2min`, `1h`).
pub fn show_timeout(timeout: Duration) -> String {
    let ms = timeout.as_millis();
    match ms {
        0 => "0".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// The limits every session of a server starts with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The server's `statement_timeout`; zero means none.
    pub statement_timeout: Duration,
}

impl Limits {
    /// The session's effective timeout.
    pub fn timeout<C: ClientInfo>(&self, client: &C) -> Duration {
        client
            .metadata()
            .get(TIMEOUT_KEY)
            .and_then(|v| parse_timeout(v).ok())
            .unwrap_or(self.statement_timeout)
    }

    /// Handles `SET statement_timeout` and `SHOW statement_timeout`, which
    /// live in the session; `None` for every other statement.
    pub fn session_statement<C: ClientInfo>(
        &self,
        client: &mut C,
        statement: &Statement,
    ) -> Option<Result<Output>> {
        let Statement::Sql(sql) = statement else {
            return None;
        };
        match sql.as_ref() {
            ast::Statement::Set(ast::Set::SingleAssignment {
                variable, values, ..
            }) if variable.to_string().eq_ignore_ascii_case(TIMEOUT_KEY) => {
                Some(self.set(client, values))
            }
            ast::Statement::ShowVariable { variable }
                if variable.len() == 1 && variable[0].value.eq_ignore_ascii_case(TIMEOUT_KEY) =>
            {
                let value = show_timeout(self.timeout(client));
                Some(crate::handlers::single_value(TIMEOUT_KEY, &value))
            }
            _ => None,
        }
    }

    fn set<C: ClientInfo>(&self, client: &mut C, values: &[ast::Expr]) -> Result<Output> {
        let text = match values {
            [ast::Expr::Value(v)] => match &v.value {
                ast::Value::SingleQuotedString(s) => s.clone(),
                ast::Value::Number(n, _) => n.clone(),
                other => other.to_string(),
            },
            [ast::Expr::Identifier(i)] if i.value.eq_ignore_ascii_case("default") => {
                client.metadata_mut().remove(TIMEOUT_KEY);
                return Ok(Output::command("SET"));
            }
            other => other
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let timeout = parse_timeout(&text)?;
        client
            .metadata_mut()
            .insert(TIMEOUT_KEY.to_owned(), timeout.as_millis().to_string());
        Ok(Output::command("SET"))
    }

    /// Runs one statement of `client`'s: a query under the session's
    /// timeout and its cancel handle, a write to its end. A panic becomes
    /// an error of this statement.
    pub async fn run<C: ClientInfo>(
        &self,
        client: &C,
        read_only: bool,
        statement: impl std::future::Future<Output = Result<Output>>,
    ) -> Result<Output> {
        let statement = catch_panic("the statement", statement);
        if !read_only {
            return statement.await;
        }
        let timeout = self.timeout(client);
        let cancel = client.session_extensions().get::<SessionCancel>();
        let canceled = async {
            match cancel {
                Some(cancel) => {
                    let fired = cancel.handle.start_query().await;
                    if fired.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let timer = async {
            if timeout.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            output = statement => output,
            _ = canceled => Err(SluiceError::Canceled { reason: "user request" }),
            _ = timer => Err(SluiceError::Canceled { reason: "statement timeout" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_show_as_postgres_does() {
        // (value, milliseconds or None if refused, as SHOW prints it)
        let table = [
            ("0", Some(0), "0"),
            ("100", Some(100), "100ms"),
            ("250ms", Some(250), "250ms"),
            ("5s", Some(5_000), "5s"),
            ("1.5s", Some(1_500), "1500ms"),
            ("2min", Some(120_000), "2min"),
            ("1h", Some(3_600_000), "1h"),
            ("1 d", Some(86_400_000), "24h"),
            ("-5", None, ""),
            ("5 weeks", None, ""),
            ("abc", None, ""),
            ("99999999999", None, ""),
        ];
        for (text, ms, shown) in table {
            match (parse_timeout(text), ms) {
                (Ok(d), Some(ms)) => {
                    assert_eq!(d.as_millis(), ms, "{text}");
                    assert_eq!(show_timeout(d), shown, "{text}");
                }
                (Err(e), None) => assert_eq!(e.sqlstate(), "22023", "{text}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
