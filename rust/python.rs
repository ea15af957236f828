//! The Python module `fusion_fast._core`: registration only. Each class and function is a thin
//! wrapper in a `py_*.rs` file of its own; errors map onto Python's in `py_errors.rs`.

use pyo3::prelude::*;

use crate::py_functions::*;
use crate::py_index::{open_index, Index, Mapped, Progress};
use crate::py_items::SOURCE_KEY;
use crate::py_ship::{Locator, Shipped};
use crate::py_sources::ItemSources;
use crate::record::flags;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::py_errors::init(m.py())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", crate::index_file::FORMAT_VERSION)?;
    m.add("SOURCE_KEY", SOURCE_KEY)?;
    for (name, bit) in [
        ("HAS_IMAGE", flags::HAS_IMAGE),
        ("HAS_VIDEO", flags::HAS_VIDEO),
        ("NO_CONVERSATIONS", flags::NO_CONVERSATIONS),
        ("BAD_CONVERSATIONS", flags::BAD_CONVERSATIONS),
        ("NOT_OBJECT", flags::NOT_OBJECT),
        ("BAD_IMAGE", flags::BAD_IMAGE),
        ("SATURATED", flags::SATURATED),
    ] {
        m.add(name, bit)?;
    }
    m.add_class::<Progress>()?;
    m.add_class::<Mapped>()?;
    m.add_class::<Index>()?;
    m.add_class::<ItemSources>()?;
    m.add_class::<Shipped>()?;
    m.add_class::<Locator>()?;
    crate::py_image_store::register(m)?;
    m.add_function(wrap_pyfunction!(open_index, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(collate_records, m)?)?;
    m.add_function(wrap_pyfunction!(cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(files_exist, m)?)?;
    m.add_function(wrap_pyfunction!(length_grouped_into, m)?)?;
    m.add_function(wrap_pyfunction!(numpy_shuffle_into, m)?)?;
    m.add_function(wrap_pyfunction!(index_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    Ok(())
}
