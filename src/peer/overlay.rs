//! Who connects to whom among a file's downloading group.
//!
//! The members, in the tracker's join order, form a ring; chords across the
//! ring (from member i to member i + m/2) are added while both ends have fewer
//! than [`MAX_MEMBER_NEIGHBOURS`] neighbours. The ring keeps the overlay
//! connected, the chords shorten its diameter, and every member has at most
//! three member neighbours (plus the owner, which every member is connected
//! to). The graph is a pure function of the member list, so every member that
//! has the same list computes the same, symmetric graph; when the group
//! changes, everyone recomputes and a member that left is replaced.

use std::net::SocketAddr;

/// Most member neighbours a member keeps (the owner comes on top).
pub const MAX_MEMBER_NEIGHBOURS: usize = 3;

/// The member neighbours of `me` under the overlay of `members` (join order,
/// owner excluded, duplicates ignored after the first). Empty if `me` is not
/// a member.
pub fn member_neighbours(members: &[SocketAddr], me: SocketAddr) -> Vec<SocketAddr> {
    let mut list: Vec<SocketAddr> = Vec::with_capacity(members.len());
    for &m in members {
        if !list.contains(&m) {
            list.push(m);
        }
    }
    let Some(me_at) = list.iter().position(|&m| m == me) else {
        return Vec::new();
    };
    let adjacency = overlay_edges(list.len());
    adjacency[me_at].iter().map(|&j| list[j]).collect()
}

/// Adjacency lists of the overlay on `m` members (by position in join order).
pub fn overlay_edges(m: usize) -> Vec<Vec<usize>> {
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); m];
    let link = |adj: &mut Vec<Vec<usize>>, a: usize, b: usize| {
        if a != b
            && !adj[a].contains(&b)
            && adj[a].len() < MAX_MEMBER_NEIGHBOURS
            && adj[b].len() < MAX_MEMBER_NEIGHBOURS
        {
            adj[a].push(b);
            adj[b].push(a);
        }
    };
    for i in 0..m {
        link(&mut adj, i, (i + 1) % m);
    }
    for i in 0..m {
        link(&mut adj, i, (i + m / 2) % m);
    }
    adj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(adj: &[Vec<usize>]) -> bool {
        if adj.is_empty() {
            return true;
        }
        let mut seen = vec![false; adj.len()];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(a) = stack.pop() {
            for &b in &adj[a] {
                if !seen[b] {
                    seen[b] = true;
                    stack.push(b);
                }
            }
        }
        seen.iter().all(|&s| s)
    }

    #[test]
    fn connected_symmetric_and_bounded() {
        for m in 0..200 {
            let adj = overlay_edges(m);
            assert!(connected(&adj), "m={m}");
            for (a, list) in adj.iter().enumerate() {
                assert!(list.len() <= MAX_MEMBER_NEIGHBOURS);
                assert!(list.len() >= (m - 1).min(2), "m={m} a={a}");
                for &b in list {
                    assert!(adj[b].contains(&a));
                    assert_ne!(a, b);
                }
            }
        }
    }

    #[test]
    fn stays_connected_after_any_member_leaves() {
        // Recomputing over the remaining list gives a connected overlay again.
        let addrs: Vec<SocketAddr> = (0..12)
            .map(|i| format!("10.0.0.{}:7000", i + 1).parse().unwrap())
            .collect();
        for gone in 0..addrs.len() {
            let rest: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, a)| a)
                .collect();
            for &me in &rest {
                let n = member_neighbours(&rest, me);
                assert!(!n.contains(&addrs[gone]));
                assert!(n.len() <= 3 && n.len() >= 2);
                for other in n {
                    assert!(member_neighbours(&rest, other).contains(&me));
                }
            }
        }
        assert!(member_neighbours(&addrs, "1.2.3.4:5".parse().unwrap()).is_empty());
    }
}
