//! The Python side of a mixture's datasets as `FusionDataset` reads them (`ItemSources`): each
//! sample's flags, its item, and a worker's batch packed for the main process (see `ship`).

use std::sync::{LazyLock, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::error::Error;
use crate::mapping::ensure_handler;
use crate::py_errors::boundary;
use crate::py_index::{int64s, Index};
use crate::py_ship::{item_sources, Parts, Shipped};
use crate::ship::{self, samples, Read};

/// The datasets of a mixture as `FusionDataset` reads them: by dataset number, its index, name and
/// image prefix (the image folder with a trailing "/", or ""). Samples are given as two little-endian
/// int64 arrays, dataset numbers and record numbers; one call serves a whole batch.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct ItemSources {
    indexes: Vec<Py<Index>>,
    names: Vec<Py<PyString>>,
    prefixes: Vec<Py<PyString>>,
}

impl ItemSources {
    /// Each dataset's `flags` column.
    fn flag_columns(&self) -> Vec<&[u8]> {
        self.indexes
            .iter()
            .map(|ix| ix.get().inner.column_bytes("flags").unwrap_or_default())
            .collect()
    }

    /// A stale-index error when a file of any dataset shrank under its mapping (see
    /// `JsonIndex::check_mapped`): called after reading the index columns of a batch.
    fn check_mapped(&self) -> PyResult<()> {
        for index in &self.indexes {
            index.get().inner.check_mapped()?;
        }
        Ok(())
    }

    /// Sample (`d`, `i`): its dataset's index and the record's position in it.
    fn sample(&self, d: i64, i: i64) -> Result<(&Index, usize), Error> {
        let index = nth(&self.indexes, d)?.get();
        Ok((index, index.position(i)?))
    }
}

#[pymethods]
impl ItemSources {
    #[new]
    fn new(
        indexes: Vec<Py<Index>>,
        names: Vec<Py<PyString>>,
        prefixes: Vec<Py<PyString>>,
    ) -> PyResult<Self> {
        boundary("ItemSources()", || {
            if indexes.len() != names.len() || names.len() != prefixes.len() {
                return Err(Error::invalid(
                    "indexes, names and prefixes must have the same length",
                )
                .into());
            }
            Ok(ItemSources {
                indexes,
                names,
                prefixes,
            })
        })
    }

    /// The datasets' names, by dataset number.
    #[getter]
    fn names(&self, py: Python<'_>) -> PyResult<Vec<Py<PyString>>> {
        boundary("ItemSources.names", || {
            Ok(self.names.iter().map(|n| n.clone_ref(py)).collect())
        })
    }

    /// The datasets' image prefixes, by dataset number.
    #[getter]
    fn prefixes(&self, py: Python<'_>) -> PyResult<Vec<Py<PyString>>> {
        boundary("ItemSources.prefixes", || {
            Ok(self.prefixes.iter().map(|p| p.clone_ref(py)).collect())
        })
    }

    /// Each sample's index flags (one byte each).
    fn flags<'py>(
        &self,
        py: Python<'py>,
        datasets: &[u8],
        numbers: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        boundary("ItemSources.flags", || {
            ensure_handler();
            let columns = self.flag_columns();
            let mut out = Vec::with_capacity(datasets.len() / 8);
            for (d, i) in samples(datasets, numbers)? {
                let (_, i) = self.sample(d, i)?;
                out.push(nth(&columns, d)?[i]);
            }
            self.check_mapped()?;
            Ok(PyBytes::new(py, &out))
        })
    }

    /// The samples as items (none may be flagged bad): each record with its image paths resolved
    /// and its source added (see `py_items`).
    fn items<'py>(
        &self,
        py: Python<'py>,
        datasets: &[u8],
        numbers: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        boundary("ItemSources.items", || {
            ensure_handler();
            let sources = item_sources(py, &self.names, &self.prefixes)?;
            let list = PyList::empty(py);
            for (d, i) in samples(datasets, numbers)? {
                let (index, i) = self.sample(d, i)?;
                let record = index.parse(py, i)?;
                nth(&sources, d)?.finish(&record, i as i64)?;
                list.append(record)?;
            }
            Ok(list)
        })
    }

    /// The samples packed as a worker ships them to the main process: their JSON bytes or, with
    /// `tape=True`, their tapes (see `ship`).
    #[pyo3(signature = (datasets, numbers, *, tape=false))]
    fn pack(
        &self,
        py: Python<'_>,
        datasets: Bound<'_, PyBytes>,
        numbers: Bound<'_, PyBytes>,
        tape: bool,
    ) -> PyResult<Shipped> {
        boundary("ItemSources.pack", || {
            ensure_handler();
            let count = datasets.as_bytes().len() / 8;
            let (mut indexes, mut reads) = (Vec::with_capacity(count), Vec::with_capacity(count));
            for (d, i) in samples(datasets.as_bytes(), numbers.as_bytes())? {
                let (index, i) = self.sample(d, i)?;
                reads.push(Read {
                    index: &index.inner,
                    number: i,
                    span: index.inner.checked_span(i)?,
                });
                indexes.push(index);
            }
            self.check_mapped()?;
            self.packed(py, &indexes, &reads, datasets, numbers, tape)
        })
    }

    /// A worker's batch from mixture positions in one call: what `pack` makes of the dataset and record
    /// numbers that `ship::locate` finds for them. `offsets`: where each dataset starts in the mixture,
    /// plus the total; `records`: the record number of every position (both int64, C-contiguous).
    /// None when a position is out of range or a sample's flags have a bit of `bad_flags`: the caller's
    /// general path then raises, or replaces the sample.
    #[pyo3(signature = (positions, offsets, records, bad_flags, *, tape=false))]
    fn pack_positions(
        &self,
        py: Python<'_>,
        positions: Vec<i64>,
        offsets: PyBuffer<i64>,
        records: PyBuffer<i64>,
        bad_flags: u8,
        tape: bool,
    ) -> PyResult<Option<Shipped>> {
        boundary("ItemSources.pack_positions", || {
            ensure_handler();
            let (offsets, records) = (int64s(&offsets, "offsets")?, int64s(&records, "records")?);
            let flags = self.flag_columns();
            let (mut datasets, mut numbers) = (Vec::new(), Vec::new());
            let mut indexes = Vec::with_capacity(positions.len());
            let mut reads = Vec::with_capacity(positions.len());
            for pos in positions {
                let Some((d, number)) = ship::locate(offsets, records, pos) else {
                    return Ok(None);
                };
                let (index, i) = self.sample(d as i64, number)?;
                if nth(&flags, d as i64)?
                    .get(i)
                    .is_none_or(|&f| f & bad_flags != 0)
                {
                    return Ok(None);
                }
                reads.push(Read {
                    index: &index.inner,
                    number: i,
                    span: index.inner.checked_span(i)?,
                });
                indexes.push(index);
                datasets.extend_from_slice(&(d as i64).to_le_bytes());
                numbers.extend_from_slice(&(i as i64).to_le_bytes());
            }
            // The flags and spans came from the index mappings; the records come by positional reads.
            self.check_mapped()?;
            let (datasets, numbers) = (PyBytes::new(py, &datasets), PyBytes::new(py, &numbers));
            self.packed(py, &indexes, &reads, datasets, numbers, tape)
                .map(Some)
        })
    }
}

impl ItemSources {
    /// The `Shipped` batch of `reads` (each from the `Index` at its place in `indexes`), whose dataset
    /// and record numbers are `datasets` and `numbers`. A data file cut short or changed after it was
    /// opened fails the read or the parse: a stale-index error naming the file and record, not a crash.
    fn packed(
        &self,
        py: Python<'_>,
        indexes: &[&Index],
        reads: &[Read<'_>],
        datasets: Bound<'_, PyBytes>,
        numbers: Bound<'_, PyBytes>,
        tape: bool,
    ) -> PyResult<Shipped> {
        let failed = |f: ship::Failed| -> PyErr {
            match f.read.and_then(|k| Some((indexes.get(k)?, reads.get(k)?))) {
                Some((index, r)) => index.changed(r.number, f.error.into()).into(),
                None => f.error.into(),
            }
        };
        let (data, lengths) = if tape {
            let mut packer = PACKER.lock().unwrap_or_else(|e| e.into_inner());
            let (tapes, lengths) = packer.pack_tapes(reads).map_err(failed)?;
            (PyBytes::new(py, tapes), PyBytes::new(py, &lengths))
        } else {
            let data = PyBytes::new_with(py, ship::json_len(reads), |out| {
                ship::pack_json(reads, out).map_err(failed)
            })?;
            (data, PyBytes::new(py, &ship::json_lengths(reads)))
        };
        let clone = |strings: &[Py<PyString>]| strings.iter().map(|s| s.clone_ref(py)).collect();
        Shipped::checked(Parts {
            data,
            lengths,
            datasets,
            numbers,
            names: clone(&self.names),
            prefixes: clone(&self.prefixes),
            tape,
        })
    }
}

/// A worker's buffers for packing tapes, reused from batch to batch. The GIL is held by every user,
/// so the lock is never contended; it only satisfies `Sync`.
static PACKER: LazyLock<Mutex<ship::Packer>> =
    LazyLock::new(|| Mutex::new(ship::Packer::default()));

fn nth<T>(items: &[T], d: i64) -> Result<&T, Error> {
    let d = ship::dataset(d, items.len())?;
    Ok(&items[d])
}
