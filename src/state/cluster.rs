//! Account clusters: a union-find over the association graph (accounts joined by a
//! shared device, phone or payment account), kept incrementally.
//!
//! Every graph node (an account or one of its linking identities) points at a cluster;
//! a request unions the clusters of its nodes, so a device farm, a crew paying from one
//! account or a family on one phone becomes one cluster, whatever the order the links
//! appear in. The cost is constant per request: at most four nodes, at most
//! `MAX_HOPS` forwarding pointers followed from each. Nothing is ever recomputed
//! globally; instead clusters decay: one older than `CLUSTER_LIFE_MS` is treated as
//! gone and its members re-form a fresh one as they come back, so a cluster counts what
//! was linked within about a day. Nodes seen with `DISTINCT_CAP` or more accounts
//! (a saturated device or phone id, often a placeholder that unrelated people share)
//! link nobody: their own distinct counts already say what they are.

use super::bounded::{BoundedMap, HeapSize};

/// How long a cluster lives after it was formed.
pub const CLUSTER_LIFE_MS: u64 = 86_400_000;
/// Forwarding pointers followed to find a root; past this the chain is treated as gone.
pub const MAX_HOPS: usize = 8;
/// Campaign × route pairs a cluster counts claims for; the least counted makes room.
pub const CLAIM_SLOTS: usize = 4;
const HOUR_MS: u64 = 3_600_000;
/// An account first seen less than this long ago joins a cluster as brand new.
pub const NEW_ACCOUNT_MS: u64 = HOUR_MS;

/// One cluster (a root), or a merged one forwarding to where it went (`parent`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterEntry {
    /// 0 for a root; else the cluster this one was merged into.
    pub parent: u64,
    pub born_ms: u64,
    /// Accounts that joined.
    pub accounts: u32,
    /// Accounts that joined as brand-new accounts (first seen under an hour before),
    /// as a two-bucket hourly window: the hour index, its count and the previous one's.
    pub hour: u32,
    pub joins_current: u32,
    pub joins_previous: u32,
    /// (campaign × route fingerprint, accounts that made their first request there).
    pub claims: [(u32, u32); CLAIM_SLOTS],
}

impl HeapSize for ClusterEntry {}

impl ClusterEntry {
    fn roll(&mut self, now_ms: u64) {
        let hour = (now_ms / HOUR_MS) as u32;
        if hour == self.hour.wrapping_add(1) {
            self.joins_previous = self.joins_current;
            self.joins_current = 0;
        } else if hour > self.hour {
            self.joins_previous = 0;
            self.joins_current = 0;
        }
        self.hour = self.hour.max(hour);
    }

    /// Brand-new accounts that joined within the last hour (two-bucket estimate).
    pub fn joins_1h(&self, now_ms: u64) -> u32 {
        let mut c = self.clone();
        c.roll(now_ms);
        let remaining = HOUR_MS - now_ms % HOUR_MS;
        c.joins_current + (u64::from(c.joins_previous) * remaining / HOUR_MS) as u32
    }

    /// Adds `n` to the claim count of `fp`, making room by dropping the least counted.
    fn claim(&mut self, fp: u32, n: u32) -> u32 {
        let slot = match self.claims.iter().position(|(f, c)| *f == fp && *c > 0) {
            Some(i) => i,
            None => {
                let i = (0..CLAIM_SLOTS).min_by_key(|i| self.claims[*i].1).unwrap_or(0);
                self.claims[i] = (fp, 0);
                i
            }
        };
        self.claims[slot].1 = self.claims[slot].1.saturating_add(n);
        self.claims[slot].1
    }

    fn claims_of(&self, fp: u32) -> u32 {
        self.claims
            .iter()
            .find(|(f, c)| *f == fp && *c > 0)
            .map_or(0, |(_, c)| *c)
    }

    /// Takes in everything `other` counted (it is being merged into this one).
    fn absorb(&mut self, other: &ClusterEntry, now_ms: u64) {
        let mut other = other.clone();
        other.roll(now_ms);
        self.roll(now_ms);
        self.accounts = self.accounts.saturating_add(other.accounts);
        self.joins_current = self.joins_current.saturating_add(other.joins_current);
        self.joins_previous = self.joins_previous.saturating_add(other.joins_previous);
        for (fp, n) in other.claims {
            if n > 0 {
                self.claim(fp, n);
            }
        }
    }
}

/// What one request does to the clusters.
#[derive(Debug, Clone, Default)]
pub struct ClusterStep {
    /// The id a cluster formed by this request gets (nonzero).
    pub new_id: u64,
    /// The request's graph nodes: (node key, the cluster it points at or 0), the
    /// account first when there is one; `step` writes only pointers that change.
    pub nodes: smallvec::SmallVec<[(u64, u64); 4]>,
    /// Whether `nodes[0]` is the account.
    pub has_account: bool,
    /// The account is brand new (first seen under an hour ago).
    pub account_new: bool,
    /// Set when this is the account's first request on this route: the campaign × route
    /// fingerprint its claim counts under.
    pub claim: Option<u32>,
    /// The campaign × route fingerprint whose claims to read.
    pub campaign: Option<u32>,
}

/// The account's cluster after the request: accounts, brand-new joins in the last
/// hour, accounts that claimed on this campaign × route.
pub type ClusterReadout = [u32; 3];

/// The root a pointer leads to, when it is alive: (id, entry).
fn find(clusters: &BoundedMap<ClusterEntry>, mut id: u64, now_ms: u64) -> Option<(u64, ClusterEntry)> {
    for _ in 0..MAX_HOPS {
        if id == 0 {
            return None;
        }
        let e = clusters.peek(id, Clone::clone)?;
        if now_ms.saturating_sub(e.born_ms) > CLUSTER_LIFE_MS {
            return None;
        }
        if e.parent == 0 {
            return Some((id, e));
        }
        id = e.parent;
    }
    None
}

/// Unions the clusters of the request's nodes and returns the account's cluster.
/// `repoint(node, cluster)` stores a node's new pointer (the pointers live in the
/// nodes' own identity entries).
pub fn step(
    mut repoint: impl FnMut(u64, u64),
    clusters: &BoundedMap<ClusterEntry>,
    s: &ClusterStep,
    now_ms: u64,
) -> ClusterReadout {
    if s.nodes.is_empty() {
        return [0; 3];
    }
    for (_, pointer) in &s.nodes {
        clusters.prefetch(*pointer);
    }
    let mut roots: smallvec::SmallVec<[(u64, ClusterEntry); 4]> = smallvec::SmallVec::new();
    let mut account_joins = s.has_account;
    // Nodes of one cluster mostly point at the same id: `find` only reads, so a
    // pointer already followed (never the first node's) adds nothing new to `roots`.
    let mut followed: smallvec::SmallVec<[u64; 4]> = smallvec::SmallVec::new();
    for (i, (_, pointer)) in s.nodes.iter().enumerate() {
        if followed.contains(pointer) {
            continue;
        }
        followed.push(*pointer);
        let root = find(clusters, *pointer, now_ms);
        if i == 0 && s.has_account && root.is_some() {
            account_joins = false;
        }
        if let Some((id, e)) = root {
            if !roots.iter().any(|(r, _)| *r == id) {
                roots.push((id, e));
            }
        }
    }
    // The largest cluster absorbs the others (ties: the smaller id), so that pointers
    // mostly stay where they are.
    let winner = roots
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.1.accounts.cmp(&b.1.accounts).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i);
    let (win_id, mut win) = match winner {
        Some(i) => roots.remove(i),
        None => (
            s.new_id,
            ClusterEntry {
                born_ms: now_ms,
                hour: (now_ms / HOUR_MS) as u32,
                ..ClusterEntry::default()
            },
        ),
    };
    for (id, loser) in &roots {
        win.absorb(loser, now_ms);
        clusters.update(*id, now_ms, |e, _| e.parent = win_id);
    }
    win.roll(now_ms);
    if account_joins {
        win.accounts = win.accounts.saturating_add(1);
        if s.account_new {
            win.joins_current = win.joins_current.saturating_add(1);
        }
    }
    if let Some(fp) = s.claim {
        win.claim(fp, 1);
    }
    let out = [
        win.accounts,
        win.joins_1h(now_ms),
        s.campaign.map_or(0, |fp| win.claims_of(fp)),
    ];
    clusters.update(win_id, now_ms, |e, _| *e = win);
    for (key, pointer) in &s.nodes {
        if *pointer != win_id {
            repoint(*key, win_id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_762_819_200_000;

    struct Graph {
        pointers: BoundedMap<u64>,
        clusters: BoundedMap<ClusterEntry>,
        next: u64,
    }

    impl Graph {
        fn new() -> Graph {
            Graph {
                pointers: BoundedMap::new(1 << 20, 90_000_000),
                clusters: BoundedMap::new(1 << 20, 90_000_000),
                next: 1,
            }
        }

        /// One request by `account` through `links` (node keys), at `t`.
        fn request(&mut self, t: u64, account: u64, links: &[u64], claim: bool) -> ClusterReadout {
            let mut nodes = smallvec::SmallVec::new();
            for k in std::iter::once(&account).chain(links) {
                nodes.push((*k, self.pointers.update(*k, t, |p, _| *p)));
            }
            self.next += 1;
            let s = ClusterStep {
                new_id: self.next << 8,
                nodes,
                has_account: true,
                account_new: true,
                claim: claim.then_some(7),
                campaign: Some(7),
            };
            step(
                |k, id| self.pointers.update(k, t, |p, _| *p = id),
                &self.clusters,
                &s,
                t,
            )
        }
    }

    #[test]
    fn links_in_any_order_make_one_cluster() {
        let mut g = Graph::new();
        // a and b share device 100; c and d share device 200; then b and c share a
        // payment account 300: four accounts in one cluster.
        assert_eq!(g.request(T0, 1, &[100], true), [1, 1, 1]);
        assert_eq!(g.request(T0 + 1, 2, &[100], true), [2, 2, 2]);
        assert_eq!(g.request(T0 + 2, 3, &[200], true), [1, 1, 1]);
        assert_eq!(g.request(T0 + 3, 4, &[200], false), [2, 2, 1]);
        assert_eq!(g.request(T0 + 4, 2, &[300], false), [2, 2, 2]);
        assert_eq!(g.request(T0 + 5, 3, &[300], false), [4, 4, 3]);
        // Every member reads the same cluster now, through any node.
        assert_eq!(g.request(T0 + 6, 4, &[200], false)[0], 4);
        assert_eq!(g.request(T0 + 7, 1, &[], false)[0], 4);
    }

    #[test]
    fn a_returning_account_is_not_counted_twice() {
        let mut g = Graph::new();
        for i in 0..10 {
            assert_eq!(g.request(T0 + i, 1, &[100], i == 0)[0], 1);
        }
    }

    #[test]
    fn clusters_decay_after_a_day() {
        let mut g = Graph::new();
        g.request(T0, 1, &[100], true);
        g.request(T0 + 1, 2, &[100], true);
        assert_eq!(g.request(T0 + 2, 3, &[100], true)[0], 3);
        // Past the cluster's life, the device starts a fresh cluster.
        let later = T0 + CLUSTER_LIFE_MS + 10;
        assert_eq!(g.request(later, 4, &[100], true), [1, 1, 1]);
        // The hourly join window has emptied too.
        let c = g.request(later + 2 * HOUR_MS, 5, &[100], false);
        assert_eq!(c, [2, 1, 1]);
    }

    #[test]
    fn claims_count_per_campaign_slot_and_survive_merges() {
        let mut e = ClusterEntry::default();
        for fp in 1..=5 {
            e.claim(fp, fp);
        }
        // Slot of the least counted (1) was reused by 5.
        assert_eq!(e.claims_of(1), 0);
        assert_eq!(e.claims_of(5), 5);
        let mut other = ClusterEntry::default();
        other.claim(5, 2);
        e.absorb(&other, T0);
        assert_eq!(e.claims_of(5), 7);
    }
}
