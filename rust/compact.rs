//! Compact JSON text for `Mixture.export_jsonl`: the whitespace between tokens is dropped and every
//! string is copied byte for byte, so each record becomes one line that parses to the same value.
//!
//! Records come from indexed files, which the scanner validated: whitespace can then only be the four
//! JSON whitespace bytes outside strings (raw control characters inside strings are rejected). Any
//! other input (a file changed after indexing) still gives some output, never a panic.

use rayon::prelude::*;

/// Records per parallel task: enough work to amortise scheduling, small enough to balance.
const TASK_RECORDS: usize = 2048;

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Appends `bytes` to `out` without whitespace. Branch-free: every byte is stored and the write position
/// advances past the kept ones only, since whitespace and tokens alternate too irregularly in indented
/// JSON for a branch to be predicted.
#[inline]
fn drop_spaces(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len(), 0);
    let buf = &mut out[start..];
    let mut w = 0;
    for &b in bytes {
        buf[w] = b;
        w += usize::from(!is_space(b));
    }
    out.truncate(start + w);
}

/// Appends `json` to `out` without the whitespace that lies outside strings.
pub fn compact_into(json: &[u8], out: &mut Vec<u8>) {
    let n = json.len();
    let mut i = 0;
    while i < n {
        // Outside a string, up to the next quote (which opens one).
        let quote = memchr::memchr(b'"', &json[i..]).map_or(n, |k| i + k);
        drop_spaces(&json[i..quote], out);
        if quote == n {
            break;
        }
        // Inside the string: to the first quote that no backslash escapes.
        let mut j = quote + 1;
        loop {
            match memchr::memchr2(b'"', b'\\', &json[j.min(n)..]) {
                None => {
                    j = n;
                    break;
                }
                Some(k) if json[j + k] == b'\\' => j += k + 2,
                Some(k) => {
                    j += k + 1;
                    break;
                }
            }
        }
        let end = j.min(n);
        out.extend_from_slice(&json[quote..end]);
        i = end;
    }
}

/// Every record `record(k)` for `k` in `0..count`, compacted, each followed by a newline, in order, as
/// consecutive pieces (concatenated by the caller into its final buffer: one copy, not two). Runs on
/// every core; a failing record's error is returned (one of them, when several fail).
pub fn compact_lines<'a, E, F>(count: usize, record: F) -> Result<Vec<Vec<u8>>, E>
where
    F: Fn(usize) -> Result<&'a [u8], E> + Sync,
    E: Send,
{
    let starts: Vec<usize> = (0..count).step_by(TASK_RECORDS).collect();
    starts
        .par_iter()
        .map(|&lo| {
            let records = (lo..(lo + TASK_RECORDS).min(count))
                .map(&record)
                .collect::<Result<Vec<&[u8]>, E>>()?;
            // Room for the records as they are: compaction only shrinks them, so nothing is moved.
            let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
            for r in records {
                compact_into(r, &mut out);
                out.push(b'\n');
            }
            Ok(out)
        })
        .collect()
}

/// Every record `record(k)` for `k` in `0..count`, compacted, each followed by a newline, handed to
/// `write` in order; returns the bytes written. Waves of tasks are compacted on every core into buffers
/// reused from wave to wave (fresh ones for each cost a page fault per 4 KiB), while the previous wave
/// is written.
pub fn write_compact_lines<'a, E, F, W>(count: usize, record: F, mut write: W) -> Result<usize, E>
where
    F: Fn(usize) -> Result<&'a [u8], E> + Sync,
    E: Send,
    W: FnMut(&[u8]) -> Result<(), E> + Send,
{
    let tasks: Vec<usize> = (0..count).step_by(TASK_RECORDS).collect();
    let wave = 2 * rayon::current_num_threads().max(1);
    let mut ready: Vec<Vec<u8>> = vec![Vec::new(); wave];
    let mut spare: Vec<Vec<u8>> = vec![Vec::new(); wave];
    let mut ready_len = 0;
    let mut written = 0;
    let fill = |bufs: &mut [Vec<u8>], group: &[usize]| -> Result<(), E> {
        bufs.par_iter_mut()
            .zip(group.par_iter())
            .map(|(buf, &lo)| {
                buf.clear();
                for k in lo..(lo + TASK_RECORDS).min(count) {
                    compact_into(record(k)?, buf);
                    buf.push(b'\n');
                }
                Ok(())
            })
            .collect()
    };
    let mut flush = |bufs: &[Vec<u8>]| -> Result<usize, E> {
        let mut n = 0;
        for b in bufs {
            write(b)?;
            n += b.len();
        }
        Ok(n)
    };
    for group in tasks.chunks(wave) {
        let (done, filled) = rayon::join(
            || flush(&ready[..ready_len]),
            || fill(&mut spare[..group.len()], group),
        );
        written += done?;
        filled?;
        std::mem::swap(&mut ready, &mut spare);
        ready_len = group.len();
    }
    written += flush(&ready[..ready_len])?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(json: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compact_into(json, &mut out);
        out
    }

    /// serde_json's own compact writer, as the independent oracle.
    fn serde_compact(json: &[u8]) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn drops_whitespace_between_tokens_only() {
        let cases: &[&[u8]] = &[
            b" { \"a\" : [ 1 , 2.5e3 , true , null ] ,\n\t\"b c\" : \"x y\\\" z\" }\r\n",
            b"{\n    \"id\": \"a\\\\\",\n    \"v\": \"\\\\\\\"  \"\n}",
            b"[ \"\\u00e9 caf\xc3\xa9\", \"tab\\t\", {}, [] ]",
            b"\"  only a string  \"",
            b"  -0.5  ",
        ];
        for &c in cases {
            let got = compact(c);
            let again: serde_json::Value = serde_json::from_slice(&got).unwrap();
            let want: serde_json::Value = serde_json::from_slice(c).unwrap();
            assert_eq!(again, want, "{}", String::from_utf8_lossy(c));
            assert!(!got.iter().any(|&b| b == b'\n' || b == b'\t' || b == b'\r'));
        }
        // Without escapes that serde writes differently, the bytes equal serde_json's compact form.
        let plain = b"{ \"a\" : [ 1 , true , null , \"x  y\" ] , \"b\" : { } }";
        assert_eq!(compact(plain), serde_compact(plain));
    }

    #[test]
    fn any_bytes_give_output_without_panicking() {
        for bad in [
            &b"\"unterminated \\"[..],
            b"\"a\\",
            b"\\\"",
            b"\"",
            b"",
            b" \n ",
        ] {
            let _ = compact(bad);
        }
        assert_eq!(compact(b" \n "), b"");
        assert_eq!(compact(b"\"a\\"), b"\"a\\");
    }

    #[test]
    fn lines_keep_record_order_across_tasks() {
        let records: Vec<String> = (0..5000).map(|i| format!("{{ \"i\" : {i} }}")).collect();
        let out = compact_lines(records.len(), |k| Ok::<_, ()>(records[k].as_bytes()))
            .unwrap()
            .concat();
        let want: String = (0..5000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let err = compact_lines(records.len(), |k| {
            if k == 3000 {
                Err(k)
            } else {
                Ok(records[k].as_bytes())
            }
        });
        assert_eq!(err.map(|p| p.concat()), Err(3000));
        let mut streamed = Vec::new();
        let n = write_compact_lines(
            records.len(),
            |k| Ok::<_, ()>(records[k].as_bytes()),
            |b: &[u8]| {
                streamed.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, want.len());
        assert_eq!(String::from_utf8(streamed).unwrap(), want);
        let fail = write_compact_lines(
            records.len(),
            |k| Ok::<_, usize>(records[k].as_bytes()),
            |_| Err(7),
        );
        assert_eq!(fail, Err(7));
    }
}
