//! Rarest-first chunk picking.
//!
//! The picker knows, for every chunk we still miss, how many neighbours offer
//! it (`availability`, owner excluded: the owner is the source of last resort)
//! and how many requests for it are out (`in_flight`). It does not know which
//! neighbour holds what; the caller passes the neighbour's bitmap and an
//! exclusion test (chunks already asked of that neighbour, or that it once
//! served corrupted).
//!
//! Normal mode hands out only chunks nobody was asked for yet, rarest first,
//! ties broken by a seeded random rotation so that peers spread their requests.
//! A chunk may be asked of a second neighbour (up to `max_duplicates`
//! requests out) when every request out for it is overdue, and, if the
//! caller allows it, in the endgame: when every missing chunk is already in
//! flight. The first copy to arrive cancels the others.

use super::bitmap::ChunkBitmap;
use crate::manifest::ChunkIndex;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Picker {
    /// Neighbours (owner excluded) that offer each chunk.
    availability: Vec<u16>,
    /// Requests out for each chunk.
    in_flight: Vec<u8>,
    /// Chunks we miss, in no particular order; `position[i]` locates chunk i in it.
    missing: Vec<ChunkIndex>,
    position: Vec<u32>,
    /// Missing chunks with no request out.
    unrequested: u32,
}

const NOT_MISSING: u32 = u32::MAX;

/// What a pick may choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickMode {
    /// Rarest first among chunks nobody was asked for; then duplicates of
    /// overdue requests, and (`endgame`) of any request once every missing
    /// chunk is in flight.
    Neighbour { max_duplicates: u8, endgame: bool },
    /// Any missing chunk nobody was asked for; the caller's exclusion rules out
    /// chunks some usable neighbour offers (owner fallback).
    Unavailable,
    /// A helper of the lowest priority (the owner once its first copies are
    /// out): chunks nobody was asked for first, then those in flight, rarest
    /// first in each; no endgame limit (its requests are not counted).
    Assist,
}

impl Picker {
    pub fn new(have: &ChunkBitmap) -> Self {
        let len = have.len();
        let mut position = vec![NOT_MISSING; len as usize];
        let missing: Vec<ChunkIndex> = have.zeros().collect();
        for (p, &i) in missing.iter().enumerate() {
            position[i as usize] = p as u32;
        }
        Picker {
            availability: vec![0; len as usize],
            in_flight: vec![0; len as usize],
            unrequested: missing.len() as u32,
            missing,
            position,
        }
    }

    pub fn missing(&self) -> u32 {
        self.missing.len() as u32
    }

    /// Missing chunks with no request out.
    pub fn unrequested(&self) -> u32 {
        self.unrequested
    }

    pub fn availability(&self, index: ChunkIndex) -> u16 {
        self.availability.get(index as usize).copied().unwrap_or(0)
    }

    pub fn in_flight(&self, index: ChunkIndex) -> u8 {
        self.in_flight.get(index as usize).copied().unwrap_or(0)
    }

    pub fn is_missing(&self, index: ChunkIndex) -> bool {
        self.position
            .get(index as usize)
            .is_some_and(|&p| p != NOT_MISSING)
    }

    /// A neighbour announced all chunks of `bitmap`.
    pub fn add_bitmap(&mut self, bitmap: &ChunkBitmap) {
        for i in bitmap.ones() {
            self.add_have(i);
        }
    }

    /// A neighbour holding `bitmap` is gone.
    pub fn remove_bitmap(&mut self, bitmap: &ChunkBitmap) {
        for i in bitmap.ones() {
            self.remove_have(i);
        }
    }

    pub fn add_have(&mut self, index: ChunkIndex) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a = a.saturating_add(1);
        }
    }

    pub fn remove_have(&mut self, index: ChunkIndex) {
        if let Some(a) = self.availability.get_mut(index as usize) {
            *a = a.saturating_sub(1);
        }
    }

    /// A request for `index` went out.
    pub fn requested(&mut self, index: ChunkIndex) {
        let missing = self.is_missing(index);
        if let Some(f) = self.in_flight.get_mut(index as usize) {
            if *f == 0 && missing {
                self.unrequested -= 1;
            }
            *f = f.saturating_add(1);
        }
    }

    /// A request for `index` ended (answered, rejected, cancelled or its peer gone).
    pub fn request_ended(&mut self, index: ChunkIndex) {
        let missing = self.is_missing(index);
        if let Some(f) = self.in_flight.get_mut(index as usize) {
            if *f == 0 {
                return;
            }
            *f -= 1;
            if *f == 0 && missing {
                self.unrequested += 1;
            }
        }
    }

    /// `index` was received and verified: it is no longer missing. Requests
    /// still out for it must each be ended by the caller.
    pub fn received(&mut self, index: ChunkIndex) {
        let Some(&p) = self.position.get(index as usize) else {
            return;
        };
        if p == NOT_MISSING {
            return;
        }
        if self.in_flight[index as usize] == 0 {
            self.unrequested -= 1;
        }
        let last = self.missing.len() - 1;
        self.missing.swap(p as usize, last);
        let moved = self.missing[p as usize];
        self.position[moved as usize] = p;
        self.missing.pop();
        self.position[index as usize] = NOT_MISSING;
    }

    /// Up to `want` chunks to ask of a neighbour holding `offers`, best first.
    /// `excluded(i)` rules chunk i out for this neighbour; `late(i)` says
    /// that the requests out for chunk i are overdue, so that it may be asked
    /// of a second neighbour before the endgame (a request stuck behind a
    /// busy neighbour's queue is not waited for while another is idle).
    pub fn pick(
        &self,
        offers: &ChunkBitmap,
        want: usize,
        mode: PickMode,
        excluded: impl Fn(ChunkIndex) -> bool,
        late: impl Fn(ChunkIndex) -> bool,
        rng: &mut Rng,
    ) -> Vec<ChunkIndex> {
        if want == 0 || self.missing.is_empty() {
            return Vec::new();
        }
        let n = self.missing.len();
        let start = rng.below(n as u64) as usize;
        // (score, index): lower score is better; `best` stays sorted.
        let mut best: Vec<(u32, ChunkIndex)> = Vec::with_capacity(want + 1);
        let all_in_flight = self.unrequested == 0;
        for k in 0..n {
            let i = self.missing[(start + k) % n];
            if !offers.get(i) || excluded(i) {
                continue;
            }
            let flying = self.in_flight[i as usize];
            let avail = self.availability[i as usize] as u32;
            let score = match mode {
                PickMode::Unavailable => {
                    if flying != 0 {
                        continue;
                    }
                    avail
                }
                PickMode::Assist => ((flying.min(1) as u32) << 16) | avail,
                PickMode::Neighbour {
                    max_duplicates,
                    endgame,
                } => {
                    if flying == 0 {
                        avail
                    } else if flying < max_duplicates && ((endgame && all_in_flight) || late(i)) {
                        // Least duplicated first, then rarest.
                        ((flying as u32) << 16) | avail
                    } else {
                        continue;
                    }
                }
            };
            if best.len() == want && score >= best[want - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(s, _)| s <= score);
            best.insert(at, (score, i));
            best.truncate(want);
        }
        best.into_iter().map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pick with nothing excluded and nothing overdue.
    fn plain(
        p: &Picker,
        offers: &ChunkBitmap,
        want: usize,
        mode: PickMode,
        rng: &mut Rng,
    ) -> Vec<ChunkIndex> {
        p.pick(offers, want, mode, |_| false, |_| false, rng)
    }

    fn bitmap(len: u32, ones: &[u32]) -> ChunkBitmap {
        let mut b = ChunkBitmap::empty(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_first() {
        let mut p = Picker::new(&ChunkBitmap::empty(6));
        p.add_bitmap(&ChunkBitmap::full(6));
        p.add_bitmap(&bitmap(6, &[0, 1, 2, 3]));
        p.add_bitmap(&bitmap(6, &[0, 1]));
        let mut rng = Rng::new(1);
        let mode = PickMode::Neighbour {
            max_duplicates: 2,
            endgame: true,
        };
        let got = plain(&p, &ChunkBitmap::full(6), 2, mode, &mut rng);
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, vec![4, 5]);
        for i in got {
            p.requested(i);
        }
        let got = plain(&p, &ChunkBitmap::full(6), 2, mode, &mut rng);
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, vec![2, 3]);
        assert_eq!(
            p.pick(&bitmap(6, &[4]), 2, mode, |_| false, |_| false, &mut rng),
            Vec::<ChunkIndex>::new()
        );
    }

    #[test]
    fn endgame_duplicates_only_when_all_in_flight() {
        let mut p = Picker::new(&bitmap(3, &[0]));
        p.add_bitmap(&ChunkBitmap::full(3));
        p.add_bitmap(&ChunkBitmap::full(3));
        let mut rng = Rng::new(2);
        let mode = PickMode::Neighbour {
            max_duplicates: 2,
            endgame: true,
        };
        p.requested(1);
        assert_eq!(p.unrequested(), 1);
        // Chunk 2 is unrequested: no duplicates yet.
        assert_eq!(
            p.pick(&bitmap(3, &[1]), 4, mode, |_| false, |_| false, &mut rng),
            Vec::<ChunkIndex>::new()
        );
        p.requested(2);
        assert_eq!(p.unrequested(), 0);
        let mut dup = plain(&p, &ChunkBitmap::full(3), 4, mode, &mut rng);
        dup.sort();
        assert_eq!(dup, vec![1, 2]);
        p.requested(1);
        // Now 1 has two requests out: at the limit.
        assert_eq!(plain(&p, &ChunkBitmap::full(3), 4, mode, &mut rng), vec![2]);
        p.received(1);
        p.request_ended(1);
        p.request_ended(1);
        assert_eq!(p.missing(), 1);
        assert_eq!(p.unrequested(), 0);
        p.request_ended(2);
        assert_eq!(p.unrequested(), 1);
    }

    #[test]
    fn without_the_endgame_only_overdue_requests_are_doubled() {
        let mut p = Picker::new(&ChunkBitmap::empty(2));
        p.add_bitmap(&ChunkBitmap::full(2));
        p.add_bitmap(&ChunkBitmap::full(2));
        p.requested(0);
        p.requested(1);
        assert_eq!(p.unrequested(), 0);
        let mut rng = Rng::new(7);
        let mode = PickMode::Neighbour {
            max_duplicates: 2,
            endgame: false,
        };
        let full = ChunkBitmap::full(2);
        assert!(plain(&p, &full, 4, mode, &mut rng).is_empty());
        let got = p.pick(&full, 4, mode, |_| false, |i| i == 1, &mut rng);
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn unavailable_mode_for_the_owner_fallback() {
        let mut p = Picker::new(&ChunkBitmap::empty(4));
        p.add_bitmap(&bitmap(4, &[0, 1]));
        let mut rng = Rng::new(3);
        let mut got = p.pick(
            &ChunkBitmap::full(4),
            8,
            PickMode::Unavailable,
            |i| i == 3 || p.availability(i) > 0,
            |_| false,
            &mut rng,
        );
        got.sort();
        assert_eq!(got, vec![2]);
    }

    #[test]
    fn late_requests_may_be_doubled_before_the_endgame() {
        let mut p = Picker::new(&ChunkBitmap::empty(3));
        p.add_bitmap(&ChunkBitmap::full(3));
        p.add_bitmap(&ChunkBitmap::full(3));
        let mut rng = Rng::new(4);
        let mode = PickMode::Neighbour {
            max_duplicates: 2,
            endgame: true,
        };
        p.requested(0);
        p.requested(1);
        // Chunk 2 is unrequested, so no endgame: only an overdue chunk may be
        // asked a second time, and after every unrequested one.
        let got = p.pick(
            &bitmap(3, &[0, 1]),
            4,
            mode,
            |_| false,
            |i| i == 1,
            &mut rng,
        );
        assert_eq!(got, vec![1]);
        let got = p.pick(
            &ChunkBitmap::full(3),
            4,
            mode,
            |_| false,
            |i| i == 1,
            &mut rng,
        );
        assert_eq!(got, vec![2, 1]);
    }

    #[test]
    fn assist_prefers_unrequested_then_rarest() {
        let mut p = Picker::new(&ChunkBitmap::empty(4));
        p.add_bitmap(&bitmap(4, &[0, 1, 2]));
        p.add_bitmap(&bitmap(4, &[0, 1]));
        p.requested(3);
        let mut rng = Rng::new(5);
        let got = plain(&p, &ChunkBitmap::full(4), 4, PickMode::Assist, &mut rng);
        // 2 (one holder), 0 and 1 (two each), then 3, which is in flight.
        assert_eq!(got[0], 2);
        let mut mid = got[1..3].to_vec();
        mid.sort();
        assert_eq!(mid, vec![0, 1]);
        assert_eq!(got[3], 3);
    }

    #[test]
    fn counts_stay_consistent() {
        let mut rng = Rng::new(9);
        let len = 50;
        let mut p = Picker::new(&ChunkBitmap::empty(len));
        let mut have = ChunkBitmap::empty(len);
        let mut flying = vec![0u8; len as usize];
        for _ in 0..5000 {
            let i = rng.below(len as u64) as u32;
            match rng.below(3) {
                0 if flying[i as usize] < 3 => {
                    p.requested(i);
                    flying[i as usize] += 1;
                }
                1 if flying[i as usize] > 0 => {
                    p.request_ended(i);
                    flying[i as usize] -= 1;
                }
                2 if rng.chance(0.1) => {
                    p.received(i);
                    have.set(i);
                }
                _ => {}
            }
            let expect = have.zeros().filter(|&i| flying[i as usize] == 0).count() as u32;
            assert_eq!(p.unrequested(), expect);
            assert_eq!(p.missing(), len - have.count());
        }
    }
}
