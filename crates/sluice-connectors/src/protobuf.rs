//! Protobuf in the Confluent wire format: a zero byte, the schema's 4-byte
//! big-endian registry id, the message indexes (which message of the
//! `.proto` file: a zigzag varint count, then that many zigzag varints;
//! a lone `0` byte for the file's first message), then the message.
//!
//! The registry holds `.proto` text. Each schema id is fetched once with
//! the files it imports (its references) and compiled in process with
//! protox (no `protoc`, no file system: imports resolve only to those
//! references and Google's well-known types). Records decode into
//! prost-reflect dynamic messages, which arrow-json turns into the
//! declared columns through serde (batch at a time), matched by field name
//! (exactly, else ignoring case): a column the message lacks is NULL, a
//! field no column names is dropped, so adding or removing a field keeps
//! flowing. A record that is not one message of a known schema, or whose
//! values do not fit its columns, is a bad record (`on_error`).
//!
//! Sinks write the same format: [`proto_schema_for`] writes a `.proto`
//! file for the rows (registered as `<topic>-value`), [`ProtobufEncoder`]
//! one message per row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::json::ReaderBuilder;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    SerializeOptions, Value,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use sluice_common::{Result, SluiceError};
use sluice_sql::SqlType;

use crate::decode::{by_group, RecordFormat};
use crate::registry::{Registry, SchemaCache};

fn bad(message: String) -> SluiceError {
    SluiceError::InvalidText { message }
}

/// The name the registry's main schema text is compiled under.
const MAIN_FILE: &str = "sluice-registry-schema.proto";

/// A record split into its schema id, message indexes and message bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    /// The registry id of the schema.
    pub id: u32,
    /// Which message of the file: top-level index, then nested ones.
    pub indexes: Vec<usize>,
    /// The message.
    pub payload: &'a [u8],
}

/// A zigzag varint at `bytes[*at..]`, moving `at` past it.
fn zigzag(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let v = (value >> 1) as i64 ^ -((value & 1) as i64);
            return Some(v);
        }
    }
    None
}

/// Splits a record in the Confluent Protobuf wire format.
pub fn frame(record: &[u8]) -> Result<Framed<'_>> {
    let [0, a, b, c, d, rest @ ..] = record else {
        return Err(bad(if record.first() == Some(&0) {
            "a Protobuf record shorter than its 5-byte header".to_owned()
        } else {
            "not a Protobuf record in the schema registry's wire format (it must start with a zero byte)"
                .to_owned()
        }));
    };
    let id = u32::from_be_bytes([*a, *b, *c, *d]);
    let truncated = || bad("a Protobuf record with truncated message indexes".to_owned());
    let mut at = 0;
    let count = zigzag(rest, &mut at).ok_or_else(truncated)?;
    let indexes = if count == 0 {
        vec![0]
    } else {
        if !(1..=32).contains(&count) {
            return Err(bad(format!(
                "a Protobuf record with {count} message indexes"
            )));
        }
        let mut out = Vec::new();
        for _ in 0..count {
            let i = zigzag(rest, &mut at).ok_or_else(truncated)?;
            out.push(usize::try_from(i).map_err(|_| bad(format!("message index {i}")))?);
        }
        out
    };
    Ok(Framed {
        id,
        indexes,
        payload: &rest[at..],
    })
}

/// The header of a record of the first message of schema `id`.
pub fn header(id: u32) -> [u8; 6] {
    let b = id.to_be_bytes();
    [0, b[0], b[1], b[2], b[3], 0]
}

/// Files by import path, for the compiler: the registry's, then Google's.
struct Files(HashMap<String, String>);

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> std::result::Result<File, protox::Error> {
        match self.0.get(name) {
            Some(text) => File::from_source(name, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles `main` (importing `imports`, as (path, text)) into its file
/// descriptor.
pub fn compile(main: &str, imports: &[(String, String)]) -> Result<FileDescriptor> {
    let mut files: HashMap<String, String> = imports.iter().cloned().collect();
    files.insert(MAIN_FILE.to_owned(), main.to_owned());
    let mut chain = ChainFileResolver::new();
    chain.add(Files(files));
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler
        .include_imports(true)
        .open_file(MAIN_FILE)
        .map_err(|e| bad(format!("the Protobuf schema does not compile: {e}")))?;
    let pool: DescriptorPool = compiler.descriptor_pool();
    pool.get_file_by_name(MAIN_FILE)
        .ok_or_else(|| SluiceError::internal("compiled Protobuf file missing"))
}

/// The message of `file` at `indexes`.
fn message_at(file: &FileDescriptor, indexes: &[usize]) -> Option<MessageDescriptor> {
    let (first, nested) = indexes.split_first()?;
    let mut message = file.messages().nth(*first)?;
    for i in nested {
        let child = message.child_messages().nth(*i)?;
        message = child;
    }
    Some(message)
}

/// The message `name` (full, or its last part) of `file`, or its first
/// message when `name` is not given.
pub fn message_named(file: &FileDescriptor, name: Option<&str>) -> Result<MessageDescriptor> {
    let found = match name {
        None => file.messages().next(),
        Some(n) => file
            .parent_pool()
            .all_messages()
            .find(|m| m.full_name() == n)
            .or_else(|| file.messages().find(|m| m.name() == n)),
    };
    found.ok_or_else(|| SluiceError::InvalidOption {
        message: match name {
            Some(n) => format!("the Protobuf schema has no message \"{n}\""),
            None => "the Protobuf schema defines no message".to_owned(),
        },
        hint: Some(format!(
            "messages: {}",
            file.messages()
                .map(|m| m.full_name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    })
}

fn is_timestamp(m: &MessageDescriptor) -> bool {
    m.full_name() == "google.protobuf.Timestamp"
}

/// The SQL type of a message field, or why there is none.
pub fn sql_type(field: &FieldDescriptor) -> Result<SqlType> {
    let unsupported = |what: String| {
        SluiceError::not_supported(
            format!("Protobuf field \"{}\" of type {what}", field.name()),
            Some(
                "repeated fields, maps, bytes and nested messages have no column type yet: \
                 declare the columns you need (fields not declared are skipped)",
            ),
        )
    };
    if field.is_list() || field.is_map() {
        return Err(unsupported("repeated or map".to_owned()));
    }
    Ok(match field.kind() {
        Kind::Bool => SqlType::Boolean,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => SqlType::Int,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => {
            SqlType::BigInt
        }
        Kind::Uint64 | Kind::Fixed64 => SqlType::Numeric {
            precision: 20,
            scale: 0,
        },
        Kind::Float => SqlType::Real,
        Kind::Double => SqlType::Double,
        Kind::String | Kind::Enum(_) => SqlType::Text,
        Kind::Message(m) if is_timestamp(&m) => SqlType::TimestampTz,
        Kind::Bytes => return Err(unsupported("bytes".to_owned())),
        Kind::Message(m) => return Err(unsupported(m.full_name().to_owned())),
    })
}

/// How messages are turned into JSON values for arrow-json: field names as
/// written in the `.proto` file, every field (proto3 defaults included),
/// 64-bit integers as numbers, enums by name, timestamps as RFC 3339.
const JSON: SerializeOptions = SerializeOptions::new()
    .stringify_64_bit_integers(false)
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// A message serialized as JSON for arrow-json.
struct AsJson(DynamicMessage);

impl serde::Serialize for AsJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize_with_options(s, &JSON)
    }
}

/// Decodes Confluent-framed Protobuf for one source.
#[derive(Debug)]
pub struct ProtobufFormat {
    registry: Registry,
    /// The `message` option: records of another message are bad.
    message: Option<String>,
    /// The compiled file of each schema id seen.
    files: SchemaCache<FileDescriptor>,
}

impl ProtobufFormat {
    /// Decodes with schemas from `registry`; records must be of `message`
    /// when it is given.
    pub fn new(registry: Registry, message: Option<String>) -> Self {
        ProtobufFormat {
            registry,
            message,
            files: SchemaCache::default(),
        }
    }

    /// Fetches and compiles the schemas of `records` not seen yet. Fails
    /// only when the registry cannot be asked (the poll is then retried);
    /// an id the registry does not have makes its records bad.
    pub async fn prepare(&self, records: &[&[u8]]) -> Result<()> {
        let ids: HashSet<u32> = records
            .iter()
            .filter_map(|r| frame(r).ok().map(|f| f.id))
            .collect();
        let registry = &self.registry;
        self.files
            .prepare(ids, registry, "Protobuf", |id| async move {
                let (main, imports) = registry.protobuf_files(id).await?;
                Ok(compile(&main, &imports))
            })
            .await
    }

    /// The message a record is of, checked against the `message` option.
    fn descriptor(&self, framed: &Framed<'_>) -> Result<MessageDescriptor> {
        if let Some(why) = self.files.unusable(framed.id) {
            return Err(bad(why));
        }
        let file = self
            .files
            .ready()?
            .get(&framed.id)
            .cloned()
            .ok_or_else(|| bad(format!("schema id {} is unknown", framed.id)))?;
        let message = message_at(&file, &framed.indexes).ok_or_else(|| {
            bad(format!(
                "schema {} has no message at indexes {:?}",
                framed.id, framed.indexes
            ))
        })?;
        if let Some(want) = &self.message {
            if message.full_name() != want && message.name() != want {
                return Err(bad(format!(
                    "a {} record, not a {want}",
                    message.full_name()
                )));
            }
        }
        Ok(message)
    }
}

/// Decodes `records` (payloads) of `message` into `schema`'s columns.
fn decode_messages(
    schema: &SchemaRef,
    message: &MessageDescriptor,
    payloads: &[&[u8]],
) -> Result<RecordBatch> {
    // The decoder reads the message's own field names; the batch gets the
    // declared ones back.
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = message
                .get_field_by_name(f.name())
                .or_else(|| {
                    message
                        .fields()
                        .find(|m| m.name().eq_ignore_ascii_case(f.name()))
                })
                .map_or_else(|| f.name().clone(), |m| m.name().to_owned());
            Field::new(name, f.data_type().clone(), f.is_nullable())
        })
        .collect();
    let mut messages = Vec::with_capacity(payloads.len());
    for p in payloads {
        let m = DynamicMessage::decode(message.clone(), *p).map_err(|e| {
            bad(format!(
                "invalid Protobuf {} record: {e}",
                message.full_name()
            ))
        })?;
        messages.push(AsJson(m));
    }
    let mut decoder = ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_batch_size(payloads.len().max(1))
        .build_decoder()?;
    decoder
        .serialize(&messages)
        .map_err(|e| bad(format!("Protobuf {} record: {e}", message.full_name())))?;
    let batch = decoder
        .flush()
        .map_err(|e| bad(format!("Protobuf {} record: {e}", message.full_name())))?
        .ok_or_else(|| bad("no Protobuf rows decoded".to_owned()))?;
    Ok(RecordBatch::try_new(
        schema.clone(),
        batch.columns().to_vec(),
    )?)
}

impl RecordFormat for ProtobufFormat {
    /// The frame and the message it names; the message itself is parsed
    /// once, by `decode_all` (a poll whose batch fails is decoded again
    /// record by record, which finds the bad one).
    fn validate(&self, _schema: &SchemaRef, record: &[u8]) -> Result<()> {
        self.descriptor(&frame(record)?).map(|_| ())
    }

    fn decode_all(&self, schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch> {
        by_group(
            schema,
            records,
            |r| {
                let f = frame(r)?;
                Ok((f.id, f.indexes))
            },
            |(id, indexes), group| {
                let message = self.descriptor(&Framed {
                    id: *id,
                    indexes: indexes.clone(),
                    payload: &[],
                })?;
                let payloads = group
                    .iter()
                    .map(|r| frame(r).map(|f| f.payload))
                    .collect::<Result<Vec<_>>>()?;
                decode_messages(schema, &message, &payloads)
            },
        )
    }
}

/// The `.proto` type of a column, and whether it needs an import.
fn proto_type(field: &Field) -> Result<&'static str> {
    Ok(match field.data_type() {
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "uint64",
        DataType::Float16 | DataType::Float32 => "float",
        DataType::Float64 => "double",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytes",
        DataType::Timestamp(_, _) => "google.protobuf.Timestamp",
        // Exact as text: decimals, dates, times and intervals.
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _)
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Interval(_) => "string",
        other => {
            return Err(SluiceError::not_supported(
                format!("Protobuf sink column \"{}\" of type {other}", field.name()),
                None,
            ))
        }
    })
}

/// A message name for the rows of `topic`: its letters and digits, each
/// run starting upper case (`page-views` → `PageViews`).
fn message_name(topic: &str) -> String {
    let mut out = String::new();
    for part in topic.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'T');
    }
    out
}

/// The `.proto` file a sink registers for rows of `schema` written to
/// `topic`: one proto3 message (package `sluice`), a field per column in
/// order, `optional` so that NULL is told from a default, timestamps as
/// `google.protobuf.Timestamp`, decimals, dates and intervals as text.
pub fn proto_schema_for(schema: &Schema, topic: &str) -> Result<String> {
    let mut body = String::new();
    let mut timestamps = false;
    for (i, f) in schema.fields().iter().enumerate() {
        let ty = proto_type(f)?;
        timestamps |= ty == "google.protobuf.Timestamp";
        let valid = f
            .name()
            .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && f.name()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SluiceError::not_supported(
                format!(
                    "Protobuf sink column \"{}\": a field name is letters, digits and _",
                    f.name()
                ),
                Some("rename the column in the view (AS name)"),
            ));
        }
        body.push_str(&format!("  optional {ty} {} = {};\n", f.name(), i + 1));
    }
    let import = if timestamps {
        "import \"google/protobuf/timestamp.proto\";\n\n"
    } else {
        ""
    };
    Ok(format!(
        "syntax = \"proto3\";\n\npackage sluice;\n\n{import}message {} {{\n{body}}}\n",
        message_name(topic)
    ))
}

/// Encodes rows as Confluent-framed Protobuf records of a registered
/// schema (as [`proto_schema_for`] wrote it).
#[derive(Debug)]
pub struct ProtobufEncoder {
    message: MessageDescriptor,
    header: [u8; 6],
}

impl ProtobufEncoder {
    /// An encoder for `proto` (one message), registered with id `id`.
    pub fn new(proto: &str, id: u32) -> Result<Self> {
        let file = compile(proto, &[])?;
        Ok(ProtobufEncoder {
            message: message_named(&file, None)?,
            header: header(id),
        })
    }

    /// One record per row of `batch`.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let mut messages: Vec<DynamicMessage> = (0..batch.num_rows())
            .map(|_| DynamicMessage::new(self.message.clone()))
            .collect();
        for (column, field) in batch.columns().iter().zip(self.message.fields()) {
            set_column(&mut messages, &field, column)?;
        }
        Ok(messages
            .iter()
            .map(|m| {
                let mut out = Vec::with_capacity(self.header.len() + m.encoded_len());
                out.extend_from_slice(&self.header);
                m.encode(&mut out)
                    .map(|()| out)
                    .map_err(|e| SluiceError::internal(format!("protobuf encode: {e}")))
            })
            .collect::<Result<_>>()?)
    }
}

/// Sets `field` of each message from `column` (NULL: left unset).
fn set_column(
    messages: &mut [DynamicMessage],
    field: &FieldDescriptor,
    column: &Arc<dyn Array>,
) -> Result<()> {
    let as_type = |t: &DataType| cast(column, t);
    let mut set = |values: &dyn Fn(usize) -> Value| {
        for (i, m) in messages.iter_mut().enumerate() {
            if column.is_valid(i) {
                m.set_field(field, values(i));
            }
        }
    };
    match field.kind() {
        Kind::Bool => {
            let c = as_type(&DataType::Boolean)?;
            let c = downcast::<BooleanArray>(&c)?;
            set(&|i| Value::Bool(c.value(i)));
        }
        Kind::Int32 => {
            let c = as_type(&DataType::Int32)?;
            let c = downcast::<Int32Array>(&c)?;
            set(&|i| Value::I32(c.value(i)));
        }
        Kind::Int64 => {
            let c = as_type(&DataType::Int64)?;
            let c = downcast::<Int64Array>(&c)?;
            set(&|i| Value::I64(c.value(i)));
        }
        Kind::Uint64 => {
            let c = as_type(&DataType::UInt64)?;
            let c = downcast::<UInt64Array>(&c)?;
            set(&|i| Value::U64(c.value(i)));
        }
        Kind::Float => {
            let c = as_type(&DataType::Float32)?;
            let c = downcast::<Float32Array>(&c)?;
            set(&|i| Value::F32(c.value(i)));
        }
        Kind::Double => {
            let c = as_type(&DataType::Float64)?;
            let c = downcast::<Float64Array>(&c)?;
            set(&|i| Value::F64(c.value(i)));
        }
        Kind::String => {
            let c = as_type(&DataType::Utf8)?;
            let c = downcast::<StringArray>(&c)?;
            set(&|i| Value::String(c.value(i).to_owned()));
        }
        Kind::Bytes => {
            let c = as_type(&DataType::Binary)?;
            let c = c.as_binary::<i32>();
            set(&|i| Value::Bytes(bytes::Bytes::copy_from_slice(c.value(i))));
        }
        Kind::Message(m) if is_timestamp(&m) => {
            let tz = match column.data_type() {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            let c = as_type(&DataType::Timestamp(TimeUnit::Microsecond, tz))?;
            let c = c.as_primitive::<TimestampMicrosecondType>();
            let (seconds, nanos) = (m.get_field_by_name("seconds"), m.get_field_by_name("nanos"));
            let (Some(seconds), Some(nanos)) = (seconds, nanos) else {
                return Err(SluiceError::internal("google.protobuf.Timestamp fields"));
            };
            set(&|i| {
                let micros = c.value(i);
                let mut t = DynamicMessage::new(m.clone());
                t.set_field(&seconds, Value::I64(micros.div_euclid(1_000_000)));
                t.set_field(
                    &nanos,
                    Value::I32((micros.rem_euclid(1_000_000) * 1000) as i32),
                );
                Value::Message(t)
            });
        }
        other => {
            return Err(SluiceError::internal(format!(
                "protobuf sink field of kind {other:?}"
            )))
        }
    }
    Ok(())
}

fn downcast<T: 'static>(array: &Arc<dyn Array>) -> Result<&T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| SluiceError::internal("protobuf column type"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMicrosecondArray;

    const CLICK: &str = r#"
        syntax = "proto3";
        package web;
        import "google/protobuf/timestamp.proto";
        message Other { string x = 1; }
        message Click {
          int64 user_id = 1;
          string url = 2;
          google.protobuf.Timestamp ts = 3;
          enum Kind { VIEW = 0; BUY = 1; }
          Kind kind = 4;
          message Inner { int32 n = 1; }
        }
    "#;

    /// A varint.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A Click written by hand (protobuf's wire format), not by the code
    /// under test.
    fn click(user_id: u64, url: &str, seconds: Option<u64>, kind: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(1 << 3, &mut out);
        varint(user_id, &mut out);
        varint((2 << 3) | 2, &mut out);
        varint(url.len() as u64, &mut out);
        out.extend_from_slice(url.as_bytes());
        if let Some(s) = seconds {
            let mut ts = Vec::new();
            varint(1 << 3, &mut ts);
            varint(s, &mut ts);
            varint((3 << 3) | 2, &mut out);
            varint(ts.len() as u64, &mut out);
            out.extend_from_slice(&ts);
        }
        if kind != 0 {
            varint(4 << 3, &mut out);
            varint(kind, &mut out);
        }
        out
    }

    #[test]
    fn frames_split_into_id_indexes_and_message() {
        // (record, id, indexes, payload) — indexes as Confluent writes them:
        // a lone 0 for [0], else a zigzag count and zigzag indexes.
        let cases: &[(&[u8], u32, &[usize], &[u8])] = &[
            (&[0, 0, 0, 0, 7, 0, 8, 1], 7, &[0], &[8, 1]),
            (&[0, 0, 0, 1, 0, 2, 2, 8, 1], 256, &[1], &[8, 1]),
            (&[0, 0, 0, 0, 3, 4, 2, 0], 3, &[1, 0], &[]),
        ];
        for (record, id, indexes, payload) in cases {
            let f = frame(record).expect("frame");
            assert_eq!(
                (f.id, f.indexes.as_slice(), f.payload),
                (*id, *indexes, *payload)
            );
        }
        for (record, needle) in [
            (&b"{\"a\": 1}"[..], "zero byte"),
            (&[0, 0, 1][..], "5-byte header"),
            (&[0, 0, 0, 0, 1][..], "truncated message indexes"),
            (&[0, 0, 0, 0, 1, 4, 2][..], "truncated message indexes"),
            (&[0, 0, 0, 0, 1, 1][..], "-1 message indexes"),
        ] {
            let e = frame(record).expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    fn format_with(id: u32, proto: &str, message: Option<&str>) -> ProtobufFormat {
        let format = ProtobufFormat::new(
            Registry::new(crate::registry::RegistryOptions {
                url: "http://127.0.0.1:1".into(),
                auth: None,
                ca_pem: None,
            })
            .expect("client"),
            message.map(str::to_owned),
        );
        let file = compile(proto, &[]).expect("compiles");
        format.files.insert(id, file);
        format
    }

    fn framed(id: u32, indexes: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(indexes);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn clicks_decode_by_name_into_the_declared_columns() {
        let format = format_with(1, CLICK, Some("web.Click"));
        // Declared: URL in another case, ts, kind, and a column the message
        // lacks; the indexes of Click are [1].
        let declared = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("URL", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("kind", DataType::Utf8, true),
            Field::new("missing", DataType::Float64, true),
        ]));
        let a = framed(1, &[2, 2], &click(7, "/a", Some(1_660_269_600), 1));
        let b = framed(1, &[2, 2], &click(8, "/b", None, 0));
        let records: Vec<&[u8]> = vec![&a, &b];
        for r in &records {
            format.validate(&declared, r).expect("valid");
        }
        let out = format.decode_all(&declared, &records).expect("decode");
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&[out])
            .expect("pretty")
            .to_string();
        let want = [
            "+---------+-----+----------------------+------+---------+",
            "| user_id | URL | ts                   | kind | missing |",
            "+---------+-----+----------------------+------+---------+",
            "| 7       | /a  | 2022-08-12T02:00:00Z | BUY  |         |",
            "| 8       | /b  |                      | VIEW |         |",
            "+---------+-----+----------------------+------+---------+",
        ]
        .join("\n");
        assert_eq!(text, want);

        // Bad alone: another message, an index out of range, a truncated
        // message, an unknown id, a value too large for its column.
        let other = framed(1, &[0], &[10, 1, b'x']);
        let out_of_range = framed(1, &[2, 18], &click(1, "/", None, 0));
        let full = click(1, "/long-url", None, 0);
        let truncated = framed(1, &[2, 2], &full[..full.len() - 2]);
        let unknown = framed(9, &[0], &click(1, "/", None, 0));
        let cases: Vec<(&[u8], &str)> = vec![
            (&other, "a web.Other record, not a web.Click"),
            (&out_of_range, "no message at indexes [9]"),
            (&truncated, "invalid Protobuf web.Click record"),
            (&unknown, "schema id 9 is unknown"),
        ];
        for (record, needle) in cases {
            let e = format
                .validate(&declared, record)
                .and_then(|()| format.decode_all(&declared, &[record]))
                .expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let narrow = Arc::new(Schema::new(vec![Field::new(
            "user_id",
            DataType::Int32,
            true,
        )]));
        let big = framed(1, &[2, 2], &click(1 << 40, "/", None, 0));
        assert!(format.decode_all(&narrow, &[&big]).is_err());
    }

    #[test]
    fn columns_get_sql_types_or_a_clear_refusal() {
        let file = compile(
            r#"syntax = "proto3";
               import "google/protobuf/timestamp.proto";
               message M {
                 int32 a = 1; uint64 b = 2; string c = 3; google.protobuf.Timestamp d = 4;
                 bool e = 5; double f = 6; repeated int32 g = 7; bytes h = 8;
                 map<string, int32> i = 9; M j = 10;
               }"#,
            &[],
        )
        .expect("compiles");
        let m = message_named(&file, Some("M")).expect("M");
        let got: Vec<String> = m
            .fields()
            .map(|f| match sql_type(&f) {
                Ok(t) => format!("{} {t}", f.name()),
                Err(e) => format!("{} {}", f.name(), e.sqlstate()),
            })
            .collect();
        assert_eq!(
            got,
            [
                "a integer",
                "b numeric(20,0)",
                "c text",
                "d timestamp with time zone",
                "e boolean",
                "f double precision",
                "g 0A000",
                "h 0A000",
                "i 0A000",
                "j 0A000"
            ]
        );
        let e = message_named(&file, Some("Nope")).expect_err("no such message");
        assert!(e.to_string().contains("no message \"Nope\""), "{e}");
        let e = compile("syntax = \"proto3\"; message { }", &[]).expect_err("bad proto");
        assert!(e.to_string().contains("does not compile"), "{e}");
        let e = compile(
            "syntax = \"proto3\"; import \"/etc/passwd\"; message A {}",
            &[],
        )
        .expect_err("imports resolve only to references");
        assert!(e.to_string().contains("does not compile"), "{e}");
    }

    #[test]
    fn sink_rows_encode_and_decode_back() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("op", DataType::Utf8, false),
        ]);
        let proto = proto_schema_for(&schema, "page-views").expect("proto");
        assert!(proto.contains("message PageViews {"), "{proto}");
        assert!(proto.contains("optional int64 id = 1;"), "{proto}");
        assert!(
            proto.contains("optional google.protobuf.Timestamp ts = 3;"),
            "{proto}"
        );
        let batch = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(Int64Array::from(vec![1, -2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(1_660_269_600_123_456),
                    Some(-1),
                ])),
                Arc::new(StringArray::from(vec!["insert", "delete"])),
            ],
        )
        .expect("batch");
        let encoder = ProtobufEncoder::new(&proto, 5).expect("encoder");
        let records = encoder.encode(&batch).expect("encode");
        assert!(records.iter().all(|r| r[..6] == [0, 0, 0, 0, 5, 0]));
        let format = format_with(5, &proto, None);
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let out = format.decode_all(&Arc::new(schema), &refs).expect("decode");
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&[out])
            .expect("pretty")
            .to_string();
        assert!(
            text.contains("| 1  | a    | 2022-08-12T02:00:00.123456 | insert |"),
            "{text}"
        );
        assert!(
            text.contains("| -2 |      | 1969-12-31T23:59:59.999999 | delete |"),
            "{text}"
        );
        let e = proto_schema_for(
            &Schema::new(vec![Field::new("bad name", DataType::Int64, true)]),
            "t",
        )
        .expect_err("bad field name");
        assert_eq!(e.sqlstate(), "0A000");
        assert_eq!(message_name("2024.orders"), "T2024Orders");
    }
}
