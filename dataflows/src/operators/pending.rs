//! What an operator holds of a timestamp until the frontier passes it.

use std::collections::BTreeMap;

use crate::model::Tick;

/// Moves `records` into the entries of `pending` by their time: `new` makes the entry of a time
/// that has none, and `push` adds a record to its time's entry.
///
/// The entry is looked up once per run of records of one time rather than once per record: a
/// batch nearly always holds a single time, and a lookup per record was a visible share of the
/// join's time (`perf`, `shopflow bench -w 2`).
pub(crate) fn by_time<D, R, V>(
    records: impl IntoIterator<Item = (D, Tick, R)>,
    pending: &mut BTreeMap<Tick, V>,
    mut new: impl FnMut(Tick) -> V,
    mut push: impl FnMut(&mut V, D, R),
) {
    let mut records = records.into_iter().peekable();
    while let Some((data, time, diff)) = records.next() {
        let entry = pending.entry(time).or_insert_with(|| new(time));
        push(entry, data, diff);
        while let Some((data, _, diff)) = records.next_if(|(_, t, _)| *t == time) {
            push(entry, data, diff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_reaches_the_entry_of_its_time_in_order() {
        let mut pending: BTreeMap<Tick, (Tick, Vec<char>)> = BTreeMap::new();
        pending.insert(5, (5, vec!['z']));
        let mut made = Vec::new();
        let records = [(5, 'a'), (5, 'b'), (3, 'c'), (5, 'd'), (3, 'e'), (7, 'f')];
        by_time(
            records.map(|(time, c)| (c, time, ())),
            &mut pending,
            |time| {
                made.push(time);
                (time, Vec::new())
            },
            |(_, list), c, ()| list.push(c),
        );
        assert_eq!(made, [3, 7]);
        let found: Vec<(Tick, (Tick, Vec<char>))> = pending.into_iter().collect();
        assert_eq!(
            found,
            [
                (3, (3, vec!['c', 'e'])),
                (5, (5, vec!['z', 'a', 'b', 'd'])),
                (7, (7, vec!['f'])),
            ]
        );
    }
}
