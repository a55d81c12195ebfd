//! A user's all-time remainders per campaign, packed.
//!
//! The join holds, for every (user, campaign) pair the shop has seen, what the pair's closed
//! windows summed to: the all-time totals a demographic change has to move. Those pairs keep
//! growing as users reach campaigns they had not (2.9M pairs after 10M events of the default
//! shop, 5.6M after 30M), so their size is what the engine's memory grows with. As
//! `(CampaignId, Totals)` in a vector grown by doubling, a pair took about 85 bytes; packed as
//! varints it takes about 4.5 (2 for the many pairs that never purchased).

use integer_encoding::VarInt;

use crate::model::{CampaignId, Totals};

/// A user's all-time remainder per campaign.
///
/// An entry starts with a varint of the campaign's difference from the previous entry's
/// (zigzag-encoded) and a flag, in the lowest bit, for clicks only. Then come zigzag varints of
/// the clicks, and unless the flag is set of the purchases, units and revenue (a remainder can be
/// negative: a refund whose purchase was counted in an earlier window). Units and revenue are
/// 128-bit: their varints run to 19 bytes, and are the same bytes as a 64-bit varint's for a
/// value that fits in 64 bits. Most pairs never
/// purchased: such an entry takes 2 bytes, one with a purchase of under $80 about 6.
///
/// Folding a window appends its entries; the entries are merged (sorted by campaign, one per
/// campaign, none zero) once the appended part outgrows the merged part, so a fold costs the
/// encoding of what it adds, and a merge is paid for by the appends before it. Until then a
/// campaign can have more than one entry: their sum is its remainder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Remainders {
    bytes: Vec<u8>,
    /// How many leading bytes are merged.
    merged: u32,
    /// The campaign of the last entry, which the next entry's is encoded against.
    last: u32,
}

impl Remainders {
    /// Whether no campaign has a remainder. Entries that cancel count until they are merged.
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The entries: a campaign's remainder is the sum of its entries.
    pub(super) fn iter(&self) -> Entries<'_> {
        Entries {
            bytes: &self.bytes,
            campaign: 0,
        }
    }

    /// The remainders, one per campaign, by campaign, none zero, collected in `scratch`.
    pub(super) fn merged<'a>(
        &self,
        scratch: &'a mut Vec<(CampaignId, Totals)>,
    ) -> &'a [(CampaignId, Totals)] {
        scratch.clear();
        scratch.extend(self.iter());
        if self.merged as usize != self.bytes.len() {
            scratch.sort_by_key(|(campaign, _)| *campaign);
            scratch.dedup_by(|(c, more), (first, totals)| {
                let same = c == first;
                if same {
                    totals.add(more);
                }
                same
            });
            scratch.retain(|(_, totals)| !totals.is_empty());
        }
        scratch
    }

    /// How many campaigns have a remainder.
    pub(super) fn len(&self) -> usize {
        if self.merged as usize == self.bytes.len() {
            self.iter().count()
        } else {
            self.merged(&mut Vec::new()).len()
        }
    }

    /// Starts loading the last bytes, where [`Remainders::add_sorted`] appends.
    #[inline]
    pub(super) fn prefetch_end(&self) {
        if let Some(last) = self.bytes.last() {
            crate::operators::prefetch::prefetch_bytes(last, 1);
        }
    }

    /// Adds `additions`, sorted by campaign (a campaign may appear more than once), to the
    /// remainders; `scratch` is room for merging.
    pub(super) fn add_sorted(
        &mut self,
        additions: &[(CampaignId, Totals)],
        scratch: &mut Vec<(CampaignId, Totals)>,
    ) {
        debug_assert!(additions.is_sorted_by_key(|(campaign, _)| *campaign));
        let unmerged = self.bytes.len() - self.merged as usize;
        // Appending after the last entry keeps the list merged.
        let in_order = additions
            .first()
            .is_none_or(|(first, _)| self.bytes.is_empty() || first.0 > self.last);
        let mut rest = additions;
        while let [(campaign, first), ..] = rest {
            let mut totals = *first;
            let same = rest.iter().take_while(|(c, _)| c == campaign).count();
            for (_, more) in &rest[1..same] {
                totals.add(more);
            }
            rest = &rest[same..];
            if !totals.is_empty() {
                self.push(*campaign, totals);
            }
        }
        if unmerged == 0 && in_order {
            self.merged = self.len_u32();
        } else if self.bytes.len() - self.merged as usize > self.merged as usize {
            self.merge(scratch);
        }
    }

    /// Merges every entry.
    fn merge(&mut self, scratch: &mut Vec<(CampaignId, Totals)>) {
        self.merged(scratch);
        self.bytes.clear();
        self.last = 0;
        for (campaign, totals) in scratch.iter() {
            self.push(*campaign, *totals);
        }
        self.merged = self.len_u32();
        self.bytes.shrink_to_fit();
    }

    /// Appends an entry.
    ///
    /// The list grows as a vector does, by doubling. (It once grew to the allocator's next size
    /// class, copied from mimalloc's table, to leave less room unused; but the lists are a few
    /// bytes per (user, campaign) pair, megabytes in all, and the pure crate should not know
    /// which allocator the binary links. docs/benchmarks.md has what dropping it measured.)
    fn push(&mut self, campaign: CampaignId, totals: Totals) {
        let clicks_only = totals.purchases == 0 && totals.units == 0 && totals.revenue_cents == 0;
        let step = zigzag(i64::from(campaign.0) - i64::from(self.last));
        let mut entry = Entry::default();
        entry.put(step << 1 | u64::from(clicks_only));
        entry.put(totals.clicks);
        if !clicks_only {
            entry.put(totals.purchases);
            entry.put_wide(totals.units);
            entry.put_wide(totals.revenue_cents);
        }
        // A byte at a time: a copy of a few bytes was a call to `memcpy`.
        for &byte in &entry.bytes[..entry.len] {
            self.bytes.push(byte);
        }
        self.last = campaign.0;
    }

    /// The length, which fits: a user's entries are far fewer than 2^32 bytes.
    fn len_u32(&self) -> u32 {
        u32::try_from(self.bytes.len()).expect("a user's remainders fit in 4 GiB")
    }
}

/// Maps small differences of either sign to small numbers, as varints of signed integers do:
/// 0, -1, 1, -2, … to 0, 1, 2, 3, …
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

/// The 128-bit zigzag mapping, which agrees with [`zigzag`] on every 64-bit value.
fn zigzag_wide(value: i128) -> u128 {
    ((value << 1) ^ (value >> 127)) as u128
}

/// The inverse of [`zigzag_wide`].
fn unzigzag_wide(value: u128) -> i128 {
    (value >> 1) as i128 ^ -((value & 1) as i128)
}

/// One entry's varints, encoded.
struct Entry {
    /// Room for three varints of at most ten bytes and two of at most nineteen.
    bytes: [u8; 68],
    len: usize,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            bytes: [0; 68],
            len: 0,
        }
    }
}

impl Entry {
    /// Appends `value`'s varint.
    #[inline]
    fn put(&mut self, value: impl VarInt) {
        self.len += value.encode_var(&mut self.bytes[self.len..]);
    }

    /// Appends the varint of `value`'s zigzag mapping, seven bits a byte as [`VarInt`] writes
    /// them (the crate has no 128-bit varint).
    #[inline]
    fn put_wide(&mut self, value: i128) {
        let mut rest = zigzag_wide(value);
        while rest >= 0x80 {
            self.bytes[self.len] = rest as u8 | 0x80;
            self.len += 1;
            rest >>= 7;
        }
        self.bytes[self.len] = rest as u8;
        self.len += 1;
    }
}

/// The entries of a [`Remainders`].
pub(super) struct Entries<'a> {
    bytes: &'a [u8],
    campaign: i64,
}

impl Entries<'_> {
    /// The next varint. The bytes were written by [`Remainders::push`], so they decode.
    #[inline]
    fn take<T: VarInt>(&mut self) -> T {
        let (value, n) = T::decode_var(self.bytes).expect("remainders hold whole varints");
        self.bytes = &self.bytes[n..];
        value
    }

    /// The next varint written by [`Entry::put_wide`].
    #[inline]
    fn take_wide(&mut self) -> i128 {
        let mut value = 0u128;
        let mut shift = 0;
        loop {
            let byte = self.bytes[0];
            self.bytes = &self.bytes[1..];
            value |= u128::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return unzigzag_wide(value);
            }
            shift += 7;
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = (CampaignId, Totals);

    #[inline]
    fn next(&mut self) -> Option<(CampaignId, Totals)> {
        if self.bytes.is_empty() {
            return None;
        }
        let head: u64 = self.take();
        self.campaign += unzigzag(head >> 1);
        let campaign = CampaignId(self.campaign as u32);
        let clicks = self.take();
        let totals = if head & 1 == 1 {
            Totals {
                clicks,
                ..Totals::default()
            }
        } else {
            Totals {
                clicks,
                purchases: self.take(),
                units: self.take_wide(),
                revenue_cents: self.take_wide(),
            }
        };
        Some((campaign, totals))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Random totals, of every size: zero fields, small counts, large and negative amounts, and
    /// units and revenue beyond 64 bits.
    fn totals(rng: &mut StdRng) -> Totals {
        let field = |rng: &mut StdRng| match rng.random_range(0..5) {
            0 => 0,
            1 => rng.random_range(-3..=3),
            2 => rng.random_range(-100_000..=100_000),
            _ => rng.random_range(-(1 << 40)..=(1 << 40)),
        };
        let wide = |rng: &mut StdRng| match rng.random_range(0..6) {
            0 => rng.random_range(-(1i128 << 100)..=(1i128 << 100)),
            _ => i128::from(field(rng)),
        };
        Totals {
            clicks: field(rng),
            purchases: field(rng),
            units: wide(rng),
            revenue_cents: wide(rng),
        }
    }

    /// Against a map of campaign to totals: after every batch of additions the remainders hold
    /// exactly the map's non-zero entries, merged or summed from the entries as appended, and
    /// the appended part never outgrows the merged part.
    #[test]
    fn packed_remainders_equal_a_map_of_sums() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut scratch = Vec::new();
        for case in 0..500 {
            let mut packed = Remainders::default();
            let mut oracle: BTreeMap<CampaignId, Totals> = BTreeMap::new();
            let campaigns: Vec<u32> = match case % 3 {
                0 => (0..8).collect(),
                1 => (0..200).map(|_| rng.random_range(0..1_000)).collect(),
                _ => vec![0, 1, u32::MAX - 1, u32::MAX],
            };
            for _ in 0..rng.random_range(1..20) {
                let mut additions: Vec<(CampaignId, Totals)> = Vec::new();
                for _ in 0..rng.random_range(0..12) {
                    let campaign = CampaignId(campaigns[rng.random_range(0..campaigns.len())]);
                    let current = oracle.get(&campaign).copied().unwrap_or_default();
                    let mut add = totals(&mut rng);
                    if rng.random_bool(0.2) {
                        // Cancel what the campaign holds: the entry must go.
                        add = current.negated();
                    }
                    additions.push((campaign, add));
                }
                additions.sort_by_key(|(campaign, _)| *campaign);
                for (campaign, add) in &additions {
                    oracle.entry(*campaign).or_default().add(add);
                }
                oracle.retain(|_, totals| !totals.is_empty());
                packed.add_sorted(&additions, &mut scratch);

                let want: Vec<(CampaignId, Totals)> =
                    oracle.iter().map(|(c, t)| (*c, *t)).collect();
                assert_eq!(packed.merged(&mut Vec::new()), want, "case {case}");
                assert_eq!(packed.len(), want.len());
                let mut summed: BTreeMap<CampaignId, Totals> = BTreeMap::new();
                for (campaign, totals) in packed.iter() {
                    assert!(!totals.is_empty());
                    summed.entry(campaign).or_default().add(&totals);
                }
                summed.retain(|_, totals| !totals.is_empty());
                assert_eq!(summed, oracle);
                assert!(!packed.is_empty() || want.is_empty());
                let merged = packed.merged as usize;
                assert!(packed.bytes.len() - merged <= merged, "case {case}");
                let prefix: Vec<(CampaignId, Totals)> = Entries {
                    bytes: &packed.bytes[..merged],
                    campaign: 0,
                }
                .collect();
                assert!(prefix.windows(2).all(|w| w[0].0 < w[1].0), "case {case}");
            }
        }
    }

    #[test]
    fn extremes_round_trip() {
        let extreme = Totals {
            clicks: i64::MIN,
            purchases: i64::MAX,
            units: i128::MAX,
            revenue_cents: i128::MIN,
        };
        let additions = [
            (CampaignId(0), extreme),
            (
                CampaignId(u32::MAX - 1),
                Totals {
                    clicks: i64::MAX,
                    purchases: i64::MIN,
                    units: -1,
                    revenue_cents: i128::from(i64::MIN) - 1,
                },
            ),
            (CampaignId(u32::MAX), Totals::click()),
        ];
        let mut packed = Remainders::default();
        packed.add_sorted(&additions, &mut Vec::new());
        assert_eq!(packed.iter().collect::<Vec<_>>(), additions);
        assert_eq!(packed.merged(&mut Vec::new()), additions);
    }

    #[test]
    fn a_click_only_pair_takes_two_bytes() {
        let mut packed = Remainders::default();
        packed.add_sorted(
            &[
                (CampaignId(3), Totals::click()),
                (CampaignId(3), Totals::click()),
            ],
            &mut Vec::new(),
        );
        assert_eq!(packed.bytes.len(), 2);
        let two_clicks = Totals {
            clicks: 2,
            ..Totals::default()
        };
        assert_eq!(
            packed.iter().collect::<Vec<_>>(),
            [(CampaignId(3), two_clicks)]
        );
    }
}
