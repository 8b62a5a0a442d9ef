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
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use datafusion::arrow::array::{Array, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sluice_common::{ObjectKind, Result, SluiceError};
use sluice_sql::{CreateRelation, Drop, RelationKind, SqlType};
use sluice_state::{StateBackend, WriteBatch};
use tokio::sync::{Mutex, MutexGuard};

use crate::entry::RelationEntry;
use crate::rows::RowCodec;

const NEXT_ID_KEY: &[u8] = b"\x00next_id";
const ENTRY_PREFIX: u8 = 0x01;
const ROWS_PREFIX: u8 = 0x02;
const LOG_PREFIX: u8 = 0x03;

fn key(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A stream or table, ready to read and write.
#[derive(Debug)]
pub struct Relation {
    entry: RelationEntry,
    schema: SchemaRef,
    codec: RowCodec,
    /// Next sequence number in a stream's log.
    next_seq: AtomicU64,
}

impl Relation {
    fn try_new(entry: RelationEntry, next_seq: u64) -> Result<Self> {
        let schema = entry.schema();
        let codec = RowCodec::try_new(schema.clone(), entry.primary_key.clone())?;
        Ok(Relation {
            entry,
            schema,
            codec,
            next_seq: AtomicU64::new(next_seq),
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

    /// Encodes an upsert of every row of `batch` (later rows win) into `wb`.
    pub fn upsert_into(&self, batch: &RecordBatch, wb: &mut WriteBatch) -> Result<()> {
        let prefix = key(ROWS_PREFIX, self.entry.id);
        let keys = self.codec.encode_keys(batch)?;
        let values = self.codec.encode_values(batch)?;
        for (k, v) in keys.into_iter().zip(values) {
            let mut full = prefix.clone();
            full.extend_from_slice(&k);
            wb.put(full, v);
        }
        Ok(())
    }

    /// Encodes the deletion of the keys of every row of `batch` into `wb`.
    pub fn delete_into(&self, batch: &RecordBatch, wb: &mut WriteBatch) -> Result<()> {
        let prefix = key(ROWS_PREFIX, self.entry.id);
        for k in self.codec.encode_keys(batch)? {
            let mut full = prefix.clone();
            full.extend_from_slice(&k);
            wb.delete(full);
        }
        Ok(())
    }

    /// Encodes the append of `batch` to a stream's log into `wb`.
    pub fn append_into(&self, batch: &RecordBatch, wb: &mut WriteBatch) -> Result<()> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut k = key(LOG_PREFIX, self.entry.id);
        k.extend_from_slice(&seq.to_be_bytes());
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &self.schema)?;
            w.write(batch)?;
            w.finish()?;
        }
        wb.put(k, buf);
        Ok(())
    }

    /// The current rows of a table, from one snapshot.
    pub fn read_rows(&self, store: &dyn StateBackend) -> Result<RecordBatch> {
        let rows = store.scan_prefix(&key(ROWS_PREFIX, self.entry.id))?;
        self.codec
            .decode_values(rows.iter().map(|(_, v)| v.as_slice()))
    }

    /// Every batch ever appended to a stream, in order.
    pub fn read_log(&self, store: &dyn StateBackend) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for (_, bytes) in store.scan_prefix(&key(LOG_PREFIX, self.entry.id))? {
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
    next_id: u64,
}

/// Streams and tables, persisted in the state store.
pub struct Catalog {
    store: Arc<dyn StateBackend>,
    inner: RwLock<Inner>,
    /// Serializes writers (DDL and DML), so a read-modify-write such as
    /// UPDATE sees no concurrent change.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
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
            let next_seq = match store.last_with_prefix(&key(LOG_PREFIX, entry.id))? {
                Some((k, _)) => {
                    let seq: [u8; 8] = k[9..]
                        .try_into()
                        .map_err(|_| SluiceError::Storage("corrupt stream log key".to_owned()))?;
                    u64::from_be_bytes(seq) + 1
                }
                None => 0,
            };
            tracing::debug!(name = %entry.name, id = entry.id, "catalog entry loaded");
            let relation = Arc::new(Relation::try_new(entry, next_seq)?);
            inner.relations.insert(relation.name().to_owned(), relation);
        }
        tracing::info!(relations = inner.relations.len(), "catalog loaded");
        Ok(Arc::new(Catalog {
            store,
            inner: RwLock::new(inner),
            writer: Mutex::new(()),
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

    /// Takes the writer lock: hold it across a read-modify-write.
    pub async fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
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

    /// Drops streams or tables, with their rows.
    pub async fn drop_relations(&self, drop: &Drop) -> Result<()> {
        let _writer = self.lock_writes().await;
        let mut doomed = Vec::new();
        {
            let inner = self.read()?;
            for name in &drop.names {
                match inner.relations.get(name) {
                    Some(r) if r.kind() == drop.kind => doomed.push(r.clone()),
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
            return Ok(());
        }
        let mut wb = WriteBatch::new();
        for r in &doomed {
            wb.delete(key(ENTRY_PREFIX, r.entry.id));
            wb.delete_prefix(key(ROWS_PREFIX, r.entry.id));
            wb.delete_prefix(key(LOG_PREFIX, r.entry.id));
        }
        self.store.write(wb)?;
        let mut inner = self.write()?;
        for r in doomed {
            inner.relations.remove(r.name());
            tracing::info!(name = %r.name(), kind = %r.kind(), "dropped");
        }
        Ok(())
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
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use sluice_sql::Statement;
    use sluice_state::{MemoryBackend, RocksBackend};

    use super::*;

    fn create(sql: &str) -> CreateRelation {
        match sluice_sql::parse(sql).expect("parses").remove(0) {
            Statement::CreateRelation(c) => *c,
            _ => panic!("not a create"),
        }
    }

    fn batch(rel: &Relation, ids: Vec<i64>, names: Vec<&str>) -> RecordBatch {
        RecordBatch::try_new(
            rel.schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .expect("batch")
    }

    #[tokio::test]
    async fn tables_upsert_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store: Arc<dyn StateBackend> =
                Arc::new(RocksBackend::open(dir.path()).expect("open"));
            let catalog = Catalog::open(store.clone()).expect("catalog");
            catalog
                .create(&create("CREATE TABLE u (id BIGINT PRIMARY KEY, name TEXT)"))
                .await
                .expect("create");
            let u = catalog.require("u", ObjectKind::Table).expect("u");
            let mut wb = WriteBatch::new();
            u.upsert_into(&batch(&u, vec![1, 2], vec!["a", "b"]), &mut wb)
                .expect("upsert");
            u.upsert_into(&batch(&u, vec![1], vec!["a2"]), &mut wb)
                .expect("upsert");
            store.write(wb).expect("write");
        }
        let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open(dir.path()).expect("open"));
        let catalog = Catalog::open(store.clone()).expect("catalog");
        let u = catalog.require("u", ObjectKind::Table).expect("u survives");
        let rows = u.read_rows(store.as_ref()).expect("rows");
        assert_eq!(rows, batch(&u, vec![1, 2], vec!["a2", "b"]));
    }

    #[tokio::test]
    async fn streams_append_and_drop_forgets_rows() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let catalog = Catalog::open(store.clone()).expect("catalog");
        catalog
            .create(&create("CREATE STREAM s (id BIGINT, name TEXT)"))
            .await
            .expect("create");
        let s = catalog.require("s", ObjectKind::Stream).expect("s");
        let mut wb = WriteBatch::new();
        s.append_into(&batch(&s, vec![1], vec!["x"]), &mut wb)
            .expect("append");
        s.append_into(&batch(&s, vec![1], vec!["x"]), &mut wb)
            .expect("append");
        store.write(wb).expect("write");
        assert_eq!(s.read_log(store.as_ref()).expect("log").len(), 2);

        let err = catalog
            .create(&create("CREATE TABLE s (id BIGINT PRIMARY KEY)"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "stream \"s\" already exists");
        assert_eq!(
            catalog
                .create(&create("CREATE STREAM IF NOT EXISTS s (id BIGINT)"))
                .await
                .expect("if not exists"),
            Created::AlreadyExisted
        );

        let Statement::Drop(d) = sluice_sql::parse("DROP TABLE s").expect("p").remove(0) else {
            panic!()
        };
        assert_eq!(
            catalog.drop_relations(&d).await.unwrap_err().sqlstate(),
            "42809"
        );
        let Statement::Drop(d) = sluice_sql::parse("DROP STREAM s").expect("p").remove(0) else {
            panic!()
        };
        catalog.drop_relations(&d).await.expect("drop");
        assert!(store.scan_prefix(&[LOG_PREFIX]).expect("scan").is_empty());
        assert_eq!(
            catalog.drop_relations(&d).await.unwrap_err().to_string(),
            "stream \"s\" does not exist"
        );
    }
}
