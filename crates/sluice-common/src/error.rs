//! The one error type of Sluice, and its mapping to Postgres SQLSTATE codes.
//!
//! Variants are sorted by whose fault the error is: the user's statement or
//! data first, then external systems, then bugs in Sluice. [`SluiceError::sqlstate`]
//! is the only place that decides which SQLSTATE a client sees.

use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// Result alias used across Sluice.
pub type Result<T, E = SluiceError> = std::result::Result<T, E>;

/// What kind of catalog object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A `CREATE STREAM` object.
    Stream,
    /// A `CREATE TABLE` object.
    Table,
    /// A `CREATE MATERIALIZED VIEW` object.
    View,
    /// A `CREATE SINK` object.
    Sink,
    /// Any relation, when the statement did not say which kind it expected.
    Relation,
    /// A `CREATE CONNECTION` object.
    Connection,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Stream => "stream",
            ObjectKind::Table => "table",
            ObjectKind::View => "materialized view",
            ObjectKind::Sink => "sink",
            ObjectKind::Relation => "relation",
            ObjectKind::Connection => "connection",
        })
    }
}

/// Every error a Sluice statement can end with.
#[derive(Debug, thiserror::Error)]
pub enum SluiceError {
    // ---- the user's statement or data -------------------------------------
    /// The statement does not parse.
    #[error("{message}")]
    Syntax {
        /// What the parser expected and found.
        message: String,
    },
    /// A referenced object does not exist.
    #[error("{kind} \"{name}\" does not exist")]
    UndefinedObject {
        /// The kind of object looked up.
        kind: ObjectKind,
        /// Its name as written.
        name: String,
    },
    /// An object of that name already exists.
    #[error("{kind} \"{name}\" already exists")]
    DuplicateObject {
        /// The kind of the existing object.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// A referenced column does not exist.
    #[error("column \"{name}\" does not exist")]
    UndefinedColumn {
        /// The column as written.
        name: String,
    },
    /// A column is declared twice.
    #[error("column \"{name}\" specified more than once")]
    DuplicateColumn {
        /// The repeated column.
        name: String,
    },
    /// The statement is well-formed but invalid for this object (wrong kind
    /// of object, missing key, ...).
    #[error("{message}")]
    InvalidDefinition {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: Option<String>,
    },
    /// An expression has the wrong type.
    #[error("{message}")]
    DatatypeMismatch {
        /// What was expected and found.
        message: String,
    },
    /// A value does not parse as its type.
    #[error("{message}")]
    InvalidText {
        /// The offending value and type.
        message: String,
    },
    /// A NULL reached a column that does not accept it.
    #[error(
        "null value in column \"{column}\" of {kind} \"{relation}\" violates not-null constraint"
    )]
    NotNull {
        /// The column.
        column: String,
        /// The relation's kind.
        kind: ObjectKind,
        /// The relation.
        relation: String,
    },
    /// A `WITH (...)` option is unknown or has a bad value.
    #[error("{message}")]
    InvalidOption {
        /// Which option and why.
        message: String,
        /// The accepted options or values.
        hint: Option<String>,
    },
    /// The statement uses something Sluice does not support.
    #[error("{what} is not supported")]
    NotSupported {
        /// The feature, named as the user wrote it.
        what: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// The operation does not apply to this kind of object (for example a
    /// `SELECT` over an unbounded stream).
    #[error("{message}")]
    WrongObjectType {
        /// What was attempted on what.
        message: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// Division by zero while evaluating an expression.
    #[error("division by zero")]
    DivisionByZero,
    /// A value is out of its type's range.
    #[error("{message}")]
    OutOfRange {
        /// The value and type.
        message: String,
    },
    /// A function got an argument outside its domain (`sqrt(-1)`, `ln(0)`).
    #[error("{message}")]
    InvalidArgument {
        /// The function and the argument.
        message: String,
        /// `2201F` (power functions such as `sqrt`), `2201E` (logarithms)
        /// or `22023`, from the message (`argument_sqlstate`).
        sqlstate: &'static str,
    },
    /// A statement is nested too deeply, or expands into too many parts,
    /// to plan within the server's limits.
    #[error("statement too complex: {message}")]
    TooComplex {
        /// What exceeded which limit.
        message: String,
    },
    /// The statement was stopped: a CancelRequest, or `statement_timeout`.
    #[error("canceling statement due to {reason}")]
    Canceled {
        /// `user request` or `statement timeout`.
        reason: &'static str,
    },
    /// The statement asks for something only the server's operator may
    /// allow (a client setting that loads code or names a file outside the
    /// allowed directories).
    #[error("{message}")]
    PermissionDenied {
        /// What was refused and why.
        message: String,
        /// How the operator can allow it, if they can.
        hint: Option<String>,
    },
    /// Password or user rejected.
    #[error("password authentication failed for user \"{user}\"")]
    Authentication {
        /// The user that tried to log in.
        user: String,
    },

    /// Other objects depend on the one being dropped.
    #[error("cannot drop {kind} \"{name}\" because other objects depend on it")]
    DependentObjects {
        /// The kind of the object.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// What depends on it, and how to drop both.
        hint: Option<String>,
    },
    /// A materialized view stopped maintaining itself at an error (a row its
    /// query cannot compute, such as a division by zero).
    #[error("materialized view \"{name}\" stopped at an error: {reason}")]
    ViewFailed {
        /// The view.
        name: String,
        /// The error, with its SQLSTATE.
        reason: String,
    },

    // ---- external systems ---------------------------------------------------
    /// A service Sluice needs (a schema registry) cannot be reached now.
    #[error("{0}")]
    Unreachable(String),
    /// The storage layer (RocksDB, the file system) failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A system outside Sluice (Kafka, the network) failed. `message` says
    /// what Sluice was doing; the system's own error is the `source`, shown
    /// by [`SluiceError::report`], not by `Display`.
    #[error("{system}: {message}")]
    External {
        /// The system: `kafka`, `network`.
        system: &'static str,
        /// What failed.
        message: String,
        /// The system's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    // ---- bugs in Sluice, and what DataFusion did not say ---------------------
    /// An invariant broke: this is a bug in Sluice.
    #[error("internal error: {0} (this is a bug in Sluice, please report it)")]
    Internal(String),
    /// An error from DataFusion that none of the variants above describes.
    #[error("{}", datafusion_message(.0))]
    DataFusion(Box<DataFusionError>),
}

impl SluiceError {
    /// The Postgres SQLSTATE code reported to clients.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SluiceError::Syntax { .. } => "42601",
            // Postgres: undefined_object / duplicate_object for what is
            // not a relation.
            SluiceError::UndefinedObject {
                kind: ObjectKind::Connection,
                ..
            } => "42704",
            SluiceError::UndefinedObject { .. } => "42P01",
            SluiceError::DuplicateObject {
                kind: ObjectKind::Connection,
                ..
            } => "42710",
            SluiceError::DuplicateObject { .. } => "42P07",
            SluiceError::UndefinedColumn { .. } => "42703",
            SluiceError::DuplicateColumn { .. } => "42701",
            SluiceError::InvalidDefinition { .. } => "42P16",
            SluiceError::DatatypeMismatch { .. } => "42804",
            SluiceError::InvalidText { .. } => "22P02",
            SluiceError::NotNull { .. } => "23502",
            SluiceError::InvalidOption { .. } => "22023",
            SluiceError::NotSupported { .. } => "0A000",
            SluiceError::WrongObjectType { .. } => "42809",
            SluiceError::DivisionByZero => "22012",
            SluiceError::OutOfRange { .. } => "22003",
            SluiceError::InvalidArgument { sqlstate, .. } => sqlstate,
            SluiceError::TooComplex { .. } => "54001",
            SluiceError::Canceled { .. } => "57014",
            SluiceError::PermissionDenied { .. } => "42501",
            SluiceError::Authentication { .. } => "28P01",
            SluiceError::DependentObjects { .. } => "2BP01",
            SluiceError::ViewFailed { .. } => "55000",
            SluiceError::Storage(_) | SluiceError::External { .. } => "58030",
            SluiceError::Unreachable(_) => "58000",
            SluiceError::Internal(_) => "XX000",
            SluiceError::DataFusion(e) => datafusion_sqlstate(e),
        }
    }

    /// A hint shown under the message, where one helps.
    pub fn hint(&self) -> Option<&str> {
        match self {
            SluiceError::InvalidDefinition { hint, .. }
            | SluiceError::InvalidOption { hint, .. }
            | SluiceError::NotSupported { hint, .. }
            | SluiceError::WrongObjectType { hint, .. }
            | SluiceError::DependentObjects { hint, .. }
            | SluiceError::PermissionDenied { hint, .. } => hint.as_deref(),
            SluiceError::ViewFailed { .. } => {
                Some("fix the input or the query, then DROP the view and CREATE it again")
            }
            _ => None,
        }
    }

    /// Shorthand for [`SluiceError::NotSupported`].
    pub fn not_supported(what: impl Into<String>, hint: Option<&str>) -> Self {
        SluiceError::NotSupported {
            what: what.into(),
            hint: hint.map(str::to_owned),
        }
    }

    /// Shorthand for [`SluiceError::External`] with its cause.
    pub fn external(
        system: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SluiceError::External {
            system,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The error with its causes, `error: cause: cause`: what a client or
    /// a log line is shown.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// Shorthand for [`SluiceError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        SluiceError::Internal(message.into())
    }

    /// Wraps this error so it can travel through DataFusion and be recovered
    /// by `From<DataFusionError>` with its SQLSTATE intact.
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

impl From<ParserError> for SluiceError {
    fn from(e: ParserError) -> Self {
        let message = match e {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            ParserError::RecursionLimitExceeded => {
                return SluiceError::TooComplex {
                    message: "it is nested too deeply".to_owned(),
                }
            }
        };
        SluiceError::Syntax {
            message: lowercase_first(&message),
        }
    }
}

impl From<ArrowError> for SluiceError {
    fn from(e: ArrowError) -> Self {
        SluiceError::from(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<DataFusionError> for SluiceError {
    /// Recovers a [`SluiceError`] that travelled through DataFusion, and
    /// classifies DataFusion's own errors into the variants above.
    fn from(e: DataFusionError) -> Self {
        let root = e.find_root();
        match root {
            DataFusionError::External(inner) => {
                if inner.is::<SluiceError>() {
                    if let DataFusionError::External(inner) = unwrap_to_root(e) {
                        if let Ok(sluice) = inner.downcast::<SluiceError>() {
                            return *sluice;
                        }
                    }
                    return SluiceError::internal("lost an error on its way out of DataFusion");
                }
                SluiceError::DataFusion(Box::new(e))
            }
            DataFusionError::SQL(p, _) => SluiceError::from(p.as_ref().clone()),
            DataFusionError::SchemaError(s, _) => {
                use datafusion::common::SchemaError;
                match s.as_ref() {
                    SchemaError::FieldNotFound { field, .. } => SluiceError::UndefinedColumn {
                        name: field.name.clone(),
                    },
                    _ => SluiceError::DataFusion(Box::new(e)),
                }
            }
            DataFusionError::ArrowError(a, _) => {
                arrow_error(a).unwrap_or_else(|| SluiceError::DataFusion(Box::new(e)))
            }
            DataFusionError::Plan(m) => {
                if let Some(name) = table_not_found(m) {
                    SluiceError::UndefinedObject {
                        kind: ObjectKind::Relation,
                        name,
                    }
                } else {
                    SluiceError::DataFusion(Box::new(e))
                }
            }
            _ => SluiceError::DataFusion(Box::new(e)),
        }
    }
}

/// The variant for an Arrow error that the user's data caused, or `None`
/// when it is not one. Arrow reports a bad value met while evaluating an
/// expression as a `ComputeError` or `InvalidArgumentError` whose text alone
/// says what went wrong (Postgres: 22003 for an overflow, 2201F/2201E/22023
/// for an argument outside a function's domain).
fn arrow_error(a: &ArrowError) -> Option<SluiceError> {
    match a {
        ArrowError::DivideByZero => Some(SluiceError::DivisionByZero),
        ArrowError::ArithmeticOverflow(m) => Some(SluiceError::OutOfRange {
            message: lowercase_first(m),
        }),
        ArrowError::CastError(m) if m.to_lowercase().contains("overflow") => {
            Some(SluiceError::OutOfRange {
                message: lowercase_first(m),
            })
        }
        ArrowError::CastError(m) | ArrowError::ParseError(m) => Some(SluiceError::InvalidText {
            message: lowercase_first(m),
        }),
        ArrowError::ComputeError(m) | ArrowError::InvalidArgumentError(m) => evaluation_error(m),
        _ => None,
    }
}

fn evaluation_error(message: &str) -> Option<SluiceError> {
    let lower = message.to_lowercase();
    let message = message.strip_prefix("Execution error: ").unwrap_or(message);
    let message = lowercase_first(message.trim_end_matches('.'));
    if lower.contains("overflow")
        || lower.contains("too large to store in a decimal")
        || lower.contains("out of range")
    {
        return Some(SluiceError::OutOfRange { message });
    }
    let sqlstate = argument_sqlstate(&lower)?;
    Some(SluiceError::InvalidArgument { message, sqlstate })
}

/// The SQLSTATE of an argument outside a function's domain, from the
/// (lowercased) message; `None` when the message is not about one.
fn argument_sqlstate(lower: &str) -> Option<&'static str> {
    if lower.contains("square root") || lower.contains("power") {
        Some("2201F")
    } else if lower.contains("logarithm") {
        Some("2201E")
    } else if lower.contains("negative") || lower.contains("invalid argument") {
        Some("22023")
    } else {
        None
    }
}

fn unwrap_to_root(e: DataFusionError) -> DataFusionError {
    match e {
        DataFusionError::Context(_, inner) => unwrap_to_root(*inner),
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(inner) => unwrap_to_root(inner),
            Err(shared) => DataFusionError::Shared(shared),
        },
        DataFusionError::Diagnostic(_, inner) => unwrap_to_root(*inner),
        DataFusionError::Collection(mut errors) if !errors.is_empty() => {
            unwrap_to_root(errors.swap_remove(0))
        }
        other => other,
    }
}

/// DataFusion says `table 'sluice.public.foo' not found`; Postgres says
/// `relation "foo" does not exist`.
fn table_not_found(message: &str) -> Option<String> {
    let rest = message.strip_prefix("table '")?;
    let name = rest.strip_suffix("' not found")?;
    Some(name.rsplit('.').next().unwrap_or(name).to_owned())
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    match e.find_root() {
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::Plan(m) if m.contains("Cannot cast") || m.contains("coerc") => "42804",
        DataFusionError::Plan(m) if m.contains("Invalid function") => "42883",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => "42000",
        DataFusionError::ArrowError(a, _) => match arrow_error(a) {
            Some(classified) => classified.sqlstate(),
            // A compute error that `arrow_error` did not recognise is still
            // about the data being evaluated.
            None if matches!(
                a.as_ref(),
                ArrowError::ComputeError(_) | ArrowError::InvalidArgumentError(_)
            ) =>
            {
                "22000"
            }
            None => "XX000",
        },
        DataFusionError::Execution(m) if m.contains("Cannot cast") => "22P02",
        DataFusionError::Execution(_) => "22000",
        DataFusionError::ResourcesExhausted(_) => "53000",
        // DataFusion reports arguments that fit none of a function's
        // signatures as an internal error; Postgres says the function (with
        // those argument types) does not exist.
        DataFusionError::Internal(m) if m.contains("failed to match any signature") => "42883",
        _ => "XX000",
    }
}

/// DataFusion's messages carry a prefix naming the error kind (`Error during
/// planning: ...`); clients get only the message, Postgres-style.
fn datafusion_message(e: &DataFusionError) -> String {
    let root = e.find_root();
    let text = match root {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m)
        | DataFusionError::Internal(m)
        | DataFusionError::Configuration(m)
        | DataFusionError::ResourcesExhausted(m) => m.clone(),
        other => other.to_string(),
    };
    lowercase_first(text.trim_end_matches('.'))
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        // Keep acronyms and identifiers such as `SQL` or `INSERT` as they are.
        Some(c) if c.is_uppercase() && !chars.next().is_some_and(char::is_uppercase) => {
            c.to_lowercase().chain(s[c.len_utf8()..].chars()).collect()
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_error_keeps_its_cause_apart() {
        let cause = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let e = SluiceError::external("network", "cannot listen on 127.0.0.1:5432", cause);
        assert_eq!(e.sqlstate(), "58030");
        assert_eq!(e.to_string(), "network: cannot listen on 127.0.0.1:5432");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            e.report(),
            "network: cannot listen on 127.0.0.1:5432: address in use"
        );
        let plain = SluiceError::internal("x");
        assert_eq!(plain.report(), plain.to_string(), "no cause, nothing added");
    }

    #[test]
    fn sluice_errors_survive_a_trip_through_datafusion() {
        let e = SluiceError::NotNull {
            column: "id".into(),
            kind: ObjectKind::Table,
            relation: "users".into(),
        }
        .into_datafusion()
        .context("while inserting");
        let back = SluiceError::from(e);
        assert_eq!(back.sqlstate(), "23502");
        assert_eq!(
            back.to_string(),
            "null value in column \"id\" of table \"users\" violates not-null constraint"
        );
    }

    #[test]
    fn datafusion_table_not_found_becomes_undefined_relation() {
        let e = DataFusionError::Plan("table 'sluice.public.nope' not found".into());
        let s = SluiceError::from(e);
        assert_eq!(s.sqlstate(), "42P01");
        assert_eq!(s.to_string(), "relation \"nope\" does not exist");
    }

    #[test]
    fn parser_errors_are_syntax_errors() {
        let s = SluiceError::from(ParserError::ParserError("Expected: foo".into()));
        assert_eq!(s.sqlstate(), "42601");
        assert_eq!(s.to_string(), "expected: foo");
    }

    #[test]
    fn evaluation_errors_are_the_users_data_not_bugs() {
        // (what Arrow or DataFusion said, the SQLSTATE a client gets)
        let cases = [
            (
                ArrowError::ComputeError("Int64Array overflow on abs(-9223372036854775808)".into()),
                "22003",
            ),
            (
                ArrowError::InvalidArgumentError(
                    "12345678.00 is too large to store in a Decimal128 of precision 6".into(),
                ),
                "22003",
            ),
            (
                ArrowError::ComputeError(
                    "Execution error: cannot take square root of a negative number".into(),
                ),
                "2201F",
            ),
            (
                ArrowError::ComputeError("cannot take logarithm of a negative number".into()),
                "2201E",
            ),
            (
                ArrowError::ComputeError("something else went wrong".into()),
                "22000",
            ),
            (ArrowError::MemoryError("out of memory".into()), "XX000"),
        ];
        for (arrow, state) in cases {
            let text = arrow.to_string();
            let e = SluiceError::from(DataFusionError::ArrowError(Box::new(arrow), None));
            assert_eq!(e.sqlstate(), state, "{text}");
            let wrapped = DataFusionError::Context(
                "projection".into(),
                Box::new(DataFusionError::ArrowError(
                    Box::new(ArrowError::ComputeError(text.clone())),
                    None,
                )),
            );
            if state != "XX000" {
                assert_eq!(
                    SluiceError::from(wrapped).sqlstate(),
                    state,
                    "{text} (wrapped)"
                );
            }
        }
    }

    #[test]
    fn lowercase_keeps_acronyms() {
        assert_eq!(lowercase_first("SQL error"), "SQL error");
        assert_eq!(lowercase_first("Expected x"), "expected x");
    }
}
