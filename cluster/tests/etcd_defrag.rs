//! The space compaction frees in etcd's db files goes back to the disk, one member at a
//! time (docs/SCALE.md, §etcd; `mome_cluster::defrag`). A 3-member etcd on 127.0.0.1,
//! started without auto-compaction, is filled with ≈ 25 MB of overwrites of 8 keys
//! and compacted, so that every member's file is mostly free pages. Then:
//!
//! * rounds of `defrag::step` rewrite the two followers and then the leader, one per
//!   round, each file shrinking below half its size, while a writer's puts all succeed;
//! * the node's runner (`history::run` with a defragmentation policy) does the same by
//!   itself after a second fill, compacting and defragmenting;
//! * with one member killed, nothing is defragmented.
//!
//! Every loop is bounded; etcd is SIGKILLed by PID at the end. Skipped when etcd is
//! missing, except under CI.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::CompactionOptions;
use mome_cluster::coord;
use mome_cluster::defrag::{self, DefragPlanner, DefragPolicy, DefragStep, MemberSpace};
use mome_cluster::history::{self, HistoryPolicy};
use mome_cluster::manifest::Keys;

/// Overwrites of 64 KiB values to 8 keys: ≈ 25 MB of history, 512 KiB live.
const PUTS: usize = 400;
const VALUE: usize = 64 << 10;
/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

/// A policy for these small files: 4 MiB and half of the file free, no gap.
fn policy() -> DefragPolicy {
    DefragPolicy {
        min_free_bytes: 4 << 20,
        min_free_percent: 50,
        min_gap: Duration::ZERO,
        sole_member: false,
    }
}

async fn fill(client: &etcd_client::Client, round: u8) -> i64 {
    let mut c = client.clone();
    let mut rev = 0;
    for i in 0..PUTS {
        let value = vec![round.wrapping_add(i as u8); VALUE];
        let r = c
            .put(format!("defrag/k{}", i % 8), value, None)
            .await
            .expect("put");
        rev = r.header().map_or(0, |h| h.revision());
    }
    rev
}

/// Every member's space, once all of them answer (bounded).
async fn spaces(client: &etcd_client::Client) -> Vec<MemberSpace> {
    let t0 = Instant::now();
    loop {
        let (s, missing) = defrag::member_spaces(client).await.expect("statuses");
        if missing.is_empty() {
            return s;
        }
        assert!(t0.elapsed() < WAIT, "members not answering: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small write: bbolt counts the pages a commit released as free only at a later
/// commit, and etcd commits only when there are writes.
async fn tick(client: &etcd_client::Client) {
    client
        .clone()
        .put("defrag/tick", "x", None)
        .await
        .expect("put");
}

/// Fills etcd (`fill`), compacts all of it and returns the spaces once every member's
/// file is at least 60 % free pages.
async fn fill_and_compact(client: &etcd_client::Client) -> Vec<MemberSpace> {
    let rev = fill(client, 0).await;
    client
        .clone()
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    fragmented(client, 60).await
}

/// Waits (bounded) until every member's file is at least `percent` % free pages and
/// returns the spaces, writing a small key on each round (`tick`).
async fn fragmented(client: &etcd_client::Client, percent: u64) -> Vec<MemberSpace> {
    let t0 = Instant::now();
    loop {
        tick(client).await;
        let s = spaces(client).await;
        if s.iter().all(|m| m.free() * 100 >= m.db_size * percent) {
            return s;
        }
        assert!(t0.elapsed() < WAIT, "not fragmented: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn members_are_defragmented_one_at_a_time_followers_first() {
    let t0 = Instant::now();
    let Some(etcd) = common::etcd_members(3) else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(async {
        let client = coord::connect(&etcd.endpoints()).await.expect("connect");
        let before = fill_and_compact(&client).await;
        assert_eq!(before.len(), 3);
        assert_eq!(before.iter().filter(|m| m.leader).count(), 1, "{before:?}");
        eprintln!("fragmented: {before:?}");

        // A writer of small values runs throughout: etcd keeps serving.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let writer = {
            let (stop, ok, failed, mut c) =
                (stop.clone(), ok.clone(), failed.clone(), client.clone());
            tokio::spawn(async move {
                for i in 0..100_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match c
                        .put(format!("defrag/w{}", i % 4), i.to_le_bytes().to_vec(), None)
                        .await
                    {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("put {i}: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        let mut planner = DefragPlanner::new(policy());
        let mut order = Vec::new();
        for round in 0..6u64 {
            match defrag::step(&client, &mut planner, round)
                .await
                .expect("step")
            {
                DefragStep::Defragmented { before, after } => {
                    eprintln!("round {round}: {before:?} -> {after:?}");
                    assert_eq!(before.id, after.id);
                    assert!(
                        after.db_size * 2 < before.db_size,
                        "member {} did not shrink: {} -> {}",
                        before.endpoint,
                        before.db_size,
                        after.db_size
                    );
                    order.push(before);
                }
                DefragStep::NotDue => break,
                DefragStep::Unreachable(m) => panic!("unreachable members {m:?}"),
            }
        }
        stop.store(true, Ordering::SeqCst);
        writer.await.expect("writer");

        assert_eq!(order.len(), 3, "one member per round, each once: {order:?}");
        let mut ids: Vec<_> = order.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{order:?}");
        assert!(
            !order[0].leader && !order[1].leader && order[2].leader,
            "{order:?}"
        );
        assert!(ok.load(Ordering::SeqCst) > 0);
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "puts failed during defragmentation"
        );

        // The node's runner does it by itself: compaction at 300 ms of history, then a
        // defragmentation round after it on every tick.
        fill(&client, 1).await;
        let big: u64 = spaces(&client)
            .await
            .iter()
            .map(|m| m.db_size)
            .min()
            .expect("3");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let runner = tokio::spawn(history::run(
            client.clone(),
            Keys::new("defrag"),
            HistoryPolicy {
                retention: Duration::from_millis(300),
                interval: Duration::from_millis(100),
            },
            Some(policy()),
            || true,
            stop_rx,
        ));
        let t1 = Instant::now();
        let small = loop {
            // Writes go on (see `tick`).
            tick(&client).await;
            let s = spaces(&client).await;
            if s.iter().all(|m| m.db_size * 2 < big) {
                break s;
            }
            assert!(
                t1.elapsed() < WAIT,
                "the runner did not defragment: {big} then {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        stop_tx.send(true).expect("stop");
        runner.await.expect("runner");
        eprintln!("runner: every file below {big} / 2: {small:?}");
    });
    eprintln!("done in {:?}", t0.elapsed());
}

#[test]
fn nothing_is_defragmented_while_a_member_is_down() {
    let Some(mut etcd) = common::etcd_members(3) else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(async {
        let client = coord::connect(&etcd.endpoints()).await.expect("connect");
        fill_and_compact(&client).await;
        let down = etcd.endpoints()[2].clone();
        etcd.kill(2);

        let mut planner = DefragPlanner::new(policy());
        for round in 0..3 {
            match defrag::step(&client, &mut planner, round)
                .await
                .expect("step")
            {
                DefragStep::Unreachable(missing) => assert_eq!(missing, vec![down.clone()]),
                other => panic!("with {down} down: {other:?}"),
            }
        }
        let (live, missing) = defrag::member_spaces(&client).await.expect("statuses");
        assert_eq!(missing, vec![down]);
        assert_eq!(live.len(), 2);
        assert!(
            live.iter().all(|m| m.free() * 100 >= m.db_size * 60),
            "{live:?}"
        );
    });
}
