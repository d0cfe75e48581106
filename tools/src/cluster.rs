//! `mome cluster init|status|shards|rebalance`: administration of a scale-out cluster
//! (the `mome-cluster` crate). Each command talks to etcd (and, for `status`, to the
//! nodes), prints a report or one JSON object, and exits 1 on a problem.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mome::IndexKind;
use mome::StoreConfig;
use mome_cluster::{Client, ClusterConfig};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Args)]
struct Conn {
    /// etcd endpoints, comma-separated (host:port).
    #[arg(long)]
    etcd: String,
    /// Cluster name.
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Create the cluster: expert shape, shard count and policy, written once to etcd.
    Init(InitArgs),
    /// Members, what each serves and owns, etcd footprint, experts.
    Status(Conn),
    /// One line per shard: owner, fencing token, generation, experts, segments, placement.
    Shards(Conn),
    /// Pending moves (owner ≠ preferred node); drain or undrain a node; wait for convergence.
    Rebalance(RebalanceArgs),
    /// Fan-out lookup latency with 1, 2, 3 local nodes against one embedded store.
    Bench(crate::cluster_bench::BenchArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    #[command(flatten)]
    conn: Conn,
    /// Number of shards (fixed for the cluster's life).
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Nodes serving each shard.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Backbone hidden size.
    #[arg(long, default_value_t = 576)]
    d_model: u32,
    /// Key length.
    #[arg(long, default_value_t = 576)]
    key_dim: u32,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: u32,
    /// Adapted layers, comma-separated.
    #[arg(long, default_value = "28,29", value_delimiter = ',')]
    layers: Vec<u32>,
    /// Query layer (default: the first adapted layer).
    #[arg(long)]
    query_layer: Option<u32>,
    /// Index built per shard on the nodes: hnsw or flat (exact).
    #[arg(long, default_value = "hnsw")]
    index: String,
    /// Node lease, seconds.
    #[arg(long, default_value_t = 10)]
    lease_ttl: u64,
    /// Age after which unreferenced objects are deleted, seconds.
    #[arg(long, default_value_t = 3600)]
    gc_grace: u64,
    /// Deltas that trigger a compaction.
    #[arg(long, default_value_t = 16)]
    max_deltas: u32,
    /// etcd history kept, seconds: a node compacts etcd at the revision current this long
    /// ago (0: leave compaction to etcd's own flags).
    #[arg(long, default_value_t = mome_cluster::manifest::DEFAULT_ETCD_HISTORY_S)]
    etcd_history: u64,
    /// The whole config as JSON (overrides every other shape and policy flag).
    #[arg(long)]
    config_json: Option<String>,
}

#[derive(clap::Args)]
struct RebalanceArgs {
    #[command(flatten)]
    conn: Conn,
    /// Mark a node for draining: its shards move to the others.
    #[arg(long)]
    drain: Option<String>,
    /// Clear a node's drain mark.
    #[arg(long)]
    undrain: Option<String>,
    /// Wait up to this many seconds until no move is pending.
    #[arg(long, default_value_t = 0)]
    wait: u64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Sub::Bench(b) = a.cmd {
        return crate::cluster_bench::run(b);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match a.cmd {
            Sub::Init(a) => init(a).await,
            Sub::Status(c) => status(c).await,
            Sub::Shards(c) => shards(c).await,
            Sub::Rebalance(a) => rebalance(a).await,
            Sub::Bench(_) => unreachable!("handled above"),
        }
    })
}

async fn connect(c: &Conn) -> Result<Client> {
    Client::connect(&mome_cluster::coord::endpoints(&c.etcd), &c.cluster)
        .await
        .with_context(|| format!("connecting to cluster `{}` at {}", c.cluster, c.etcd))
}

/// The config `mome cluster init` writes: --config-json, else the shape and policy flags.
fn init_config(a: &InitArgs) -> Result<ClusterConfig> {
    Ok(match &a.config_json {
        Some(j) => serde_json::from_str(j).context("parsing --config-json")?,
        None => {
            let mut store = StoreConfig::new(a.d_model, a.key_dim, a.rank, a.layers.clone());
            if let Some(q) = a.query_layer {
                store = store.with_query_layer(q);
            }
            let mut c = ClusterConfig::new(store, a.shards);
            c.replicas = a.replicas;
            c.lease_ttl_s = a.lease_ttl;
            c.gc_grace_s = a.gc_grace;
            c.max_deltas = a.max_deltas;
            c.etcd_history_s = a.etcd_history;
            c.index = match a.index.as_str() {
                "hnsw" => IndexKind::Hnsw,
                "flat" => IndexKind::Flat,
                other => bail!("--index must be hnsw or flat, not {other}"),
            };
            c
        }
    })
}

async fn init(a: InitArgs) -> Result<ExitCode> {
    let config = init_config(&a)?;
    let mut etcd =
        mome_cluster::coord::connect(&mome_cluster::coord::endpoints(&a.conn.etcd)).await?;
    mome_cluster::coord::init_cluster(&mut etcd, &a.conn.cluster, &config).await?;
    if a.conn.json {
        outln!("{}", json!({"cluster": a.conn.cluster, "config": config}));
    } else {
        outln!(
            "cluster `{}`: {} shards, {} replicas, experts {}×rank {} on layers {:?}, index {:?}",
            a.conn.cluster,
            config.shards,
            config.replicas,
            config.store.key_dim,
            config.store.rank,
            config.store.layers,
            config.index
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(c: Conn) -> Result<ExitCode> {
    let client = connect(&c).await?;
    let state = client.view().state();
    let (keys, bytes) = client.etcd_footprint().await?;
    let nodes = client.node_status().await;
    let mut problems = 0;
    let mut out_nodes = Vec::new();
    for (id, r) in &nodes {
        match r {
            Ok(s) => out_nodes.push(json!({
                "id": id,
                "addr": s.addr,
                "serves": s.shards.iter().map(|x| x.shard).collect::<Vec<_>>(),
                "owns": s.shards.iter().filter(|x| x.owner).map(|x| x.shard).collect::<Vec<_>>(),
                "experts_cached": s.shards.iter().map(|x| x.experts).sum::<u64>(),
            })),
            Err(e) => {
                problems += 1;
                out_nodes.push(json!({"id": id, "error": e.to_string()}));
            }
        }
    }
    let live: u64 = state.manifests.values().map(|m| m.manifest.live).sum();
    let cfg = client.config();
    let unowned = (0..cfg.shards)
        .filter(|s| !state.owners.contains_key(s))
        .count();
    if unowned > 0 {
        problems += 1;
    }
    if c.json {
        outln!(
            "{}",
            json!({
                "cluster": client.cluster(),
                "revision": state.revision,
                "shards": cfg.shards,
                "replicas": cfg.replicas,
                "experts": live,
                "unowned_shards": unowned,
                "etcd_keys": keys,
                "etcd_bytes": bytes,
                "draining": state.drains,
                "nodes": out_nodes,
            })
        );
    } else {
        outln!(
            "cluster `{}` at etcd revision {}: {} experts in {} shards ({} replicas), {} unowned",
            client.cluster(),
            state.revision,
            live,
            cfg.shards,
            cfg.replicas,
            unowned
        );
        outln!("etcd: {keys} keys, {bytes} bytes");
        for n in &out_nodes {
            outln!("  {n}");
        }
    }
    Ok(crate::exit_for(problems))
}

async fn shards(c: Conn) -> Result<ExitCode> {
    let client = connect(&c).await?;
    let state = client.view().state();
    let cfg = client.config();
    let mut rows = Vec::new();
    for s in 0..cfg.shards {
        let owner = state.owners.get(&s);
        let m = state.manifests.get(&s);
        let placement: Vec<&str> = state.placement(s, cfg.replicas);
        rows.push(json!({
            "shard": s,
            "owner": owner.map(|o| o.info.node.clone()),
            "token": owner.map(|o| o.token),
            "generation": m.map_or(0, |m| m.manifest.generation),
            "revision": m.map_or(0, |m| m.revision),
            "experts": m.map_or(0, |m| m.manifest.live),
            "segments": m.map_or(0, |m| m.manifest.segments.len()),
            "deltas": m.map_or(0, |m| m.manifest.deltas()),
            "bytes": m.map_or(0, |m| m.manifest.segments.iter().map(|x| x.bytes).sum::<u64>()),
            "placement": placement,
            "ready": state.readies.iter().filter(|(x, _)| *x == s).map(|(_, n)| n.clone()).collect::<Vec<_>>(),
        }));
    }
    let unowned = rows.iter().filter(|r| r["owner"].is_null()).count();
    if c.json {
        outln!("{}", json!({"cluster": client.cluster(), "shards": rows}));
    } else {
        outln!("shard  owner        token  gen  experts  segs  bytes       placement");
        for r in &rows {
            outln!(
                "{:>5}  {:<11}  {:>5}  {:>3}  {:>7}  {:>4}  {:>10}  {}",
                r["shard"],
                r["owner"].as_str().unwrap_or("-"),
                r["token"].as_i64().map_or("-".into(), |t| t.to_string()),
                r["generation"],
                r["experts"],
                r["segments"],
                r["bytes"],
                r["placement"]
            );
        }
    }
    Ok(crate::exit_for(unowned))
}

async fn rebalance(a: RebalanceArgs) -> Result<ExitCode> {
    let client = connect(&a.conn).await?;
    if let Some(n) = &a.drain {
        client.set_drain(n, true).await?;
    }
    if let Some(n) = &a.undrain {
        client.set_drain(n, false).await?;
    }
    let cfg = client.config().clone();
    let pending = |s: &mome_cluster::view::ViewState| -> Vec<(u32, Option<String>, String)> {
        (0..cfg.shards)
            .filter_map(|shard| {
                let preferred = s
                    .placement(shard, cfg.replicas)
                    .first()
                    .map(|p| p.to_string())?;
                let owner = s.owners.get(&shard).map(|o| o.info.node.clone());
                (owner.as_deref() != Some(preferred.as_str())).then_some((shard, owner, preferred))
            })
            .collect()
    };
    // Let the drain mark reach the view before judging.
    let _ = client
        .view()
        .wait_for(Duration::from_millis(500), "the drain mark", |s| {
            match (&a.drain, &a.undrain) {
                (Some(n), _) => s.drains.contains(n),
                (_, Some(n)) => !s.drains.contains(n),
                _ => true,
            }
        })
        .await;
    let mut moves = pending(&client.view().state());
    if a.wait > 0 && !moves.is_empty() {
        let r = client
            .view()
            .wait_for(
                Duration::from_secs(a.wait),
                "every shard on its preferred node",
                |s| pending(s).is_empty(),
            )
            .await;
        moves = pending(&r.unwrap_or_else(|_| client.view().state()));
    }
    if a.conn.json {
        let m: Vec<_> = moves
            .iter()
            .map(|(s, o, p)| json!({"shard": s, "owner": o, "preferred": p}))
            .collect();
        outln!("{}", json!({"pending": m}));
    } else if moves.is_empty() {
        outln!("every shard is owned by its preferred node");
    } else {
        for (s, o, p) in &moves {
            outln!(
                "shard {s}: owner {} → preferred {p}",
                o.as_deref().unwrap_or("(none)")
            );
        }
    }
    // Pending moves are a problem only when the caller waited for them.
    Ok(crate::exit_for(if a.wait > 0 { moves.len() } else { 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn config(args: &[&str]) -> ClusterConfig {
        let base = ["init", "--etcd", "127.0.0.1:2379"];
        let cli = Cli::try_parse_from(base.iter().chain(args)).expect("flags parse");
        init_config(&cli.init).expect("config")
    }

    #[test]
    fn etcd_history_flag_reaches_the_config() {
        assert_eq!(
            config(&[]).etcd_history_s,
            mome_cluster::manifest::DEFAULT_ETCD_HISTORY_S
        );
        assert_eq!(config(&["--etcd-history", "60"]).etcd_history_s, 60);
        assert_eq!(config(&["--etcd-history", "0"]).etcd_history_s, 0);
        let c = config(&["--shards", "4", "--max-deltas", "3", "--index", "flat"]);
        assert_eq!((c.shards, c.max_deltas), (4, 3));
        assert!(matches!(c.index, IndexKind::Flat));
    }
}
