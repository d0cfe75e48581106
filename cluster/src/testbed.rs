//! A whole cluster on 127.0.0.1 for tests, soaks and benchmarks: etcd members,
//! SeaweedFS (a master, volume servers, a filer with its S3 gateway) and mome nodes,
//! each a child process with its own ports and data directory, stopped by PID.
//!
//! Every wait is bounded in time; everything started is killed (SIGKILL, by PID) when
//! the [`Testbed`] drops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::manifest::ClusterConfig;

/// A testbed failure: what could not be started or reached.
#[derive(Debug, thiserror::Error)]
#[error("testbed: {0}")]
pub struct TestbedError(pub String);

type Result<T> = std::result::Result<T, TestbedError>;

fn err(s: impl Into<String>) -> TestbedError {
    TestbedError(s.into())
}

/// What to start.
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    /// The `mome` binary (runs `mome node` and `mome cluster init`).
    pub mome_bin: PathBuf,
    /// The `etcd` binary.
    pub etcd_bin: PathBuf,
    /// The SeaweedFS `weed` binary.
    pub weed_bin: PathBuf,
    /// etcd members.
    pub etcd_members: usize,
    /// SeaweedFS volume servers (replication `001` needs 2).
    pub volumes: usize,
    /// mome nodes.
    pub nodes: usize,
    /// The cluster to create.
    pub cluster: ClusterConfig,
    /// Where the data and logs go (a fresh directory under the system temp dir when
    /// `None`); kept after the run when `keep` is set.
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs) after the run.
    pub keep: bool,
    /// Extra environment of named children (`node0`, ...): (name, variable, value).
    pub node_env: Vec<(String, String, String)>,
}

impl TestbedOptions {
    /// Defaults: 3 etcd members, 2 volume servers, 3 nodes; binaries found by
    /// [`find_etcd`] and [`find_weed`] from `workspace`.
    pub fn new(mome_bin: PathBuf, workspace: &Path, cluster: ClusterConfig) -> Result<Self> {
        Ok(TestbedOptions {
            mome_bin,
            etcd_bin: find_etcd()
                .ok_or_else(|| err("etcd not found (apt-get install etcd-server)"))?,
            weed_bin: find_weed(workspace)
                .ok_or_else(|| err("weed not found (bash tools/cluster-setup.sh installs it)"))?,
            etcd_members: 3,
            volumes: 2,
            nodes: 3,
            cluster,
            dir: None,
            keep: std::env::var_os("MOME_TESTBED_KEEP").is_some(),
            node_env: Vec::new(),
        })
    }
}

/// `$MOME_ETCD`, else `etcd` on the `PATH`.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOME_ETCD") {
        return Some(PathBuf::from(p));
    }
    which("etcd")
}

/// `$MOME_WEED`, else `target/cluster-venv/bin/weed` under `workspace`, else `weed`
/// on the `PATH`.
pub fn find_weed(workspace: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOME_WEED") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace.join("target/cluster-venv/bin/weed");
    if venv.is_file() {
        return Some(venv);
    }
    which("weed")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A child process with a name, killed by PID on drop.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Free TCP ports on 127.0.0.1, reserved together (all listeners are held until every
/// port is chosen, so they are distinct).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| err(format!("reserving ports: {e}")))?;
    ls.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| err(format!("reserving ports: {e}")))
}

/// Volume server `i`'s name: its process (and `{name}.log`) and its directory.
fn volume_name(i: usize) -> String {
    format!("weed-volume-{i}")
}

/// A free port `p` on 127.0.0.1 with `p + 10000` free as well: SeaweedFS components
/// find each other's gRPC port at that offset in places where no flag sets it.
fn free_weed_port(taken: &mut Vec<u16>) -> Result<u16> {
    for _ in 0..200 {
        let l =
            TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("reserving ports: {e}")))?;
        let p = l.local_addr().map_err(|e| err(e.to_string()))?.port();
        if p >= 55_536 || taken.contains(&p) || taken.contains(&(p + 10_000)) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            taken.push(p);
            taken.push(p + 10_000);
            return Ok(p);
        }
    }
    Err(err("no free port pair (p, p + 10000) found in 200 tries"))
}

/// Sends `method path` to 127.0.0.1:`port` (HTTP/1.1, no body); returns the status code.
pub fn http(port: u16, method: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| err(format!("connect {port}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err(e.to_string()))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| err(format!("request {port}{path}: {e}")))?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .map_err(|e| err(format!("response {port}{path}: {e}")))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err(format!("bad HTTP response from {port}{path}: {head:?}")))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            return Err(err(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// etcd flags of the testbed's members: history compacted by etcd itself every 10 min
/// (a backstop: the nodes compact it at `etcd_history_s`, 5 min by default,
/// `history.rs`), and an explicit backend quota of 4 GiB (etcd's default is 2 GiB).
pub const ETCD_HISTORY_FLAGS: [&str; 3] = [
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=10m",
    "--quota-backend-bytes=4294967296",
];

/// Volume slots per SeaweedFS volume server. Each volume is at most 64 MB
/// (`-volumeSizeLimitMB`) and grows on disk only as it is written; the master grows a
/// collection 6 volumes at a time with replication `001` (12 slots), so 16 slots held
/// two growths and about 0.5 GB of segments before writes failed.
pub const WEED_VOLUME_SLOTS: u32 = 64;

/// Seconds between the SeaweedFS master's vacuum sweeps (reclaiming deleted objects in
/// volumes whose garbage exceeds 30 %).
pub const WEED_VACUUM_INTERVAL_S: u32 = 30;

/// The flags of every member (`e0`, `e1`, …) of a new etcd cluster on 127.0.0.1, one per
/// pair of `ports`: member i's client port is `ports[2i]`, its peer port `ports[2i + 1]`,
/// its data directory `data(i)`. Returns (client port, flags) per member.
fn etcd_cluster_args(ports: &[u16], data: impl Fn(usize) -> PathBuf) -> Vec<(u16, Vec<String>)> {
    let pairs: Vec<(u16, u16)> = ports.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let initial = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, pp))| format!("e{i}=http://127.0.0.1:{pp}"))
        .collect::<Vec<_>>()
        .join(",");
    pairs
        .iter()
        .enumerate()
        .map(|(i, &(c, pp))| {
            let args = etcd_member_args(&format!("e{i}"), &data(i), c, pp, &initial);
            (c, args)
        })
        .collect()
}

/// The flags of one member of a new etcd cluster on 127.0.0.1.
fn etcd_member_args(
    name: &str,
    data: &Path,
    client: u16,
    peer: u16,
    initial_cluster: &str,
) -> Vec<String> {
    vec![
        "--name".into(),
        name.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{client}"),
        "--advertise-client-urls".into(),
        format!("http://127.0.0.1:{client}"),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-cluster".into(),
        initial_cluster.to_string(),
        "--initial-cluster-state".into(),
        "new".into(),
    ]
}

/// etcd alone on 127.0.0.1, for tests that need only etcd: one member, or a cluster of
/// a few, each with its data and log (`etcd-<i>.log`) in one directory of its own;
/// SIGKILLed by PID and the directory removed on drop.
pub struct EtcdProcess {
    members: Vec<(Proc, u16)>,
    dir: PathBuf,
}

impl std::fmt::Debug for EtcdProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdProcess({})", self.endpoints().join(","))
    }
}

impl EtcdProcess {
    /// One member: [`EtcdProcess::start_members`] with `n` = 1.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<EtcdProcess> {
        Self::start_members(bin, 1, extra)
    }

    /// Starts an etcd cluster of `n` members (`e0`, `e1`, …) from `bin`, each with
    /// `extra` flags after its own, in a fresh directory under the system temp dir, and
    /// waits (at most 20 s) until every member answers `/health` (which needs a leader).
    pub fn start_members(bin: &Path, n: usize, extra: &[&str]) -> Result<EtcdProcess> {
        if n == 0 {
            return Err(err("an etcd cluster needs at least one member"));
        }
        let dir = std::env::temp_dir().join(format!(
            "mome-etcd-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let members = etcd_cluster_args(&free_ports(2 * n)?, |i| dir.join(format!("data-{i}")));
        let mut etcd = EtcdProcess {
            members: Vec::with_capacity(n),
            dir,
        };
        for (i, (c, mut args)) in members.into_iter().enumerate() {
            args.extend(extra.iter().map(|a| a.to_string()));
            let log = std::fs::File::create(etcd.dir.join(format!("etcd-{i}.log")))
                .map_err(|e| err(format!("etcd log: {e}")))?;
            let log2 = log.try_clone().map_err(|e| err(e.to_string()))?;
            let child = Command::new(bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| err(format!("starting etcd ({}): {e}", bin.display())))?;
            let proc = Proc {
                name: format!("etcd-{i}"),
                child: Some(child),
            };
            etcd.members.push((proc, c));
        }
        for &(_, c) in &etcd.members {
            wait_until("etcd", Duration::from_secs(20), || {
                http(c, "GET", "/health").ok().filter(|s| *s == 200)
            })?;
        }
        Ok(etcd)
    }

    /// The first member's client endpoint, `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Every member's client endpoint, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|&(_, c)| format!("127.0.0.1:{c}"))
            .collect()
    }

    /// The first member's client port.
    pub fn port(&self) -> u16 {
        self.members[0].1
    }

    /// The first member's PID.
    pub fn pid(&self) -> Option<u32> {
        self.members[0].0.pid()
    }

    /// SIGKILLs member `i` (no-op for an index out of range or a member already gone).
    pub fn kill(&mut self, i: usize) {
        if let Some((p, _)) = self.members.get_mut(i) {
            p.kill();
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        for (p, _) in &mut self.members {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct EtcdMember {
    client: u16,
    proc: Proc,
}

struct NodeProc {
    id: String,
    port: u16,
    proc: Proc,
}

/// The running cluster.
pub struct Testbed {
    opts: TestbedOptions,
    dir: PathBuf,
    /// Cluster name.
    pub cluster: String,
    etcd: Vec<EtcdMember>,
    etcd_args: Vec<Vec<String>>,
    weed: Vec<Proc>,
    volumes: Vec<Proc>,
    volume_args: Vec<Vec<String>>,
    s3_port: u16,
    nodes: Vec<NodeProc>,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Testbed({})", self.dir.display())
    }
}

impl Testbed {
    /// Starts everything and waits (bounded) until etcd has a leader, the S3 gateway
    /// answers, the bucket exists, the cluster is initialised and every node is a member.
    pub fn start(opts: TestbedOptions) -> Result<Testbed> {
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!(
                "mome-testbed-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
        };
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let m = opts.etcd_members;
        let v = opts.volumes;
        let n = opts.nodes;
        let ports = free_ports(2 * m + n)?;
        let mut weed_ports = ports.clone();
        let mut p = ports.into_iter();
        let mut next = || p.next().ok_or_else(|| err("port list too short"));
        let cluster = format!("t{:08x}", rand::random::<u32>());
        let mut tb = Testbed {
            opts: opts.clone(),
            dir: dir.clone(),
            cluster,
            etcd: Vec::new(),
            etcd_args: Vec::new(),
            weed: Vec::new(),
            volumes: Vec::new(),
            volume_args: Vec::new(),
            s3_port: 0,
            nodes: Vec::new(),
        };

        // etcd: m members, one cluster.
        let etcd_ports = (0..2 * m).map(|_| next()).collect::<Result<Vec<u16>>>()?;
        let members = etcd_cluster_args(&etcd_ports, |i| dir.join(format!("etcd-{i}")));
        for (i, (c, mut args)) in members.into_iter().enumerate() {
            args.extend(["--initial-cluster-token".into(), tb.cluster.clone()]);
            args.extend(ETCD_HISTORY_FLAGS.iter().map(|a| a.to_string()));
            let proc = tb.spawn(&format!("etcd-{i}"), &opts.etcd_bin, &args)?;
            tb.etcd.push(EtcdMember { client: c, proc });
            tb.etcd_args.push(args);
        }

        // SeaweedFS: master, volume servers, filer + S3 gateway; replication 001 (one
        // extra copy on another server) when there are two volume servers or more.
        let repl = if v >= 2 { "001" } else { "000" };
        let mp = free_weed_port(&mut weed_ports)?;
        let mg = mp + 10_000;
        let master_dir = dir.join("weed-master");
        std::fs::create_dir_all(&master_dir).map_err(|e| err(e.to_string()))?;
        let master = tb.spawn(
            "weed-master",
            &opts.weed_bin,
            &[
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={mp}"),
                format!("-port.grpc={mg}"),
                format!("-mdir={}", master_dir.display()),
                format!("-defaultReplication={repl}"),
                "-volumeSizeLimitMB=64".into(),
                // Compaction rewrites a shard's base and the collector deletes the old
                // objects, but SeaweedFS frees their bytes only when it vacuums a volume
                // (default every 14 min): without this a soak fills every slot with
                // deleted segments and writes fail with 500 (docs/BENCHMARKS.md §Fault soak).
                format!("-vacuumIntervalSeconds={WEED_VACUUM_INTERVAL_S}"),
            ],
        )?;
        tb.weed.push(master);
        wait_until("the SeaweedFS master", Duration::from_secs(30), || {
            http(mp, "GET", "/cluster/status")
                .ok()
                .filter(|c| *c == 200)
        })?;
        for i in 0..v {
            let hp = free_weed_port(&mut weed_ports)?;
            let gp = hp + 10_000;
            let vd = dir.join(volume_name(i));
            std::fs::create_dir_all(&vd).map_err(|e| err(e.to_string()))?;
            let args = vec![
                "volume".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={hp}"),
                format!("-port.grpc={gp}"),
                format!("-dir={}", vd.display()),
                format!("-mserver=127.0.0.1:{mp}.{mg}"),
                format!("-max={WEED_VOLUME_SLOTS}"),
            ];
            let vol = tb.spawn(&volume_name(i), &opts.weed_bin, &args)?;
            tb.volumes.push(vol);
            tb.volume_args.push(args);
            wait_until("a volume server", Duration::from_secs(30), || {
                http(hp, "GET", "/status").ok().filter(|c| *c == 200)
            })?;
        }
        let fp = free_weed_port(&mut weed_ports)?;
        let sp = free_weed_port(&mut weed_ports)?;
        let (fg, sg) = (fp + 10_000, sp + 10_000);
        let filer_dir = dir.join("weed-filer");
        std::fs::create_dir_all(&filer_dir).map_err(|e| err(e.to_string()))?;
        let filer = tb.spawn(
            "weed-filer",
            &opts.weed_bin,
            &[
                "filer".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={fp}"),
                format!("-port.grpc={fg}"),
                format!("-master=127.0.0.1:{mp}.{mg}"),
                format!("-defaultReplicaPlacement={repl}"),
                format!("-defaultStoreDir={}", filer_dir.display()),
                "-s3".into(),
                format!("-s3.port={sp}"),
                format!("-s3.port.grpc={sg}"),
            ],
        )?;
        tb.weed.push(filer);
        tb.s3_port = sp;
        wait_until("the S3 gateway", Duration::from_secs(30), || {
            http(sp, "GET", "/").ok().filter(|c| *c == 200)
        })?;
        wait_until("the bucket", Duration::from_secs(30), || {
            http(sp, "PUT", "/mome")
                .ok()
                .filter(|c| *c == 200 || *c == 409)
        })?;

        // The cluster config, then the nodes.
        tb.init()?;
        for i in 0..n {
            let port = next()?;
            tb.nodes.push(NodeProc {
                id: format!("node{i}"),
                port,
                proc: Proc {
                    name: format!("node{i}"),
                    child: None,
                },
            });
            tb.start_node(i)?;
        }
        Ok(tb)
    }

    fn spawn(&self, name: &str, bin: &Path, args: &[String]) -> Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| err(format!("log of {name}: {e}")))?;
        let log2 = log.try_clone().map_err(|e| err(e.to_string()))?;
        let mut cmd = Command::new(bin);
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "mome_cluster=info,warn");
        }
        if let Some(env) = self.opts.node_env.iter().find(|e| e.0 == name) {
            cmd.env(&env.1, &env.2);
        }
        let child = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| err(format!("starting {name} ({}): {e}", bin.display())))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    fn init(&self) -> Result<()> {
        let c = &self.opts.cluster;
        let cfg = serde_json::to_string(c).map_err(|e| err(e.to_string()))?;
        let t0 = Instant::now();
        loop {
            let out = Command::new(&self.opts.mome_bin)
                .args([
                    "cluster",
                    "init",
                    "--etcd",
                    &self.etcd_list(),
                    "--cluster",
                    &self.cluster,
                ])
                .args(["--config-json", &cfg])
                .output()
                .map_err(|e| err(format!("mome cluster init: {e}")))?;
            if out.status.success() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(err(format!(
                    "mome cluster init failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Comma-separated etcd client endpoints of every member.
    pub fn etcd_list(&self) -> String {
        self.etcd_endpoints().join(",")
    }

    /// etcd client endpoints of every member (dead ones included: clients skip them).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    /// The S3 URL of the bucket.
    pub fn s3_url(&self) -> String {
        format!("http://127.0.0.1:{}/mome", self.s3_port)
    }

    /// The testbed directory (logs are `NAME.log` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node ids, by index.
    pub fn node_id(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    /// Number of node slots.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// RPC address of node `i`.
    pub fn node_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// PID of node `i`, if running.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.pid()
    }

    /// Starts node `i` (again), with its fixed id and port.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let id = self.nodes[i].id.clone();
        let port = self.nodes[i].port;
        let data = self.dir.join(&id);
        let args = vec![
            "node".to_string(),
            "--etcd".into(),
            self.etcd_list(),
            "--cluster".into(),
            self.cluster.clone(),
            "--s3".into(),
            self.s3_url(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--id".into(),
            id.clone(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        let proc = self.spawn(&id, &self.opts.mome_bin.clone(), &args)?;
        self.nodes[i].proc = proc;
        wait_until(&format!("{id} listening"), Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(())
    }

    /// Starts one more node (id `node<i>`, a fresh port); returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let port = free_ports(1)?[0];
        let i = self.nodes.len();
        self.nodes.push(NodeProc {
            id: format!("node{i}"),
            port,
            proc: Proc {
                name: format!("node{i}"),
                child: None,
            },
        });
        self.start_node(i)?;
        Ok(i)
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to node `i` by PID.
    pub fn signal_node(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self
            .node_pid(i)
            .ok_or_else(|| err(format!("node {i} not running")))?;
        signal(pid, sig)
    }

    /// Whether node `i`'s process is alive.
    pub fn node_alive(&mut self, i: usize) -> bool {
        self.nodes[i].proc.alive()
    }

    /// SIGKILLs volume server `i`.
    pub fn kill_volume(&mut self, i: usize) {
        self.volumes[i].kill();
    }

    /// Restarts volume server `i` on its directory.
    pub fn restart_volume(&mut self, i: usize) -> Result<()> {
        let args = self.volume_args[i].clone();
        let proc = self.spawn(&volume_name(i), &self.opts.weed_bin.clone(), &args)?;
        self.volumes[i] = proc;
        Ok(())
    }

    /// SIGKILLs etcd member `i`.
    pub fn kill_etcd(&mut self, i: usize) {
        self.etcd[i].proc.kill();
    }

    /// Restarts etcd member `i` on its data directory.
    pub fn restart_etcd(&mut self, i: usize) -> Result<()> {
        let mut args = self.etcd_args[i].clone();
        if let Some(p) = args.iter().position(|a| a == "new") {
            args[p] = "existing".into();
        }
        let proc = self.spawn(&format!("etcd-{i}"), &self.opts.etcd_bin.clone(), &args)?;
        self.etcd[i].proc = proc;
        Ok(())
    }

    /// Names of the running children (for diagnostics).
    pub fn running(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        for p in self
            .etcd
            .iter_mut()
            .map(|m| &mut m.proc)
            .chain(self.weed.iter_mut())
            .chain(self.volumes.iter_mut())
            .chain(self.nodes.iter_mut().map(|n| &mut n.proc))
        {
            if p.alive() {
                v.push(p.name.clone());
            }
        }
        v
    }

    /// Bytes of volume files (`.dat`, live and deleted needles) on each SeaweedFS
    /// volume server's directory: what object storage holds physically, garbage included.
    pub fn volume_bytes(&self) -> Vec<u64> {
        (0..self.volumes.len())
            .map(|i| {
                std::fs::read_dir(self.dir.join(volume_name(i)))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "dat"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .collect()
    }

    /// The last `lines` lines of a child's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let v: Vec<&str> = s.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Nodes first (they talk to the rest), then storage, then etcd; all by PID.
        for n in &mut self.nodes {
            // A stopped process must be continued to die promptly on some kernels.
            if let Some(pid) = n.proc.pid() {
                let _ = signal(pid, "CONT");
            }
            n.proc.kill();
        }
        for p in self.weed.iter_mut().rev() {
            p.kill();
        }
        for p in &mut self.volumes {
            p.kill();
        }
        for m in &mut self.etcd {
            m.proc.kill();
        }
        if !self.opts.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("testbed kept at {}", self.dir.display());
        }
    }
}

/// Sends a signal to a process by PID with `kill(1)`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| err(format!("kill -{sig} {pid}: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(err(format!("kill -{sig} {pid} failed")))
    }
}
