//! The module's free functions: each a thin wrapper over one function of the core.

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::columns::{Records, COLUMNS};
use crate::error::Error;
use crate::py_errors::boundary;
use crate::py_index::{int64s, int64s_mut};
use crate::py_items::collate_json;
use crate::scan::{scan, scan_sequential, Format, ScanOptions};
use crate::shuffle::NumpyPcg64;
use crate::store;

/// Scans `data` without writing an index and returns each column as little-endian bytes.
/// `sequential=True` runs the reference scanner; otherwise the parallel one with `chunk_size`.
#[pyfunction]
#[pyo3(signature = (data, format, *, chunk_size=1048576, sequential=false))]
pub fn scan_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
    format: &str,
    chunk_size: usize,
    sequential: bool,
) -> PyResult<Bound<'py, PyDict>> {
    boundary("scan_bytes", || {
        let format = match format {
            "json" => Format::JsonArray,
            "jsonl" => Format::JsonLines,
            _ => return Err(Error::invalid("format must be 'json' or 'jsonl'").into()),
        };
        let opts = ScanOptions {
            chunk_size: chunk_size.max(1),
            ..ScanOptions::default()
        };
        let records = py.detach(|| {
            if sequential {
                scan_sequential(data, format)
            } else {
                scan(data, format, &opts).map(|runs| Records::concat(&runs))
            }
        })?;
        let d = PyDict::new(py);
        for (k, (name, _)) in COLUMNS.iter().enumerate() {
            d.set_item(*name, PyBytes::new(py, &records.column_bytes(k)))?;
        }
        Ok(d)
    })
}

/// For each path (joined to `base` when relative): 1 if it is an existing file, else 0.
/// Runs on every core with the GIL released.
#[pyfunction]
#[pyo3(signature = (paths, base=None, threads=None))]
pub fn files_exist<'py>(
    py: Python<'py>,
    paths: Vec<String>,
    base: Option<PathBuf>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyBytes>> {
    boundary("files_exist", || {
        let run = || crate::paths::files_exist(base.as_deref(), &paths);
        let found = py.detach(|| match threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map(|pool| pool.install(run)),
            None => Ok(run()),
        });
        let found = found.map_err(|e| Error::invalid(format!("cannot start threads: {e}")))?;
        let bytes: Vec<u8> = found.into_iter().map(u8::from).collect();
        Ok(PyBytes::new(py, &bytes))
    })
}

/// FUSION's length grouping of the permutation `perm` of the positions of `size` (see
/// `grouping::length_grouped`), written into `out`; all three int64, C-contiguous. Runs on every core
/// with the GIL released.
#[pyfunction]
pub fn length_grouped_into(
    py: Python<'_>,
    perm: PyBuffer<i64>,
    size: PyBuffer<i64>,
    megabatch: usize,
    chunks: usize,
    mut out: PyBuffer<i64>,
) -> PyResult<()> {
    boundary("length_grouped_into", || {
        let (perm, size, out) = (
            int64s(&perm, "perm")?,
            int64s(&size, "size")?,
            int64s_mut(&mut out, "out")?,
        );
        py.detach(|| crate::grouping::length_grouped(perm, size, megabatch, chunks, out))
            .ok_or_else(|| {
                Error::invalid("perm holds a position outside size, or out is not as long as perm")
            })?;
        Ok(())
    })
}

/// numpy's `Generator(PCG64).shuffle` of `data` (int64, C-contiguous), bit for bit (see `shuffle`):
/// the generator's state is passed as `bit_generator.state` holds it and returned as it is after.
/// Runs with the GIL released.
#[pyfunction]
pub fn numpy_shuffle_into(
    py: Python<'_>,
    state: u128,
    inc: u128,
    has_uint32: bool,
    uinteger: u32,
    mut data: PyBuffer<i64>,
) -> PyResult<(u128, bool, u32)> {
    boundary("numpy_shuffle_into", || {
        let data = int64s_mut(&mut data, "data")?;
        let mut rng = NumpyPcg64 {
            state,
            inc,
            has_uint32,
            uinteger,
        };
        py.detach(|| crate::shuffle::shuffle(&mut rng, data));
        Ok((rng.state, rng.has_uint32, rng.uinteger))
    })
}

/// `fusion_fast.torch.collate` of JSON-like items, or None where Python must decide (see `py_items`).
#[pyfunction]
pub fn collate_records<'py>(items: Bound<'py, PyList>) -> PyResult<Option<Bound<'py, PyAny>>> {
    boundary("collate_records", || collate_json(items))
}

/// Panics, for tests of the panic boundary: the error must come out as a `FusionFastError`.
#[pyfunction]
pub fn _panic_for_tests() -> PyResult<()> {
    boundary("_panic_for_tests", || panic!("a deliberate panic"))
}

/// Where indexes of read-only data go.
#[pyfunction]
pub fn cache_dir() -> PyResult<OsString> {
    boundary("cache_dir", || Ok(store::cache_dir().into_os_string()))
}

/// Candidate index paths for `path`, in the order they are tried.
#[pyfunction]
#[pyo3(signature = (path, index_dir=None))]
pub fn index_candidates(path: PathBuf, index_dir: Option<PathBuf>) -> PyResult<Vec<OsString>> {
    boundary("index_candidates", || {
        Ok(store::index_candidates(&path, index_dir.as_deref())
            .into_iter()
            .map(PathBuf::into_os_string)
            .collect())
    })
}
