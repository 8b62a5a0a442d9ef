//! The `file` connector: a stream fed by the files a glob matches, read
//! in name order, one after the other; files that appear later are picked
//! up, and lines appended to a file are read as they come.
//!
//! ```sql
//! CREATE STREAM backfill (user_id BIGINT, url TEXT, ts TIMESTAMP)
//!   WITH (connector = 'file', path = '/data/clicks-*.jsonl', format = 'json');
//! ```
//!
//! `json` (one object per line) and `csv` (one row per line, no header)
//! files are read a chunk of lines at a time and decoded like Kafka
//! records (each line alone, many lines into one Arrow batch); `parquet`
//! files are read whole, a row group at a time, columns by name. Each
//! chunk is written with the file's new position (its next byte, or
//! Parquet row) in one transaction (`Catalog::ingest_at`), so a restart
//! goes on exactly after the last line written. A line that is not one
//! record is a bad record (`on_error`: `skip`, the default, or `fail`),
//! logged with its file and line. Only files under the server's
//! `source_file_dirs` can be read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_catalog::{Catalog, Ingest, Relation};
use sluice_common::{Result, SluiceError};
use sluice_sql::{CreateRelation, RelationKind};

use crate::connector::{Connector, Context, OptionDoc, Running};
use crate::decode::{by_name, decode, Encoding};
use crate::kafka::properties::Policy;
use crate::status::{bounded, SourceStatus};

/// The file connector.
#[derive(Debug)]
pub struct Files;

/// At most this many lines (or Parquet rows) go into one transaction.
const CHUNK_LINES: usize = 10_000;

/// How the files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Json,
    Csv,
    Parquet,
}

/// The checked options of a file source.
#[derive(Debug, Clone)]
struct FileSource {
    /// The glob, as given.
    pattern: String,
    /// The directory the glob starts in (resolved), under an allowed one.
    base: PathBuf,
    format: FileFormat,
    fail_on_error: bool,
    poll: Duration,
}

fn invalid(message: String, hint: &str) -> SluiceError {
    SluiceError::InvalidOption {
        message,
        hint: Some(hint.to_owned()),
    }
}

/// The directory part of `pattern` before its first wildcard.
fn fixed_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    for part in Path::new(pattern).components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            return dir;
        }
        dir.push(part);
    }
    dir.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Whether `path` (resolved) is under a source directory of `policy`.
fn allowed(policy: &Policy, path: &Path) -> bool {
    Policy::under(&policy.source_dirs, path)
}

impl FileSource {
    fn parse(
        kind: RelationKind,
        name: &str,
        options: &BTreeMap<String, String>,
        policy: &Policy,
    ) -> Result<Self> {
        let what = format!("{kind} \"{name}\"");
        if kind != RelationKind::Stream {
            return Err(invalid(
                format!("the file connector feeds a stream, and \"{name}\" is a {kind}"),
                "declare it as CREATE STREAM ... WITH (connector = 'file', path = '...')",
            ));
        }
        let pattern = options
            .get("path")
            .filter(|p| !p.is_empty())
            .cloned()
            .ok_or_else(|| {
                invalid(
                    format!("{what} needs option \"path\""),
                    "add path = '/dir/files-*.jsonl' to WITH (...)",
                )
            })?;
        glob::Pattern::new(&pattern).map_err(|e| {
            invalid(
                format!("path \"{pattern}\" of {what} is not a valid glob: {e}"),
                "use * and ? for any characters, [abc] for one of them",
            )
        })?;
        let dir = fixed_dir(&pattern);
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        // The same answer for a missing directory and one elsewhere.
        let refused = || SluiceError::PermissionDenied {
            message: format!(
                "option \"path\": \"{}\" is not a directory under a directory the server allows",
                dir.display()
            ),
            hint: Some(if policy.source_dirs.is_empty() {
                "no directory is allowed: the server's operator can list directories SQL may \
                 read files from with source_file_dirs in the config file"
                    .to_owned()
            } else {
                "files must be under a directory of the server's source_file_dirs".to_owned()
            }),
        };
        let base = dir
            .canonicalize()
            .ok()
            .filter(|d| d.is_dir() && allowed(policy, d))
            .ok_or_else(refused)?;
        let format = match options.get("format").map(String::as_str) {
            None | Some("json") => FileFormat::Json,
            Some("csv") => FileFormat::Csv,
            Some("parquet") => FileFormat::Parquet,
            Some(other) => {
                return Err(invalid(
                    format!("unknown format \"{other}\" for {what}"),
                    "file formats: json (one object per line), csv (no header), parquet",
                ))
            }
        };
        let fail_on_error = match options.get("on_error").map(String::as_str) {
            None | Some("skip") => false,
            Some("fail") => true,
            Some(other) => {
                return Err(invalid(
                    format!("unknown on_error \"{other}\" for {what}"),
                    "a file source takes on_error = 'skip' (default) or 'fail'",
                ))
            }
        };
        let poll = match options.get("poll_interval") {
            Some(v) => sluice_catalog::duration_option("poll_interval", v)?,
            None => Duration::from_secs(1),
        };
        Ok(FileSource {
            pattern,
            base,
            format,
            fail_on_error,
            poll,
        })
    }

    /// The files the glob matches now, resolved, allowed, in name order.
    fn files(&self, policy: &Policy) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let paths = glob::glob(&self.pattern)
            .map_err(|e| SluiceError::internal(format!("glob checked at CREATE: {e}")))?;
        for entry in paths.flatten() {
            match entry.canonicalize() {
                Ok(p) if p.is_file() && allowed(policy, &p) => out.push(p),
                // A symbolic link out of the allowed directories, say.
                Ok(p) if p.is_file() => {
                    tracing::warn!(file = %entry.display(), "file outside source_file_dirs skipped")
                }
                _ => {}
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

use OptionDoc as D;

impl Connector for Files {
    fn name(&self) -> &'static str {
        "file"
    }

    fn source_options(&self) -> Vec<OptionDoc> {
        vec![
            D::new(
                "path",
                "a glob of files under source_file_dirs, read in name order",
            ),
            D::new(
                "format",
                "json (default, one object per line), csv (no header) or parquet",
            ),
            D::new("on_error", "skip (default) or fail: what a bad line does"),
            D::new(
                "poll_interval",
                "how often new files and lines are looked for (default 1 second)",
            ),
        ]
    }

    fn check_source(
        &self,
        cx: &Context,
        create: &CreateRelation,
        options: &BTreeMap<String, String>,
    ) -> Result<()> {
        if let Some((what, _)) = create.include.first() {
            return Err(invalid(
                format!("INCLUDE {what} is for Kafka sources, not files"),
                "leave out INCLUDE",
            ));
        }
        FileSource::parse(create.kind, &create.name, options, &cx.policy).map(|_| ())
    }

    fn start_source(
        &self,
        cx: &Context,
        relation: Arc<Relation>,
        options: &BTreeMap<String, String>,
    ) -> Result<Running> {
        let parsed = FileSource::parse(relation.kind(), relation.name(), options, &cx.policy)?;
        let status = Arc::new(SourceStatus::new(relation.name(), &parsed.pattern));
        let task = tokio::spawn(run(
            cx.catalog.clone(),
            cx.policy.clone(),
            relation,
            parsed,
            status.clone(),
        ));
        Ok((status, task))
    }
}

/// Reads until the relation is dropped or a bad line stops it
/// (`on_error = 'fail'`); errors reading files are retried.
async fn run(
    catalog: Arc<Catalog>,
    policy: Arc<Policy>,
    relation: Arc<Relation>,
    source: FileSource,
    status: Arc<SourceStatus>,
) {
    tracing::info!(source = %relation.name(), path = %source.pattern, dir = %source.base.display(), "file source started");
    // Sizes seen at the last look: a last line without its newline is
    // taken once the file stops growing.
    let mut sizes: BTreeMap<PathBuf, (u64, std::time::Instant)> = BTreeMap::new();
    loop {
        match read_new(&catalog, &policy, &relation, &source, &status, &mut sizes).await {
            Ok(Progress::Caught) => {
                if !status.state().starts_with("running") {
                    status.set_state("running".to_owned());
                }
                tokio::time::sleep(source.poll).await;
            }
            Ok(Progress::More) => {}
            Ok(Progress::Stop) => return,
            Err(SluiceError::UndefinedObject { .. }) => return,
            Err(e) => {
                tracing::warn!(source = %relation.name(), error = %e, "file source error; retrying");
                status.set_state(bounded(&format!("retrying: {e}")));
                tokio::time::sleep(source.poll.max(Duration::from_millis(500))).await;
            }
        }
    }
}

enum Progress {
    /// Everything there is was read.
    Caught,
    /// A chunk was read; there may be more.
    More,
    /// The source failed (`on_error = 'fail'`).
    Stop,
}

/// Reads the next chunk of the first file with anything new.
async fn read_new(
    catalog: &Arc<Catalog>,
    policy: &Policy,
    relation: &Arc<Relation>,
    source: &FileSource,
    status: &SourceStatus,
    sizes: &mut BTreeMap<PathBuf, (u64, std::time::Instant)>,
) -> Result<Progress> {
    let positions = catalog.named_positions(relation.entry().id)?;
    for file in source.files(policy)? {
        let name = file.to_string_lossy().into_owned();
        let next = positions.get(&name).copied().unwrap_or(0);
        let read = match source.format {
            FileFormat::Parquet => read_parquet(relation, &file, next)?,
            FileFormat::Json | FileFormat::Csv => {
                let size = std::fs::metadata(&file)
                    .map_err(|e| SluiceError::Storage(format!("{}: {e}", file.display())))?
                    .len();
                // A last line without its newline is taken once the file
                // kept its size for a poll interval.
                let now = std::time::Instant::now();
                let settled = match sizes.get(&file) {
                    Some((seen, since)) if *seen == size => {
                        now.duration_since(*since) >= source.poll
                    }
                    _ => {
                        sizes.insert(file.clone(), (size, now));
                        false
                    }
                };
                read_lines(relation, source.format, &file, next, size, settled)?
            }
        };
        let Some(chunk) = read else {
            continue;
        };
        for (line, reason) in &chunk.bad {
            tracing::warn!(source = %relation.name(), file = %name, line, reason = %bounded(reason), "bad record");
        }
        if source.fail_on_error {
            if let Some((line, reason)) = chunk.bad.first() {
                let message = format!("failed at {name} line {line}: {}", bounded(reason));
                tracing::error!(source = %relation.name(), %message, "file source stopped (on_error = 'fail')");
                // The lines before it are kept.
                if let Some((rows, upto)) = chunk.before_first_bad {
                    write(catalog, relation, &name, rows, upto).await?;
                }
                status.set_state(format!("failed: {message}"));
                return Ok(Progress::Stop);
            }
        }
        let (rows, bytes, bad) = (chunk.rows.num_rows(), chunk.bytes, chunk.bad.len());
        write(catalog, relation, &name, chunk.rows, chunk.next).await?;
        status.add(rows as u64, bytes, bad as u64);
        return Ok(Progress::More);
    }
    Ok(Progress::Caught)
}

async fn write(
    catalog: &Arc<Catalog>,
    relation: &Arc<Relation>,
    name: &str,
    rows: RecordBatch,
    next: i64,
) -> Result<()> {
    let mut named = BTreeMap::new();
    named.insert(name.to_owned(), next);
    let parts = if rows.num_rows() > 0 {
        vec![Ingest::Append(relation.normalize_rows(rows)?)]
    } else {
        Vec::new()
    };
    catalog
        .ingest_at(relation, parts, &BTreeMap::new(), &named)
        .await
}

/// What one read of a file gave.
struct Chunk {
    rows: RecordBatch,
    /// The file's new position.
    next: i64,
    bytes: u64,
    /// Bad records: line number (from 1) and reason.
    bad: Vec<(u64, String)>,
    /// The good rows before the first bad record, and the position after
    /// them (for `on_error = 'fail'`).
    before_first_bad: Option<(RecordBatch, i64)>,
}

/// Up to [`CHUNK_LINES`] complete lines from byte `from`; `None` when
/// there is nothing new.
fn read_lines(
    relation: &Relation,
    format: FileFormat,
    file: &Path,
    from: i64,
    size: u64,
    settled: bool,
) -> Result<Option<Chunk>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut from_u = u64::try_from(from).unwrap_or(0);
    let mut from = from;
    if size < from_u {
        // Truncated (or replaced by a shorter file): read it again from
        // the start, as `tail -F` does.
        tracing::warn!(file = %file.display(), size, position = from_u, "file is shorter than the position read: reading it from the start");
        from_u = 0;
        from = 0;
    }
    if size <= from_u {
        return Ok(None);
    }
    let io = |e: std::io::Error| SluiceError::Storage(format!("{}: {e}", file.display()));
    let mut f = std::fs::File::open(file).map_err(io)?;
    f.seek(SeekFrom::Start(from_u)).map_err(io)?;
    // At most 64 MiB per read; lines are cut at the last newline.
    let mut buf = Vec::new();
    f.take((size - from_u).min(64 << 20))
        .read_to_end(&mut buf)
        .map_err(io)?;
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    while lines.len() < CHUNK_LINES && at < buf.len() {
        match buf[at..].iter().position(|b| *b == b'\n') {
            Some(n) => {
                starts.push(at);
                lines.push(&buf[at..at + n + 1]);
                at += n + 1;
            }
            // A last line without its newline: only once the file is done
            // growing.
            None if settled => {
                starts.push(at);
                lines.push(&buf[at..]);
                at = buf.len();
            }
            None => break,
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    // Blank lines are skipped, not bad.
    let kept: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].iter().all(u8::is_ascii_whitespace))
        .collect();
    let records: Vec<&[u8]> = kept.iter().map(|&i| lines[i]).collect();
    let encoding = if format == FileFormat::Csv {
        Encoding::Csv
    } else {
        Encoding::Json
    };
    let check = |b: &RecordBatch, _: &[usize]| relation.check_rows(b);
    let schema = relation.schema();
    let d = decode(&schema, &encoding, &records, &check)?;
    // Line numbers, for the log of bad records only (counting the
    // newlines before `from` reads the file up to there).
    let first_line = if d.bad.is_empty() {
        0
    } else {
        line_number(file, from_u).unwrap_or(0)
    };
    let line_of = |record: usize| -> u64 {
        let at = starts[kept[record]];
        first_line + buf[..at].iter().filter(|b| **b == b'\n').count() as u64 + 1
    };
    let bad: Vec<(u64, String)> = d
        .bad
        .iter()
        .map(|(i, r)| (line_of(*i), r.clone()))
        .collect();
    let before_first_bad = match d.bad.first() {
        Some((first, _)) => {
            let good = d.rows_of.iter().take_while(|&&r| r < *first).count();
            Some((d.batch.slice(0, good), from + starts[kept[*first]] as i64))
        }
        None => None,
    };
    Ok(Some(Chunk {
        rows: d.batch,
        next: from + at as i64,
        bytes: at as u64,
        bad,
        before_first_bad,
    }))
}

/// How many lines end before byte `upto` of `file`.
fn line_number(file: &Path, upto: u64) -> Option<u64> {
    use std::io::Read;
    if upto == 0 {
        return Some(0);
    }
    let mut f = std::fs::File::open(file).ok()?.take(upto);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(lines);
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// The rows of a Parquet file from row `from`, one row group's worth at
/// a time; `None` when all were read.
fn read_parquet(relation: &Relation, file: &Path, from: i64) -> Result<Option<Chunk>> {
    let io = |e: String| SluiceError::Storage(format!("{}: {e}", file.display()));
    let f = std::fs::File::open(file).map_err(|e| io(e.to_string()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| io(e.to_string()))?;
    let total = builder.metadata().file_metadata().num_rows();
    if from >= total {
        return Ok(None);
    }
    let skip = usize::try_from(from).unwrap_or(0);
    let mut reader = builder
        .with_offset(skip)
        .with_limit(CHUNK_LINES)
        .with_batch_size(CHUNK_LINES)
        .build()
        .map_err(|e| io(e.to_string()))?;
    let schema = relation.schema();
    let mut parts = Vec::new();
    let mut read = 0usize;
    for batch in reader.by_ref() {
        let batch = batch.map_err(|e| io(e.to_string()))?;
        read += batch.num_rows();
        parts.push(by_name(&batch, &schema, "Parquet column")?);
    }
    let rows = datafusion::arrow::compute::concat_batches(&schema, &parts)?;
    let (rows, bad) = match relation.check_rows(&rows) {
        Ok(()) => (rows, Vec::new()),
        Err(e) => (
            RecordBatch::new_empty(schema.clone()),
            vec![(
                from as u64 + 1,
                format!("rows {}..{}: {e}", from + 1, from + read as i64),
            )],
        ),
    };
    Ok(Some(Chunk {
        rows,
        next: from + read as i64,
        bytes: 0,
        bad,
        before_first_bad: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glob_must_start_in_an_allowed_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inside = dir.path().join("in");
        std::fs::create_dir(&inside).expect("mkdir");
        let policy = Policy {
            extra_properties: vec![],
            file_dirs: vec![],
            source_dirs: vec![inside.clone()],
        };
        let opts = |path: String| -> BTreeMap<String, String> {
            [("path".to_owned(), path)].into_iter().collect()
        };
        let ok = FileSource::parse(
            RelationKind::Stream,
            "s",
            &opts(format!("{}/clicks-*.jsonl", inside.display())),
            &policy,
        )
        .expect("allowed");
        assert_eq!(ok.base, inside.canonicalize().expect("canon"));
        assert_eq!(ok.format, FileFormat::Json);
        for (path, state) in [
            (format!("{}/*.jsonl", dir.path().display()), "42501"),
            (format!("{}/../*.jsonl", inside.display()), "42501"),
            (format!("{}/nope/*.jsonl", inside.display()), "42501"),
            ("/etc/*".to_owned(), "42501"),
            (format!("{}/[*.jsonl", inside.display()), "22023"),
        ] {
            let e = FileSource::parse(RelationKind::Stream, "s", &opts(path.clone()), &policy)
                .expect_err(&path);
            assert_eq!(e.sqlstate(), state, "{path}: {e}");
        }
        let e = FileSource::parse(
            RelationKind::Table,
            "t",
            &opts(format!("{}/*.jsonl", inside.display())),
            &policy,
        )
        .expect_err("table");
        assert!(e.to_string().contains("feeds a stream"), "{e}");
        assert_eq!(fixed_dir("/a/b/c-*.jsonl"), PathBuf::from("/a/b"));
        assert_eq!(fixed_dir("/a/b/one.jsonl"), PathBuf::from("/a/b"));
        assert_eq!(fixed_dir("/a/*/x.csv"), PathBuf::from("/a"));
    }
}
