//! A set of `u64` kept as disjoint half-open ranges `[start, end)`.
//!
//! Used for received packet numbers (the SACK ranges an ACK reports),
//! acknowledged packet numbers on the sender, delivered message ids, and the
//! byte ranges of a message being reassembled. Invariant: the map holds
//! `start -> end` with `start < end`, and consecutive ranges neither overlap
//! nor touch (`end_i < start_{i+1}`), so every set has one representation.
//! Operations are `O(log n)` in the number of ranges plus the ranges they merge.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges (not of values).
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }

    /// Largest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, &e)| e - 1)
    }

    pub fn contains(&self, v: u64) -> bool {
        self.map
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &end)| v < end)
    }

    /// True when every value of `r` is in the set (an empty `r` is contained).
    pub fn contains_range(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        self.map
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, &end)| r.end <= end)
    }

    /// Adds `v`; returns true if it was not present.
    pub fn insert_one(&mut self, v: u64) -> bool {
        if v == u64::MAX {
            return false; // the half-open representation cannot hold u64::MAX
        }
        self.insert(v..v + 1)
    }

    /// Adds every value of `r`; returns true if any was new.
    pub fn insert(&mut self, r: Range<u64>) -> bool {
        let (mut start, mut end) = (r.start, r.end);
        if start >= end {
            return false;
        }
        // Fast path: extending the highest range (in-order arrival).
        if let Some(mut last) = self.map.last_entry() {
            if start >= *last.key() && start <= *last.get() {
                if end <= *last.get() {
                    return false;
                }
                *last.get_mut() = end;
                return true;
            }
        }
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= end {
                return false; // already contained
            }
            if e >= start {
                start = s;
                self.map.remove(&s);
            }
        }
        // Swallow every range starting within [start, end].
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            if e > end {
                end = e;
            }
        }
        self.map.insert(start, end);
        true
    }

    /// Removes every value below `v`.
    pub fn remove_below(&mut self, v: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= v {
                break;
            }
            self.map.remove(&s);
            if e > v {
                self.map.insert(v, e);
                break;
            }
        }
    }

    /// Drops the lowest ranges until at most `n` remain.
    pub fn keep_highest(&mut self, n: usize) {
        while self.map.len() > n {
            self.map.pop_first();
        }
    }

    /// End of the range that starts at `from`, if `from` is in the set: the
    /// first value at or after `from` that is missing.
    pub fn contiguous_end(&self, from: u64) -> u64 {
        match self.map.range(..=from).next_back() {
            Some((_, &e)) if e > from => e,
            _ => from,
        }
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Calls `f` for each maximal sub-range of `r` that is NOT in the set.
    pub fn for_each_gap(&self, r: Range<u64>, mut f: impl FnMut(Range<u64>)) {
        let mut cur = r.start;
        if cur >= r.end {
            return;
        }
        if let Some((_, &e)) = self.map.range(..=cur).next_back() {
            cur = cur.max(e);
        }
        if cur >= r.end {
            return;
        }
        for (&s, &e) in self.map.range(cur..r.end) {
            if s > cur {
                f(cur..s);
            }
            cur = cur.max(e);
            if cur >= r.end {
                return;
            }
        }
        if cur < r.end {
            f(cur..r.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        assert!(s.insert(5..10));
        assert!(s.insert(10..12));
        assert!(!s.insert(6..8));
        assert!(s.insert(1..3));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1..3, 5..12]);
        assert!(s.insert(2..6));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1..12]);
        assert_eq!(s.max(), Some(11));
        assert!(!s.insert_one(u64::MAX));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        RemoveBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..200, 0u64..20).prop_map(|(s, l)| Op::Insert(s, s + l)),
            1 => (0u64..200).prop_map(Op::RemoveBelow),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec(op(), 0..60),
                                   probe in 0u64..230, plen in 0u64..30) {
            let mut s = RangeSet::new();
            let mut m = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Insert(a, b) => {
                        let new = (a..b).any(|v| !m.contains(&v));
                        prop_assert_eq!(s.insert(a..b), new);
                        m.extend(a..b);
                    }
                    Op::RemoveBelow(v) => {
                        s.remove_below(v);
                        m.retain(|&x| x >= v);
                    }
                }
                // Canonical form: ranges disjoint, non-touching, non-empty.
                let rs: Vec<_> = s.iter().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                }
                for r in &rs {
                    prop_assert!(r.start < r.end);
                }
            }
            let flat: BTreeSet<u64> = s.iter().flatten().collect();
            prop_assert_eq!(&flat, &m);
            prop_assert_eq!(s.contains(probe), m.contains(&probe));
            prop_assert_eq!(s.min(), m.first().copied());
            prop_assert_eq!(s.max(), m.last().copied());
            let r = probe..probe + plen;
            prop_assert_eq!(s.contains_range(r.clone()), r.clone().all(|v| m.contains(&v)));
            let mut gaps = BTreeSet::new();
            s.for_each_gap(r.clone(), |g| gaps.extend(g));
            let model_gaps: BTreeSet<u64> = r.clone().filter(|v| !m.contains(v)).collect();
            prop_assert_eq!(gaps, model_gaps);
            let mut ce = probe;
            while m.contains(&ce) { ce += 1; }
            prop_assert_eq!(s.contiguous_end(probe), ce);
        }
    }
}
