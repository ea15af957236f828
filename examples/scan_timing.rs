//! Times each stage of one scan: `cargo run --release --example scan_timing -- FILE [threads]`.
use std::time::Instant;

use fusion_fast::chunk_shape::chunk_shape;
use fusion_fast::scan::{scan, scan_sequential, Format, ScanOptions};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: scan_timing FILE [threads]");
    let threads: usize = std::env::args().nth(2).map_or(2, |t| t.parse().unwrap());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let t = Instant::now();
    let v = std::fs::read(&path).unwrap();
    println!("fs::read whole file {:.3}s", t.elapsed().as_secs_f64());
    drop(v);
    let t = Instant::now();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf).unwrap() > 0 {}
    println!("read 1 MiB at a time {:.3}s", t.elapsed().as_secs_f64());
    let file = std::fs::File::open(&path).unwrap();
    let t = Instant::now();
    let data = unsafe { memmap2::MmapOptions::new().populate().map(&file).unwrap() };
    println!("map+populate {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut sum = 0u64;
    for c in data.chunks(1 << 16) {
        sum = sum.wrapping_add(c[0] as u64);
    }
    println!("touch {:.3}s {sum}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let q = memchr::memchr_iter(b'"', &data).count();
    println!("memchr quotes {:.3}s ({q})", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let ok = simdutf8::basic::from_utf8(&data).is_ok();
    println!("utf8 {:.3}s {ok}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let chunk = ScanOptions::default().chunk_size;
    let mut commas = 0usize;
    for start in (0..data.len()).step_by(chunk) {
        let shape = chunk_shape(&data, start, (start + chunk).min(data.len()));
        commas += shape.hyp[0].first_comma.len();
    }
    println!(
        "chunk shapes, 1 thread {:.3}s ({commas})",
        t.elapsed().as_secs_f64()
    );
    let format = Format::from_path(path.as_ref());
    let t = Instant::now();
    let runs = scan(&data, format, &ScanOptions::default()).unwrap();
    println!(
        "scan {threads} threads {:.3}s ({} runs)",
        t.elapsed().as_secs_f64(),
        runs.len()
    );
    if std::env::var_os("SEQ").is_some() {
        let t = Instant::now();
        let r = scan_sequential(&data, format).unwrap();
        println!("sequential {:.3}s ({})", t.elapsed().as_secs_f64(), r.len());
    }
}
