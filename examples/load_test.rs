//! HTTP load test of `spotter serve`: C concurrent keep-alive clients send text queries for S
//! seconds; reports errors, throughput, latency percentiles and the server's own split of each
//! query into text-tower, vector-index and record time. A benchmark, not a test: numbers go to
//! docs/benchmarks.md.
//!
//! cargo run --release --example load_test -- http://127.0.0.1:7878 64 60

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUERIES: &[&str] = &[
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "kitty",
    "automobile",
    "motorbike",
    "a mug of coffee",
    "woman",
    "man riding a bike",
    "red car",
    "cat, dog",
    "cat -dog",
    "2:cup, bottle",
    "\"coffee cup\"",
    "astronaut",
    "puppy",
    "lorry",
    "sofa",
    "smartphone",
    "television",
    "bike",
    "plane",
    "ship",
];

#[derive(Default)]
struct Totals {
    latencies_ms: Vec<f64>,
    errors: usize,
    text_ms: Vec<f64>,
    ann_ms: Vec<f64>,
    meta_ms: Vec<f64>,
    first_error: Option<String>,
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut status_line = String::new();
    stream
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7878".into());
    let clients: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (host, totals) = (host.clone(), totals.clone());
            std::thread::spawn(move || {
                let mut local = Totals::default();
                let mut stream = None;
                let mut i = c * 7;
                while Instant::now() < deadline {
                    if stream.is_none() {
                        match TcpStream::connect(&host) {
                            Ok(s) => stream = Some(BufReader::new(s)),
                            Err(e) => {
                                local.errors += 1;
                                local.first_error.get_or_insert(e.to_string());
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        }
                    }
                    let q = QUERIES[i % QUERIES.len()];
                    i += 13;
                    let path = format!("/api/search?q={}&k=20", encode(q));
                    let t = Instant::now();
                    let result = request(
                        stream.as_mut().unwrap_or_else(|| unreachable!()),
                        &host,
                        &path,
                    );
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    match result {
                        Ok((200, body)) => {
                            local.latencies_ms.push(ms);
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                                let t = &v["timings"];
                                let text = t["text_ms"].as_f64().unwrap_or(0.0);
                                if text > 0.0 {
                                    local.text_ms.push(text);
                                }
                                local.ann_ms.push(t["ann_ms"].as_f64().unwrap_or(0.0));
                                local.meta_ms.push(t["meta_ms"].as_f64().unwrap_or(0.0));
                            }
                        }
                        Ok((status, body)) => {
                            local.errors += 1;
                            local.first_error.get_or_insert(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body)
                            ));
                        }
                        Err(e) => {
                            local.errors += 1;
                            local.first_error.get_or_insert(e);
                            stream = None;
                        }
                    }
                }
                let mut all = totals.lock().unwrap_or_else(|p| p.into_inner());
                all.latencies_ms.extend(local.latencies_ms);
                all.text_ms.extend(local.text_ms);
                all.ann_ms.extend(local.ann_ms);
                all.meta_ms.extend(local.meta_ms);
                all.errors += local.errors;
                if all.first_error.is_none() {
                    all.first_error = local.first_error;
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = totals.lock().unwrap_or_else(|p| p.into_inner());
    all.latencies_ms.sort_by(f64::total_cmp);
    let n = all.latencies_ms.len();
    let report = serde_json::json!({
        "clients": clients, "seconds": elapsed, "requests": n, "errors": all.errors,
        "first_error": all.first_error, "requests_per_second": n as f64 / elapsed,
        "latency_ms": {"p50": percentile(&all.latencies_ms, 0.5), "p90": percentile(&all.latencies_ms, 0.9),
                        "p99": percentile(&all.latencies_ms, 0.99), "max": percentile(&all.latencies_ms, 1.0)},
        "server_split_ms": {"text_uncached_mean": mean(&all.text_ms), "text_uncached_count": all.text_ms.len(),
                            "ann_mean": mean(&all.ann_ms), "meta_mean": mean(&all.meta_ms)},
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
