//! `FusionDataset`'s per-record work on decoded records, done in Rust because it runs for every sample
//! of every epoch: turning a record into an item (image paths joined to the dataset's image folder,
//! the source added) and collating a batch of items field by field. The semantics are those written
//! in `fusion_fast/torch.py`; its tests compare both sides.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

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
    /// a relative `image` path, or each one of a list, becomes `image_prefix + path` (POSIX
    /// `os.path.join`), absolute ones stay; `record[SOURCE_KEY]` names the dataset and record number.
    pub fn finish(&self, record: &Bound<'py, PyAny>, number: i64) -> PyResult<()> {
        let py = record.py();
        let record = record.cast::<PyDict>()?;
        let image_key = intern!(py, "image");
        if let Some(image) = record.get_item(image_key)? {
            if let Ok(path) = image.cast::<PyString>() {
                record.set_item(image_key, self.resolve(path)?)?;
            } else if let Ok(paths) = image.cast::<PyList>() {
                let resolved = PyList::empty(py);
                for path in paths.iter() {
                    resolved.append(self.resolve(path.cast::<PyString>()?)?)?;
                }
                record.set_item(image_key, resolved)?;
            }
        }
        let source = PyDict::new(py);
        source.set_item(intern!(py, "dataset"), &self.dataset)?;
        source.set_item(intern!(py, "index"), number)?;
        record.set_item(intern!(py, SOURCE_KEY), source)
    }

    fn resolve(&self, path: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        match &self.image_prefix {
            // Lossy only matters for lone surrogates, which are not "/" either way.
            Some(prefix) if !path.to_string_lossy().starts_with('/') => prefix.add(path),
            _ => Ok(path.clone().into_any()),
        }
    }
}

/// `collate` of a list of items made only of dicts, lists, strings, bytes, numbers, booleans and None:
/// a leaf first item (anything but a dict) keeps the list as it is; dicts become one dict over the
/// union of their keys (in first-seen order) whose values are collated the same way, None standing
/// for a missing key. Returns None when it meets anything else (tensors, tuples, other mappings):
/// then `fusion_fast.torch.collate` decides, in Python.
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
    let keys = PyDict::new(py); // an ordered set
    for item in items.iter() {
        let Ok(dict) = item.cast_into_exact::<PyDict>() else {
            return Ok(None);
        };
        for key in dict.keys() {
            keys.set_item(key, py.None())?;
        }
        dicts.push(dict);
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
