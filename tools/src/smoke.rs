//! `mome smoke`: the store demo of `tools/demo.sh`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use rand::{Rng, SeedableRng};

#[derive(clap::Args)]
pub struct Args {
    /// Store directory (created; must not exist or be empty).
    #[arg(long)]
    db: PathBuf,
    /// Number of experts to insert.
    #[arg(long, default_value_t = 1000)]
    experts: u64,
}

fn random_expert(cfg: &StoreConfig, rng: &mut rand::rngs::SmallRng, i: u64) -> NewExpert {
    let mut fill = |n: usize| -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-0.05f32..0.05)))
            .collect()
    };
    let mat = (cfg.rank * cfg.d_model) as usize;
    NewExpert {
        key: fill(cfg.key_dim as usize),
        layers: cfg
            .layers
            .iter()
            .map(|_| AdapterPair {
                a: fill(mat),
                b: fill(mat),
            })
            .collect(),
        provenance: Provenance::text(format!("smoke expert {i}")),
    }
}

pub fn run(Args { db, experts }: Args) -> Result<ExitCode> {
    // The reference shape: SmolLM2-135M (d_model 576), rank 8, four adapted layers.
    let cfg = StoreConfig::new(576, 576, 8, vec![8, 12, 16, 20]).with_query_layer(8);
    let store = Store::create(&db, cfg.clone())
        .with_context(|| format!("creating store in {}", db.display()))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let t = std::time::Instant::now();
    let pb = crate::progress::bar(experts, "insert");
    let mut keys = Vec::new();
    let mut done = 0;
    while done < experts {
        let n = (experts - done).min(64);
        let batch: Vec<NewExpert> = (done..done + n)
            .map(|i| random_expert(&cfg, &mut rng, i))
            .collect();
        let first_key = batch[0].key.clone();
        let ids = store.insert_batch(batch)?;
        keys.push((ids[0], first_key));
        done += n;
        pb.inc(n);
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    outln!(
        "inserted {experts} experts durably in {secs:.2}s ({:.0} experts/s, {} bytes each)",
        experts as f64 / secs,
        store.layout().record_size
    );
    drop(store);
    let store = Store::open(&db)?;
    anyhow::ensure!(
        store.len() == experts,
        "reopened store has {} experts",
        store.len()
    );
    for (id, key) in &keys {
        let e = store.get(*id)?;
        anyhow::ensure!(e.key() == &key[..], "expert {id} read back different bytes");
    }
    outln!(
        "reopened {}: {} experts, spot-checked {} byte-identical",
        db.display(),
        store.len(),
        keys.len()
    );
    Ok(ExitCode::SUCCESS)
}
