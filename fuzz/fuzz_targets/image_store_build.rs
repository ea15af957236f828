//! The image store builder on arbitrary bytes as an archive (tar or zip, sniffed as `build` does),
//! optionally placed (folders stripped, a prefix added): the build refuses or succeeds, never panics, and
//! a store it writes agrees with its archive: every member's name, read back from the archive, looks
//! up to that very member, and reading it is never a stale-index error (the archive did not change).
//!
//! Input: one control byte (bits 0-1: folders to strip; bit 2: add a prefix), then the archive's bytes.
#![no_main]

use std::path::PathBuf;

use fusion_fast::image_store::{build_placed, ImageStore, Placement};
use fusion_fast::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("ff-fuzz-image-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("archive");
    let store_path = dir.join("store.ffimg");
    std::fs::write(&archive, data).unwrap();
    let placement = Placement {
        strip: usize::from(control & 3),
        prefix: if control & 4 != 0 { "p".into() } else { String::new() },
    };
    let placed: Vec<(PathBuf, Placement)> = vec![(archive, placement)];
    let Ok(report) = build_placed(&placed, &store_path) else {
        return;
    };
    let store = ImageStore::open(&store_path).expect("a store just built opens");
    store.verify().expect("a store just built verifies");
    assert_eq!(store.len() as u64, report.members);
    for i in 0..store.len() {
        let name = store.name(i).expect("every member's record parses as it did");
        assert_eq!(store.find(&name).unwrap(), Some(i), "lookup of member {i}");
        match store.read_at(i) {
            Ok(bytes) => {
                let loc = store.location(i).unwrap();
                assert_eq!(bytes.len() as u64, loc.size);
            }
            // Data that does not inflate or has a wrong CRC is found on read, not at build.
            Err(e) => assert_eq!(e.kind, ErrorKind::CorruptArchive, "{e}"),
        }
    }
});
