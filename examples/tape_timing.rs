//! Times the tape encoder on a JSON Lines file: `cargo run --release --example tape_timing -- FILE`.
use std::time::Instant;

use fusion_fast::tape::Encoder;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: tape_timing FILE.jsonl");
    let data = std::fs::read(&path).unwrap();
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let mut enc = Encoder::default();
    let mut out = Vec::new();
    let rounds: usize = std::env::args().nth(2).map_or(5, |r| r.parse().unwrap());
    for round in 0..rounds {
        let t = Instant::now();
        let mut copied = Vec::new();
        for l in &lines {
            copied.clear();
            copied.extend_from_slice(l);
        }
        let copy = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut tape_bytes = 0;
        for l in &lines {
            out.clear();
            enc.encode(l, &mut out).unwrap();
            tape_bytes += out.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {} records, {:.1} MB: encode {:.0} MB/s ({:.2} us/record), copy {:.0} MB/s; tape/json {:.2}",
            lines.len(),
            bytes as f64 / 1e6,
            bytes as f64 / s / 1e6,
            s / lines.len() as f64 * 1e6,
            bytes as f64 / copy / 1e6,
            tape_bytes as f64 / bytes as f64
        );
    }
}
