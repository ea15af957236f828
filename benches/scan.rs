//! Criterion micro-benchmarks of the core: `cargo bench --bench scan`.
//! The document is a deterministic LLaVA-like JSON array of about 16 MiB.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fusion_fast::chunk_shape::chunk_shape;
use fusion_fast::scan::{scan, scan_sequential, Format, ScanOptions};
use fusion_fast::words::count_words;

fn document(target: usize, pretty: bool) -> Vec<u8> {
    let words = [
        "the",
        "image",
        "shows",
        "a",
        "cat",
        "on",
        "\\\"mat\\\"",
        "日本",
        "[1, 2]",
        "café",
    ];
    let mut out = String::from("[");
    let mut i = 0usize;
    while out.len() < target {
        let text: Vec<&str> = (0..40)
            .map(|k| words[(i * 7 + k * 3) % words.len()])
            .collect();
        let sep = if pretty { "\n    " } else { "" };
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{sep}{{\"id\": \"{i:09}\", \"image\": \"PixelProse/{i:09}.jpg\", \"conversations\": [\
             {{\"from\": \"human\", \"value\": \"<image>\\nDescribe this.\"}}, \
             {{\"from\": \"gpt\", \"value\": \"{}\"}}]}}",
            text.join(" ")
        ));
        i += 1;
    }
    out.push_str("\n]");
    out.into_bytes()
}

fn bench_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    for pretty in [false, true] {
        let data = document(16 << 20, pretty);
        let name = if pretty { "pretty" } else { "minified" };
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("sequential", name), &data, |b, d| {
            b.iter(|| scan_sequential(d, Format::JsonArray).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("parallel", name), &data, |b, d| {
            b.iter(|| scan(d, Format::JsonArray, &ScanOptions::default()).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("chunk_shape", name), &data, |b, d| {
            b.iter(|| chunk_shape(d, 0, d.len()))
        });
    }
    group.finish();
}

fn bench_words(c: &mut Criterion) {
    let text = "A cat\u{a0}sits on the mat, looking at\u{3000}the camera. ".repeat(1000);
    let mut group = c.benchmark_group("words");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("count_words", |b| b.iter(|| count_words(&text)));
    group.finish();
}

criterion_group!(benches, bench_scan, bench_words);
criterion_main!(benches);
