//! Turns one record's bytes into Python objects, fast.
//!
//! The record was fully validated when it was indexed, and the data file's stamp was checked when the
//! index was opened, so this builder skips validation: it only decodes. That, ASCII strings created by
//! copying into a fresh one-byte `str`, and a cache of short strings (keys and values such as "human" or
//! "gpt"), make `idx[i]` faster than `orjson.loads` on the same bytes (measured in benches/). Every read
//! is bounds-checked: if the file changed underneath, the result is an error, never undefined behaviour.
//! The output equals Python's `json.loads` (big integers, `-0`, lone surrogate escapes included).
//!
//! It also builds records from tapes (`tape`: parsed by a DataLoader worker), copying each string's
//! code points straight into a `str` of the kind the tape names.

use std::os::raw::c_char;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::error::Error;
use crate::json::{read_number, skip_whitespace, unescape_into, Number, MAX_DEPTH};
use crate::tape::{self, string_stop, Item, Reader};

/// Strings up to this length are cached (keys, roles, short values).
const CACHED_MAX_LEN: usize = 16;
/// Slots of the direct-mapped string cache (a power of two).
const CACHE_SLOTS: usize = 512;

/// An owned reference, released on drop (so early returns never leak).
struct Owned(*mut ffi::PyObject);

impl Owned {
    fn new(ptr: *mut ffi::PyObject) -> Result<Owned, ()> {
        if ptr.is_null() {
            Err(())
        } else {
            Ok(Owned(ptr))
        }
    }
    fn into_ptr(self) -> *mut ffi::PyObject {
        let p = self.0;
        std::mem::forget(self);
        p
    }
    /// The reference, handed to pyo3.
    fn into_bound(self, py: Python<'_>) -> Bound<'_, PyAny> {
        // SAFETY: an `Owned` holds a strong reference to a live object (never null), made with the GIL
        // held, which `py` proves is held now.
        unsafe { Bound::from_owned_ptr(py, self.into_ptr()) }
    }
}

// SAFETY: a Python object may move between threads; `Owned` is only created, used and dropped while
// holding the GIL (the builder is only reachable through a `Python` token).
unsafe impl Send for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: we hold a strong reference and the GIL (a `Builder` is only used with a `Python` token).
        unsafe { ffi::Py_DECREF(self.0) }
    }
}

/// A cached string: its packed bytes and the `str` made from them.
type CacheSlot = Option<(ShortKey, Py<PyAny>)>;

/// Short-string cache and scratch buffers, reused across records.
pub struct Builder {
    /// Direct-mapped: a slot holds the last short string that hashed to it.
    cache: Vec<CacheSlot>,
    scratch: Vec<u8>,
    /// Items of the lists being built, innermost last (one buffer for all depths).
    items: Vec<Owned>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            cache: (0..CACHE_SLOTS).map(|_| None).collect(),
            scratch: Vec::new(),
            items: Vec::new(),
        }
    }
}

/// A short string (at most 16 bytes) packed exactly: its first and last eight bytes (four when shorter
/// than eight; the first, middle and last byte when shorter than four) cover every byte, and with the
/// length they tell strings apart without comparing bytes. The last field also holds how the bytes
/// were made into a `str` (copied as ASCII or decoded as UTF-8), so that one string's bytes can never
/// fetch a `str` made another way.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ShortKey(u64, u64, usize);

impl ShortKey {
    #[inline]
    fn new(s: &[u8], ascii: bool) -> ShortKey {
        debug_assert!(s.len() <= CACHED_MAX_LEN);
        let n = s.len();
        let tail = n << 1 | usize::from(ascii);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let half = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().unwrap()));
        match n {
            8.. => ShortKey(word(&s[..8]), word(&s[n - 8..]), tail),
            4..=7 => ShortKey(half(&s[..4]), half(&s[n - 4..]), tail),
            1..=3 => ShortKey(
                u64::from(s[0]) | u64::from(s[n / 2]) << 8 | u64::from(s[n - 1]) << 16,
                0,
                tail,
            ),
            0 => ShortKey(0, 0, tail),
        }
    }

    /// Its slot in the direct-mapped cache, mixed by one multiplication (a byte loop, FNV, took a
    /// sixth of the string builder's time).
    #[inline]
    fn slot(self) -> usize {
        let h =
            (self.0 ^ self.1.rotate_left(29) ^ self.2 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
    }
}

/// A decode failure: a Python exception is set (`Err(())` with `PyErr::occurred`) or the bytes are not
/// what was indexed.
type BuildResult<T> = Result<T, ()>;

struct Cursor<'a> {
    d: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    #[inline]
    fn peek(&mut self) -> BuildResult<u8> {
        self.i = skip_whitespace(self.d, self.i);
        self.d.get(self.i).copied().ok_or(())
    }
}

/// The Python exception of a failed decode: the one set, else "the bytes changed".
fn decode_error(py: Python<'_>) -> PyErr {
    PyErr::take(py).unwrap_or_else(|| {
        Error::invalid(
            "record bytes changed since they were indexed (not the JSON that was indexed)",
        )
        .into()
    })
}

impl Builder {
    /// Decodes the JSON value in `data` (already validated) into Python objects.
    pub fn build<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let mut c = Cursor { d: data, i: 0 };
        self.items.clear();
        let obj = self.value(py, &mut c, 0).map_err(|()| decode_error(py))?;
        Ok(obj.into_bound(py))
    }

    /// Builds the value of a tape (see `tape`): what a DataLoader worker ships for a record.
    pub fn build_tape<'py>(&mut self, py: Python<'py>, tape: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let mut r = Reader::new(tape);
        let obj = self
            .tape_value(py, &mut r, 1)
            .and_then(|obj| if r.done() { Ok(obj) } else { Err(()) })
            .map_err(|()| tape_error(py))?;
        Ok(obj.into_bound(py))
    }

    /// Builds the object of a tape member by member, calling `member(key, value)` for each in order,
    /// without building the object itself.
    pub fn build_tape_members<'py>(
        &mut self,
        py: Python<'py>,
        tape: &[u8],
        mut member: impl FnMut(Bound<'py, PyAny>, Bound<'py, PyAny>) -> PyResult<()>,
    ) -> PyResult<()> {
        let mut r = Reader::new(tape);
        let Some(Item::Object(n)) = r.next() else {
            return Err(tape_error(py));
        };
        for _ in 0..n {
            let (key, value) = self
                .tape_member(py, &mut r, 2)
                .map_err(|()| tape_error(py))?;
            member(key.into_bound(py), value.into_bound(py))?;
        }
        if r.done() {
            Ok(())
        } else {
            Err(tape_error(py))
        }
    }

    /// The next key (a string) and value of a tape's object; `depth` is that of the value.
    #[inline(always)]
    fn tape_member(
        &mut self,
        py: Python<'_>,
        r: &mut Reader<'_>,
        depth: usize,
    ) -> BuildResult<(Owned, Owned)> {
        let Some(Item::Str(tag, n, payload)) = r.next() else {
            return Err(());
        };
        let key = self.tape_string(py, tag, n, payload)?;
        Ok((key, self.tape_value(py, r, depth)?))
    }

    fn tape_value(
        &mut self,
        py: Python<'_>,
        r: &mut Reader<'_>,
        depth: usize,
    ) -> BuildResult<Owned> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        // SAFETY (all ffi calls below): the GIL is held (`py`), every returned pointer is checked for
        // null by `Owned::new`, and reference ownership follows the CPython documentation of each call.
        unsafe {
            match r.next().ok_or(())? {
                Item::Null => singleton(ffi::Py_None()),
                Item::Bool(true) => singleton(ffi::Py_True()),
                Item::Bool(false) => singleton(ffi::Py_False()),
                Item::Int(v) => py_number(py, Number::Int(v)),
                Item::Float(v) => py_number(py, Number::Float(v)),
                Item::BigInt(digits) => py_number(py, Number::Big(digits)),
                Item::Str(tag, n, payload) => self.tape_string(py, tag, n, payload),
                Item::Array(n) => {
                    // The reader checked `n` against the tape's length. Until filled, the list holds
                    // NULLs, which its deallocation skips if a later item fails.
                    let list = Owned::new(ffi::PyList_New(n as ffi::Py_ssize_t))?;
                    for k in 0..n {
                        set_list_item(py, &list, k, self.tape_value(py, r, depth + 1)?);
                    }
                    Ok(list)
                }
                Item::Object(n) => {
                    let dict = Owned::new(ffi::PyDict_New())?;
                    for _ in 0..n {
                        let (key, value) = self.tape_member(py, r, depth + 1)?;
                        if ffi::PyDict_SetItem(dict.0, key.0, value.0) != 0 {
                            return Err(());
                        }
                    }
                    Ok(dict)
                }
            }
        }
    }

    /// A tape's string: its code points copied straight into a `str` of the kind the tag names.
    fn tape_string(
        &mut self,
        py: Python<'_>,
        tag: u8,
        n: usize,
        payload: &[u8],
    ) -> BuildResult<Owned> {
        if tag == tape::STR_ASCII {
            // The reader checked that the bytes are ASCII.
            return self.plain_string(py, payload, true);
        }
        let max_char: u32 = match tag {
            tape::STR_LATIN1 => 0xFF,
            tape::STR_UCS2 => 0xFFFF,
            _ => 0x10FFFF,
        };
        #[cfg(all(not(feature = "abi3"), target_endian = "little"))]
        // SAFETY: GIL held. `PyUnicode_New(n, max_char)` allocates a string of the kind `max_char`
        // selects (1, 2 or 4 bytes per code point) with room for n of them; the reader checked that
        // `payload` holds exactly n code points of that width, little-endian like this machine, which
        // we copy, and that the largest needs that kind and is at most U+10FFFF
        // (`tape::is_canonical_string`), so the string is a valid one of the canonical kind CPython
        // expects.
        unsafe {
            let obj = Owned::new(ffi::PyUnicode_New(
                n as ffi::Py_ssize_t,
                max_char as ffi::Py_UCS4,
            ))?;
            let data = ffi::PyUnicode_DATA(obj.0) as *mut u8;
            std::ptr::copy_nonoverlapping(payload.as_ptr(), data, payload.len());
            Ok(obj)
        }
        #[cfg(any(feature = "abi3", target_endian = "big"))]
        {
            let _ = (n, max_char);
            decoded_string(&mut self.scratch, tag, payload)
        }
    }

    /// Decodes the JSON object in `data` (already validated) member by member, calling
    /// `member(key, value)` for each in order, without building the object itself.
    pub fn build_members<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        mut member: impl FnMut(Bound<'py, PyAny>, Bound<'py, PyAny>) -> PyResult<()>,
    ) -> PyResult<()> {
        let mut c = Cursor { d: data, i: 0 };
        self.items.clear();
        if c.peek() != Ok(b'{') {
            return Err(decode_error(py));
        }
        self.members(py, &mut c, 1, |key, value| {
            // A failure is left set as Python's exception, for `decode_error` to take.
            member(key.into_bound(py), value.into_bound(py)).map_err(|e| e.restore(py))
        })
        .map_err(|()| decode_error(py))
    }

    /// The members of the object whose `{` is at `c.i`, each key and value handed to `member` in order;
    /// leaves `c.i` after the closing `}`. `depth` is that of the values.
    #[inline(always)]
    fn members(
        &mut self,
        py: Python<'_>,
        c: &mut Cursor<'_>,
        depth: usize,
        mut member: impl FnMut(Owned, Owned) -> BuildResult<()>,
    ) -> BuildResult<()> {
        c.i += 1;
        if c.peek()? == b'}' {
            c.i += 1;
            return Ok(());
        }
        loop {
            c.peek()?;
            let key = self.string(py, c)?;
            if c.peek()? != b':' {
                return Err(());
            }
            c.i += 1;
            let value = self.value(py, c, depth)?;
            member(key, value)?;
            match c.peek()? {
                b',' => c.i += 1,
                b'}' => {
                    c.i += 1;
                    return Ok(());
                }
                _ => return Err(()),
            }
        }
    }

    fn value(&mut self, py: Python<'_>, c: &mut Cursor<'_>, depth: usize) -> BuildResult<Owned> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        // SAFETY (all ffi calls below): the GIL is held (`py`), every returned pointer is checked for
        // null by `Owned::new`, and reference ownership follows the CPython documentation of each call.
        unsafe {
            match c.peek()? {
                b'{' => {
                    let dict = Owned::new(ffi::PyDict_New())?;
                    self.members(py, c, depth + 1, |key, value| {
                        match ffi::PyDict_SetItem(dict.0, key.0, value.0) {
                            0 => Ok(()),
                            _ => Err(()),
                        }
                    })?;
                    Ok(dict)
                }
                b'[' => {
                    c.i += 1;
                    let first = self.items.len();
                    if c.peek()? == b']' {
                        c.i += 1;
                    } else {
                        loop {
                            let item = self.value(py, c, depth + 1)?;
                            self.items.push(item);
                            match c.peek()? {
                                b',' => c.i += 1,
                                b']' => {
                                    c.i += 1;
                                    break;
                                }
                                _ => return Err(()),
                            }
                        }
                    }
                    let n = self.items.len() - first;
                    let list = Owned::new(ffi::PyList_New(n as ffi::Py_ssize_t))?;
                    for (k, item) in self.items.drain(first..).enumerate() {
                        set_list_item(py, &list, k, item);
                    }
                    Ok(list)
                }
                b'"' => self.string(py, c),
                b't' => self.literal(c, 4, ffi::Py_True()),
                b'f' => self.literal(c, 5, ffi::Py_False()),
                b'n' => self.literal(c, 4, ffi::Py_None()),
                _ => self.number(py, c),
            }
        }
    }

    unsafe fn literal(
        &mut self,
        c: &mut Cursor<'_>,
        len: usize,
        obj: *mut ffi::PyObject,
    ) -> BuildResult<Owned> {
        c.i += len;
        // SAFETY: the caller holds the GIL and passes a singleton.
        unsafe { singleton(obj) }
    }

    fn number(&mut self, py: Python<'_>, c: &mut Cursor<'_>) -> BuildResult<Owned> {
        let (number, end) = read_number(c.d, c.i).ok_or(())?;
        c.i = end;
        py_number(py, number)
    }

    /// A string at `c.i` (its opening quote).
    fn string(&mut self, py: Python<'_>, c: &mut Cursor<'_>) -> BuildResult<Owned> {
        let start = c.i + 1;
        let rest = c.d.get(start..).ok_or(())?;
        let (end, ascii) = string_stop(rest);
        match rest.get(end) {
            Some(b'"') => {
                c.i = start + end + 1;
                return self.plain_string(py, &rest[..end], ascii);
            }
            Some(_) => {}
            None => return Err(()),
        }
        // Escapes: find the closing quote (skipping escaped characters), then decode into the scratch
        // buffer, lone surrogates passed through as Python's `json` keeps them.
        let mut i = start + end;
        loop {
            let k = memchr::memchr2(b'"', b'\\', c.d.get(i..).ok_or(())?).ok_or(())?;
            i += k;
            if c.d[i] == b'"' {
                break;
            }
            i += 2;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let surrogates = unescape_into(&c.d[start..i], &mut buf).ok_or(())?;
        c.i = i + 1;
        let result = if surrogates {
            // SAFETY: GIL held; the buffer outlives the call.
            unsafe {
                Owned::new(ffi::PyUnicode_DecodeUTF8(
                    buf.as_ptr() as *const c_char,
                    buf.len() as ffi::Py_ssize_t,
                    c"surrogatepass".as_ptr(),
                ))
            }
        } else {
            new_str(&buf, buf.is_ascii())
        };
        self.scratch = buf;
        result
    }

    /// A `str` of `s`, valid UTF-8 that is all ASCII exactly when `ascii` (the callers check both).
    fn plain_string(&mut self, py: Python<'_>, s: &[u8], ascii: bool) -> BuildResult<Owned> {
        debug_assert_eq!(ascii, s.is_ascii());
        if s.len() > CACHED_MAX_LEN {
            return new_str(s, ascii);
        }
        let key = ShortKey::new(s, ascii);
        let k = key.slot();
        if let Some((cached_key, obj)) = &self.cache[k] {
            if *cached_key == key {
                let p = obj.as_ptr();
                // SAFETY: GIL held; we hand out a new strong reference to a cached object.
                unsafe { ffi::Py_INCREF(p) };
                return Owned::new(p);
            }
        }
        let obj = new_str(s, ascii)?;
        // SAFETY: GIL held; the cache keeps its own strong reference.
        let cached = unsafe { Bound::from_borrowed_ptr(py, obj.0) }.unbind();
        self.cache[k] = Some((key, cached));
        Ok(obj)
    }
}

/// A new reference to a singleton (`None`, `True`, `False`).
///
/// # Safety
/// The GIL is held and `obj` is a live object.
unsafe fn singleton(obj: *mut ffi::PyObject) -> BuildResult<Owned> {
    // SAFETY: as the caller promises.
    unsafe { ffi::Py_INCREF(obj) };
    Owned::new(obj)
}

/// Puts `item` at position `k` of a new list of at least `k + 1` slots (taking its reference).
fn set_list_item(_py: Python<'_>, list: &Owned, k: usize, item: Owned) {
    // SAFETY: the GIL is held (`_py`); `list` is a new list with a slot `k`, whose
    // NULL this replaces. Both calls steal the item's reference; the macro form is not in the limited
    // API.
    unsafe {
        #[cfg(not(feature = "abi3"))]
        ffi::PyList_SET_ITEM(list.0, k as ffi::Py_ssize_t, item.into_ptr());
        #[cfg(feature = "abi3")]
        ffi::PyList_SetItem(list.0, k as ffi::Py_ssize_t, item.into_ptr());
    }
}

/// A Python `int` or `float` (see `json::Number`).
fn py_number(_py: Python<'_>, number: Number<'_>) -> BuildResult<Owned> {
    // SAFETY: the GIL is held (`_py`); results are checked for null.
    unsafe {
        match number {
            Number::Int(v) => Owned::new(ffi::PyLong_FromLongLong(v)),
            Number::Float(v) => Owned::new(ffi::PyFloat_FromDouble(v)),
            Number::Big(digits) => {
                let z = std::ffi::CString::new(digits).map_err(|_| ())?;
                Owned::new(ffi::PyLong_FromString(z.as_ptr(), std::ptr::null_mut(), 10))
            }
        }
    }
}

/// The exception for a tape that is not one `tape::Encoder` wrote (a Python exception set while
/// building, such as `MemoryError`, is passed on).
fn tape_error(py: Python<'_>) -> PyErr {
    PyErr::take(py).unwrap_or_else(|| {
        Error::invalid("a shipped batch is malformed (not records that fusion-fast packed)").into()
    })
}

/// A tape's non-ASCII string through CPython's decoders, where it cannot be copied in (the limited API
/// cannot fill a `str`; a big-endian machine stores other bytes): Latin-1 as is, wider kinds as
/// UTF-32 (lone surrogates passed through, as in Python's `json`).
#[cfg(any(feature = "abi3", target_endian = "big"))]
fn decoded_string(scratch: &mut Vec<u8>, tag: u8, payload: &[u8]) -> BuildResult<Owned> {
    // SAFETY: GIL held by every caller; the buffers outlive the calls.
    unsafe {
        if tag == tape::STR_LATIN1 {
            return Owned::new(ffi::PyUnicode_DecodeLatin1(
                payload.as_ptr() as *const c_char,
                payload.len() as ffi::Py_ssize_t,
                std::ptr::null(),
            ));
        }
        scratch.clear();
        if tag == tape::STR_UCS2 {
            for unit in payload.chunks_exact(2) {
                scratch.extend_from_slice(
                    &u32::from(u16::from_le_bytes([unit[0], unit[1]])).to_le_bytes(),
                );
            }
        } else {
            scratch.extend_from_slice(payload);
        }
        let mut little_endian: std::os::raw::c_int = -1;
        Owned::new(ffi::PyUnicode_DecodeUTF32(
            scratch.as_ptr() as *const c_char,
            scratch.len() as ffi::Py_ssize_t,
            c"surrogatepass".as_ptr(),
            &mut little_endian,
        ))
    }
}

/// A `str` from valid UTF-8 bytes; ASCII is copied straight into a one-byte string (as orjson does).
/// Other text goes through CPython's decoder: a direct one-pass fill of the right string kind measured
/// no faster.
fn new_str(s: &[u8], ascii: bool) -> BuildResult<Owned> {
    // SAFETY: GIL held by every caller; `PyUnicode_New(n, 127)` allocates a one-byte-kind string with
    // room for n bytes plus a terminator, which we fill completely.
    unsafe {
        #[cfg(feature = "abi3")]
        let _ = ascii;
        #[cfg(not(feature = "abi3"))]
        if ascii {
            let obj = Owned::new(ffi::PyUnicode_New(s.len() as ffi::Py_ssize_t, 127))?;
            let data = ffi::PyUnicode_DATA(obj.0) as *mut u8;
            std::ptr::copy_nonoverlapping(s.as_ptr(), data, s.len());
            *data.add(s.len()) = 0;
            return Ok(obj);
        }
        Owned::new(ffi::PyUnicode_FromStringAndSize(
            s.as_ptr() as *const c_char,
            s.len() as ffi::Py_ssize_t,
        ))
    }
}
