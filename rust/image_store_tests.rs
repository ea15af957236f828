//! Archives are built here with the `tar` and `zip` crates (independent writers), then read back
//! through the store and compared byte for byte with what was written.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::test_support::xorshift;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut next = xorshift(seed.wrapping_mul(0x9e37_79b9) | 1);
    (0..len).map(|_| next() as u8).collect()
}

fn tar_bytes(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip_bytes(entries: &[(&str, Vec<u8>, bool)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, deflate) in entries {
        let method = if *deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read_all(store: &ImageStore, name: &str) -> Vec<u8> {
    store
        .read(name.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("{name} missing"))
        .into_owned()
}

#[test]
fn tar_members_read_back_exactly_with_long_gnu_names() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("deep/{}/img.jpg", "d".repeat(150));
    let entries = vec![
        ("a.jpg", payload(1, 1000)),
        ("sub/b.png", payload(2, 512)),
        ("empty.bin", Vec::new()),
        (long.as_str(), payload(3, 70_000)),
    ];
    let t = write(dir.path(), "x.tar", &tar_bytes(&entries));
    let store_path = dir.path().join("s.ffimg");
    let report = build(&[t], &store_path).unwrap();
    assert_eq!(report.members, 4);
    let store = ImageStore::open(&store_path).unwrap();
    assert_eq!(store.len(), 4);
    for (name, data) in &entries {
        assert_eq!(&read_all(&store, name), data, "{name}");
    }
    // Stored bytes are borrowed from the archive mapping, not copied.
    assert!(matches!(
        store.read(b"a.jpg").unwrap().unwrap(),
        Cow::Borrowed(_)
    ));
    assert!(store.read(b"nope.jpg").unwrap().is_none());
    // Lookups are normalised like the archive's paths.
    assert_eq!(read_all(&store, "./sub//b.png"), entries[1].1);
}

#[test]
fn tar_ustar_prefix_and_pax_path_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let prefixed = format!("{}/{}.jpg", "p".repeat(120), "n".repeat(60));
    let data1 = payload(4, 3000);
    let mut h = tar::Header::new_ustar();
    h.set_path(&prefixed).unwrap();
    h.set_size(data1.len() as u64);
    h.set_cksum();
    b.append(&h, data1.as_slice()).unwrap();
    // A PAX header whose path overrides the (short, different) header name.
    let pax_name = format!("pax/{}/ü.jpg", "q".repeat(300));
    let data2 = payload(5, 777);
    b.append_pax_extensions([("path", pax_name.as_bytes())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("short-name.jpg").unwrap();
    h.set_size(data2.len() as u64);
    h.set_cksum();
    b.append(&h, data2.as_slice()).unwrap();
    // A global PAX header is skipped.
    let mut g = tar::Header::new_ustar();
    let gdata = b"20 comment=ignored\n";
    g.set_entry_type(tar::EntryType::XGlobalHeader);
    g.set_size(gdata.len() as u64);
    g.set_cksum();
    b.append(&g, &gdata[..]).unwrap();
    // PAX size overrides the header's size field.
    let data3 = payload(6, 1500);
    b.append_pax_extensions([("size", b"1500".as_slice())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("sized.jpg").unwrap();
    h.set_size(0);
    h.set_cksum();
    let mut raw = b.into_inner().unwrap();
    raw.truncate(raw.len() - 1024); // the end-of-archive blocks `tar` wrote
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&data3);
    raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
    let t = write(dir.path(), "y.tar", &raw);
    let sp = dir.path().join("s");
    let report = build(&[t], &sp).unwrap();
    assert_eq!(report.members, 3, "{report:?}");
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, &prefixed), data1);
    assert_eq!(read_all(&store, &pax_name), data2);
    assert!(store.read(b"short-name.jpg").unwrap().is_none());
    assert_eq!(read_all(&store, "sized.jpg"), data3);
}

#[test]
fn zip_stored_and_deflated_members_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let text = b"compressible ".repeat(5000);
    let entries = vec![
        ("s/stored.jpg", payload(7, 4000), false),
        ("d/deflated.txt", text.clone(), true),
        ("d/random.bin", payload(8, 9000), true),
        ("empty", Vec::new(), true),
    ];
    let z = write(dir.path(), "a.zip", &zip_bytes(&entries));
    let sp = dir.path().join("s");
    build(&[z], &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(store.len(), 4);
    for (name, data, _) in &entries {
        assert_eq!(&read_all(&store, name), data, "{name}");
    }
    let i = store.find(b"d/deflated.txt").unwrap().unwrap();
    assert_eq!(store.location(i).unwrap().method, DEFLATED);
    assert!(store.location(i).unwrap().stored_size < text.len() as u64 / 10);
}

#[test]
fn corrupted_deflated_data_is_a_crc_or_inflate_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"abcdefgh".repeat(10_000);
    let mut raw = zip_bytes(&[("m.txt", data, true)]);
    let sp = dir.path().join("s");
    let z = write(dir.path(), "a.zip", &raw);
    build(std::slice::from_ref(&z), &sp).unwrap();
    let loc = ImageStore::open(&sp).unwrap().location(0).unwrap();
    let at = loc.data_offset as usize + loc.stored_size as usize / 2;
    raw[at] ^= 0x55;
    // Same size; keep the mtime the store recorded so only the content differs.
    let mtime = std::fs::metadata(&z).unwrap().modified().unwrap();
    std::fs::write(&z, &raw).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&z)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let store = ImageStore::open(&sp).unwrap();
    let err = store.read(b"m.txt").unwrap_err();
    assert_eq!(err.kind, ErrorKind::CorruptArchive, "{err}");
    assert!(err.to_string().contains("m.txt"), "{err}");
}

#[test]
fn first_archive_wins_for_duplicate_paths() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(
        dir.path(),
        "1.tar",
        &tar_bytes(&[("dup.jpg", b"first".to_vec()), ("only1.jpg", b"1".to_vec())]),
    );
    let second = write(
        dir.path(),
        "2.zip",
        &zip_bytes(&[
            ("dup.jpg", b"second".to_vec(), false),
            ("only2.jpg", b"2".to_vec(), true),
        ]),
    );
    let sp = dir.path().join("s");
    let report = build(&[first.clone(), second.clone()], &sp).unwrap();
    assert_eq!(report.members, 3);
    assert_eq!(
        report.duplicates,
        vec![Duplicate {
            member: "dup.jpg".into(),
            kept: first.clone(),
            ignored: second.clone(),
        }]
    );
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, "dup.jpg"), b"first");
    build(&[second, first], &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, "dup.jpg"), b"second");
    assert_eq!(read_all(&store, "only1.jpg"), b"1");
}

#[test]
fn links_devices_and_escaping_paths_are_refused_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "link.jpg", "/etc/passwd").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_path("dev").unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let mut raw = b.into_inner().unwrap();
    raw.truncate(raw.len() - 1024);
    // `tar` refuses to write `..`; patch a header by hand.
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.as_old_mut().name[..13].copy_from_slice(b"../escape.jpg");
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[b'x'; 512]);
    raw.extend_from_slice(&[0; 1024]);
    let t = write(dir.path(), "h.tar", &raw);
    let sp = dir.path().join("s");
    let report = build(&[t], &sp).unwrap();
    assert_eq!(report.members, 0);
    let reasons: Vec<_> = report
        .refused
        .iter()
        .map(|r| (r.member.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("link.jpg", "a link"),
            ("dev", "a device or fifo"),
            ("../escape.jpg", "absolute path or '..' component")
        ]
    );
    let store = ImageStore::open(&sp).unwrap();
    assert!(store.read(b"link.jpg").unwrap().is_none());
    assert!(store.read(b"../escape.jpg").unwrap().is_none());
}

#[test]
fn truncated_archives_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tar_raw = tar_bytes(&[("a.jpg", payload(9, 5000)), ("b.jpg", payload(10, 5000))]);
    let zip_raw = zip_bytes(&[("a.jpg", payload(9, 5000), false)]);
    let sp = dir.path().join("s");
    for cut in [100, 512, 3000, 6000, tar_raw.len() - 1024] {
        let t = write(dir.path(), "t.tar", &tar_raw[..cut]);
        let err = build(std::slice::from_ref(&t), &sp).unwrap_err();
        assert_eq!(err.kind, ErrorKind::CorruptArchive, "cut {cut}: {err}");
        assert_eq!(err.path.as_deref(), Some(t.as_path()));
    }
    for cut in [10, 2000, zip_raw.len() - 10] {
        let z = write(dir.path(), "z.zip", &zip_raw[..cut]);
        let err = build(&[z], &sp).unwrap_err();
        assert_eq!(err.kind, ErrorKind::CorruptArchive, "cut {cut}: {err}");
    }
    assert!(!sp.exists(), "a failed build must leave no store");
    let g = write(dir.path(), "g.tar.gz", &[0x1f, 0x8b, 8, 0, 0, 0]);
    let err = build(&[g], &sp).unwrap_err();
    assert!(err.message.contains("gzip"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn hostile_archives_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let tar_raw = tar_bytes(&[("a.jpg", payload(11, 700)), ("b/c.jpg", payload(12, 1300))]);
    let zip_raw = zip_bytes(&[
        ("a.jpg", payload(11, 700), false),
        ("b/c.txt", b"zz".repeat(900), true),
    ]);
    let sp = dir.path().join("s");
    let mut next = xorshift(42);
    for round in 0..400 {
        let mut raw = if round % 2 == 0 {
            tar_raw.clone()
        } else {
            zip_raw.clone()
        };
        for _ in 0..1 + next() % 8 {
            let at = (next() % raw.len() as u64) as usize;
            raw[at] = next() as u8;
        }
        let p = write(dir.path(), &format!("f{}", round % 2), &raw);
        if build(&[p], &sp).is_ok() {
            let store = ImageStore::open(&sp).unwrap();
            for i in 0..store.len() {
                let _ = store.read_at(i);
            }
        }
    }
}

#[test]
fn corrupt_store_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(dir.path(), "x.tar", &tar_bytes(&[("a", b"1".to_vec())]));
    let sp = dir.path().join("s");
    build(&[t], &sp).unwrap();
    let good = std::fs::read(&sp).unwrap();
    let bad = dir.path().join("bad");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (good[..100].to_vec(), "shorter than its header"),
        (good[..good.len() - 1].to_vec(), "truncated"),
        (
            {
                let mut g = good.clone();
                g[0] = b'X';
                g
            },
            "bad magic",
        ),
        (
            {
                let mut g = good.clone();
                g[20] ^= 1;
                g
            },
            "header checksum",
        ),
        (
            {
                let mut g = good.clone();
                let l = g.len();
                g[l - 70] ^= 1;
                g
            },
            "checksum mismatch",
        ),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        let err = ImageStore::open(&bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::CorruptIndex, "{expected}: {err}");
        assert!(err.message.contains(expected), "{expected}: {err}");
    }
}

#[test]
fn many_archives_build_in_parallel_and_every_member_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut archives = Vec::new();
    let mut expected = Vec::new();
    for a in 0..8 {
        let entries: Vec<(String, Vec<u8>)> = (0..200)
            .map(|m| {
                (
                    format!("arch{a}/img{m:04}.jpg"),
                    payload(a * 1000 + m, (m % 37) as usize * 13),
                )
            })
            .collect();
        let refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect();
        archives.push(write(dir.path(), &format!("{a}.tar"), &tar_bytes(&refs)));
        expected.extend(entries);
    }
    let sp = dir.path().join("s");
    assert_eq!(build(&archives, &sp).unwrap().members, 1600);
    let store = ImageStore::open(&sp).unwrap();
    store.verify().unwrap();
    for (name, data) in &expected {
        assert_eq!(&read_all(&store, name), data);
    }
    let mut names: Vec<_> = store
        .archive_order()
        .into_iter()
        .map(|i| store.name(i).unwrap())
        .collect();
    let in_order: Vec<_> = expected
        .iter()
        .map(|(n, _)| n.as_bytes().to_vec())
        .collect();
    assert_eq!(names, in_order, "archive order");
    names.sort();
    let mut want: Vec<_> = expected
        .iter()
        .map(|(n, _)| n.as_bytes().to_vec())
        .collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn a_changed_archive_is_a_stale_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(dir.path(), "x.tar", &tar_bytes(&[("a", b"1".to_vec())]));
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    std::fs::write(&t, tar_bytes(&[("a", b"12".to_vec())])).unwrap();
    let err = ImageStore::open(&sp).unwrap().read(b"a").unwrap_err();
    assert_eq!(err.kind, ErrorKind::StaleIndex, "{err}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_tars_and_split_parts_convert_to_plain_tars() {
    let dir = tempfile::tempdir().unwrap();
    let entries = vec![("a.jpg", payload(20, 50_000)), ("b/c.jpg", payload(21, 3))];
    let plain = tar_bytes(&entries);
    // Two gzip members back to back, the file then split in three parts.
    let (h1, h2) = plain.split_at(7000);
    let gz = [gzip(h1), gzip(h2)].concat();
    let cuts = [0, 100, 20_000, gz.len()];
    let parts: Vec<PathBuf> = (0..3)
        .map(|k| {
            write(
                dir.path(),
                &format!("x.tar.gz.{k:02}"),
                &gz[cuts[k]..cuts[k + 1]],
            )
        })
        .collect();
    let shard = dir.path().join("x.tar");
    assert_eq!(convert_to_tar(&parts, &shard).unwrap(), plain.len() as u64);
    assert_eq!(std::fs::read(&shard).unwrap(), plain);
    // Split plain tar parts are concatenated.
    let tparts = vec![
        write(dir.path(), "y.tar.00", &plain[..1000]),
        write(dir.path(), "y.tar.01", &plain[1000..]),
    ];
    let shard2 = dir.path().join("y.tar");
    convert_all(&[(tparts, shard2.clone())]).unwrap();
    assert_eq!(std::fs::read(&shard2).unwrap(), plain);
    let sp = dir.path().join("s");
    build(&[shard], &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    for (name, data) in &entries {
        assert_eq!(&read_all(&store, name), data);
    }
}

#[test]
fn corrupt_or_truncated_gzip_tars_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tar_bytes(&[("a.jpg", payload(22, 30_000))]);
    let gz = gzip(&plain);
    let shard = dir.path().join("out.tar");
    let mut bad_crc = gz.clone();
    let l = bad_crc.len();
    bad_crc[l - 8] ^= 1; // the trailer's CRC-32
    let mut bad_len = gz.clone();
    bad_len[l - 1] ^= 1; // the trailer's length
    let tar_cut_inside_valid_gzip = gzip(&plain[..plain.len() - 1024]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", gz[..gz.len() / 2].to_vec()),
        ("no trailer", gz[..gz.len() - 8].to_vec()),
        ("bad crc", bad_crc),
        ("bad length", bad_len),
        (
            "trailing garbage",
            [gz.clone(), b"garbage".to_vec()].concat(),
        ),
        ("tar cut short", tar_cut_inside_valid_gzip),
    ];
    for (what, bytes) in cases {
        let p = write(dir.path(), "in.tar.gz", &bytes);
        let err = convert_to_tar(&[p], &shard).unwrap_err();
        assert_eq!(err.kind, ErrorKind::CorruptArchive, "{what}: {err}");
        assert!(!shard.exists(), "{what}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["in.tar.gz".to_string()], "{what}");
    }
}

/// Names of the files in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_gzip_bomb_is_refused_while_it_streams_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB of zeros: a few KiB compressed.
    let bomb = gzip(&tar_bytes(&[("zeros.jpg", vec![0u8; 16 << 20])]));
    assert!(bomb.len() < 100_000);
    let p = write(dir.path(), "bomb.tar.gz", &bomb);
    let shard = dir.path().join("out.tar");
    let opts = ConvertOptions {
        max_bytes: Some(3 << 20),
        ..Default::default()
    };
    let err = convert_to_tar_with(std::slice::from_ref(&p), &shard, &opts).unwrap_err();
    assert!(err.message.starts_with(LIMIT_PREFIX), "{err}");
    assert!(
        err.message
            .contains(&format!("produced {} bytes", 4u64 << 20)),
        "{err}"
    );
    assert!(
        err.message
            .contains(&format!("limit of {} bytes", 3u64 << 20)),
        "{err}"
    );
    assert_eq!(err.path.as_deref(), Some(p.as_path()));
    assert_eq!(names_in(dir.path()), vec!["bomb.tar.gz".to_string()]);
    // The same archive within its limit converts whole.
    let tar_len = tar_bytes(&[("zeros.jpg", vec![0u8; 16 << 20])]).len() as u64;
    let opts = ConvertOptions {
        max_bytes: Some(tar_len),
        ..Default::default()
    };
    assert_eq!(convert_to_tar_with(&[p], &shard, &opts).unwrap(), tar_len);
}

#[test]
fn a_space_budget_is_taken_all_or_nothing_and_given_back() {
    let budget = SpaceBudget::new(10);
    assert!(budget.take(6));
    assert!(!budget.take(5), "6 + 5 is past the limit of 10");
    assert_eq!(budget.used(), 6);
    assert!(budget.take(4));
    assert!(!budget.take(1));
    budget.release(4);
    assert_eq!(budget.used(), 6);
    assert!(!budget.take(u64::MAX), "no overflow");
}

#[test]
fn conversions_sharing_a_budget_never_write_more_than_it_together() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_bytes(&[("zeros.jpg", vec![0u8; 6 << 20])]);
    let tar_len = tar.len() as u64;
    let gz = gzip(&tar);
    let jobs: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let p = write(dir.path(), &format!("{name}.tar.gz"), &gz);
            (vec![p], dir.path().join(format!("{name}.tar")))
        })
        .collect();
    // Room for one of them, not for both: each alone is within the budget.
    let budget = Arc::new(SpaceBudget::new(tar_len + (2 << 20)));
    let opts = ConvertOptions {
        budget: Some(budget.clone()),
        // Both run at once, chunk by chunk.
        chunk_delay: Some(Duration::from_millis(20)),
        ..Default::default()
    };
    let results: Vec<_> = jobs
        .par_iter()
        .map(|(parts, dest)| convert_to_tar_with(parts, dest, &opts))
        .collect();
    // Interleaved chunk by chunk, either one finishes and the other is refused, or both run out
    // part-way; never do both finish, and whatever finished fits the budget.
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "{results:?}");
    for err in &refused {
        assert!(err.message.starts_with(SPACE_PREFIX), "{err}");
        assert!(err.message.starts_with(LIMIT_PREFIX), "{err}");
        assert!(
            err.message
                .contains(&format!("budget of {} bytes", budget.limit())),
            "{err}"
        );
    }
    let finished = results
        .iter()
        .filter(|r| r.as_ref().ok() == Some(&tar_len))
        .count();
    assert_eq!(finished + refused.len(), 2, "{results:?}");
    // The refused ones gave their bytes back and left no file: what is used is what the others wrote.
    assert_eq!(budget.used(), finished as u64 * tar_len);
    let mut names = names_in(dir.path());
    names.retain(|n| !n.ends_with(".gz"));
    assert_eq!(names.len(), finished, "{names:?}");
}

#[test]
fn a_cancelled_conversion_stops_at_its_next_chunk_and_removes_its_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "slow.tar.gz",
        &gzip(&tar_bytes(&[("zeros.jpg", vec![0u8; 64 << 20])])),
    );
    let shard = dir.path().join("out.tar");
    let flag = Arc::new(AtomicBool::new(false));
    let opts = ConvertOptions {
        cancel: Some(flag.clone()),
        // 65 chunks, a minute in all: far longer than the test waits.
        chunk_delay: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let worker = std::thread::spawn({
        let (p, shard) = (p.clone(), shard.clone());
        move || convert_to_tar_with(&[p], &shard, &opts)
    });
    let tmp = temp_path(&shard);
    while !tmp.exists() {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    flag.store(true, Ordering::Relaxed);
    let err = worker.join().unwrap().unwrap_err();
    assert_eq!(err, convert_cancelled());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(names_in(dir.path()), vec!["slow.tar.gz".to_string()]);
}

#[test]
fn placements_strip_folders_and_add_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(
        dir.path(),
        "x.tar",
        &tar_bytes(&[
            ("top/train/a.jpg", b"a".to_vec()),
            ("top/b.jpg", b"b".to_vec()),
            ("shallow.jpg", b"s".to_vec()),
        ]),
    );
    let sp = dir.path().join("s");
    let placement = Placement {
        strip: 1,
        prefix: "COCO".into(),
    };
    let report = build_placed(&[(t.clone(), placement)], &sp).unwrap();
    assert_eq!(report.members, 2);
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].member, "shallow.jpg");
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, "COCO/train/a.jpg"), b"a");
    assert_eq!(read_all(&store, "COCO/b.jpg"), b"b");
    assert!(store.read(b"top/b.jpg").unwrap().is_none());
    let escaping = Placement {
        strip: 0,
        prefix: "../up".into(),
    };
    assert!(build_placed(&[(t, escaping)], &sp).is_err());
}

#[test]
fn zip64_members_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let data = payload(30, 5000);
    for (name, method) in [
        ("big/stored.jpg", zip::CompressionMethod::Stored),
        ("big/deflated.jpg", zip::CompressionMethod::Deflated),
    ] {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(true);
        z.start_file(name, opts).unwrap();
        z.write_all(&data).unwrap();
    }
    let raw = z.finish().unwrap().into_inner();
    // The writer marks the members zip64 (extra field id 1): the walker must read their sizes there.
    assert!(raw
        .windows(4)
        .any(|w| w == [1, 0, 16, 0] || w == [1, 0, 8, 0] || w == [1, 0, 24, 0]));
    let p = write(dir.path(), "z64.zip", &raw);
    let sp = dir.path().join("s");
    build(&[p], &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, "big/stored.jpg"), data);
    assert_eq!(read_all(&store, "big/deflated.jpg"), data);
}

#[test]
fn zip64_end_of_central_directory_with_more_than_65535_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let n = 70_000u32;
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..n {
        z.start_file(format!("m/{i}"), opts).unwrap();
        z.write_all(&i.to_le_bytes()).unwrap();
    }
    let raw = z.finish().unwrap().into_inner();
    assert!(raw.windows(4).any(|w| w == 0x0606_4b50u32.to_le_bytes()));
    let p = write(dir.path(), "many.zip", &raw);
    let sp = dir.path().join("s");
    assert_eq!(build(&[p], &sp).unwrap().members, u64::from(n));
    let store = ImageStore::open(&sp).unwrap();
    for i in [0u32, 65_535, 65_536, n - 1] {
        assert_eq!(read_all(&store, &format!("m/{i}")), i.to_le_bytes());
    }
}

/// Rewrites `path` with `bytes` (same length), keeping the mtime the store recorded, so that only the
/// content differs from what was indexed.
fn rewrite_keeping_mtime(path: &Path, bytes: &[u8]) {
    assert_eq!(std::fs::metadata(path).unwrap().len(), bytes.len() as u64);
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Recomputes a tar header's checksum after an edit.
fn fix_tar_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn paths_sharing_a_hash_all_resolve_and_a_colliding_missing_path_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let tar_entries: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("t/{i}.jpg"), payload(100 + i, 10 + i as usize)))
        .chain([("dup.jpg".to_string(), b"from tar".to_vec())])
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = tar_entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let t = write(dir.path(), "a.tar", &tar_bytes(&refs));
    let zip_entries: Vec<(String, Vec<u8>, bool)> = (0..10)
        .map(|i| {
            (
                format!("z/{i}.jpg"),
                payload(200 + i, 20 + i as usize),
                i % 2 == 0,
            )
        })
        .chain([("dup.jpg".to_string(), b"from zip".to_vec(), false)])
        .collect();
    let zrefs: Vec<(&str, Vec<u8>, bool)> = zip_entries
        .iter()
        .map(|(n, d, c)| (n.as_str(), d.clone(), *c))
        .collect();
    let z = write(dir.path(), "b.zip", &zip_bytes(&zrefs));
    let sp = dir.path().join("s");
    let placed = |order: [&PathBuf; 2]| -> Vec<(PathBuf, Placement)> {
        order
            .iter()
            .map(|p| ((*p).clone(), Placement::default()))
            .collect()
    };
    for bits in [1, 2, 3] {
        let report = build_hashed(&placed([&t, &z]), &sp, bits).unwrap();
        assert_eq!(report.members, 41, "{bits} bits");
        assert_eq!(
            report.duplicates,
            vec![Duplicate {
                member: "dup.jpg".into(),
                kept: t.clone(),
                ignored: z.clone(),
            }]
        );
        let store = ImageStore::open(&sp).unwrap();
        // 41 members in at most 8 hashes: every hash is shared.
        let hashes: std::collections::BTreeSet<u64> =
            (0..store.len()).map(|i| store.hash(i)).collect();
        assert!(hashes.len() <= 1 << bits, "{hashes:?}");
        for (name, data) in &tar_entries {
            assert_eq!(&read_all(&store, name), data, "{name} with {bits} bits");
        }
        for (name, data, _) in &zip_entries[..10] {
            assert_eq!(&read_all(&store, name), data, "{name} with {bits} bits");
        }
        for missing in ["t/30.jpg", "z/x.jpg", "dup.png", "t"] {
            assert!(
                store.read(missing.as_bytes()).unwrap().is_none(),
                "{missing}"
            );
            assert!(
                store.find(missing.as_bytes()).unwrap().is_none(),
                "{missing}"
            );
        }
        let mut names: Vec<Vec<u8>> = (0..store.len()).map(|i| store.name(i).unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 41);
    }
    build_hashed(&placed([&z, &t]), &sp, 2).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, "dup.jpg"), b"from zip");
}

#[test]
fn swapped_member_names_with_the_same_size_and_mtime_are_stale_not_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (payload(40, 700), payload(41, 700));
    let mut raw = tar_bytes(&[("a.jpg", a.clone()), ("b.jpg", b.clone())]);
    let t = write(dir.path(), "x.tar", &raw);
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    // The two headers trade names: a.jpg now holds b's bytes and the other way round.
    let second = 512 + 1024;
    raw[0] = b'b';
    raw[second] = b'a';
    fix_tar_checksum(&mut raw[..512]);
    fix_tar_checksum(&mut raw[second..second + 512]);
    rewrite_keeping_mtime(&t, &raw);
    let store = ImageStore::open(&sp).unwrap();
    for name in ["a.jpg", "b.jpg"] {
        let err = store.read(name.as_bytes()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::StaleIndex, "{name}: {err}");
        assert!(err.message.contains("rebuild"), "{err}");
        assert_eq!(err.path.as_deref(), Some(t.as_path()));
    }
}

#[test]
fn long_names_of_every_kind_are_checked_against_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let gnu_long = format!("gnu/{}/a.jpg", "g".repeat(150));
    let ustar = format!("{}/{}.jpg", "u".repeat(120), "n".repeat(60));
    let pax_long = format!("pax/{}/b.jpg", "p".repeat(300));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    b.append_data(&mut h, &gnu_long, &b"gnu!!"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path(&ustar).unwrap();
    h.set_size(5);
    h.set_cksum();
    b.append(&h, &b"ustar"[..]).unwrap();
    b.append_pax_extensions([("path", pax_long.as_bytes())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("short.jpg").unwrap();
    h.set_size(5);
    h.set_cksum();
    b.append(&h, &b"pax!!"[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let t = write(dir.path(), "l.tar", &raw);
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_all(&store, &gnu_long), b"gnu!!");
    assert_eq!(read_all(&store, &ustar), b"ustar");
    assert_eq!(read_all(&store, &pax_long), b"pax!!");
    // One byte of each name changed in place (the GNU and PAX names live in data blocks, which have
    // no checksum; the ustar prefix is in the header, whose checksum is fixed up).
    let find = |needle: &[u8]| raw.windows(needle.len()).position(|w| w == needle).unwrap();
    let cases: Vec<(&str, usize, bool)> = vec![
        (gnu_long.as_str(), find(b"gnu/ggg"), false),
        (ustar.as_str(), find(b"uuuu"), true),
        (pax_long.as_str(), find(b"pax/ppp"), false),
    ];
    for (name, at, in_header) in cases {
        let mut changed = raw.clone();
        changed[at] = b'X';
        if in_header {
            let start = at / 512 * 512;
            fix_tar_checksum(&mut changed[start..start + 512]);
        }
        rewrite_keeping_mtime(&t, &changed);
        let store = ImageStore::open(&sp).unwrap();
        let err = store.read(name.as_bytes()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::StaleIndex, "{name}: {err}");
        rewrite_keeping_mtime(&t, &raw);
    }
    // A zip's central directory name, changed the same way.
    let zraw = zip_bytes(&[("zz/name.jpg", b"zip".to_vec(), false)]);
    let z = write(dir.path(), "n.zip", &zraw);
    build(std::slice::from_ref(&z), &sp).unwrap();
    let cd = zraw
        .windows(4)
        .position(|w| w == 0x0201_4b50u32.to_le_bytes())
        .unwrap();
    let mut changed = zraw.clone();
    changed[cd + 46] = b'Y';
    rewrite_keeping_mtime(&z, &changed);
    let err = ImageStore::open(&sp)
        .unwrap()
        .read(b"zz/name.jpg")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::StaleIndex, "{err}");
}

#[test]
fn members_past_4_gib_are_found_and_borrowed_without_reading_them() {
    // A sparse tar: a 5 GiB member (never written: the file has a hole there) and a small one after it.
    let dir = tempfile::tempdir().unwrap();
    let big: u64 = 5 << 30;
    let mut h = tar::Header::new_gnu();
    h.set_path("big.bin").unwrap();
    h.set_size(big);
    h.set_cksum();
    let mut small = tar::Header::new_gnu();
    small.set_path("after.jpg").unwrap();
    small.set_size(3);
    small.set_cksum();
    let p = dir.path().join("sparse.tar");
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(h.as_bytes()).unwrap();
        f.seek(SeekFrom::Start(512 + big)).unwrap();
        f.write_all(small.as_bytes()).unwrap();
        f.write_all(b"abc").unwrap();
        f.write_all(&[0; 509 + 1024]).unwrap();
    }
    let sp = dir.path().join("s");
    assert_eq!(build(std::slice::from_ref(&p), &sp).unwrap().members, 2);
    let store = ImageStore::open(&sp).unwrap();
    let (_, loc) = store.lookup(b"big.bin").unwrap().unwrap();
    assert_eq!(
        (loc.data_offset, loc.size, loc.stored_size),
        (512, big, big)
    );
    match store.read(b"big.bin").unwrap().unwrap() {
        Cow::Borrowed(b) => assert_eq!(b.len() as u64, big),
        Cow::Owned(_) => panic!("a tar member must be borrowed"),
    }
    let (_, loc) = store.lookup(b"after.jpg").unwrap().unwrap();
    assert_eq!(loc.data_offset, 512 + big + 512);
    assert_eq!(read_all(&store, "after.jpg"), b"abc");
}

/// Recomputes the body and header checksums of a store after an edit, as anyone can.
fn reseal(b: &mut [u8]) {
    let body = xxh3_64(&b[HEADER_LEN..]);
    b[80..88].copy_from_slice(&body.to_le_bytes());
    let head = xxh3_64(&b[..HEADER_LEN - 8]);
    b[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&head.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn crafted_store_headers_and_tables_are_corrupt_index_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(
        dir.path(),
        "x.tar",
        &tar_bytes(&[("a", b"1".to_vec()), ("b", b"2".to_vec())]),
    );
    let z = write(
        dir.path(),
        "y.zip",
        &zip_bytes(&[("c", b"3".to_vec(), true)]),
    );
    let sp = dir.path().join("s");
    build(&[t, z], &sp).unwrap();
    let good = std::fs::read(&sp).unwrap();
    let (table_off, table_len) = (get64(&good, 32) as usize, get64(&good, 40));
    let (hash_off, loc_off) = (get64(&good, 48), get64(&good, 56));
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|b| put32(b, 8, 1)), "format version 1"),
        (Box::new(|b| put32(b, 12, 160)), "header checksum"),
        (Box::new(|b| put64(b, 16, 1000)), "outside the file"),
        (Box::new(|b| put64(b, 16, u64::MAX / 4)), "outside the file"),
        (
            Box::new(|b| put64(b, 24, 3)),
            "3 archives numbered with 1 bits",
        ),
        (
            Box::new(|b| put64(b, 24, 1)),
            "bytes after its last archive",
        ),
        (Box::new(|b| put64(b, 32, 0)), "overlaps"),
        (
            Box::new(move |b| put64(b, 40, table_len + 4096)),
            "overlaps",
        ),
        (Box::new(move |b| put64(b, 48, hash_off + 8)), "misaligned"),
        (Box::new(move |b| put64(b, 48, loc_off)), "overlaps"),
        (Box::new(move |b| put64(b, 56, hash_off)), "overlaps"),
        (Box::new(|b| put64(b, 56, u64::MAX - 7)), "outside the file"),
        (Box::new(|b| put32(b, 64, 0)), "numbered with 0 bits"),
        (Box::new(|b| put32(b, 64, 33)), "numbered with 33 bits"),
        (Box::new(|b| put32(b, 68, 0)), "hash of 0 bits"),
        (Box::new(|b| put32(b, 68, 65)), "hash of 65 bits"),
        (Box::new(|b| put64(b, 72, 1 << 40)), "truncated?"),
        (
            Box::new(move |b| b[table_off] = 9),
            "unknown archive kind 9",
        ),
        (
            Box::new(move |b| put32(b, table_off + 1, u32::MAX)),
            "archive table is truncated",
        ),
    ];
    let bad = dir.path().join("bad");
    for (k, (edit, expected)) in cases.iter().enumerate() {
        let mut bytes = good.clone();
        edit(&mut bytes);
        reseal(&mut bytes);
        std::fs::write(&bad, &bytes).unwrap();
        let err = ImageStore::open(&bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::CorruptIndex, "case {k}: {err}");
        assert!(
            err.message.contains(expected),
            "case {k}: {expected:?} not in {err}"
        );
    }
    let err = {
        let mut bytes = good.clone();
        put32(&mut bytes, 8, 1);
        std::fs::write(&bad, &bytes).unwrap();
        ImageStore::open(&bad).unwrap_err()
    };
    assert!(err.message.contains("rebuild"), "{err}");

    // Columns whose values are wrong: errors on use, never a panic or another member's bytes.
    let members = get64(&good, 16) as usize;
    let mut bytes = good.clone();
    put64(&mut bytes, loc_off as usize, 1 << 63 | 7); // archive 1 (the zip), not at an entry
    put64(&mut bytes, loc_off as usize + 8, u64::MAX >> 1); // archive 0, offset past its end
    reseal(&mut bytes);
    std::fs::write(&bad, &bytes).unwrap();
    let store = ImageStore::open(&bad).unwrap();
    for i in 0..2 {
        let err = store.read_at(i).unwrap_err();
        assert_eq!(err.kind, ErrorKind::StaleIndex, "{err}");
    }
    for i in 2..members {
        store.read_at(i).unwrap();
    }
    // Swapped hashes: the column is no longer sorted, which `verify` reports.
    let mut bytes = good.clone();
    let h = hash_off as usize;
    let (first, second) = (get64(&bytes, h), get64(&bytes, h + 8));
    put64(&mut bytes, h, second);
    put64(&mut bytes, h + 8, first);
    reseal(&mut bytes);
    std::fs::write(&bad, &bytes).unwrap();
    let store = ImageStore::open(&bad).unwrap();
    assert!(store.verify().unwrap_err().message.contains("not sorted"));
    for name in ["a", "b", "c"] {
        // Whatever the search finds, it never returns another member's bytes.
        match store.read(name.as_bytes()) {
            Ok(Some(b)) => assert_eq!(b.as_ref(), &[b'1' + (name.as_bytes()[0] - b'a')]),
            Ok(None) => {}
            Err(e) => assert_eq!(e.kind, ErrorKind::StaleIndex, "{e}"),
        }
    }
}

#[test]
fn a_locator_naming_a_missing_archive_is_a_corrupt_index_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(dir.path(), "x.tar", &tar_bytes(&[("a", b"1".to_vec())]));
    let sp = dir.path().join("s");
    build(&[t], &sp).unwrap();
    let mut bytes = std::fs::read(&sp).unwrap();
    let loc_off = get64(&bytes, 56) as usize;
    // One archive, numbered with one bit: archive 1 does not exist.
    put64(&mut bytes, loc_off, 1 << 63);
    reseal(&mut bytes);
    std::fs::write(&sp, &bytes).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    let err = store.read(b"a").unwrap_err();
    assert_eq!(err.kind, ErrorKind::CorruptIndex, "{err}");
    assert!(err.message.contains("does not exist"), "{err}");
    assert!(store.check_mapped(0).is_ok());
}

#[test]
fn the_store_holds_sixteen_bytes_per_member() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<(String, Vec<u8>)> = (0..5000)
        .map(|i| {
            (
                format!("a/rather/long/folder/name/{i:08}.jpg"),
                vec![i as u8],
            )
        })
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let t = write(dir.path(), "x.tar", &tar_bytes(&refs));
    let sp = dir.path().join("s");
    build(&[t], &sp).unwrap();
    let len = std::fs::metadata(&sp).unwrap().len();
    assert!(len <= 5000 * BYTES_PER_MEMBER + 512, "{len} bytes");
}

#[test]
fn the_hash_search_finds_the_first_position_whatever_the_spread_of_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000;
    let entries: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("{i}"), Vec::new())).collect();
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let t = write(dir.path(), "x.tar", &tar_bytes(&refs));
    let sp = dir.path().join("s");
    build(&[t], &sp).unwrap();
    let good = std::fs::read(&sp).unwrap();
    let hash_off = get64(&good, 48) as usize;
    let mut next = xorshift(7);
    type Spread = Box<dyn Fn(u64, &mut dyn FnMut() -> u64) -> u64>;
    let spreads: Vec<(&str, Spread)> = vec![
        ("uniform", Box::new(|_, r| r())),
        ("few values", Box::new(|_, r| r() % 5 * (u64::MAX / 5))),
        (
            "clustered",
            Box::new(|i, r| if i % 3 == 0 { r() } else { r() % 1000 }),
        ),
        ("skewed", Box::new(|_, r| r() >> (r() % 64))),
        ("all equal", Box::new(|_, _| 42)),
        ("top values", Box::new(|_, r| u64::MAX - r() % 10)),
    ];
    let bad = dir.path().join("crafted");
    for (what, spread) in &spreads {
        let mut hashes: Vec<u64> = (0..n as u64).map(|i| spread(i, &mut next)).collect();
        hashes.sort_unstable();
        let mut bytes = good.clone();
        for (i, h) in hashes.iter().enumerate() {
            put64(&mut bytes, hash_off + 8 * i, *h);
        }
        reseal(&mut bytes);
        std::fs::write(&bad, &bytes).unwrap();
        let store = ImageStore::open(&bad).unwrap();
        let mut probes: Vec<u64> = hashes.iter().step_by(7).copied().collect();
        probes.extend(hashes.iter().step_by(11).map(|h| h.wrapping_add(1)));
        probes.extend([0, 1, 41, 42, 43, u64::MAX, u64::MAX - 1]);
        probes.extend((0..300).map(|_| next()));
        for h in probes {
            let want = hashes.partition_point(|&x| x < h);
            assert_eq!(store.first_at_least(h), want, "{what}: hash {h}");
        }
    }
}

#[test]
fn a_member_behind_too_many_extension_records_is_a_corrupt_archive() {
    // Each read re-parses the records before a member, so their number is bounded.
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("s");
    for (records, ok) in [
        (MAX_EXTENSION_RECORDS, true),
        (MAX_EXTENSION_RECORDS + 1, false),
    ] {
        let mut b = tar::Builder::new(Vec::new());
        for _ in 0..records {
            let mut g = tar::Header::new_ustar();
            g.set_entry_type(tar::EntryType::XGlobalHeader);
            g.set_size(0);
            g.set_cksum();
            b.append(&g, &[][..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        b.append_data(&mut h, "m.jpg", &b"ok"[..]).unwrap();
        let t = write(dir.path(), "g.tar", &b.into_inner().unwrap());
        match build(std::slice::from_ref(&t), &sp) {
            Ok(_) => {
                assert!(ok, "{records} records");
                assert_eq!(read_all(&ImageStore::open(&sp).unwrap(), "m.jpg"), b"ok");
            }
            Err(e) => {
                assert!(!ok, "{records} records: {e}");
                assert_eq!(e.kind, ErrorKind::CorruptArchive);
                assert!(e.message.contains("extension records"), "{e}");
            }
        }
    }
}

fn read_member_all(store: &ImageStore, name: &str) -> Vec<u8> {
    store
        .read_member(name.as_bytes())
        .unwrap()
        .unwrap_or_else(|| panic!("{name} missing"))
        .1
        .into_owned()
}

#[test]
fn members_read_with_pread_equal_what_was_written_at_every_size() {
    // Sizes about the first window, past it, and past the most read with pread; behind GNU long
    // names, PAX records and many extension records.
    let dir = tempfile::tempdir().unwrap();
    let window = PREAD_WINDOW as usize;
    let sizes = [
        0,
        1,
        window - 1024,
        window - 512,
        window - 511,
        window,
        window + 1,
        5 * window,
        PREAD_MAX as usize + 1,
    ];
    let mut b = tar::Builder::new(Vec::new());
    let mut expected = Vec::new();
    for (k, &size) in sizes.iter().enumerate() {
        let data = payload(k as u64 + 7, size);
        let short = format!("s{k}.jpg");
        let long = format!("{}/l{k}.jpg", "d".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        b.append_data(&mut h, &short, data.as_slice()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        b.append_data(&mut h, &long, data.as_slice()).unwrap();
        // A PAX path record, then as many global records as a member may have before it.
        for _ in 0..MAX_EXTENSION_RECORDS - 1 {
            let mut g = tar::Header::new_ustar();
            g.set_entry_type(tar::EntryType::XGlobalHeader);
            g.set_size(0);
            g.set_cksum();
            b.append(&g, &[][..]).unwrap();
        }
        let pax_name = format!("pax/{}/p{k}.jpg", "p".repeat(120));
        b.append_pax_extensions([("path", pax_name.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(size as u64);
        h.set_path("placeholder.jpg").unwrap();
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
        expected.extend([
            (short, data.clone()),
            (long, data.clone()),
            (pax_name, data),
        ]);
    }
    let t = write(dir.path(), "w.tar", &b.into_inner().unwrap());
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    for (name, data) in &expected {
        assert!(read_member_all(&store, name) == *data, "{name}");
        assert!(read_all(&store, name) == *data, "{name}");
    }
    assert!(store.read_member(b"placeholder.jpg").unwrap().is_none());
    assert!(store.read_member(b"absent.jpg").unwrap().is_none());
}

#[test]
fn an_archive_cut_short_after_it_was_mapped_is_stale_for_pread_reads() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<(String, Vec<u8>)> = (0..64)
        .map(|k| (format!("m{k}.jpg"), payload(k, 3000)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let t = write(dir.path(), "c.tar", &tar_bytes(&refs));
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_member_all(&store, "m0.jpg"), entries[0].1);
    let len = std::fs::metadata(&t).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = store.read_member(b"m63.jpg").unwrap_err();
    assert_eq!(err.kind, ErrorKind::StaleIndex, "{err}");
}

#[test]
fn a_changed_archive_is_a_stale_error_for_pread_reads() {
    let dir = tempfile::tempdir().unwrap();
    let t = write(dir.path(), "x.tar", &tar_bytes(&[("a", b"1".to_vec())]));
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    std::fs::write(&t, tar_bytes(&[("a", b"12".to_vec())])).unwrap();
    let err = ImageStore::open(&sp)
        .unwrap()
        .read_member(b"a")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::StaleIndex, "{err}");
}

#[test]
fn after_a_page_cache_miss_reads_go_through_the_mapping_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<(String, Vec<u8>)> = (0..4)
        .map(|k| (format!("m{k}.jpg"), payload(k + 100, 2000)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let t = write(dir.path(), "c.tar", &tar_bytes(&refs));
    let sp = dir.path().join("s");
    build(std::slice::from_ref(&t), &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    assert_eq!(read_member_all(&store, "m0.jpg"), entries[0].1);
    let left = |s: &ImageStore| s.archives[0].mapped_reads.load(Ordering::Relaxed);
    assert_eq!(
        left(&store),
        0,
        "the archive was written just now: page-cached"
    );
    // As a miss leaves it: the next reads are counted down, each still the member's bytes.
    store.archives[0].mapped_reads.store(2, Ordering::Relaxed);
    for (k, want_left) in [(1, 1), (2, 0), (3, 0)] {
        assert_eq!(read_member_all(&store, &format!("m{k}.jpg")), entries[k].1);
        assert_eq!(left(&store), want_left);
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn inflating_never_goes_past_the_declared_size() {
    let data = b"zeros and more ".repeat(20_000);
    let raw = deflate(&data);
    let out = inflate_exactly(&raw, data.len() as u64).unwrap();
    assert_eq!(out, data);
    assert!(
        out.capacity() <= data.len(),
        "{} > {}",
        out.capacity(),
        data.len()
    );
    // A stream producing more than its header declares stops there.
    let err = inflate_exactly(&raw, 1000).unwrap_err();
    assert!(err.contains("more than the 1000 bytes"), "{err}");
    // A header declaring far more than the stream holds (a zip64 size of 2^40) allocates nothing of it.
    let err = inflate_exactly(&raw, 1 << 40).unwrap_err();
    assert!(
        err.contains(&format!(
            "inflates to {} bytes, its header says 1099511627776",
            data.len()
        )),
        "{err}"
    );
    assert!(inflate_exactly(&deflate(b""), 0).unwrap().is_empty());
    assert!(inflate_exactly(&raw[..raw.len() / 2], data.len() as u64).is_err());
}

#[test]
fn a_member_inflating_past_its_declared_size_is_a_corrupt_archive_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"abcdefgh".repeat(10_000);
    let mut raw = zip_bytes(&[("m/over.txt", data.clone(), true)]);
    // Declare only the first 1000 bytes (with their CRC-32) in both headers.
    let crc = crc32fast::hash(&data[..1000]);
    let central = raw.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    for (at_crc, at_size) in [(14, 22), (central + 16, central + 24)] {
        put32(&mut raw, at_crc, crc);
        put32(&mut raw, at_size, 1000);
    }
    let z = write(dir.path(), "a.zip", &raw);
    let sp = dir.path().join("s");
    build(&[z], &sp).unwrap();
    let store = ImageStore::open(&sp).unwrap();
    let err = store.read(b"m/over.txt").unwrap_err();
    assert_eq!(err.kind, ErrorKind::CorruptArchive, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("m/over.txt") && text.contains("a.zip"),
        "{text}"
    );
    assert!(text.contains("more than the 1000 bytes"), "{text}");
}
