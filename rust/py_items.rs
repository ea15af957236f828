//! `FusionDataset`'s per-record work on decoded records, done in Rust because it runs for every sample
//! of every epoch: turning a record into an item (image paths joined to the dataset's image folder,
//! the source added), collating a batch of items field by field, and building the collated batch of
//! shipped records directly, without the items in between.
//!
//! The collate rules are stated once, in Python: `_collate` in `fusion_fast/torch/collate.py`, which
//! also handles tensors, tuples and other mappings. What is here is its fast path for the JSON values
//! that raw records are: `collate_json` gives up (None) on anything else. `tests/test_shipping.py` runs
//! both over generated batches and requires equal results, so a change to the rules there that this
//! file does not follow fails.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::error::Error;
use crate::to_python::Builder;

/// The key each item gets: `{"dataset": name, "index": record number}`.
pub const SOURCE_KEY: &str = "_source";

/// What turns the records of one dataset into items.
pub struct ItemSource<'py> {
    dataset: Bound<'py, PyString>,
    /// The image folder with a trailing "/"; None without one.
    image_prefix: Option<Bound<'py, PyString>>,
}

impl<'py> ItemSource<'py> {
    /// `image_prefix`: the dataset's image folder with a trailing "/", or "" without one.
    pub fn new(
        dataset: Bound<'py, PyString>,
        image_prefix: Bound<'py, PyString>,
    ) -> PyResult<Self> {
        let image_prefix = (image_prefix.len()? > 0).then_some(image_prefix);
        Ok(ItemSource {
            dataset,
            image_prefix,
        })
    }

    /// Makes `record` (a dict: records flagged as anything else never get here) item `number`:
    /// `image` resolved (see `resolve_image`), `record[SOURCE_KEY]` naming the dataset and number.
    pub fn finish(&self, record: &Bound<'py, PyAny>, number: i64) -> PyResult<()> {
        let py = record.py();
        let record = record.cast::<PyDict>()?;
        let image_key = intern!(py, "image");
        if let Some(image) = record.get_item(image_key)? {
            if let Some(resolved) = self.resolve_image(&image)? {
                record.set_item(image_key, resolved)?;
            }
        }
        record.set_item(intern!(py, SOURCE_KEY), self.source(number)?)
    }

    /// The dataset's name.
    pub fn name(&self) -> &Bound<'py, PyString> {
        &self.dataset
    }

    /// `{"dataset": name, "index": number}`.
    fn source(&self, number: i64) -> PyResult<Bound<'py, PyDict>> {
        let py = self.dataset.py();
        let source = PyDict::new(py);
        source.set_item(intern!(py, "dataset"), &self.dataset)?;
        source.set_item(intern!(py, "index"), number)?;
        Ok(source)
    }

    /// An `image` value resolved: a relative path, or each one of a list, becomes `image_prefix + path`
    /// (POSIX `os.path.join`), absolute ones stay. None when there is nothing to change (null).
    fn resolve_image(&self, image: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Ok(path) = image.cast::<PyString>() {
            return self.resolve(path).map(Some);
        }
        let Ok(paths) = image.cast::<PyList>() else {
            return Ok(None);
        };
        let resolved = PyList::empty(image.py());
        for path in paths.iter() {
            resolved.append(self.resolve(path.cast::<PyString>()?)?)?;
        }
        Ok(Some(resolved.into_any()))
    }

    fn resolve(&self, path: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        match &self.image_prefix {
            // Lossy only matters for lone surrogates, which are not "/" either way.
            Some(prefix) if !path.to_string_lossy().starts_with('/') => prefix.add(path),
            _ => Ok(path.clone().into_any()),
        }
    }
}

/// `_collate` (fusion_fast/torch/collate.py) of a list of items made only of dicts, lists, strings,
/// bytes, numbers, booleans and None. Returns None when it meets anything else (tensors, tuples, other
/// mappings): then `_collate` decides, in Python.
pub fn collate_json<'py>(items: Bound<'py, PyList>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = items.py();
    let Some(first) = items.iter().next() else {
        return Ok(Some(items.into_any()));
    };
    if is_leaf(&first) {
        return Ok(Some(items.into_any()));
    }
    if first.cast_exact::<PyDict>().is_err() {
        return Ok(None);
    }
    let mut dicts = Vec::with_capacity(items.len());
    for item in items.iter() {
        if let Ok(dict) = item.cast_exact::<PyDict>() {
            dicts.push(dict.clone());
        } else if is_leaf(&item) {
            return Ok(Some(items.into_any())); // dicts beside leaves: kept as they are
        } else {
            return Ok(None);
        }
    }
    let keys = PyDict::new(py); // an ordered set
    for dict in &dicts {
        for key in dict.keys() {
            keys.set_item(key, py.None())?;
        }
    }
    let out = PyDict::new(py);
    for key in keys.keys() {
        let column = PyList::empty(py);
        for dict in &dicts {
            column.append(dict.get_item(&key)?)?;
        }
        match collate_json(column)? {
            Some(value) => out.set_item(key, value)?,
            None => return Ok(None),
        }
    }
    Ok(Some(out.into_any()))
}

fn is_leaf(value: &Bound<'_, PyAny>) -> bool {
    value.is_none()
        || value.is_instance_of::<PyString>()
        || value.is_instance_of::<PyList>()
        || value.is_instance_of::<PyInt>()
        || value.is_instance_of::<PyFloat>()
        || value.is_instance_of::<PyBytes>()
}

/// Builds `collate([item, ...])` of records straight from their bytes, one column per key, without
/// the item dicts: what a batch of raw records shipped by a DataLoader worker becomes in the main
/// process. Equal to making each item (`ItemSource::finish`) and collating them (`collate_json`).
pub struct BatchBuilder<'py> {
    py: Python<'py>,
    /// Key -> column number, for keys not found at their usual place.
    lookup: Bound<'py, PyDict>,
    /// Column keys in first-seen order, and each column's values by row (None: key missing).
    keys: Vec<Bound<'py, PyAny>>,
    columns: Vec<Vec<Option<Bound<'py, PyAny>>>>,
    /// Columns of the previous row's members in order: records usually share their key order.
    last_order: Vec<usize>,
    image_column: Option<usize>,
    source_column: Option<usize>,
    source_names: Vec<Bound<'py, PyString>>,
    source_numbers: Vec<i64>,
}

impl<'py> BatchBuilder<'py> {
    pub fn new(py: Python<'py>) -> Self {
        BatchBuilder {
            py,
            lookup: PyDict::new(py),
            keys: Vec::new(),
            columns: Vec::new(),
            last_order: Vec::new(),
            image_column: None,
            source_column: None,
            source_names: Vec::new(),
            source_numbers: Vec::new(),
        }
    }

    fn rows(&self) -> usize {
        self.source_numbers.len()
    }

    fn column(&mut self, key: &Bound<'py, PyAny>, member: usize) -> PyResult<usize> {
        if let Some(&c) = self.last_order.get(member) {
            if self.keys[c].is(key) {
                return Ok(c);
            }
        }
        if let Some(c) = self.lookup.get_item(key)? {
            return c.extract();
        }
        let c = self.keys.len();
        self.lookup.set_item(key, c)?;
        self.keys.push(key.clone());
        self.columns.push(vec![None; self.rows()]);
        if key.eq(intern!(self.py, "image"))? {
            self.image_column = Some(c);
        } else if key.eq(intern!(self.py, SOURCE_KEY))? {
            self.source_column = Some(c);
        }
        Ok(c)
    }

    /// Adds the record in `bytes` (its JSON, or its tape with `tape`) as item `number` of `source`'s
    /// dataset.
    pub fn add(
        &mut self,
        builder: &mut Builder,
        bytes: &[u8],
        tape: bool,
        source: &ItemSource<'py>,
        number: i64,
    ) -> PyResult<()> {
        let row = self.rows();
        let mut order = std::mem::take(&mut self.last_order);
        let mut members = 0;
        let py = self.py;
        let member = |key: Bound<'py, PyAny>, value: Bound<'py, PyAny>| {
            let c = self.column(&key, members)?;
            let column = &mut self.columns[c];
            if column.len() > row {
                column[row] = Some(value); // a repeated key: the last value wins, in the first place
            } else {
                column.push(Some(value));
                if members < order.len() {
                    order[members] = c;
                } else {
                    order.push(c);
                }
                members += 1;
            }
            Ok(())
        };
        if tape {
            builder.build_tape_members(py, bytes, member)?;
        } else {
            builder.build_members(py, bytes, member)?;
        }
        order.truncate(members);
        self.last_order = order;
        if let Some(c) = self.image_column {
            if let Some(Some(image)) = self.columns[c].get(row) {
                if let Some(resolved) = source.resolve_image(image)? {
                    self.columns[c][row] = Some(resolved);
                }
            }
        }
        if self.source_column.is_none() {
            // Each item gets SOURCE_KEY last, unless it has the key already: the first item decides
            // where the column goes.
            self.column(intern!(self.py, SOURCE_KEY).as_any(), usize::MAX)?;
        }
        for column in &mut self.columns {
            if column.len() == row {
                column.push(None);
            }
        }
        self.source_names.push(source.dataset.clone());
        self.source_numbers.push(number);
        Ok(())
    }

    /// The collated batch: a dict of columns (an empty list for no rows, as `collate([])`).
    pub fn finish(self) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        if self.rows() == 0 {
            return Ok(PyList::empty(py).into_any());
        }
        let out = PyDict::new(py);
        for (c, (key, column)) in self.keys.iter().zip(self.columns).enumerate() {
            let value = if Some(c) == self.source_column {
                let sources = PyDict::new(py);
                sources.set_item(intern!(py, "dataset"), PyList::new(py, &self.source_names)?)?;
                sources.set_item(intern!(py, "index"), PyList::new(py, &self.source_numbers)?)?;
                sources.into_any()
            } else {
                collate_json(PyList::new(py, column)?)?.ok_or_else(|| {
                    Error::invalid("decoded JSON holds only what collate_json decides")
                })?
            };
            out.set_item(key, value)?;
        }
        Ok(out.into_any())
    }
}
