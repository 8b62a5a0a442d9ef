//! The pgwire protocol side of a connection: the simple and extended query
//! protocols, turning [`Output`]s into Postgres responses and [`SluiceError`]s
//! into Postgres errors with their SQLSTATE.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::into_pg_type;
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use futures::{Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type, DEFAULT_NAME};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use sluice_common::{catch_panic, SluiceError};

use crate::encode::{encode_batch, pg_fields};
use crate::engine::{Engine, Output, Prepared};
use crate::handlers;
use crate::limits::{self, Limits};

/// The error a client sees: severity, SQLSTATE, message, hint.
pub fn error_info(e: &SluiceError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".to_owned(), e.sqlstate().to_owned(), e.report());
    info.hint = e.hint().map(str::to_owned);
    info
}

fn to_pgwire(e: SluiceError) -> PgWireError {
    if e.sqlstate().starts_with("XX") || e.sqlstate().starts_with("58") {
        tracing::error!(error = %e.report(), "statement failed");
    } else {
        tracing::debug!(error = %e.report(), sqlstate = e.sqlstate(), "statement failed");
    }
    PgWireError::UserError(Box::new(error_info(&e)))
}

fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

fn to_response(
    output: Output,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<Response> {
    Ok(match output {
        Output::Rows { schema, batches } => {
            let fields = Arc::new(pg_fields(&schema, format, Some(options))?);
            let mut rows = Vec::new();
            for batch in &batches {
                rows.extend(encode_batch(&fields, batch));
            }
            Response::Query(QueryResponse::new(fields, futures::stream::iter(rows)))
        }
        Output::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if tag == "INSERT" {
                t = t.with_oid(0);
            }
            if let Some(rows) = rows {
                t = t.with_rows(rows);
            }
            Response::Execution(t)
        }
        Output::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
        Output::TransactionEnd(tag) => Response::TransactionEnd(Tag::new(tag)),
    })
}

/// Handles both query protocols for every connection of a server.
#[derive(Debug)]
pub struct QueryService {
    engine: Arc<Engine>,
    parser: Arc<StatementParser>,
    limits: Limits,
}

impl QueryService {
    /// A service running statements on `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        QueryService {
            parser: Arc::new(StatementParser {
                engine: engine.clone(),
            }),
            engine,
            limits: Limits::default(),
        }
    }

    /// The same service with `limits` (the server's statement timeout).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Parses a query string, a panic in the parser becoming an error.
fn parse(sql: &str) -> sluice_common::Result<Vec<sluice_sql::Statement>> {
    std::panic::catch_unwind(|| sluice_sql::parse(sql)).unwrap_or_else(|payload| {
        Err(SluiceError::internal(format!(
            "the parser panicked: {}",
            sluice_common::panic::panic_message(payload.as_ref())
        )))
    })
}

#[async_trait]
impl SimpleQueryHandler for QueryService {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        tracing::debug!(query = %sluice_sql::redact::redact(query), "simple query");
        let statements = parse(query).map_err(to_pgwire)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let options = format_options(client);
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = match self.limits.session_statement(client, &statement) {
                Some(result) => result,
                None => {
                    let read_only = limits::read_only(&statement);
                    self.limits
                        .run(client, read_only, self.engine.run(statement))
                        .await
                }
            };
            match result {
                Ok(output) => {
                    responses.push(to_response(output, &Format::UnifiedText, options.clone())?)
                }
                Err(e) => {
                    // Earlier statements' results stand; the rest do not run.
                    let PgWireError::UserError(info) = to_pgwire(e) else {
                        unreachable!("to_pgwire builds user errors")
                    };
                    responses.push(Response::Error(info));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// Parses and plans statements for the extended protocol.
#[derive(Debug)]
pub struct StatementParser {
    engine: Arc<Engine>,
}

/// A plan's parameters (`$1`, `$2`, ...), in order, with the types
/// DataFusion inferred for them.
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| to_pgwire(e.into()))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(id, t)| id.trim_start_matches('$').parse().ok().map(|n| (n, t)))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        tracing::debug!(sql = %sluice_sql::redact::redact(sql), "parse");
        let mut statements = parse(sql).map_err(to_pgwire)?;
        match statements.len() {
            0 => Ok(None),
            1 => {
                let planning = self.engine.prepare(statements.remove(0));
                let prepared = catch_panic("planning the statement", planning)
                    .await
                    .map_err(to_pgwire)?;
                Ok(Some(prepared))
            }
            _ => Err(to_pgwire(SluiceError::Syntax {
                message: "cannot insert multiple commands into a prepared statement".into(),
            })),
        }
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        let Some(plan) = &stmt.plan else {
            return Ok(vec![]);
        };
        parameter_types(plan)?
            .iter()
            .map(|t| match t {
                Some(t) => into_pg_type(t),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = column_format.unwrap_or(&Format::UnifiedText);
        let schema = match &stmt.plan {
            Some(LogicalPlan::Dml(_)) => None,
            Some(plan) => Some(Arc::new(plan.schema().as_arrow().clone())),
            None => handlers::result_schema(&stmt.statement),
        };
        match schema {
            Some(schema) => pg_fields(&schema, format, None),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryService {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// pgwire answers `Describe` of a statement that takes parameters but
    /// returns no rows (an INSERT) with an empty RowDescription; Postgres
    /// answers NoData, and JDBC insists on it.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(statement)) = client.portal_store().get_statement(name) {
                let described = self.do_describe_statement(client, &statement).await?;
                if described.fields.is_empty() {
                    let oids = described.parameters.iter().map(|t| t.oid()).collect();
                    client
                        .send(PgWireBackendMessage::ParameterDescription(
                            ParameterDescription::new(oids),
                        ))
                        .await?;
                    client
                        .send(PgWireBackendMessage::NoData(NoData::new()))
                        .await?;
                    return Ok(());
                }
            }
        }
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        if let Some(result) = self.limits.session_statement(client, &prepared.statement) {
            return to_response(
                result.map_err(to_pgwire)?,
                &portal.result_column_format,
                format_options(client),
            );
        }
        let params = match &prepared.plan {
            Some(plan) => {
                let types = parameter_types(plan)?;
                if types.is_empty() {
                    None
                } else {
                    let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
                    Some(deserialize_parameters(portal, &refs)?)
                }
            }
            None => None,
        };
        let read_only = limits::read_only(&prepared.statement);
        let output = self
            .limits
            .run(client, read_only, self.engine.execute(prepared, params))
            .await
            .map_err(to_pgwire)?;
        to_response(output, &portal.result_column_format, format_options(client))
    }
}
