//! The Python peers (FAISS HNSW, LanceDB; `tools/bench-peers.sh`): the data exported
//! for them, their run, and their rows of the table.

use std::io::Write;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use half::f16;
use mome::IndexParams;
use serde_json::{json, Value};

use super::{say, Lat, LookupArgs, Row};

/// One peer's row of the table, from its JSON.
pub(super) fn peer_row(p: &Value) -> Row {
    Row {
        system: format!(
            "{} {}",
            p["system"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("")
        ),
        path: peer_path(p["system"].as_str().unwrap_or("")),
        lat: Lat {
            p50: p["p50_us"].as_f64().unwrap_or(f64::NAN),
            p99: p["p99_us"].as_f64().unwrap_or(f64::NAN),
            p999: p["p999_us"].as_f64().unwrap_or(f64::NAN),
        },
        recall: p["recall_at_10"].as_f64(),
        qps: p["batch_qps"].as_f64(),
    }
}

pub(super) fn peer_path(system: &str) -> &'static str {
    match system {
        "lancedb" => "search top-K + fetch payload bytes",
        _ => "search top-K",
    }
}

/// What the peers' metadata records besides the arguments.
pub(super) struct PeerExport<'a> {
    pub(super) params: &'a IndexParams,
    pub(super) threads: usize,
    pub(super) payload_bytes: usize,
}

/// Writes the data for the peers: meta.json, keys.npy (f16, N×D; row i is id i+1),
/// queries.npy (f16, Q×D), truth.npy (i64, S×10).
pub(super) fn export(
    dir: &Path,
    a: &LookupArgs,
    peer: &PeerExport,
    keys: &[f32],
    queries: &[f32],
    truth: &[Vec<u64>],
) -> Result<()> {
    let PeerExport {
        params,
        threads,
        payload_bytes,
    } = *peer;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dim = a.key_dim as usize;
    let to_f16 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect()
    };
    write_npy(
        &dir.join("keys.npy"),
        "<f2",
        &[keys.len() / dim, dim],
        &to_f16(keys),
    )?;
    write_npy(
        &dir.join("queries.npy"),
        "<f2",
        &[queries.len() / dim, dim],
        &to_f16(queries),
    )?;
    let t: Vec<u8> = truth
        .iter()
        .flat_map(|row| {
            (0..10).flat_map(move |i| (row.get(i).map_or(-1, |&x| x as i64)).to_le_bytes())
        })
        .collect();
    write_npy(&dir.join("truth.npy"), "<i8", &[truth.len(), 10], &t)?;
    let meta = json!({
        "experts": a.experts,
        "dim": dim,
        "queries": queries.len() / dim,
        "candidates": a.candidates,
        "recall_sample": truth.len(),
        "batch": a.batch,
        "payload_bytes": payload_bytes,
        "connectivity": params.connectivity,
        "expansion_add": params.expansion_add,
        "expansion_search": params.expansion_search,
        "sweep_ef": &a.sweep_ef,
        "metric": "cos",
        "threads": threads,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}

/// NumPy `.npy` version 1.0: magic, header dict padded to a 64-byte boundary, raw data.
pub(super) fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(data)?;
    f.flush()?;
    Ok(())
}

pub(super) fn run_peers(a: &LookupArgs, data: &Path, threads: usize) -> Result<Value> {
    let out = data.join("peers.json");
    say(format_args!(
        "running peers ({}) with {}",
        a.peer_systems,
        a.peers_script.display()
    ));
    let status = std::process::Command::new("bash")
        .arg(&a.peers_script)
        .arg("--data")
        .arg(data)
        .arg("--systems")
        .arg(&a.peer_systems)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", a.peers_script.display()))?;
    ensure!(status.success(), "the peers' script failed ({status})");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?,
    )?;
    Ok(v["peers"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.npy");
        write_npy(&p, "<f2", &[3, 2], &[0u8; 12]).expect("write");
        let b = std::fs::read(&p).expect("read");
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hlen]).expect("utf8");
        assert!(h.contains("'shape': (3, 2)"), "{h}");
        assert!(h.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 12);
    }
}
