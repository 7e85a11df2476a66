//! RTP packet loss from sequence numbers (RFC 3550 §A.1, §A.3).
//!
//! A [`SeqWindow`] follows the extended sequence numbers of one stream as
//! seen at the relay: `expected = highest − base + 1` over the current
//! window, plus the expected count of every window closed before (by an
//! SSRC change or a sequence restart); `lost = expected − received`,
//! clamped at zero (duplicates may make it negative, RFC 3550 §6.4.1).
//!
//! The XDP program updates one window per flow in place (`FLOW_SEQ`), and
//! the daemon keeps one per port for what its userspace path forwards; the
//! daemon folds them together with [`SeqWindow::absorb`].

/// A forward jump of this many sequence numbers or more is a restart, not
/// loss (RFC 3550 §A.1 `MAX_DROPOUT`).
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this many sequence numbers or more behind the highest is a
/// restart, not a late packet (RFC 3550 §A.1 `MAX_MISORDER`).
pub const MAX_MISORDER: u16 = 100;

/// [`SeqWindow::flags`]: the window has seen a packet.
pub const SEQ_INITIALISED: u32 = 1;

/// Sequence accounting of one RTP stream (one flow, or one port).
///
/// 24 bytes, six `u32`s, no padding. Extended sequence numbers count
/// 16-bit wraps from the window's first packet; all arithmetic wraps, so
/// only differences are meaningful.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqWindow {
    /// SSRC of the current window (host order).
    pub ssrc: u32,
    /// Lowest extended sequence number seen in the current window.
    pub base_ext: u32,
    /// Highest extended sequence number seen in the current window.
    pub max_ext: u32,
    /// Expected packets of the windows closed before the current one.
    pub closed_expected: u32,
    /// RTP packets counted, over all windows (duplicates included).
    pub received: u32,
    /// [`SEQ_INITIALISED`] once a packet was seen.
    pub flags: u32,
}

impl SeqWindow {
    /// Account one RTP packet of stream `ssrc` with sequence number `seq`.
    ///
    /// - The first packet opens the window.
    /// - Same SSRC, `0 < Δ < MAX_DROPOUT` past the highest: in order,
    ///   possibly after a gap; the highest advances (across the 16-bit wrap).
    /// - Same SSRC, `−MAX_MISORDER < Δ ≤ 0`: duplicate or late: counted as
    ///   received only (a late packet from before the window's first one
    ///   moves the base back).
    /// - Anything else (another SSRC, a bigger jump either way): the window
    ///   is closed (its expected count kept) and a new one opens here.
    #[inline(always)]
    pub fn update(&mut self, ssrc: u32, seq: u16) {
        self.received = self.received.wrapping_add(1);
        // Distance from the highest, modulo 2^16, as a signed number.
        let delta = i32::from(seq.wrapping_sub(self.max_ext as u16) as i16);
        let open = self.flags & SEQ_INITIALISED != 0;
        if open
            && self.ssrc == ssrc
            && delta > -i32::from(MAX_MISORDER)
            && delta < i32::from(MAX_DROPOUT)
        {
            let ext = self.max_ext.wrapping_add(delta as u32);
            if delta > 0 {
                self.max_ext = ext;
            } else if (ext.wrapping_sub(self.base_ext) as i32) < 0 {
                self.base_ext = ext;
            }
            return;
        }
        if open {
            self.closed_expected = self.closed_expected.wrapping_add(self.span());
        }
        self.flags = SEQ_INITIALISED;
        self.ssrc = ssrc;
        self.base_ext = u32::from(seq);
        self.max_ext = u32::from(seq);
    }

    /// Whether a packet was seen.
    #[must_use]
    pub const fn is_initialised(&self) -> bool {
        self.flags & SEQ_INITIALISED != 0
    }

    /// Expected packets of the current window.
    #[must_use]
    pub const fn span(&self) -> u32 {
        if self.is_initialised() {
            self.max_ext.wrapping_sub(self.base_ext).wrapping_add(1)
        } else {
            0
        }
    }

    /// Expected packets over all windows.
    #[must_use]
    pub const fn expected(&self) -> u32 {
        self.closed_expected.wrapping_add(self.span())
    }

    /// Received packets over all windows.
    #[must_use]
    pub const fn received(&self) -> u32 {
        self.received
    }

    /// Lost packets: expected − received, clamped at zero.
    #[must_use]
    pub const fn lost(&self) -> u32 {
        self.expected().saturating_sub(self.received)
    }

    /// Fold in `other`, a window over other packets of the same streams
    /// (forwarded by the other path, or by an earlier flow), so that
    /// [`expected`](Self::expected) and [`received`](Self::received) cover
    /// both.
    ///
    /// Received counts add up. Expected counts add up too, except for the
    /// two current windows when they follow the same SSRC and overlap or
    /// lie less than [`MAX_DROPOUT`] apart: those become one window, their
    /// union, so that packets one path forwarded in the middle of the
    /// other's window are not counted as the other's loss. Extended numbers
    /// of different windows are only comparable modulo 2^16; of the
    /// possible alignments the one giving the smallest union is used, so
    /// the merged loss is never overstated.
    pub fn absorb(&mut self, other: &SeqWindow) {
        if !self.is_initialised() {
            let (closed, received) = (self.closed_expected, self.received);
            *self = *other;
            self.closed_expected = self.closed_expected.wrapping_add(closed);
            self.received = self.received.wrapping_add(received);
            return;
        }
        self.received = self.received.wrapping_add(other.received);
        match self.union(other) {
            Some((base, max)) => {
                self.closed_expected = self.closed_expected.wrapping_add(other.closed_expected);
                self.base_ext = base;
                self.max_ext = max;
            }
            None => self.closed_expected = self.closed_expected.wrapping_add(other.expected()),
        }
    }

    /// The union (base, max), in this window's numbering, of this window
    /// and `other`'s current one, if they belong together (see
    /// [`absorb`](Self::absorb)).
    fn union(&self, other: &SeqWindow) -> Option<(u32, u32)> {
        if !self.is_initialised() || !other.is_initialised() || self.ssrc != other.ssrc {
            return None;
        }
        const CYCLE: i64 = 1 << 16;
        let ls = i64::from(self.max_ext.wrapping_sub(self.base_ext));
        let lo = i64::from(other.max_ext.wrapping_sub(other.base_ext));
        // Union length − 1 with `other` starting `x` after our base.
        let union = |x: i64| ls.max(x + lo) - x.min(0);
        // The smallest union has one window inside the other: `x` in
        // [min(0, ls − lo), max(0, ls − lo)]. `x` is known modulo 2^16:
        // take the representatives on either side of that range.
        let x0 = i64::from((other.base_ext as u16).wrapping_sub(self.base_ext as u16) as i16);
        let (lower, upper) = (0.min(ls - lo), 0.max(ls - lo));
        let x = if x0 < lower {
            let k = (lower - x0 + CYCLE - 1) / CYCLE;
            let (a, b) = (x0 + k * CYCLE, x0 + (k - 1) * CYCLE);
            if union(a) <= union(b) { a } else { b }
        } else if x0 > upper {
            let k = (x0 - upper + CYCLE - 1) / CYCLE;
            let (a, b) = (x0 - k * CYCLE, x0 - (k - 1) * CYCLE);
            if union(a) <= union(b) { a } else { b }
        } else {
            x0
        };
        let u = union(x);
        // Disjoint windows leave a gap of u − ls − lo − 1 numbers; a gap
        // of MAX_DROPOUT or more is a restart.
        if u - ls - lo > i64::from(MAX_DROPOUT) {
            return None;
        }
        let base = self.base_ext.wrapping_add(x.min(0) as u32);
        Some((base, base.wrapping_add(u as u32)))
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], six u32s: no padding, any bit pattern is valid.
    unsafe impl aya::Pod for super::SeqWindow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: impl IntoIterator<Item = u16>, ssrc: u32) -> SeqWindow {
        let mut w = SeqWindow::default();
        for s in seqs {
            w.update(ssrc, s);
        }
        w
    }

    fn counts(w: &SeqWindow) -> (u32, u32, u32) {
        (w.expected(), w.received(), w.lost())
    }

    #[test]
    fn layout() {
        assert_eq!(size_of::<SeqWindow>(), 24);
        assert_eq!(align_of::<SeqWindow>(), 4);
    }

    #[test]
    fn empty_window_counts_nothing() {
        let w = SeqWindow::default();
        assert_eq!(counts(&w), (0, 0, 0));
        assert!(!w.is_initialised());
    }

    #[test]
    fn in_order_no_loss() {
        let w = run(1000..1100, 7);
        assert_eq!(counts(&w), (100, 100, 0));
        assert_eq!((w.base_ext, w.max_ext), (1000, 1099));
    }

    #[test]
    fn gaps_are_lost() {
        // 0..100 without 10, 11, 50.
        let w = run((0..100).filter(|s| ![10, 11, 50].contains(s)), 7);
        assert_eq!(counts(&w), (100, 97, 3));
    }

    #[test]
    fn first_packet_starts_anywhere() {
        let w = run([65535], 1);
        assert_eq!(counts(&w), (1, 1, 0));
        let w = run([0], 1);
        assert_eq!(counts(&w), (1, 1, 0));
    }

    #[test]
    fn wraps_at_65535() {
        let seqs = (65500..=65535).chain(0..50);
        let w = run(seqs, 9);
        assert_eq!(counts(&w), (86, 86, 0));
        assert_eq!(w.max_ext.wrapping_sub(w.base_ext), 85);
        // With loss on both sides of the wrap, and a gap across it.
        let seqs = (65500..=65533)
            .chain(2..50)
            .filter(|s| *s != 65510 && *s != 20);
        let w = run(seqs, 9);
        assert_eq!(counts(&w), (86, 80, 6));
    }

    #[test]
    fn many_wraps() {
        let mut w = SeqWindow::default();
        let mut seq = 60_000u16;
        let mut sent = 0u32;
        for i in 0..300_000u32 {
            // Drop one in 1000.
            if i % 1000 != 500 {
                w.update(5, seq);
                sent += 1;
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(counts(&w), (300_000, sent, 300));
    }

    #[test]
    fn reordering_is_not_loss() {
        let w = run([0, 1, 3, 2, 4, 6, 5, 7], 3);
        assert_eq!(counts(&w), (8, 8, 0));
        // Late across the wrap.
        let w = run([65534, 0, 65535, 1], 3);
        assert_eq!(counts(&w), (4, 4, 0));
        // Late packet from before the first one moves the base back.
        let w = run([10, 11, 8, 12], 3);
        assert_eq!(counts(&w), (5, 4, 1));
        assert_eq!(w.base_ext, 8);
        let w = run([1, 65535, 0, 2], 3);
        assert_eq!(counts(&w), (4, 4, 0));
    }

    #[test]
    fn duplicates_count_received_and_clamp() {
        let w = run([0, 1, 1, 2, 2, 2], 3);
        assert_eq!(counts(&w), (3, 6, 0));
        // A duplicate hides one loss, as in RFC 3550.
        let w = run([0, 1, 1, 3], 3);
        assert_eq!(counts(&w), (4, 4, 0));
    }

    #[test]
    fn late_beyond_misorder_restarts() {
        // 99 behind: late. 100 behind: a new window.
        let w = run((0..200).chain([101]), 3);
        assert_eq!(counts(&w), (200, 201, 0));
        let w = run((0..200).chain([99]), 3);
        assert_eq!(counts(&w), (201, 201, 0));
        assert_eq!(w.closed_expected, 200);
    }

    #[test]
    fn small_jump_is_loss_big_jump_restarts() {
        // 2999 ahead: a gap of 2998.
        let w = run([0, 2999], 3);
        assert_eq!(counts(&w), (3000, 2, 2998));
        // 3000 ahead: restart, nothing lost.
        let w = run([0, 1, 3001, 3002], 3);
        assert_eq!(counts(&w), (4, 4, 0));
        assert_eq!(w.closed_expected, 2);
        // A restart's new window accounts its own loss.
        let w = run([0, 1, 40_000, 40_002], 3);
        assert_eq!(counts(&w), (5, 4, 1));
    }

    #[test]
    fn ssrc_change_closes_the_window() {
        let mut w = run((0..10).filter(|s| *s != 5), 1);
        // The new SSRC starts near the old numbers: no loss across.
        for s in 3..13 {
            w.update(2, s);
        }
        assert_eq!(counts(&w), (20, 19, 1));
        assert_eq!(w.ssrc, 2);
        // And back to the first one: yet another window.
        w.update(1, 10);
        assert_eq!(counts(&w), (21, 20, 1));
    }

    #[test]
    fn absorb_empty() {
        let a = run(0..10, 1);
        let mut b = SeqWindow::default();
        b.absorb(&a);
        assert_eq!(b, a);
        let mut c = a;
        c.absorb(&SeqWindow::default());
        assert_eq!(c, a);
    }

    #[test]
    fn absorb_consecutive_paths_exactly() {
        // Userspace forwarded 0..20, then XDP 21..100 (20 lost in between,
        // and 50).
        let mut user = run(0..20, 1);
        let kernel = run((21..100).filter(|s| *s != 50), 1);
        let k = kernel;
        user.absorb(&kernel);
        assert_eq!(counts(&user), (100, 98, 2));
        // Either way round.
        let mut kernel = k;
        kernel.absorb(&run(0..20, 1));
        assert_eq!(counts(&kernel), (100, 98, 2));
    }

    #[test]
    fn absorb_interleaved_paths_is_not_loss() {
        // XDP forwarded everything but 500..503 and 2000, which userspace
        // forwarded (e.g. neighbour misses): no loss.
        let user_seqs = [500u16, 501, 502, 2000];
        let kernel = run((0..3000).filter(|s| !user_seqs.contains(s)), 1);
        let mut user = run(user_seqs, 1);
        assert_eq!(counts(&user).2, 1497, "alone, a sparse window shows loss");
        user.absorb(&kernel);
        assert_eq!(counts(&user), (3000, 3000, 0));
    }

    #[test]
    fn absorb_across_wraps() {
        // Kernel window over 200 000 numbers from 65 000 on; userspace saw
        // a few of them, here and there (extended numbers of the two
        // windows are only comparable modulo 2^16).
        let start = 65_000u16;
        let at = |i: u32| start.wrapping_add(i as u16);
        for first in [100, 18_000, 40_000, 150_000, 190_000, 197_000] {
            let taken = [first, first + 1, first + 2500];
            let kernel = run((0..200_000).filter(|i| !taken.contains(i)).map(at), 1);
            let user = run(taken.iter().map(|&i| at(i)), 1);
            let mut u = user;
            u.absorb(&kernel);
            assert_eq!(counts(&u), (200_000, 200_000, 0), "user ← kernel, {first}");
            let mut k = kernel;
            k.absorb(&user);
            assert_eq!(counts(&k), (200_000, 200_000, 0), "kernel ← user, {first}");
        }
    }

    #[test]
    fn absorb_unrelated_windows_adds_up() {
        // Other SSRC.
        let mut a = run(0..10, 1);
        a.absorb(&run((0..10).filter(|s| *s != 4), 2));
        assert_eq!(counts(&a), (20, 19, 1));
        // Same SSRC, far apart.
        let mut a = run(0..10, 1);
        a.absorb(&run(20_000..20_010, 1));
        assert_eq!(counts(&a), (20, 20, 0));
        // Closed windows add up whatever happens to the current ones.
        let mut a = run((0..10).chain(30_000..30_005), 1);
        let b = run((40_000..40_010).chain(30_005..30_010), 1);
        a.absorb(&b);
        assert_eq!(counts(&a), (30, 30, 0));
    }

    #[test]
    fn absorb_gap_limit_follows_max_dropout() {
        // A gap of 2998 between the paths is loss, as within one window...
        let mut a = run(0..10, 1);
        a.absorb(&run(3008..3010, 1));
        assert_eq!(counts(&a), (3010, 12, 2998));
        // ... a gap of 3000 is a restart.
        let mut a = run(0..10, 1);
        a.absorb(&run(3010..3012, 1));
        assert_eq!(counts(&a), (12, 12, 0));
    }

    proptest::proptest! {
        /// Any stream of in-order numbers with some left out, split
        /// between two paths at random, merges to exactly the left-out
        /// count.
        #[test]
        fn split_paths_merge_exactly(
            start: u16,
            len in 1u32..20_000,
            lost in proptest::collection::btree_set(0u32..20_000, 0..50),
            split in proptest::collection::vec(proptest::bool::ANY, 64),
        ) {
            let mut a = SeqWindow::default();
            let mut b = SeqWindow::default();
            let mut lost_in = 0;
            // Never drop the first or last number: they bound the window.
            for i in 0..len {
                if i != 0 && i != len - 1 && lost.contains(&i) {
                    lost_in += 1;
                    continue;
                }
                let seq = start.wrapping_add(i as u16);
                // Runs of one path, switched pseudo-randomly.
                if split[(i / 97 % 64) as usize] { a.update(3, seq) } else { b.update(3, seq) }
            }
            let total = len;
            let mut m = a;
            m.absorb(&b);
            // Runs of one path are short compared to MAX_DROPOUT, so the
            // windows always merge.
            proptest::prop_assert_eq!(counts(&m), (total, total - lost_in, lost_in));
        }
    }
}
