//! Keeping etcd's history bounded. Every manifest commit is a put of the whole manifest,
//! and etcd keeps every revision until it is compacted, so under sustained writes the
//! history alone fills etcd's quota (docs/SCALE.md, §etcd). The tier compacts it itself,
//! without relying on etcd's `--auto-compaction-*` flags: one node of the cluster (the
//! live member with the smallest id, [`is_compactor`]) periodically compacts etcd at the
//! revision that was current [`HistoryPolicy::retention`] ago, the same rule as etcd's
//! own periodic mode.
//!
//! Why that revision is safe: a watcher that lags the writers by less than the retention
//! has already seen that revision, so its watch goes on; one that lags more (paused,
//! partitioned) gets a "compacted" cancel and reloads its view from a fresh snapshot
//! (`view.rs`); a paged prefix read whose snapshot is compacted away mid-read starts
//! over (`coord::scan_prefix`). Fencing compares mod and create revisions of the *live*
//! keys, which compaction keeps.
//!
//! The policy ([`HistoryPlanner`]) is pure: it is fed (time, revision) samples and says
//! at which revision to compact. The runner ([`run`], [`step`]) asks etcd for its
//! revision and sends the compaction. Compaction in etcd is global (every key of the
//! etcd cluster, not only this cluster's prefix); two compactors at once (two views that
//! briefly disagree on the member list, or etcd's own auto-compaction) are harmless: a
//! compaction at or below the current compacted revision is refused and counted as done.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;

use crate::defrag::{DefragPlanner, DefragPolicy, DefragStep};
use crate::error::{Error, Result};
use crate::manifest::{ClusterConfig, Keys};
use crate::view::ViewState;

/// When to compact etcd's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// History kept: the compaction revision is the one that was current this long ago.
    pub retention: Duration,
    /// How often the revision is sampled (and a compaction considered).
    pub interval: Duration,
}

impl HistoryPolicy {
    /// The cluster's policy: `etcd_history_s` of history, sampled every tenth of it
    /// (between 1 s and 60 s). `None` when the config turns compaction off (0).
    pub fn from_config(c: &ClusterConfig) -> Option<Self> {
        (c.etcd_history_s > 0).then(|| {
            let retention = Duration::from_secs(c.etcd_history_s);
            HistoryPolicy {
                retention,
                interval: (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            }
        })
    }
}

/// Samples kept at most (a retention of a day sampled every 60 s needs 1,441).
const MAX_SAMPLES: usize = 4096;

/// The pure compaction policy: from samples of etcd's revision over time, the revision
/// to compact at — the newest one that was current at least `retention` ago — whenever
/// it is above the last compaction.
#[derive(Clone, Debug)]
pub struct HistoryPlanner {
    retention_ms: u64,
    /// (time in ms, revision), both increasing; a revision is kept with the first time
    /// it was seen.
    samples: VecDeque<(u64, i64)>,
    compacted: i64,
}

impl HistoryPlanner {
    /// A planner keeping `retention` of history.
    pub fn new(retention: Duration) -> Self {
        HistoryPlanner {
            retention_ms: retention.as_millis().try_into().unwrap_or(u64::MAX),
            samples: VecDeque::new(),
            compacted: 0,
        }
    }

    /// Records that etcd was at `revision` at `now_ms` (milliseconds of a monotonic
    /// clock, any origin), and returns the revision to compact at, if one is due.
    ///
    /// A revision lower than the last sample's (a different or restored etcd) drops the
    /// samples and the last compaction: the planner starts over, so the next compaction
    /// comes at the earliest one retention later. A time earlier than the last sample's
    /// is taken as the last sample's time.
    pub fn observe(&mut self, now_ms: u64, revision: i64) -> Option<i64> {
        if revision <= 0 {
            return None;
        }
        let (mut now, mut push) = (now_ms, true);
        if let Some(&(t, r)) = self.samples.back() {
            now = now.max(t);
            if revision < r {
                self.samples.clear();
                self.compacted = 0;
            } else if revision == r {
                push = false;
            }
        }
        if push {
            self.samples.push_back((now, revision));
            if self.samples.len() > MAX_SAMPLES {
                // Dropping the oldest only delays the next compaction.
                self.samples.pop_front();
            }
        }
        // The newest sample at least `retention` old; every older one is not needed again.
        let cutoff = now.checked_sub(self.retention_ms)?;
        let newest_old = self.samples.iter().rposition(|&(t, _)| t <= cutoff)?;
        self.samples.drain(..newest_old);
        let target = self.samples.front().map(|&(_, r)| r)?;
        (target > self.compacted).then_some(target)
    }

    /// Notes that etcd's history is compacted up to `revision` (done by this runner, or
    /// found already done by someone else).
    pub fn compacted(&mut self, revision: i64) {
        self.compacted = self.compacted.max(revision);
    }

    /// The highest revision compacted so far (0: none).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }
}

/// Whether `node` is the one that compacts: the live member with the smallest id in the
/// view. Views that briefly disagree may make two compactors, which is harmless.
pub fn is_compactor(state: &ViewState, node: &str) -> bool {
    state.nodes.keys().next().is_some_and(|n| n == node)
}

/// What one [`step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// etcd's revision was sampled; nothing was due (or this runner does not compact).
    Sampled(i64),
    /// History was compacted at this revision.
    Compacted(i64),
    /// The compaction was refused because history was already compacted further (by
    /// another compactor, or etcd's auto-compaction).
    AlreadyCompacted(i64),
}

/// etcd's current revision: the header of a count-only read of the config key.
pub async fn current_revision(client: &etcd_client::Client, keys: &Keys) -> Result<i64> {
    let r = crate::coord::retry(|| {
        let mut c = client.clone();
        let k = keys.config();
        async move {
            c.get(k, Some(etcd_client::GetOptions::new().with_count_only()))
                .await
        }
    })
    .await
    .map_err(|e| Error::etcd("reading etcd's revision", e))?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// One round of the runner: samples etcd's revision at `now_ms` and, when `compact`
/// is set and the planner says a compaction is due, compacts etcd's history there.
pub async fn step(
    client: &etcd_client::Client,
    keys: &Keys,
    planner: &mut HistoryPlanner,
    now_ms: u64,
    compact: bool,
) -> Result<Step> {
    let rev = current_revision(client, keys).await?;
    let Some(target) = planner.observe(now_ms, rev) else {
        return Ok(Step::Sampled(rev));
    };
    if !compact {
        return Ok(Step::Sampled(rev));
    }
    let r = crate::coord::retry(|| {
        let mut c = client.clone();
        async move { c.compact(target, None).await }
    })
    .await;
    match r {
        Ok(_) => {
            planner.compacted(target);
            Ok(Step::Compacted(target))
        }
        Err(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted") =>
        {
            planner.compacted(target);
            Ok(Step::AlreadyCompacted(target))
        }
        Err(e) => Err(Error::etcd(
            format!("compacting etcd at revision {target}"),
            e,
        )),
    }
}

/// Runs [`step`] every `policy.interval` until `stop` turns true, compacting while
/// `compactor()` says so (it samples either way, so a node that becomes the compactor
/// can compact at once); the compactor then also runs a round of `defrag` (when given:
/// `defrag.rs`) to give the freed space back. Failures are logged and the next round
/// tries again.
pub async fn run(
    client: etcd_client::Client,
    keys: Keys,
    policy: HistoryPolicy,
    defrag: Option<DefragPolicy>,
    compactor: impl Fn() -> bool,
    mut stop: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now();
    let mut planner = HistoryPlanner::new(policy.retention);
    let mut defrag = defrag.map(DefragPlanner::new);
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now_ms = start.elapsed().as_millis() as u64;
        let compact = compactor();
        match step(&client, &keys, &mut planner, now_ms, compact).await {
            Ok(Step::Compacted(rev)) => tracing::info!(rev, "etcd history compacted"),
            Ok(Step::AlreadyCompacted(rev)) => {
                tracing::debug!(rev, "etcd history already compacted past this revision")
            }
            Ok(Step::Sampled(_)) => {}
            Err(e) => tracing::warn!(error = %e, "etcd history compaction failed"),
        }
        let Some(d) = defrag.as_mut().filter(|_| compact) else {
            continue;
        };
        match crate::defrag::step(&client, d, now_ms).await {
            Ok(DefragStep::Defragmented { before, after }) => tracing::info!(
                member = %before.endpoint,
                before = before.db_size,
                after = after.db_size,
                in_use = after.in_use,
                "etcd member defragmented"
            ),
            Ok(DefragStep::Unreachable(missing)) => {
                tracing::debug!(?missing, "etcd defragmentation waits for every member")
            }
            Ok(DefragStep::NotDue) => {}
            Err(e) => tracing::warn!(error = %e, "etcd defragmentation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Duration = Duration::from_secs(10);

    #[test]
    fn nothing_is_due_before_one_retention_has_passed() {
        let mut p = HistoryPlanner::new(R);
        assert_eq!(p.observe(0, 100), None);
        assert_eq!(p.observe(5_000, 200), None);
        assert_eq!(p.observe(9_999, 300), None);
        // At 10 s the sample of t = 0 is one retention old.
        assert_eq!(p.observe(10_000, 400), Some(100));
    }

    #[test]
    fn the_target_is_the_newest_revision_at_least_one_retention_old() {
        let mut p = HistoryPlanner::new(R);
        for (t, r) in [(0, 10), (1_000, 20), (2_000, 30), (3_000, 40)] {
            assert_eq!(p.observe(t, r), None);
        }
        // 12.5 s: samples at 0, 1 and 2 s are old enough; 2 s (rev 30) is the newest.
        assert_eq!(p.observe(12_500, 90), Some(30));
        p.compacted(30);
        // Not due again until a newer sample ages.
        assert_eq!(p.observe(12_900, 95), None);
        assert_eq!(p.observe(13_000, 96), Some(40));
    }

    #[test]
    fn the_target_is_always_behind_the_current_revision_by_one_retention() {
        // Whatever the samples, the target was observed ≥ retention before `now`, and is
        // at most the current revision.
        let mut p = HistoryPlanner::new(R);
        let mut seen: Vec<(u64, i64)> = Vec::new();
        let (mut t, mut r) = (0u64, 1i64);
        for i in 0..500u64 {
            t += 137 + (i * 7919) % 1_500;
            r += ((i * 104_729) % 50) as i64;
            seen.push((t, r));
            if let Some(target) = p.observe(t, r) {
                assert!(target <= r);
                let first_seen = seen.iter().find(|&&(_, x)| x == target).expect("sampled").0;
                assert!(
                    first_seen + 10_000 <= t,
                    "rev {target} seen at {first_seen}, now {t}"
                );
                // No revision that was current within the retention is compacted: the
                // next sample after the target is younger than one retention.
                let after = seen.iter().find(|&&(_, x)| x > target);
                assert!(after.is_none_or(|&(ta, _)| ta + 10_000 > t));
                p.compacted(target);
            }
        }
        assert!(p.compacted_revision() > 0);
        assert!(p.samples.len() <= 100, "{} samples kept", p.samples.len());
    }

    #[test]
    fn an_idle_etcd_is_compacted_once() {
        let mut p = HistoryPlanner::new(R);
        assert_eq!(p.observe(0, 7), None);
        assert_eq!(p.observe(10_000, 7), Some(7));
        p.compacted(7);
        for t in (11_000..100_000).step_by(1_000) {
            assert_eq!(p.observe(t, 7), None, "idle at {t}");
        }
        assert_eq!(p.samples.len(), 1);
    }

    #[test]
    fn a_compaction_found_done_is_not_asked_again() {
        let mut p = HistoryPlanner::new(R);
        p.observe(0, 10);
        assert_eq!(p.observe(10_000, 20), Some(10));
        // Another compactor went further (the runner learns it from etcd's refusal).
        p.compacted(15);
        assert_eq!(p.observe(10_500, 21), None);
        assert_eq!(p.observe(20_000, 30), Some(20));
    }

    #[test]
    fn a_revision_going_back_starts_over() {
        let mut p = HistoryPlanner::new(R);
        p.observe(0, 1_000);
        assert_eq!(p.observe(10_000, 2_000), Some(1_000));
        p.compacted(1_000);
        // etcd restored from an older snapshot: its revisions are lower now.
        assert_eq!(p.observe(11_000, 50), None);
        assert_eq!(p.compacted_revision(), 0);
        assert_eq!(p.observe(20_999, 60), None);
        assert_eq!(p.observe(21_000, 70), Some(50));
    }

    #[test]
    fn time_going_back_is_clamped() {
        let mut p = HistoryPlanner::new(R);
        p.observe(5_000, 1);
        assert_eq!(p.observe(1_000, 2), None);
        assert_eq!(p.observe(15_000, 3), Some(2));
    }

    #[test]
    fn zero_revision_is_ignored_and_samples_stay_bounded() {
        let mut p = HistoryPlanner::new(Duration::from_secs(1 << 30));
        assert_eq!(p.observe(0, 0), None);
        for i in 0..(MAX_SAMPLES as u64 + 100) {
            p.observe(i, i as i64 + 1);
        }
        assert_eq!(p.samples.len(), MAX_SAMPLES);
    }

    #[test]
    fn policy_from_config() {
        let store = mome::StoreConfig::new(4, 4, 1, vec![0]);
        let mut c = ClusterConfig::new(store, 1);
        assert_eq!(c.etcd_history_s, 300);
        assert_eq!(
            HistoryPolicy::from_config(&c),
            Some(HistoryPolicy {
                retention: Duration::from_secs(300),
                interval: Duration::from_secs(30),
            })
        );
        c.etcd_history_s = 5;
        assert_eq!(
            HistoryPolicy::from_config(&c).map(|p| p.interval),
            Some(Duration::from_secs(1))
        );
        c.etcd_history_s = 86_400;
        assert_eq!(
            HistoryPolicy::from_config(&c).map(|p| p.interval),
            Some(Duration::from_secs(60))
        );
        c.etcd_history_s = 0;
        assert_eq!(HistoryPolicy::from_config(&c), None);
    }

    #[test]
    fn the_compactor_is_the_smallest_live_member() {
        let mut s = ViewState::default();
        assert!(!is_compactor(&s, "b"));
        for n in ["c", "b", "d"] {
            s.nodes.insert(
                n.to_string(),
                crate::manifest::NodeInfo {
                    id: n.to_string(),
                    addr: format!("{n}:1"),
                    started_ms: 0,
                },
            );
        }
        assert!(is_compactor(&s, "b"));
        assert!(!is_compactor(&s, "c"));
        s.nodes.remove("b");
        assert!(is_compactor(&s, "c"));
    }
}
