//! Giving the space that compaction freed in etcd's db file back to the disk.
//!
//! Compaction (`history.rs`) frees pages inside each member's bbolt file and later writes
//! reuse them, but the file never shrinks; only a defragmentation rewrites it. A
//! defragmentation blocks the member it runs on (no reads, no applies) for as long as it
//! takes to copy the data in use, so the tier runs it the way etcd's operators are told
//! to: one member at a time, followers before the leader, and only while every member
//! answers — so that the member being rewritten is the only one not serving, and a
//! 3-member etcd keeps its quorum. A sole member is left to the operator by default: its
//! defragmentation would stop etcd altogether.
//!
//! The policy ([`DefragPlanner`]) is pure: it is given each member's file size and bytes
//! in use and says which member to defragment, if any. The runner ([`step`]) asks every
//! member for its status and sends the defragmentation; the history runner
//! (`history::run`) calls it after each compaction round on the compacting node.

use std::time::Duration;

use crate::error::{Error, Result};

/// When a member's db file is worth rewriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefragPolicy {
    /// Bytes of the file not in use, at least.
    pub min_free_bytes: u64,
    /// …and at least this share of the file, in percent.
    pub min_free_percent: u8,
    /// Time between two defragmentations (of any member), at least.
    pub min_gap: Duration,
    /// Whether a sole member is defragmented (etcd is then down while it runs).
    pub sole_member: bool,
}

impl Default for DefragPolicy {
    /// 256 MiB and half the file free, at most one member every 10 minutes, never a
    /// sole member: rare enough that the pause (about a second per 100 MB in use on a
    /// local SSD) is not felt, soon enough that a 4 GiB quota is not reached through
    /// fragmentation alone.
    fn default() -> Self {
        DefragPolicy {
            min_free_bytes: 256 << 20,
            min_free_percent: 50,
            min_gap: Duration::from_secs(600),
            sole_member: false,
        }
    }
}

/// One member's space, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpace {
    /// The member's id.
    pub id: u64,
    /// Its client endpoint (`host:port`).
    pub endpoint: String,
    /// Size of its db file, in bytes.
    pub db_size: u64,
    /// Bytes of the file in use (the rest is free pages).
    pub in_use: u64,
    /// Whether it is the leader.
    pub leader: bool,
}

impl MemberSpace {
    /// Bytes a defragmentation would give back.
    pub fn free(&self) -> u64 {
        self.db_size.saturating_sub(self.in_use)
    }
}

/// The pure defragmentation policy.
#[derive(Clone, Debug)]
pub struct DefragPlanner {
    policy: DefragPolicy,
    /// When the last defragmentation was sent (ms of the runner's clock).
    last_ms: Option<u64>,
}

impl DefragPlanner {
    /// A planner following `policy`.
    pub fn new(policy: DefragPolicy) -> Self {
        DefragPlanner {
            policy,
            last_ms: None,
        }
    }

    /// The member to defragment at `now_ms`, as an index into `members`, given the
    /// statuses of the members that answered and how many members etcd has.
    ///
    /// None while the last defragmentation is less than `min_gap` ago, while any member
    /// did not answer (`members.len() < total`), for a sole member unless the policy
    /// allows it, and when no member has enough free space. Otherwise the follower with
    /// the most free bytes (ties: the smaller id); the leader only when no follower
    /// qualifies.
    pub fn plan(&self, now_ms: u64, members: &[MemberSpace], total: usize) -> Option<usize> {
        if !self.gap_passed(now_ms) {
            return None;
        }
        if members.is_empty() || members.len() < total {
            return None;
        }
        if members.len() == 1 && !self.policy.sole_member {
            return None;
        }
        let p = &self.policy;
        let worth = |m: &MemberSpace| {
            let free = m.free();
            free > 0
                && free >= p.min_free_bytes
                && u128::from(free) * 100 >= u128::from(m.db_size) * u128::from(p.min_free_percent)
        };
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| worth(m))
            // Followers first, then the most free bytes, then the smaller id.
            .min_by_key(|(_, m)| (m.leader, std::cmp::Reverse(m.free()), m.id))
            .map(|(i, _)| i)
    }

    /// Whether `min_gap` has passed since the last defragmentation at `now_ms` (or none
    /// was sent yet): before that, [`DefragPlanner::plan`] answers None whatever the
    /// members, so [`step`] does not ask them.
    pub fn gap_passed(&self, now_ms: u64) -> bool {
        let gap_ms = u64::try_from(self.policy.min_gap.as_millis()).unwrap_or(u64::MAX);
        self.last_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= gap_ms)
    }

    /// Notes that a defragmentation was sent at `now_ms` (whether it succeeded or not:
    /// a failing member is not asked again before `min_gap`).
    pub fn sent(&mut self, now_ms: u64) {
        self.last_ms = Some(now_ms);
    }
}

/// How long one defragmentation may take before the runner gives up waiting (the
/// member goes on with it regardless).
pub const DEFRAG_TIMEOUT: Duration = Duration::from_secs(120);

/// What one [`step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefragStep {
    /// The gap since the last defragmentation has not passed, or every member
    /// answered and none was due.
    NotDue,
    /// Some member did not answer its status (the endpoints listed): nothing was sent.
    Unreachable(Vec<String>),
    /// A member was defragmented: its space before and after.
    Defragmented {
        /// Before.
        before: MemberSpace,
        /// After (from its status right after the defragmentation).
        after: MemberSpace,
    },
}

/// The status of every member of the etcd cluster behind `client`: the spaces of those
/// that answered, the endpoints of those that did not.
pub async fn member_spaces(
    client: &etcd_client::Client,
) -> Result<(Vec<MemberSpace>, Vec<String>)> {
    let list = crate::coord::retry(|| {
        let mut c = client.clone();
        async move { c.member_list().await }
    })
    .await
    .map_err(|e| Error::etcd("listing etcd's members", e))?;
    let (mut spaces, mut missing) = (Vec::new(), Vec::new());
    for m in list.members() {
        let Some(url) = m.client_urls().first() else {
            // A member added but never started has no client URL yet.
            missing.push(format!("member {:x} (not started)", m.id()));
            continue;
        };
        let endpoint = url.trim_start_matches("http://").to_string();
        match member_space(&endpoint, m.id()).await {
            Ok(s) => spaces.push(s),
            Err(e) => {
                tracing::debug!(endpoint, error = %e, "etcd member did not answer its status");
                missing.push(endpoint);
            }
        }
    }
    Ok((spaces, missing))
}

/// One member's space, asked of that member alone.
async fn member_space(endpoint: &str, id: u64) -> Result<MemberSpace> {
    let mut c = crate::coord::connect(&[endpoint.to_string()]).await?;
    let s = c
        .status()
        .await
        .map_err(|e| Error::etcd(format!("status of etcd member {endpoint}"), e))?;
    Ok(MemberSpace {
        id,
        endpoint: endpoint.to_string(),
        db_size: u64::try_from(s.db_size()).unwrap_or(0),
        in_use: u64::try_from(s.raft_used_db_size()).unwrap_or(0),
        leader: s.leader() == id,
    })
}

/// One round: unless the planner's gap is still running at `now_ms` (then nothing is
/// asked), asks every member's status and, when the planner says so, defragments the
/// member it picks.
pub async fn step(
    client: &etcd_client::Client,
    planner: &mut DefragPlanner,
    now_ms: u64,
) -> Result<DefragStep> {
    if !planner.gap_passed(now_ms) {
        return Ok(DefragStep::NotDue);
    }
    let (spaces, missing) = member_spaces(client).await?;
    if !missing.is_empty() {
        return Ok(DefragStep::Unreachable(missing));
    }
    let Some(i) = planner.plan(now_ms, &spaces, spaces.len()) else {
        return Ok(DefragStep::NotDue);
    };
    let before = spaces[i].clone();
    planner.sent(now_ms);
    let mut c =
        crate::coord::connect_with_timeout(std::slice::from_ref(&before.endpoint), DEFRAG_TIMEOUT)
            .await?;
    c.defragment().await.map_err(|e| {
        Error::etcd(
            format!(
                "defragmenting etcd member {} ({} bytes, {} in use)",
                before.endpoint, before.db_size, before.in_use
            ),
            e,
        )
    })?;
    let after = member_space(&before.endpoint, before.id).await?;
    Ok(DefragStep::Defragmented { before, after })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, db: u64, used: u64, leader: bool) -> MemberSpace {
        MemberSpace {
            id,
            endpoint: format!("127.0.0.1:{id}"),
            db_size: db,
            in_use: used,
            leader,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn followers_go_before_the_leader_most_free_first() {
        let p = DefragPlanner::new(DefragPolicy::default());
        let ms = [
            m(1, 2048 * MIB, 100 * MIB, true),
            m(2, 1024 * MIB, 100 * MIB, false),
            m(3, 1500 * MIB, 100 * MIB, false),
        ];
        assert_eq!(p.plan(0, &ms, 3), Some(2));
        // Once both followers are small, the leader.
        let ms = [
            m(1, 2048 * MIB, 100 * MIB, true),
            m(2, 110 * MIB, 100 * MIB, false),
            m(3, 110 * MIB, 100 * MIB, false),
        ];
        assert_eq!(p.plan(0, &ms, 3), Some(0));
    }

    #[test]
    fn equal_followers_are_taken_by_id() {
        let p = DefragPlanner::new(DefragPolicy::default());
        let ms = [
            m(9, 1024 * MIB, 0, false),
            m(4, 1024 * MIB, 0, false),
            m(1, 1024 * MIB, 0, true),
        ];
        assert_eq!(p.plan(0, &ms, 3), Some(1));
    }

    #[test]
    fn both_thresholds_must_hold() {
        let p = DefragPlanner::new(DefragPolicy::default());
        // 300 MiB free but only 30 % of the file.
        assert_eq!(
            p.plan(
                0,
                &[m(1, 1000 * MIB, 700 * MIB, false), m(2, 0, 0, true)],
                2
            ),
            None
        );
        // 90 % of the file free but only 90 MiB.
        assert_eq!(
            p.plan(0, &[m(1, 100 * MIB, 10 * MIB, false), m(2, 0, 0, true)], 2),
            None
        );
        // Exactly at both.
        assert_eq!(
            p.plan(0, &[m(1, 512 * MIB, 256 * MIB, false), m(2, 0, 0, true)], 2),
            Some(0)
        );
        // in_use above db_size (a status taken mid-write) is no free space.
        assert_eq!(
            p.plan(0, &[m(1, MIB, 2 * MIB, false), m(2, 0, 0, true)], 2),
            None
        );
    }

    #[test]
    fn nothing_while_a_member_is_missing() {
        let p = DefragPlanner::new(DefragPolicy::default());
        let ms = [m(1, 2048 * MIB, 0, false), m(2, 2048 * MIB, 0, true)];
        assert_eq!(p.plan(0, &ms, 3), None);
        assert_eq!(p.plan(0, &ms, 2), Some(0));
        assert_eq!(p.plan(0, &[], 0), None);
    }

    #[test]
    fn a_sole_member_only_when_allowed() {
        let sole = [m(1, 2048 * MIB, 0, true)];
        assert_eq!(
            DefragPlanner::new(DefragPolicy::default()).plan(0, &sole, 1),
            None
        );
        let p = DefragPlanner::new(DefragPolicy {
            sole_member: true,
            ..DefragPolicy::default()
        });
        assert_eq!(p.plan(0, &sole, 1), Some(0));
    }

    #[test]
    fn one_defragmentation_per_gap() {
        let mut p = DefragPlanner::new(DefragPolicy::default());
        let ms = [m(1, 2048 * MIB, 0, false), m(2, 2048 * MIB, 0, true)];
        assert_eq!(p.plan(1_000, &ms, 2), Some(0));
        p.sent(1_000);
        assert_eq!(p.plan(1_000, &ms, 2), None);
        assert_eq!(p.plan(600_999, &ms, 2), None);
        assert_eq!(p.plan(601_000, &ms, 2), Some(0));
        // A zero gap allows one every round.
        let mut p = DefragPlanner::new(DefragPolicy {
            min_gap: Duration::ZERO,
            ..DefragPolicy::default()
        });
        p.sent(5);
        assert_eq!(p.plan(5, &ms, 2), Some(0));
        // A huge gap does not overflow.
        let mut p = DefragPlanner::new(DefragPolicy {
            min_gap: Duration::MAX,
            ..DefragPolicy::default()
        });
        p.sent(u64::MAX - 1);
        assert_eq!(p.plan(u64::MAX, &ms, 2), None);
    }

    #[test]
    fn the_pick_always_qualifies_and_prefers_followers() {
        // Exhaustive over small shapes: whatever is picked has enough free space, is a
        // follower whenever some follower qualifies, and has the most free bytes among
        // those of its role.
        let p = DefragPlanner::new(DefragPolicy {
            min_free_bytes: 4,
            min_free_percent: 50,
            min_gap: Duration::ZERO,
            sole_member: true,
        });
        let sizes = [(0u64, 0u64), (8, 1), (8, 5), (16, 2), (16, 8), (10, 6)];
        for a in sizes {
            for b in sizes {
                for c in sizes {
                    for leader in 0..3 {
                        let ms: Vec<_> = [a, b, c]
                            .iter()
                            .enumerate()
                            .map(|(i, &(d, u))| m(i as u64 + 1, d, u, i == leader))
                            .collect();
                        let ok = |x: &MemberSpace| x.free() >= 4 && x.free() * 2 >= x.db_size;
                        match p.plan(0, &ms, 3) {
                            None => assert!(!ms.iter().any(ok), "{ms:?}"),
                            Some(i) => {
                                let x = &ms[i];
                                assert!(ok(x), "{ms:?}");
                                if x.leader {
                                    assert!(!ms.iter().any(|y| !y.leader && ok(y)));
                                }
                                assert!(ms
                                    .iter()
                                    .filter(|y| y.leader == x.leader && ok(y))
                                    .all(|y| y.free() <= x.free()));
                            }
                        }
                    }
                }
            }
        }
    }
}
