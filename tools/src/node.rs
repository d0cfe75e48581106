//! `mome node`: a node of a scale-out cluster (the `mome-cluster` crate): serves the
//! shards placed on it from object storage, owns and writes some, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome_cluster::node::NodeOptions;
use mome_cluster::objects::S3Url;

pub const LONG_ABOUT: &str = "Run a node of a scale-out cluster.\n\n\
    The node joins the cluster in etcd under a lease, serves the shards placed on it \
    (each a local store and index filled from the segments in object storage: a cache, \
    wiped at start), takes ownership of the shards it is preferred for, and answers \
    search, fetch and write RPCs until SIGTERM or SIGINT, when it releases its shards \
    and leaves. The cluster must exist (`mome cluster init`). See docs/SCALE.md.";

#[derive(clap::Args)]
pub struct Args {
    /// etcd endpoints, comma-separated (host:port).
    #[arg(long)]
    etcd: String,
    /// Bucket of the segments: http(s)://host:port/bucket (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; unsigned without them).
    #[arg(long)]
    s3: String,
    /// RPC address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Cluster name.
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Node id (default: from the advertised address).
    #[arg(long)]
    id: Option<String>,
    /// Address other processes reach this node at (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Directory of the local caches.
    #[arg(long, default_value = "mome-node")]
    data_dir: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let opts = NodeOptions {
        etcd: mome_cluster::coord::endpoints(&a.etcd),
        cluster: a.cluster,
        s3: S3Url::parse(&a.s3)?,
        listen: a.listen,
        advertise: a.advertise,
        data_dir: a.data_dir,
        id: a.id,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        mome_cluster::node::run(opts, shutdown, |addr| eprintln!("node: serving on {addr}"))
            .await
            .context("node failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
