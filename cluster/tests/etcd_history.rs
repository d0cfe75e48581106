//! etcd's history stays bounded under sustained manifest writes, and views keep up
//! (docs/SCALE.md, §etcd). One etcd member on 127.0.0.1 started *without* any
//! auto-compaction flag, so that what compacts is the tier's own runner
//! (`mome_cluster::history::run`, the loop a node runs, here with a 300 ms retention).
//! Two writers rewrite manifests (≈ 27 KB each) without pause. Two views follow:
//!
//! * one on the test's runtime, which keeps up: it ends equal to a fresh load;
//! * one whose runtime is blocked (its watch is not read, so etcd stops sending to it)
//!   until history has been compacted past the revision it last saw: etcd then cancels
//!   its watch with the compact revision, the view reloads from a fresh snapshot, and it
//!   ends equal to a fresh load too.
//!
//! The writers' first revision is then gone from etcd (a read at it answers
//! "compacted"). Every loop is bounded; etcd is SIGKILLed by PID at the end. Skipped
//! when etcd is missing, except under CI.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use mome_cluster::history::{self, HistoryPolicy};
use mome_cluster::manifest::{Keys, Manifest, OwnerInfo, SegmentRef, META_VERSION};
use mome_cluster::segment::SegmentKind;
use mome_cluster::view::{ClusterView, ViewState};

/// Shards the writers rewrite (writer w takes the shards ≡ w mod 2).
const SHARDS: u32 = 6;
/// Segment refs per manifest: ≈ 27 KB of JSON.
const REFS: usize = 200;
/// Manifest puts while the lagging view is blocked, at least: ≈ 16 MB, far more than
/// the watch stream's 2 MiB HTTP/2 window and etcd's 128 buffered responses.
const PUTS_WHILE_BLOCKED: u64 = 600;
/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(60);

fn manifest(shard: u32, generation: u64) -> Vec<u8> {
    let segments = (0..REFS)
        .map(|i| SegmentRef {
            name: format!(
                "hist/shards/{shard:05}/{:016x}-node-10-0-0-12-7000-{i:04}.seg",
                (generation << 8) | i as u64
            ),
            kind: SegmentKind::Delta,
            experts: 440,
            tombstones: 0,
            bytes: 16_000_000,
        })
        .collect();
    serde_json::to_vec(&Manifest {
        v: META_VERSION,
        shard,
        generation,
        segments,
        live: 440 * REFS as u64,
        compacted_from: None,
    })
    .expect("json")
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string().contains("compacted")
}

fn same(a: &ViewState, b: &ViewState) -> bool {
    a.revision == b.revision && a.manifests == b.manifests && a.owners == b.owners
}

#[test]
fn history_is_compacted_while_views_follow_the_writers() {
    let t0 = Instant::now();
    let Some(etcd) = common::one_etcd() else {
        return;
    };
    let rt = common::runtime();
    let client = rt
        .block_on(mome_cluster::coord::connect(&[etcd.endpoint()]))
        .expect("connect");
    let keys = Keys::new("hist");

    // Generation 1 of every manifest and an owner per shard.
    let first_rev = rt.block_on(async {
        let mut c = client.clone();
        let mut rev = 0;
        for shard in 0..SHARDS {
            let r = c
                .put(keys.manifest(shard), manifest(shard, 1), None)
                .await
                .expect("put");
            rev = r.header().map_or(0, |h| h.revision());
            let owner = OwnerInfo {
                node: format!("node{}", shard % 3),
                lease: 0,
            };
            c.put(
                keys.owner(shard),
                serde_json::to_vec(&owner).expect("json"),
                None,
            )
            .await
            .expect("put");
        }
        rev
    });

    // The lagging view: its own single-threaded runtime, blocked right after its load
    // until `go`; then it runs until it has seen `last`.
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<i64>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (last_tx, last_rx) = tokio::sync::oneshot::channel::<i64>();
    let lagging = {
        let (client, keys) = (client.clone(), keys.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let view = ClusterView::start(client, keys).await.expect("view");
                loaded_tx.send(view.state().revision).expect("send");
                // Blocks the runtime's only thread: the view's watch task does not run.
                go_rx.recv_timeout(WAIT).expect("go");
                let last = tokio::time::timeout(WAIT, last_rx)
                    .await
                    .expect("last revision")
                    .expect("sender");
                let s = view
                    .wait_for(WAIT, "the writers' last revision", |s| s.revision >= last)
                    .await
                    .expect("lagging view follows");
                (s, view.reloads(), view.compacted_reloads())
            })
        })
    };
    let lag_rev = loaded_rx.recv_timeout(WAIT).expect("lagging view loaded");

    rt.block_on(async {
        let follower = ClusterView::start(client.clone(), keys.clone())
            .await
            .expect("view");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let policy = HistoryPolicy {
            retention: Duration::from_millis(300),
            interval: Duration::from_millis(50),
        };
        let runner = tokio::spawn(history::run(
            client.clone(),
            keys.clone(),
            policy,
            None,
            || true,
            stop_rx,
        ));

        // Two writers, without pause, until told to stop (at most 100,000 puts each).
        let stop = Arc::new(AtomicBool::new(false));
        let puts = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicI64::new(0));
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let (stop, puts, last) = (stop.clone(), puts.clone(), last.clone());
                let (mut c, keys) = (client.clone(), keys.clone());
                tokio::spawn(async move {
                    let mut g = 1u64;
                    while !stop.load(Ordering::Relaxed) && g < 100_000 {
                        g += 1;
                        for shard in (w..SHARDS).step_by(2) {
                            let r = c
                                .put(keys.manifest(shard), manifest(shard, g), None)
                                .await
                                .expect("writer put");
                            last.fetch_max(r.header().map_or(0, |h| h.revision()), Ordering::SeqCst);
                            puts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();

        // Until enough was written past the lagging view and history is compacted past
        // the revision it loaded at.
        let w0 = Instant::now();
        loop {
            assert!(w0.elapsed() < WAIT, "no compaction past the lagging view within {WAIT:?}");
            let past = client
                .clone()
                .get(keys.manifest(0), Some(GetOptions::new().with_revision(lag_rev + 1)))
                .await;
            let compacted = matches!(&past, Err(e) if is_compacted(e));
            if compacted && puts.load(Ordering::Relaxed) >= PUTS_WHILE_BLOCKED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let blocked_puts = puts.load(Ordering::Relaxed);
        go_tx.send(()).expect("go");

        // The writers go on while the lagging view catches up, then stop.
        let target = blocked_puts + 300;
        while puts.load(Ordering::Relaxed) < target {
            assert!(w0.elapsed() < 2 * WAIT, "writers stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(WAIT, w)
                .await
                .expect("writer stops")
                .expect("writer");
        }
        let last_rev = last.load(Ordering::SeqCst);
        last_tx.send(last_rev).expect("send");

        // The writers' first revision is compacted away.
        let old = client
            .clone()
            .get(keys.manifest(0), Some(GetOptions::new().with_revision(first_rev)))
            .await;
        assert!(
            matches!(&old, Err(e) if is_compacted(e)),
            "revision {first_rev} still readable: {:?}",
            old.map(|r| r.kvs().len())
        );

        // The follower kept up and equals a fresh load.
        let s = follower
            .wait_for(WAIT, "the writers' last revision", |s| s.revision >= last_rev)
            .await
            .expect("follower follows");
        let fresh = ClusterView::start(client.clone(), keys.clone())
            .await
            .expect("view")
            .state();
        assert!(same(&s, &fresh), "follower differs from a fresh load");
        assert_eq!(fresh.manifests.len(), SHARDS as usize);

        let (ls, reloads, compacted_reloads) = lagging.join().expect("lagging thread");
        assert!(
            compacted_reloads >= 1,
            "the lagging view was not canceled for compaction ({reloads} reloads)"
        );
        assert!(same(&ls, &fresh), "lagging view differs from a fresh load");

        let status = client.clone().status().await.expect("status");
        let _ = stop_tx.send(true);
        tokio::time::timeout(WAIT, runner)
            .await
            .expect("runner stops")
            .expect("runner");
        eprintln!(
            "{} puts (revisions {first_rev}..{last_rev}), {blocked_puts} while the lagging view \
             was blocked at {lag_rev}; follower reloads {} ({} for compaction); lagging view \
             reloads {reloads} ({compacted_reloads} for compaction); etcd db {} B, in use {} B; {:?}",
            puts.load(Ordering::Relaxed),
            follower.reloads(),
            follower.compacted_reloads(),
            status.db_size(),
            status.raft_used_db_size(),
            t0.elapsed()
        );
    });
    drop(etcd);
}
