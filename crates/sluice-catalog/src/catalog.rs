//! The catalog: every stream and table, persisted in the state store, and
//! their rows.
//!
//! State store layout (all integers big-endian, so keys sort numerically):
//!
//! ```text
//! 0x00 "next_id"                   -> next relation id (u64)
//! 0x01 <relation id>               -> RelationEntry as JSON
//! 0x02 <table id> <arrow-row key>  -> the row, arrow-row encoded (latest per key)
//! 0x03 <stream id> <sequence>      -> one INSERT's rows, Arrow IPC stream format
//! 0x04 <sequence>                  -> a change not yet checkpointed by the dataflow
//! 0x05 <view id>                   -> why a view stopped (changelog.rs)
//! 0x06 <source id> <partition>     -> a source's next offset (ingest.rs)
//! 0x07 <connection name>           -> ConnectionEntry as JSON
//! 0x08 <source id> <name>          -> a source's named position (a file's next line)
//! 0x10 <view id> ...                -> the view's operator state (sluice-dataflow)
//! 0x11 <view id> <arrow-row row>    -> a view's rows, with their multiplicity (i64)
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use datafusion::arrow::array::{Array, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_sql::{CreateRelation, Drop, RelationKind, SqlType};
use sluice_state::{StateBackend, StateTxn, WriteBatch};
use tokio::sync::{Mutex, MutexGuard};

use crate::changelog::{failure_key, ChangeListener, CHANGELOG_PREFIX, FAILURE_PREFIX};
use crate::changes::RowSource;
use crate::entry::{ConnectionEntry, RelationEntry};
use crate::ingest::{NAMED_POSITION_PREFIX, POSITION_PREFIX};
use crate::rows::RowCodec;

const NEXT_ID_KEY: &[u8] = b"\x00next_id";
const ENTRY_PREFIX: u8 = 0x01;
const CONNECTION_PREFIX: u8 = 0x07;
pub(crate) const ROWS_PREFIX: u8 = 0x02;
pub(crate) const LOG_PREFIX: u8 = 0x03;
pub(crate) const STATE_PREFIX: u8 = 0x10;
pub(crate) const VIEW_ROWS_PREFIX: u8 = 0x11;

fn connection_key(name: &str) -> Vec<u8> {
    let mut k = vec![CONNECTION_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn key(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A stream or table, ready to read and write.
#[derive(Debug)]
pub struct Relation {
    pub(crate) entry: RelationEntry,
    pub(crate) schema: SchemaRef,
    pub(crate) codec: RowCodec,
    /// Next sequence number in a stream's log.
    pub(crate) next_seq: AtomicU64,
    /// Why a view stopped maintaining itself, if it did.
    pub(crate) failure: std::sync::Mutex<Option<String>>,
}

impl Relation {
    fn try_new(entry: RelationEntry, next_seq: u64) -> Result<Self> {
        let schema = entry.schema()?;
        let codec = RowCodec::try_new(schema.clone(), entry.primary_key.clone())?;
        Ok(Relation {
            entry,
            schema,
            codec,
            next_seq: AtomicU64::new(next_seq),
            failure: std::sync::Mutex::new(None),
        })
    }

    /// Its definition.
    pub fn entry(&self) -> &RelationEntry {
        &self.entry
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Stream or table.
    pub fn kind(&self) -> RelationKind {
        self.entry.kind
    }

    /// The Arrow schema of its rows.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The Arrow schema of its rows, borrowed.
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    /// Fails unless this is a table: streams are append-only, so `verb`
    /// (`update`, `delete from`) does not apply to them.
    pub fn require_table(&self, verb: &str) -> Result<()> {
        if self.kind() == RelationKind::View {
            return Err(SluiceError::WrongObjectType {
                message: format!("cannot {verb} materialized view \"{}\"", self.name()),
                hint: Some("a view's rows come from its query; write to its inputs".into()),
            });
        }
        if self.kind() == RelationKind::Stream {
            return Err(SluiceError::WrongObjectType {
                message: format!(
                    "cannot {verb} stream \"{}\": streams are append-only",
                    self.name()
                ),
                hint: Some("declare keyed data as a TABLE with a PRIMARY KEY".into()),
            });
        }
        Ok(())
    }

    /// Brings rows written by SQL into their stored form: a BYTEA value given
    /// as text in Postgres' hex format (`'\\x00ff'`) becomes its bytes
    /// (DataFusion casts text to binary byte for byte).
    pub fn normalize_rows(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut columns = batch.columns().to_vec();
        let mut changed = false;
        for (i, column) in self.entry.columns.iter().enumerate() {
            if column.sql_type != SqlType::Bytea {
                continue;
            }
            let Some(values) = columns[i].as_any().downcast_ref::<BinaryArray>() else {
                return Err(SluiceError::internal(
                    "bytea column is not stored as binary",
                ));
            };
            if !values.iter().flatten().any(|v| v.starts_with(b"\\x")) {
                continue;
            }
            let decoded: BinaryArray = values
                .iter()
                .map(|v| v.map(decode_bytea).transpose())
                .collect::<Result<_>>()?;
            columns[i] = Arc::new(decoded);
            changed = true;
        }
        if !changed {
            return Ok(batch);
        }
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    /// Rejects rows that break a `NOT NULL`, key or JSONB constraint, naming
    /// the column.
    pub fn check_rows(&self, batch: &RecordBatch) -> Result<()> {
        for (i, column) in self.entry.columns.iter().enumerate() {
            let array = batch.column(i);
            if column.not_null && array.null_count() > 0 {
                return Err(SluiceError::NotNull {
                    column: column.name.clone(),
                    kind: self.entry.kind.into(),
                    relation: self.entry.name.clone(),
                });
            }
            if column.sql_type == SqlType::Jsonb {
                let Some(texts) = array.as_any().downcast_ref::<StringArray>() else {
                    return Err(SluiceError::internal("jsonb column is not stored as text"));
                };
                for text in texts.iter().flatten() {
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                        return Err(SluiceError::InvalidText {
                            message: format!(
                                "invalid input syntax for type json: \"{text}\" ({e})"
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The current rows of a table, from one snapshot.
    pub fn read_rows(&self, src: &dyn RowSource) -> Result<RecordBatch> {
        let rows = src.scan(&key(ROWS_PREFIX, self.entry.id))?;
        self.codec
            .decode_values(rows.iter().map(|(_, v)| v.as_slice()))
    }

    /// The current contents: a table's rows, a view's rows, or every event
    /// ever appended to a stream.
    pub fn read_contents(&self, src: &dyn RowSource) -> Result<RecordBatch> {
        match self.entry.kind {
            RelationKind::Table => self.read_rows(src),
            RelationKind::View => self.read_view_rows(src),
            RelationKind::Stream => Ok(concat_batches(&self.schema, &self.read_log(src)?)?),
            RelationKind::Sink => Err(SluiceError::WrongObjectType {
                message: format!("\"{}\" is a sink: it has no rows to read", self.name()),
                hint: Some("read the relation the sink writes from instead".into()),
            }),
        }
    }

    /// Every batch ever appended to a stream, in order.
    pub fn read_log(&self, src: &dyn RowSource) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for (_, bytes) in src.scan(&key(LOG_PREFIX, self.entry.id))? {
            let reader = StreamReader::try_new(bytes.as_slice(), None)?;
            for batch in reader {
                batches.push(batch?);
            }
        }
        Ok(batches)
    }
}

/// Postgres' hex input format for BYTEA: `\\x` then two hex digits a byte.
/// Anything else is taken as the bytes themselves.
fn decode_bytea(v: &[u8]) -> Result<Vec<u8>> {
    let Some(hex) = v.strip_prefix(b"\\x") else {
        return Ok(v.to_vec());
    };
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let invalid = || SluiceError::InvalidText {
        message: format!(
            "invalid hexadecimal data in bytea value \"{}\"",
            String::from_utf8_lossy(v)
        ),
    };
    if hex.len() % 2 != 0 {
        return Err(invalid());
    }
    hex.chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(invalid()),
        })
        .collect()
}

/// Adds `relation` and, with `cascade`, the views depending on it to
/// `doomed` (dependents first); without `cascade`, refuses when any exist.
fn collect_dependents(
    inner: &Inner,
    relation: &Arc<Relation>,
    cascade: bool,
    doomed: &mut Vec<Arc<Relation>>,
) -> Result<()> {
    if doomed.iter().any(|d| d.entry.id == relation.entry.id) {
        return Ok(());
    }
    let dependents: Vec<&Arc<Relation>> = inner
        .relations
        .values()
        .filter(|r| r.entry.depends_on.iter().any(|d| d == relation.name()))
        .collect();
    if !dependents.is_empty() && !cascade {
        let names: Vec<&str> = dependents.iter().map(|d| d.name()).collect();
        return Err(SluiceError::DependentObjects {
            kind: relation.kind().into(),
            name: relation.name().to_owned(),
            hint: Some(format!(
                "materialized view {} depends on it; use DROP ... CASCADE to drop them too",
                names.join(", ")
            )),
        });
    }
    for dependent in dependents {
        collect_dependents(inner, dependent, cascade, doomed)?;
    }
    doomed.push(relation.clone());
    Ok(())
}

/// What `CREATE` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// The relation was created.
    New,
    /// `IF NOT EXISTS` and it already existed.
    AlreadyExisted,
}

#[derive(Debug, Default)]
struct Inner {
    relations: BTreeMap<String, Arc<Relation>>,
    connections: BTreeMap<String, Arc<ConnectionEntry>>,
    next_id: u64,
}

/// Streams and tables, persisted in the state store.
pub struct Catalog {
    store: Arc<dyn StateBackend>,
    inner: RwLock<Inner>,
    listener: RwLock<Option<Arc<dyn ChangeListener>>>,
    /// Regenerates the events of streams whose source generates them.
    replay: RwLock<Option<Arc<dyn crate::ingest::Replay>>>,
    /// Serializes writers (DDL and DML), so a read-modify-write such as
    /// UPDATE sees no concurrent change.
    writer: Mutex<()>,
    /// Commits take it exclusively, queries shared: every relation a query
    /// scans is read at the same committed state.
    commits: tokio::sync::RwLock<()>,
    /// Next sequence number in the changelog.
    next_change_seq: AtomicU64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn name_is_free(inner: &Inner, name: &str) -> Result<()> {
    match inner.relations.get(name) {
        Some(existing) => Err(SluiceError::DuplicateObject {
            kind: existing.kind().into(),
            name: name.to_owned(),
        }),
        None => Ok(()),
    }
}

impl Catalog {
    /// Loads the catalog stored in `store` (empty on a new store).
    pub fn open(store: Arc<dyn StateBackend>) -> Result<Arc<Self>> {
        let mut inner = Inner {
            next_id: 1,
            ..Inner::default()
        };
        if let Some(bytes) = store.get(NEXT_ID_KEY)? {
            let arr: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| SluiceError::Storage("corrupt next_id in the catalog".into()))?;
            inner.next_id = u64::from_be_bytes(arr);
        }
        for (_, json) in store.scan_prefix(&[ENTRY_PREFIX])? {
            let entry: RelationEntry = serde_json::from_slice(&json)
                .map_err(|e| SluiceError::Storage(format!("corrupt catalog entry: {e}")))?;
            // A stream's log and an appended view's rows are numbered batches.
            let numbered = if entry.appended {
                VIEW_ROWS_PREFIX
            } else {
                LOG_PREFIX
            };
            let next_seq = match store.last_with_prefix(&key(numbered, entry.id))? {
                Some((k, _)) => {
                    let seq: [u8; 8] = k[9..]
                        .try_into()
                        .map_err(|_| SluiceError::Storage("corrupt batch number".to_owned()))?;
                    u64::from_be_bytes(seq) + 1
                }
                None => 0,
            };
            tracing::debug!(name = %entry.name, id = entry.id, "catalog entry loaded");
            let relation = Arc::new(Relation::try_new(entry, next_seq)?);
            if let Some(reason) = store.get(&failure_key(relation.entry.id))? {
                relation.set_failure(String::from_utf8_lossy(&reason).into_owned());
            }
            inner.relations.insert(relation.name().to_owned(), relation);
        }
        for (_, json) in store.scan_prefix(&[CONNECTION_PREFIX])? {
            let entry: ConnectionEntry = serde_json::from_slice(&json)
                .map_err(|e| SluiceError::Storage(format!("corrupt connection entry: {e}")))?;
            inner
                .connections
                .insert(entry.name.clone(), Arc::new(entry));
        }
        let next_change_seq = match store.last_with_prefix(&[CHANGELOG_PREFIX])? {
            Some((k, _)) => k
                .get(1..9)
                .and_then(|s| s.try_into().ok())
                .map(|s| u64::from_be_bytes(s) + 1)
                .ok_or_else(|| SluiceError::Storage("corrupt changelog key".to_owned()))?,
            None => 0,
        };
        tracing::info!(relations = inner.relations.len(), "catalog loaded");
        Ok(Arc::new(Catalog {
            store,
            inner: RwLock::new(inner),
            listener: RwLock::new(None),
            replay: RwLock::new(None),
            writer: Mutex::new(()),
            commits: tokio::sync::RwLock::new(()),
            next_change_seq: AtomicU64::new(next_change_seq),
        }))
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        self.inner
            .read()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        self.inner
            .write()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))
    }

    /// The state store holding the catalog and the rows.
    pub fn store(&self) -> &Arc<dyn StateBackend> {
        &self.store
    }

    /// Commits a writer's transaction (the relation's rows, the views'
    /// state and rows) atomically, never in the middle of a query's reads.
    /// It is durable once [`Self::durable`] returns: a statement is
    /// acknowledged only after that (group commit: the writer lock is not
    /// held across the disk sync, so concurrent writers share one).
    pub async fn commit(&self, txn: StateTxn) -> Result<()> {
        let _exclusive = self.commits.write().await;
        Ok(txn.commit_relaxed()?)
    }

    /// Waits until every write committed so far is on disk; callers that
    /// arrive while a sync is in flight share the next one. Cheap when
    /// nothing is pending.
    pub async fn durable(&self) -> Result<()> {
        sync_store(self.store.clone()).await
    }

    /// Holds off commits while a query reads its relations, so that all of
    /// them (every view included) are seen at the same point.
    pub async fn read_snapshot(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.commits.read().await
    }

    pub(crate) async fn lock_commits(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.commits.write().await
    }

    pub(crate) fn next_change_seq(&self) -> u64 {
        self.next_change_seq.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn listener(&self) -> Result<Option<Arc<dyn ChangeListener>>> {
        Ok(self
            .listener
            .read()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))?
            .clone())
    }

    /// Appends a batch of events to a stream in one durable write, and hands
    /// them to the views that read it (what a source connector does).
    pub async fn append_to_stream(
        &self,
        stream: &Arc<Relation>,
        batch: &RecordBatch,
    ) -> Result<()> {
        if stream.kind() != RelationKind::Stream {
            return Err(SluiceError::internal(
                "append to a relation that is not a stream",
            ));
        }
        let _writer = self.lock_writes().await;
        let mut txn = StateTxn::new(self.store.clone());
        let changes = stream.append(&mut txn, batch)?;
        self.commit_changes(txn, stream, vec![changes]).await
    }

    /// Takes the writer lock: hold it across a read-modify-write.
    pub async fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Sets (or, with `None`, removes) the receiver of every change.
    pub fn set_listener(&self, listener: Option<Arc<dyn ChangeListener>>) -> Result<()> {
        *self
            .listener
            .write()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))? = listener;
        Ok(())
    }

    /// Sets what regenerates the events of generated streams.
    pub fn set_replay(&self, replay: Arc<dyn crate::ingest::Replay>) -> Result<()> {
        *self
            .replay
            .write()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))? = Some(replay);
        Ok(())
    }

    pub(crate) fn replay(&self) -> Result<Option<Arc<dyn crate::ingest::Replay>>> {
        Ok(self
            .replay
            .read()
            .map_err(|_| SluiceError::internal("catalog lock poisoned"))?
            .clone())
    }

    /// Looks up a relation by id.
    pub fn get_by_id(&self, id: u64) -> Result<Option<Arc<Relation>>> {
        Ok(self
            .read()?
            .relations
            .values()
            .find(|r| r.entry.id == id)
            .cloned())
    }

    /// The next relation id; `register_view` consumes it.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.read()?.next_id)
    }

    /// Builds the relation of a new view (not yet registered), checking the
    /// name is free. Call with the writer lock held.
    pub fn new_view(
        &self,
        name: &str,
        query: &str,
        schema: &Schema,
        depends_on: Vec<String>,
        appended: bool,
    ) -> Result<Arc<Relation>> {
        let inner = self.read()?;
        name_is_free(&inner, name)?;
        let entry =
            RelationEntry::new_view(inner.next_id, name, query, schema, depends_on, appended)?;
        Ok(Arc::new(Relation::try_new(entry, 0)?))
    }

    /// Builds the relation of a new sink (not yet registered), checking the
    /// name is free. Call with the writer lock held.
    pub fn new_sink(
        &self,
        name: &str,
        from: &Relation,
        options: BTreeMap<String, String>,
        key: Vec<usize>,
    ) -> Result<Arc<Relation>> {
        let inner = self.read()?;
        name_is_free(&inner, name)?;
        let entry = RelationEntry::new_sink(inner.next_id, name, &from.entry, options, key)?;
        Ok(Arc::new(Relation::try_new(entry, 0)?))
    }

    /// Records a view built by [`Self::new_view`] in `txn`; once `txn`
    /// commits, [`Self::publish`] makes it visible.
    pub fn register_view(&self, view: &Relation, txn: &mut StateTxn) -> Result<()> {
        let json = serde_json::to_vec(&view.entry)
            .map_err(|e| SluiceError::internal(format!("catalog entry serialization: {e}")))?;
        txn.put(key(ENTRY_PREFIX, view.entry.id), json);
        txn.put(
            NEXT_ID_KEY.to_vec(),
            (view.entry.id + 1).to_be_bytes().to_vec(),
        );
        Ok(())
    }

    /// Makes a committed view visible.
    pub fn publish(&self, view: Arc<Relation>) -> Result<()> {
        let mut inner = self.write()?;
        inner.next_id = inner.next_id.max(view.entry.id + 1);
        tracing::info!(name = %view.name(), id = view.entry.id, "materialized view created");
        inner.relations.insert(view.name().to_owned(), view);
        Ok(())
    }

    /// The views that read `name`, directly.
    pub fn dependents(&self, name: &str) -> Result<Vec<Arc<Relation>>> {
        Ok(self
            .read()?
            .relations
            .values()
            .filter(|r| r.entry.depends_on.iter().any(|d| d == name))
            .cloned()
            .collect())
    }

    /// Looks up a stream or table by name.
    pub fn get(&self, name: &str) -> Result<Option<Arc<Relation>>> {
        Ok(self.read()?.relations.get(name).cloned())
    }

    /// All relations of one kind, by name.
    pub fn list(&self, kind: RelationKind) -> Result<Vec<Arc<Relation>>> {
        Ok(self
            .read()?
            .relations
            .values()
            .filter(|r| r.kind() == kind)
            .cloned()
            .collect())
    }

    /// Every relation name.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.read()?.relations.keys().cloned().collect())
    }

    /// Creates a stream or table.
    pub async fn create(&self, create: &CreateRelation) -> Result<Created> {
        let _writer = self.lock_writes().await;
        let id = {
            let inner = self.read()?;
            if let Some(existing) = inner.relations.get(&create.name) {
                if create.if_not_exists && existing.kind() == create.kind {
                    return Ok(Created::AlreadyExisted);
                }
                return Err(SluiceError::DuplicateObject {
                    kind: existing.kind().into(),
                    name: create.name.clone(),
                });
            }
            inner.next_id
        };
        let entry = RelationEntry::try_new(id, create)?;
        let json = serde_json::to_vec(&entry)
            .map_err(|e| SluiceError::internal(format!("catalog entry serialization: {e}")))?;
        let mut wb = WriteBatch::new();
        wb.put(key(ENTRY_PREFIX, id), json);
        wb.put(NEXT_ID_KEY.to_vec(), (id + 1).to_be_bytes().to_vec());
        // Rows of a relation with a reused name must not resurface.
        wb.delete_prefix(key(ROWS_PREFIX, id));
        wb.delete_prefix(key(LOG_PREFIX, id));
        self.store.write(wb)?;
        let relation = Arc::new(Relation::try_new(entry, 0)?);
        let mut inner = self.write()?;
        inner.next_id = id + 1;
        inner.relations.insert(create.name.clone(), relation);
        tracing::info!(name = %create.name, kind = %create.kind, id, "created");
        Ok(Created::New)
    }

    /// Drops relations, with their rows and state; with `CASCADE`, also
    /// every view that depends on them (transitively). Returns what was
    /// dropped, dependents first.
    pub async fn drop_relations(&self, drop: &Drop) -> Result<Vec<Arc<Relation>>> {
        let _writer = self.lock_writes().await;
        self.drop_relations_locked(drop)
    }

    /// [`Self::drop_relations`], for a caller that holds the writer lock.
    pub fn drop_relations_locked(&self, drop: &Drop) -> Result<Vec<Arc<Relation>>> {
        let mut doomed: Vec<Arc<Relation>> = Vec::new();
        {
            let inner = self.read()?;
            for name in &drop.names {
                match inner.relations.get(name) {
                    Some(r) if r.kind() == drop.kind => {
                        collect_dependents(&inner, r, drop.cascade, &mut doomed)?;
                    }
                    Some(r) => {
                        return Err(SluiceError::WrongObjectType {
                            message: format!("\"{name}\" is a {}, not a {}", r.kind(), drop.kind),
                            hint: Some(format!(
                                "use DROP {} {name}",
                                r.kind().keyword().to_uppercase()
                            )),
                        })
                    }
                    None if drop.if_exists => {}
                    None => {
                        return Err(SluiceError::UndefinedObject {
                            kind: drop.kind.into(),
                            name: name.clone(),
                        })
                    }
                }
            }
        }
        if doomed.is_empty() {
            return Ok(doomed);
        }
        let mut wb = WriteBatch::new();
        for r in &doomed {
            let id = r.entry.id;
            wb.delete(key(ENTRY_PREFIX, id));
            for prefix in [
                ROWS_PREFIX,
                LOG_PREFIX,
                STATE_PREFIX,
                VIEW_ROWS_PREFIX,
                FAILURE_PREFIX,
                POSITION_PREFIX,
                NAMED_POSITION_PREFIX,
            ] {
                wb.delete_prefix(key(prefix, id));
            }
        }
        self.store.write(wb)?;
        let mut inner = self.write()?;
        for r in &doomed {
            inner.relations.remove(r.name());
            tracing::info!(name = %r.name(), kind = %r.kind(), "dropped");
        }
        Ok(doomed)
    }

    /// Stores a connection (options already checked by its connector).
    pub async fn create_connection(
        &self,
        entry: ConnectionEntry,
        if_not_exists: bool,
    ) -> Result<Created> {
        let _writer = self.lock_writes().await;
        if self.read()?.connections.contains_key(&entry.name) {
            if if_not_exists {
                return Ok(Created::AlreadyExisted);
            }
            return Err(SluiceError::DuplicateObject {
                kind: ObjectKind::Connection,
                name: entry.name,
            });
        }
        let json = serde_json::to_vec(&entry)
            .map_err(|e| SluiceError::internal(format!("connection serialization: {e}")))?;
        let mut wb = WriteBatch::new();
        wb.put(connection_key(&entry.name), json);
        self.store.write(wb)?;
        tracing::info!(name = %entry.name, kind = %entry.kind, "connection created");
        self.write()?
            .connections
            .insert(entry.name.clone(), Arc::new(entry));
        Ok(Created::New)
    }

    /// Drops a connection that no stream, table or sink uses (2BP01
    /// otherwise). Returns whether it existed.
    pub async fn drop_connection(&self, name: &str, if_exists: bool) -> Result<bool> {
        let _writer = self.lock_writes().await;
        {
            let inner = self.read()?;
            if !inner.connections.contains_key(name) {
                if if_exists {
                    return Ok(false);
                }
                return Err(SluiceError::UndefinedObject {
                    kind: ObjectKind::Connection,
                    name: name.to_owned(),
                });
            }
            let users: Vec<&str> = inner
                .relations
                .values()
                .filter(|r| {
                    ["connection", "schema_registry"]
                        .iter()
                        .any(|k| r.entry.options.get(*k).map(String::as_str) == Some(name))
                })
                .map(|r| r.name())
                .collect();
            if !users.is_empty() {
                return Err(SluiceError::DependentObjects {
                    kind: ObjectKind::Connection,
                    name: name.to_owned(),
                    hint: Some(format!("{} use it; drop them first", users.join(", "))),
                });
            }
        }
        let mut wb = WriteBatch::new();
        wb.delete(connection_key(name));
        self.store.write(wb)?;
        self.write()?.connections.remove(name);
        tracing::info!(name = %name, "connection dropped");
        Ok(true)
    }

    /// The connection called `name`, if there is one.
    pub fn connection(&self, name: &str) -> Result<Option<Arc<ConnectionEntry>>> {
        Ok(self.read()?.connections.get(name).cloned())
    }

    /// Every connection, by name.
    pub fn connections(&self) -> Result<Vec<Arc<ConnectionEntry>>> {
        Ok(self.read()?.connections.values().cloned().collect())
    }

    /// Looks up a relation that a statement requires to exist.
    pub fn require(&self, name: &str, kind: ObjectKind) -> Result<Arc<Relation>> {
        self.get(name)?.ok_or_else(|| SluiceError::UndefinedObject {
            kind,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;

/// Syncs `store`'s writes so far (off the async threads: it waits for the
/// disk).
pub async fn sync_store(store: Arc<dyn StateBackend>) -> Result<()> {
    if !store.needs_sync() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || store.sync())
        .await
        .map_err(|e| SluiceError::internal(format!("WAL sync task: {e}")))??;
    Ok(())
}
