//! Store benchmark: durable insert throughput and `get` latency for experts of the
//! reference shape (d_model 576, rank 8, 4 adapted layers, key_dim 576), side by side with
//! a plain RocksDB storing the same bytes as values, in the same run.
//!
//! `cargo bench --bench store -- [--experts N] [--batch B] [--gets G] [--dir PATH]`

#[path = "common/progress.rs"]
mod progress;

use std::time::{Duration, Instant};

use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, RecordLayout, Store, StoreConfig};
use rand::{Rng, SeedableRng};

struct Args {
    experts: u64,
    batch: usize,
    gets: usize,
    dir: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        experts: 100_000,
        batch: 64,
        gets: 200_000,
        dir: None,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--experts" => a.experts = next.parse().expect("--experts N"),
            "--batch" => a.batch = next.parse().expect("--batch B"),
            "--gets" => a.gets = next.parse().expect("--gets G"),
            "--dir" => a.dir = Some(next.into()),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn fill(rng: &mut rand::rngs::SmallRng, n: usize) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(rng.random_range(-0.05f32..0.05)))
        .collect()
}

fn make_expert(cfg: &StoreConfig, rng: &mut rand::rngs::SmallRng) -> NewExpert {
    let mat = (cfg.rank * cfg.d_model) as usize;
    NewExpert {
        key: fill(rng, cfg.key_dim as usize),
        layers: (0..cfg.layers.len())
            .map(|_| AdapterPair {
                a: fill(rng, mat),
                b: fill(rng, mat),
            })
            .collect(),
        provenance: Provenance::text("bench"),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Row {
    system: &'static str,
    op: &'static str,
    per_s: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn main() {
    let a = args();
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mome-bench-store-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let cfg = StoreConfig::new(576, 576, 8, vec![8, 12, 16, 20]);
    let layout = RecordLayout::for_config(&cfg);
    println!(
        "experts: {}, record: {} bytes ({} payload), batch {}, dir {}",
        a.experts,
        layout.record_size,
        layout.payload_bytes(),
        a.batch,
        base.display()
    );
    let mut rows = Vec::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);

    // --- mome store ---
    let store = Store::create(base.join("mome"), cfg.clone()).expect("create");
    let mut insert_time = Duration::ZERO;
    let mut done = 0u64;
    let pb = progress::bar(a.experts, "mome insert");
    while done < a.experts {
        let n = (a.experts - done).min(a.batch as u64) as usize;
        let batch: Vec<NewExpert> = (0..n).map(|_| make_expert(&cfg, &mut rng)).collect();
        let t = Instant::now();
        store.insert_batch(batch).expect("insert");
        insert_time += t.elapsed();
        done += n as u64;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    rows.push(Row {
        system: "mome",
        op: "insert (durable)",
        per_s: Some(a.experts as f64 / insert_time.as_secs_f64()),
        p50: None,
        p99: None,
    });
    let ids: Vec<u64> = (0..a.gets)
        .map(|_| rng.random_range(1..=a.experts))
        .collect();
    for (op, touch) in [("get (view)", false), ("get + read all bytes", true)] {
        let mut lat = Vec::with_capacity(ids.len());
        let mut sink = 0u32;
        for &id in &ids {
            let t = Instant::now();
            let e = store.get(id).expect("get");
            if touch {
                for l in 0..e.n_layers() {
                    sink =
                        sink.wrapping_add(e.a(l).iter().map(|x| x.to_bits() as u32).sum::<u32>());
                    sink =
                        sink.wrapping_add(e.b(l).iter().map(|x| x.to_bits() as u32).sum::<u32>());
                }
            } else {
                sink = sink.wrapping_add(e.key()[0].to_bits() as u32);
            }
            lat.push(t.elapsed());
        }
        std::hint::black_box(sink);
        lat.sort_unstable();
        rows.push(Row {
            system: "mome",
            op,
            per_s: None,
            p50: Some(pct(&lat, 0.5)),
            p99: Some(pct(&lat, 0.99)),
        });
    }
    drop(store);

    // --- plain RocksDB baseline: the same record bytes as values, synced batches ---
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, base.join("rocksdb")).expect("rocksdb");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let mut buf = vec![0u8; layout.payload_bytes()];
    let mut insert_time = Duration::ZERO;
    let mut done = 0u64;
    let pb = progress::bar(a.experts, "rocksdb put");
    while done < a.experts {
        let n = (a.experts - done).min(a.batch as u64);
        let mut wb = rocksdb::WriteBatch::default();
        let mut encoded = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let e = make_expert(&cfg, &mut rng);
            let mut off = 0;
            let mut put = |v: &[f16]| {
                let b: &[u8] = bytemuck::cast_slice(v);
                buf[off..off + b.len()].copy_from_slice(b);
                off += b.len();
            };
            put(&e.key);
            for p in &e.layers {
                put(&p.a);
                put(&p.b);
            }
            encoded.push(buf.clone());
        }
        let t = Instant::now();
        for (i, v) in encoded.iter().enumerate() {
            wb.put((done + i as u64 + 1).to_be_bytes(), v);
        }
        db.write_opt(wb, &wo).expect("rocksdb write");
        insert_time += t.elapsed();
        done += n;
        pb.inc(n);
    }
    pb.finish_and_clear();
    rows.push(Row {
        system: "rocksdb",
        op: "insert (durable)",
        per_s: Some(a.experts as f64 / insert_time.as_secs_f64()),
        p50: None,
        p99: None,
    });
    for (op, touch) in [("get (pinned)", false), ("get + read all bytes", true)] {
        let mut lat = Vec::with_capacity(ids.len());
        let mut sink = 0u32;
        for &id in &ids {
            let t = Instant::now();
            let v = db
                .get_pinned(id.to_be_bytes())
                .expect("get")
                .expect("present");
            if touch {
                sink = sink.wrapping_add(v.iter().map(|&b| b as u32).sum::<u32>());
            } else {
                sink = sink.wrapping_add(v[0] as u32);
            }
            lat.push(t.elapsed());
        }
        std::hint::black_box(sink);
        lat.sort_unstable();
        rows.push(Row {
            system: "rocksdb",
            op,
            per_s: None,
            p50: Some(pct(&lat, 0.5)),
            p99: Some(pct(&lat, 0.99)),
        });
    }
    drop(db);

    let fmt = |v: Option<f64>| v.map_or("".to_string(), |x| format!("{x:.1}"));
    println!();
    println!("| system | operation | experts/s | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.system,
            r.op,
            fmt(r.per_s),
            fmt(r.p50),
            fmt(r.p99)
        );
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
}
