//! fusion-fast core: a parallel validating scanner for huge JSON / JSON Lines annotation files and the
//! memory-mapped offset index it writes. Pure Rust; the Python binding (`python.rs`, which registers
//! the classes and functions of the `py_*.rs` files) is behind the `python` feature.

pub mod chunk_shape;
pub mod columns;
pub mod compact;
pub mod error;
pub mod grouping;
pub mod image_store;
pub mod json;
pub mod lengths;
pub mod mapping;
pub mod paths;
pub mod record;
pub mod scan;
pub mod ship;
pub mod shuffle;
pub mod tape;
pub mod words;

pub use columns::Records;
pub use error::{Error, ErrorKind, Result};
pub use scan::{scan, scan_sequential, Format, ScanOptions};
pub mod index_file;
pub mod store;

pub use store::{open, JsonIndex, OpenOptions, Rebuild};

#[cfg(feature = "python")]
mod py_errors;
#[cfg(feature = "python")]
mod py_functions;
#[cfg(feature = "python")]
mod py_image_store;
#[cfg(feature = "python")]
mod py_index;
#[cfg(feature = "python")]
mod py_items;
#[cfg(feature = "python")]
mod py_ship;
#[cfg(feature = "python")]
mod py_sources;
#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod to_python;

/// Helpers shared by the unit tests.
#[cfg(test)]
mod test_support {
    /// A seeded xorshift64 generator: reproducible pseudo-random inputs without a dependency.
    pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }
}
