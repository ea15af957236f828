//! The Python side of the worker hand-off (see `ship`): `Shipped`, the batch a DataLoader worker sends
//! to the main process, and `Locator`, which finds the dataset and record of mixture positions.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};

use crate::error::{Error, ErrorKind};
use crate::py_errors::boundary;
use crate::py_index::{int64s, int64s_mut, shared_builder};
use crate::py_items::{BatchBuilder, ItemSource};
use crate::ship::{self, ShippedRecord};

/// A batch of records as a DataLoader worker ships it to the main process: the records' bytes (their
/// JSON, or their tapes with `tape`) back to back, each one's length (little-endian uint32), dataset
/// number and record number (little-endian int64), and the datasets' names and image prefixes (the
/// image folder with a trailing "/", or ""). Pickles as those bytes objects, whatever the batch holds;
/// made (or unpickled) only when its layout is whole, so that `decode` never reads past its bytes.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct Shipped {
    data: Py<PyBytes>,
    lengths: Py<PyBytes>,
    datasets: Py<PyBytes>,
    numbers: Py<PyBytes>,
    names: Vec<Py<PyString>>,
    prefixes: Vec<Py<PyString>>,
    tape: bool,
}

/// The fields of a `Shipped`, before they are checked.
pub struct Parts<'py> {
    pub data: Bound<'py, PyBytes>,
    pub lengths: Bound<'py, PyBytes>,
    pub datasets: Bound<'py, PyBytes>,
    pub numbers: Bound<'py, PyBytes>,
    pub names: Vec<Py<PyString>>,
    pub prefixes: Vec<Py<PyString>>,
    pub tape: bool,
}

impl Shipped {
    /// A `Shipped` of `parts`, whose layout must be whole (see `ship::unpack`).
    pub fn checked(parts: Parts<'_>) -> PyResult<Shipped> {
        if parts.names.len() != parts.prefixes.len() {
            return Err(Error::invalid("names and prefixes must have the same length").into());
        }
        ship::unpack(
            parts.data.as_bytes(),
            parts.lengths.as_bytes(),
            parts.datasets.as_bytes(),
            parts.numbers.as_bytes(),
            parts.names.len(),
        )?;
        Ok(Shipped {
            data: parts.data.unbind(),
            lengths: parts.lengths.unbind(),
            datasets: parts.datasets.unbind(),
            numbers: parts.numbers.unbind(),
            names: parts.names,
            prefixes: parts.prefixes,
            tape: parts.tape,
        })
    }

    fn records<'a>(&'a self, py: Python<'_>) -> PyResult<Vec<ShippedRecord<'a>>> {
        Ok(ship::unpack(
            self.data.as_bytes(py),
            self.lengths.as_bytes(py),
            self.datasets.as_bytes(py),
            self.numbers.as_bytes(py),
            self.names.len(),
        )?)
    }

    fn sources<'py>(&self, py: Python<'py>) -> PyResult<Vec<ItemSource<'py>>> {
        item_sources(py, &self.names, &self.prefixes)
    }

    fn strings<'py>(py: Python<'py>, strings: &[Py<PyString>]) -> Vec<Bound<'py, PyString>> {
        strings.iter().map(|s| s.bind(py).clone()).collect()
    }
}

#[pymethods]
impl Shipped {
    #[new]
    #[pyo3(signature = (data, lengths, datasets, numbers, names, prefixes, tape=false))]
    fn new(
        data: Bound<'_, PyBytes>,
        lengths: Bound<'_, PyBytes>,
        datasets: Bound<'_, PyBytes>,
        numbers: Bound<'_, PyBytes>,
        names: Vec<Py<PyString>>,
        prefixes: Vec<Py<PyString>>,
        tape: bool,
    ) -> PyResult<Self> {
        boundary("Shipped()", || {
            Shipped::checked(Parts {
                data,
                lengths,
                datasets,
                numbers,
                names,
                prefixes,
                tape,
            })
        })
    }

    /// The items (as `ItemSources.items` makes them) or, with `collated=True`, their `collate`, built
    /// column by column without the items in between.
    #[pyo3(signature = (*, collated=false))]
    fn decode<'py>(&self, py: Python<'py>, collated: bool) -> PyResult<Bound<'py, PyAny>> {
        boundary("Shipped.decode", || {
            let sources = self.sources(py)?;
            let records = self.records(py)?;
            let mut builder = shared_builder();
            // A tape was parsed in the worker, which checked the record then; JSON is checked here.
            let error = |e: PyErr, source: &ItemSource<'_>, i: i64| {
                if self.tape {
                    e
                } else {
                    shipped_error(py, e, source, i)
                }
            };
            if collated {
                let mut batch = BatchBuilder::new(py);
                for r in records {
                    let source = &sources[r.dataset];
                    batch
                        .add(&mut builder, r.bytes, self.tape, source, r.number)
                        .map_err(|e| error(e, source, r.number))?;
                }
                return batch.finish();
            }
            let list = PyList::empty(py);
            for r in records {
                let source = &sources[r.dataset];
                let built = if self.tape {
                    builder.build_tape(py, r.bytes)
                } else {
                    builder.build(py, r.bytes)
                };
                let record = built.map_err(|e| error(e, source, r.number))?;
                source.finish(&record, r.number)?;
                list.append(record)?;
            }
            Ok(list.into_any())
        })
    }

    /// Rebuilt from its bytes objects: pickling copies no record.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyType>, Bound<'py, PyTuple>)> {
        boundary("Shipped.__reduce__", || {
            let py = slf.py();
            let this = slf.get();
            let args = (
                this.data.bind(py),
                this.lengths.bind(py),
                this.datasets.bind(py),
                this.numbers.bind(py),
                Shipped::strings(py, &this.names),
                Shipped::strings(py, &this.prefixes),
                this.tape,
            )
                .into_pyobject(py)?;
            Ok((slf.get_type(), args))
        })
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        boundary("len(Shipped)", || Ok(self.lengths.as_bytes(py).len() / 4))
    }

    fn __eq__(&self, py: Python<'_>, other: PyRef<'_, Self>) -> PyResult<bool> {
        boundary("Shipped.__eq__", || {
            let same_bytes = |a: &Py<PyBytes>, b: &Py<PyBytes>| a.as_bytes(py) == b.as_bytes(py);
            let same_strings = |a: &[Py<PyString>], b: &[Py<PyString>]| -> PyResult<bool> {
                if a.len() != b.len() {
                    return Ok(false);
                }
                for (x, y) in a.iter().zip(b) {
                    if !x.bind(py).as_any().eq(y.bind(py))? {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            Ok(self.tape == other.tape
                && same_bytes(&self.data, &other.data)
                && same_bytes(&self.lengths, &other.lengths)
                && same_bytes(&self.datasets, &other.datasets)
                && same_bytes(&self.numbers, &other.numbers)
                && same_strings(&self.names, &other.names)?
                && same_strings(&self.prefixes, &other.prefixes)?)
        })
    }

    /// The records back to back: their JSON, or their tapes.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.data.bind(py).clone()
    }

    /// Each record's byte length, little-endian uint32.
    #[getter]
    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.lengths.bind(py).clone()
    }

    /// Each record's dataset number, little-endian int64.
    #[getter]
    fn datasets<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.datasets.bind(py).clone()
    }

    /// Each record's number in its dataset's file, little-endian int64.
    #[getter]
    fn numbers<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.numbers.bind(py).clone()
    }

    /// The datasets' names, by dataset number.
    #[getter]
    fn names<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        Shipped::strings(py, &self.names)
    }

    /// The datasets' image prefixes, by dataset number.
    #[getter]
    fn prefixes<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyString>> {
        Shipped::strings(py, &self.prefixes)
    }

    /// Whether the records are tapes (parsed in the worker) rather than JSON.
    #[getter]
    fn tape(&self) -> bool {
        self.tape
    }
}

/// What turns each dataset's records into items, by dataset number.
pub fn item_sources<'py>(
    py: Python<'py>,
    names: &[Py<PyString>],
    prefixes: &[Py<PyString>],
) -> PyResult<Vec<ItemSource<'py>>> {
    names
        .iter()
        .zip(prefixes)
        .map(|(n, p)| ItemSource::new(n.bind(py).clone(), p.bind(py).clone()))
        .collect()
}

/// A shipped record that does not decode: its bytes are not the JSON that was indexed, because the
/// data file changed after the worker's index was opened. A `StaleIndexError` naming the dataset and
/// record (the main process knows names, not paths; `Index::changed` is the same error where the
/// path is known); other errors (`MemoryError`) pass unchanged.
fn shipped_error(py: Python<'_>, e: PyErr, source: &ItemSource<'_>, record: i64) -> PyErr {
    if !e.is_instance_of::<PyValueError>(py) {
        return e;
    }
    let msg = format!(
        "dataset {}, record {record}: {}; the data file changed after it was opened",
        source
            .name()
            .repr()
            .map_or_else(|_| "?".into(), |r| r.to_string()),
        e.value(py)
    );
    Error::new(ErrorKind::StaleIndex, msg).into()
}

/// Where each position of a mixture finds its record: the mixture's `offsets` (where each dataset
/// starts, then the total) and `records` (the record number of every position), both int64. Holds
/// `records` without a copy; `locate_into` and `locate_one` are `ship::locate`.
#[pyclass(module = "fusion_fast._core", frozen)]
pub struct Locator {
    offsets: Vec<i64>,
    records: PyBuffer<i64>,
}

impl Locator {
    fn records(&self) -> PyResult<&[i64]> {
        Ok(int64s(&self.records, "records")?)
    }
}

#[pymethods]
impl Locator {
    #[new]
    fn new(offsets: PyBuffer<i64>, records: PyBuffer<i64>) -> PyResult<Self> {
        boundary("Locator()", || {
            let offsets = int64s(&offsets, "offsets")?.to_vec();
            ship::check_offsets(&offsets, int64s(&records, "records")?.len())?;
            Ok(Locator { offsets, records })
        })
    }

    /// Writes the dataset and record number of every one of `positions` (negative counts from the
    /// end) into `datasets` and `numbers`; all three int64 arrays of one length. Returns None, or the
    /// place in `positions` of the first position out of range (the caller words the error).
    fn locate_into(
        &self,
        positions: PyBuffer<i64>,
        mut datasets: PyBuffer<i64>,
        mut numbers: PyBuffer<i64>,
    ) -> PyResult<Option<usize>> {
        boundary("Locator.locate_into", || {
            let places = [&positions, &datasets, &numbers].map(|b| {
                let start = b.buf_ptr() as usize;
                start..start + b.item_count() * 8
            });
            let overlap = |a: &std::ops::Range<usize>, b: &std::ops::Range<usize>| {
                a.start < b.end && b.start < a.end
            };
            if overlap(&places[0], &places[1])
                || overlap(&places[0], &places[2])
                || overlap(&places[1], &places[2])
            {
                return Err(
                    Error::invalid("positions, datasets and numbers must not overlap").into(),
                );
            }
            let positions = int64s(&positions, "positions")?;
            let datasets = int64s_mut(&mut datasets, "datasets")?;
            let numbers = int64s_mut(&mut numbers, "numbers")?;
            if datasets.len() != positions.len() || numbers.len() != positions.len() {
                return Err(Error::invalid(
                    "positions, datasets and numbers must have the same length",
                )
                .into());
            }
            let records = self.records()?;
            Ok(ship::locate_into(&self.offsets, records, positions, datasets, numbers).err())
        })
    }

    /// (dataset number, record number) of mixture position `position` (negative counts from the
    /// end), or None when it is out of range.
    fn locate_one(&self, position: &Bound<'_, PyAny>) -> PyResult<Option<(usize, i64)>> {
        boundary("Locator.locate_one", || {
            let position = match position.extract::<i64>() {
                Ok(p) => p,
                Err(e) if e.is_instance_of::<PyOverflowError>(position.py()) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(ship::locate(&self.offsets, self.records()?, position))
        })
    }

    /// The number of positions.
    fn __len__(&self) -> PyResult<usize> {
        boundary("len(Locator)", || Ok(self.records()?.len()))
    }
}
