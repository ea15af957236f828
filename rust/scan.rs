//! The scan: finds every record of a `.json` array or a `.jsonl` file, validates it and computes its
//! metadata, using every core on ONE file.
//!
//! JSON arrays use speculation plus verification (see `docs/design.md`):
//! 1. in parallel, each chunk is summarised under both answers to "does it start inside a string?"
//!    (see `chunk_shape`): bracket depth change, end state, first comma at each relative depth;
//! 2. in order, a cheap pass picks the true answer for each chunk from the one before it and turns
//!    the depths into each chunk's first top-level record separator;
//! 3. in parallel, each chunk validates and reads its records (`json::Reader`), from its separator up to
//!    the next chunk's. A chunk only counts when its parse lands exactly on the next chunk's separator,
//!    so the stitched result IS the sequential parse. On any error or mismatch the sequential reader
//!    resumes from the last verified separator: the output (records or the first error) always equals
//!    [`scan_sequential`].
//!
//! JSON Lines needs no speculation: a raw newline cannot occur inside a JSON string, so chunks are cut
//! just after newlines and are independent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::chunk_shape::{chunk_shape, ChunkShape};
use crate::columns::Records;
use crate::error::{Error, ErrorKind, Result};
use crate::json::{skip_whitespace, Reader, SyntaxError};
use crate::record::read_record;

/// How records are laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One top-level JSON array of records (`.json`).
    JsonArray,
    /// One record per line (`.jsonl`, `.ndjson`).
    JsonLines,
}

impl Format {
    /// `.jsonl` / `.ndjson` are JSON Lines; everything else is read as a JSON array.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl") | Some("ndjson") => Format::JsonLines,
            _ => Format::JsonArray,
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Format::JsonArray => 1,
            Format::JsonLines => 2,
        }
    }
    pub fn from_code(code: u8) -> Option<Format> {
        match code {
            1 => Some(Format::JsonArray),
            2 => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Knobs of the scan. The defaults suit multi-gigabyte files; tests force tiny chunks.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Bytes per parallel chunk (at least 1).
    pub chunk_size: usize,
    /// Counts bytes of the file read so far, for progress bars.
    pub progress: Option<Arc<AtomicU64>>,
    /// Set from another thread to stop the scan: it is checked before each chunk and after each MiB
    /// read, and the scan then returns [`cancelled`]'s error.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            chunk_size: 1 << 20,
            progress: None,
            cancel: None,
        }
    }
}

/// Records in file order, as consecutive runs (one per chunk), so no copy is needed to join them.
pub type RecordRuns = Vec<Records>;

/// What the parallel scan did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Chunks the file was cut into.
    pub chunks: usize,
    /// Whether a wrong guess or bad data made the scan resume sequentially.
    pub resumed_sequentially: bool,
}

/// Scans `data` in parallel on the current rayon pool.
pub fn scan(data: &[u8], format: Format, opts: &ScanOptions) -> Result<RecordRuns> {
    scan_with_stats(data, format, opts).map(|(runs, _)| runs)
}

/// [`scan`], also saying how the work was split.
pub fn scan_with_stats(
    data: &[u8],
    format: Format,
    opts: &ScanOptions,
) -> Result<(RecordRuns, ScanStats)> {
    match format {
        Format::JsonArray => scan_array_parallel(data, opts),
        Format::JsonLines => scan_lines_parallel(data, opts),
    }
}

/// The simple sequential reference: one pass, one thread. The parallel scan must equal it.
pub fn scan_sequential(data: &[u8], format: Format) -> Result<Records> {
    let opts = ScanOptions {
        chunk_size: usize::MAX,
        ..ScanOptions::default()
    };
    match format {
        Format::JsonArray => {
            let mut out = Records::default();
            read_to_end(data, open_array(data)?, true, 0, &mut out, &opts)?;
            Ok(out)
        }
        Format::JsonLines => read_lines(data, 0, data.len(), 0, &opts),
    }
}

/// The error of a scan or build stopped through [`ScanOptions::cancel`].
pub fn cancelled() -> Error {
    Error::new(ErrorKind::Io, "interrupted: the index was not built")
}

/// Whether `flag` asks to stop.
pub fn is_cancelled(flag: Option<&AtomicBool>) -> bool {
    flag.is_some_and(|c| c.load(Ordering::Relaxed))
}

fn check_cancel(opts: &ScanOptions) -> Result<()> {
    if is_cancelled(opts.cancel.as_deref()) {
        return Err(cancelled());
    }
    Ok(())
}

/// Counts `bytes` as read, and stops the scan when asked to.
fn report(opts: &ScanOptions, bytes: usize) -> Result<()> {
    if let Some(p) = &opts.progress {
        p.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    check_cancel(opts)
}

fn syntax_error(data: &[u8], start: usize, record: u64, e: SyntaxError) -> Error {
    Error::malformed(
        data,
        start + e.index,
        record,
        format!("{} (in record {record})", e.message),
    )
}

/// Reads the value at `start`, which must be a record, and appends it. Returns the offset past it.
fn read_one<'a>(
    data: &'a [u8],
    start: usize,
    record: u64,
    out: &mut Records,
    reader: &mut Reader<'a>,
) -> Result<usize> {
    reader.reset(&data[start..]);
    let meta = read_record(reader).map_err(|e| syntax_error(data, start, record, e))?;
    let end = start + reader.position();
    let length = u32::try_from(end - start).map_err(|_| {
        Error::malformed(
            data,
            start,
            record,
            format!("record {record} is larger than 4 GiB"),
        )
    })?;
    out.push(start as u64, length, meta);
    Ok(end)
}

/// How a run of array records ended.
enum RunEnd {
    /// Reached the expected separator exactly.
    AtSeparator,
    /// Read the closing `]`; the offset is just past it.
    Closed(usize),
    /// Landed somewhere other than the expected separator: the speculation was wrong.
    Mismatch,
}

/// Reads array records from `pos`, which is just after `[` (`after_open`) or just after a `,`,
/// until the separator at `stop` (or the end of the array when `stop` is `None`).
/// Record numbers in errors start at `first_record`.
fn read_array_run(
    data: &[u8],
    mut pos: usize,
    after_open: bool,
    stop: Option<usize>,
    first_record: u64,
    out: &mut Records,
    opts: &ScanOptions,
) -> Result<RunEnd> {
    let mut reader = Reader::new(data);
    let mut reported = pos;
    let record_no = |out: &Records| first_record + out.len() as u64;
    if after_open {
        let p = skip_whitespace(data, pos);
        if data.get(p) == Some(&b']') {
            return Ok(if stop.is_some() {
                RunEnd::Mismatch
            } else {
                RunEnd::Closed(p + 1)
            });
        }
    }
    loop {
        let start = skip_whitespace(data, pos);
        match data.get(start) {
            None => {
                return Err(Error::malformed(
                    data,
                    start,
                    record_no(out),
                    "unexpected end of file: expected a record (the array is not closed)",
                ))
            }
            Some(b']') => {
                return Err(Error::malformed(
                    data,
                    start,
                    record_no(out),
                    "expected a record after ',' (trailing commas are not allowed)",
                ))
            }
            Some(_) => {}
        }
        let end = read_one(data, start, record_no(out), out, &mut reader)?;
        if end - reported > 1 << 20 {
            report(opts, end - reported)?;
            reported = end;
        }
        let q = skip_whitespace(data, end);
        match data.get(q) {
            Some(b',') => match stop {
                Some(s) if q == s => {
                    report(opts, q - reported)?;
                    return Ok(RunEnd::AtSeparator);
                }
                Some(s) if q > s => return Ok(RunEnd::Mismatch),
                _ => pos = q + 1,
            },
            Some(b']') => {
                report(opts, q + 1 - reported)?;
                return Ok(if stop.is_some() {
                    RunEnd::Mismatch
                } else {
                    RunEnd::Closed(q + 1)
                });
            }
            Some(_) => {
                return Err(Error::malformed(
                    data,
                    q,
                    record_no(out),
                    format!("expected ',' or ']' after record {}", record_no(out) - 1),
                ))
            }
            None => {
                return Err(Error::malformed(
                    data,
                    q,
                    record_no(out),
                    "unexpected end of file: expected ',' or ']' (the array is not closed)",
                ))
            }
        }
    }
}

/// Sequential read from `pos` (just after `[` when `after_open`, else just after a verified
/// separator) to the end of the file, numbering records from `out.len() + first_record`.
fn read_to_end(
    data: &[u8],
    pos: usize,
    after_open: bool,
    first_record: u64,
    out: &mut Records,
    opts: &ScanOptions,
) -> Result<()> {
    match read_array_run(data, pos, after_open, None, first_record, out, opts)? {
        RunEnd::Closed(end) => check_trailing(data, end, first_record + out.len() as u64),
        RunEnd::AtSeparator | RunEnd::Mismatch => unreachable!("no separator to stop at"),
    }
}

/// Checks the start of a `.json` file and returns the offset just after its `[`.
fn open_array(data: &[u8]) -> Result<usize> {
    if data.starts_with(b"\xEF\xBB\xBF") {
        return Err(Error::malformed(
            data,
            0,
            0,
            "unexpected UTF-8 byte order mark: expected '['",
        ));
    }
    let p = skip_whitespace(data, 0);
    match data.get(p) {
        None => Err(Error::malformed(data, p, 0, "empty file: expected a JSON array '[' of records")),
        Some(b'[') => Ok(p + 1),
        Some(_) => Err(Error::malformed(
            data,
            p,
            0,
            "expected '[': the top-level value is not an array. A file with one JSON record per line \
             is JSON Lines: name it .jsonl",
        )),
    }
}

fn check_trailing(data: &[u8], end: usize, records: u64) -> Result<()> {
    let p = skip_whitespace(data, end);
    if p < data.len() {
        return Err(Error::malformed(
            data,
            p,
            records,
            "unexpected data after the end of the array: expected end of file",
        ));
    }
    Ok(())
}

fn chunk_bounds(len: usize, chunk_size: usize) -> Vec<(usize, usize)> {
    let chunk_size = chunk_size.max(1);
    (0..len.div_ceil(chunk_size))
        .map(|k| (k * chunk_size, ((k + 1) * chunk_size).min(len)))
        .collect()
}

fn scan_array_parallel(data: &[u8], opts: &ScanOptions) -> Result<(RecordRuns, ScanStats)> {
    if data.len() <= opts.chunk_size {
        let mut out = Records::default();
        read_to_end(data, open_array(data)?, true, 0, &mut out, opts)?;
        return Ok((
            vec![out],
            ScanStats {
                chunks: 1,
                resumed_sequentially: false,
            },
        ));
    }
    let array_start = open_array(data)?;
    let bounds = chunk_bounds(data.len(), opts.chunk_size);

    // Pass 1: each chunk's shape under both starting string states; then, in order, pick the true
    // state of each chunk and find its first top-level separator.
    let shapes: Vec<ChunkShape> = bounds
        .par_iter()
        .map(|&(s, e)| check_cancel(opts).map(|()| chunk_shape(data, s, e)))
        .collect::<Result<_>>()?;
    let mut run_starts: Vec<usize> = vec![array_start];
    let (mut in_string, mut depth) = (false, 0i64);
    for (k, shape) in shapes.iter().enumerate() {
        let h = &shape.hyp[in_string as usize];
        if k > 0 {
            if let Some(sep) = h.separator(depth).filter(|&sep| sep >= array_start) {
                run_starts.push(sep);
            }
        }
        depth += h.delta;
        in_string = h.ends_in_string;
    }

    // Pass 3: read every run in parallel; each must land exactly on the next run's separator.
    let runs: Vec<Result<(Records, RunEnd)>> = (0..run_starts.len())
        .into_par_iter()
        .map(|r| {
            let mut out = Records::default();
            let (pos, after_open) = if r == 0 {
                (array_start, true)
            } else {
                (run_starts[r] + 1, false)
            };
            let stop = run_starts.get(r + 1).copied();
            check_cancel(opts)?;
            let end = read_array_run(data, pos, after_open, stop, 0, &mut out, opts)?;
            out.shrink_to_fit();
            Ok((out, end))
        })
        .collect();

    let mut done: RecordRuns = Vec::with_capacity(runs.len());
    let mut verified_records = 0usize;
    for (r, result) in runs.into_iter().enumerate() {
        let last = r + 1 == run_starts.len();
        match result {
            Ok((out, RunEnd::AtSeparator)) if !last => {
                verified_records += out.len();
                done.push(out);
            }
            Ok((out, RunEnd::Closed(end))) if last => {
                check_trailing(data, end, (verified_records + out.len()) as u64)?;
                done.push(out);
                return Ok((
                    done,
                    ScanStats {
                        chunks: bounds.len(),
                        resumed_sequentially: false,
                    },
                ));
            }
            _ => {
                // Wrong guess or bad data: resume sequentially from the last verified point, which
                // yields exactly what a sequential scan yields (records, or its first error).
                let mut rest = Records::default();
                let (pos, after_open) = if r == 0 {
                    (array_start, true)
                } else {
                    (run_starts[r] + 1, false)
                };
                read_to_end(
                    data,
                    pos,
                    after_open,
                    verified_records as u64,
                    &mut rest,
                    opts,
                )?;
                done.push(rest);
                return Ok((
                    done,
                    ScanStats {
                        chunks: bounds.len(),
                        resumed_sequentially: true,
                    },
                ));
            }
        }
    }
    unreachable!("the last run either closes the array or falls back")
}

/// Reads the JSON Lines records of `data[start..end]` (which starts at a line start).
/// `first_record` numbers them in errors.
fn read_lines(
    data: &[u8],
    start: usize,
    end: usize,
    first_record: u64,
    opts: &ScanOptions,
) -> Result<Records> {
    // Checked here, in the one reader both scans share, so that they report it alike.
    if start == 0 && data.starts_with(b"\xEF\xBB\xBF") {
        return Err(Error::malformed(
            data,
            0,
            0,
            "unexpected UTF-8 byte order mark at the start of the file",
        ));
    }
    let mut out = Records::default();
    let mut reader = Reader::new(data);
    let mut line_start = start;
    let mut reported = start;
    while line_start < end {
        let line_end =
            memchr::memchr(b'\n', &data[line_start..end]).map_or(end, |k| line_start + k);
        let first = skip_whitespace(&data[..line_end], line_start);
        if first < line_end {
            let record = first_record + out.len() as u64;
            // The reader sees only this line, so a record cannot run on into the next one.
            let line = &data[..line_end];
            let value_end = read_one(line, first, record, &mut out, &mut reader).map_err(|e| {
                if e.message.contains("end of input") {
                    let msg = format!("{} (a JSON Lines record must fit on one line)", e.message);
                    Error { message: msg, ..e }
                } else {
                    e
                }
            })?;
            let rest = skip_whitespace(line, value_end);
            if rest < line_end {
                return Err(Error::malformed(
                    data,
                    rest,
                    record,
                    format!("unexpected data after record {record}: expected end of line (one record per line)"),
                ));
            }
        }
        line_start = line_end + 1;
        if line_start - reported > 1 << 20 {
            report(opts, line_start.min(end) - reported)?;
            reported = line_start.min(end);
        }
    }
    report(opts, end.saturating_sub(reported))?;
    out.shrink_to_fit();
    Ok(out)
}

fn scan_lines_parallel(data: &[u8], opts: &ScanOptions) -> Result<(RecordRuns, ScanStats)> {
    // Cut just after the first newline at or after each multiple of the chunk size.
    let mut cuts = vec![0usize];
    for (s, _) in chunk_bounds(data.len(), opts.chunk_size)
        .into_iter()
        .skip(1)
    {
        let last = *cuts.last().unwrap();
        if s < last {
            continue;
        }
        match memchr::memchr(b'\n', &data[s..]) {
            Some(k) if s + k + 1 < data.len() => cuts.push(s + k + 1),
            _ => break,
        }
    }
    cuts.dedup();
    cuts.push(data.len());
    let parts: Vec<Result<Records>> = cuts
        .par_windows(2)
        .map(|w| {
            check_cancel(opts)?;
            read_lines(data, w[0], w[1], 0, opts)
        })
        .collect();
    let mut runs = Vec::with_capacity(parts.len());
    let mut before = 0u64;
    for (part, w) in parts.into_iter().zip(cuts.windows(2)) {
        match part {
            Ok(r) => {
                before += r.len() as u64;
                runs.push(r);
            }
            // Chunks are independent, so the first failing chunk holds the first error; read it
            // again knowing how many records came before, to number the record right.
            Err(e) => {
                return Err(read_lines(data, w[0], w[1], before, opts)
                    .err()
                    .unwrap_or(e))
            }
        }
    }
    let chunks = runs.len();
    Ok((
        runs,
        ScanStats {
            chunks,
            resumed_sequentially: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn par(data: &[u8], format: Format, chunk: usize) -> Result<Records> {
        let opts = ScanOptions {
            chunk_size: chunk,
            ..ScanOptions::default()
        };
        scan(data, format, &opts).map(|runs| Records::concat(&runs))
    }

    #[test]
    fn tiny_chunks_match_sequential() {
        let doc = br#" [ {"id": "a,]\"[", "image": ["x", "y"], "conversations": [{"from": "human", "value": "<image>\n a  b\\"}, {"value": "c\u00a0d"}]}, [1, {"x": "]"}], "\\\\\"", {}] "#;
        let seq = scan_sequential(doc, Format::JsonArray).unwrap();
        assert_eq!(seq.len(), 4);
        assert_eq!(seq.images[0], 2);
        assert_eq!(seq.words[0], 5);
        for chunk in 1..doc.len() + 2 {
            assert_eq!(
                par(doc, Format::JsonArray, chunk).unwrap(),
                seq,
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn errors_match_sequential() {
        for doc in [
            &b"[1, 2,]"[..],
            b"[{\"a\": 1} {}]",
            b"[1] x",
            b"{\"a\": 1}",
            b"",
            b"[\"\x01\"]",
            b"[\"\xff\"]",
            b"[1, 2",
        ] {
            let seq = scan_sequential(doc, Format::JsonArray).unwrap_err();
            for chunk in 1..doc.len() + 2 {
                assert_eq!(
                    par(doc, Format::JsonArray, chunk).unwrap_err(),
                    seq,
                    "chunk size {chunk}"
                );
            }
        }
    }

    #[test]
    fn byte_order_marks_fail_as_the_sequential_scan_fails() {
        for doc in [
            &b"\xEF\xBB\xBF"[..],
            b"\xEF\xBB\xBF\n",
            b"\xEF\xBB\xBF{\"a\": 1}\n",
            b"\xEF\xBB\xBF[1]",
            b"\xEF\xBB",
            b"{\"a\": 1}\n\xEF\xBB\xBF{\"a\": 1}\n",
        ] {
            for format in [Format::JsonArray, Format::JsonLines] {
                let seq = scan_sequential(doc, format).unwrap_err();
                for chunk in 1..doc.len() + 2 {
                    assert_eq!(
                        par(doc, format, chunk).unwrap_err(),
                        seq,
                        "{doc:?} as {format:?}, chunk size {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn lines_tolerate_blank_lines_crlf_and_missing_final_newline() {
        let doc = b"{\"a\": 1}\r\n\n  \n[2]\r\n\"x\"";
        let seq = scan_sequential(doc, Format::JsonLines).unwrap();
        assert_eq!(seq.offset, vec![0, 14, 19]);
        for chunk in 1..doc.len() + 2 {
            assert_eq!(par(doc, Format::JsonLines, chunk).unwrap(), seq);
        }
    }
}
