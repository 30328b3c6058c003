//! Distinct ids in one string arena with an index that finds each one's row: what a catalog
//! keys its items by and what a vocabulary numbers its values by.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Strings in one arena: row `i` is `bytes[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Strings {
    pub(crate) offsets: Vec<u32>,
    pub(crate) bytes: String,
}

/// The arena's text passed 4 GiB, which its `u32` offsets cannot address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl Strings {
    pub(crate) fn with_capacity(rows: usize) -> Strings {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Strings { offsets, bytes: String::new() }
    }

    pub(crate) fn push(&mut self, s: &str) -> Result<(), TooLarge> {
        self.bytes.push_str(s);
        let end = u32::try_from(self.bytes.len()).map_err(|_| TooLarge)?;
        self.offsets.push(end);
        Ok(())
    }

    pub(crate) fn get(&self, row: usize) -> &str {
        &self.bytes[self.offsets[row] as usize..self.offsets[row + 1] as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + 4 * self.offsets.capacity()
    }
}

/// The ids' hasher: foldhash (a few nanoseconds for a short id, where SipHash took several
/// times that on every candidate of every request) with a fixed seed, so an index is the same
/// from run to run. Ids are looked up, never inserted, from requests: a caller who knew the seed
/// could only make its own lookups probe a little longer.
fn hash_id(id: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(id)
}

/// Distinct ids, row by row, and the index from an id to its row.
#[derive(Debug, Clone)]
pub(crate) struct IdIndex {
    ids: Strings,
    index: HashTable<u32>,
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex::with_capacity(0)
    }
}

impl IdIndex {
    pub(crate) fn with_capacity(rows: usize) -> IdIndex {
        IdIndex { ids: Strings::with_capacity(rows), index: HashTable::with_capacity(rows) }
    }

    /// Indexes `ids`; refuses a repeated id with its two rows (first, second).
    pub(crate) fn from_strings(ids: Strings) -> Result<IdIndex, (String, usize, usize)> {
        let mut index = HashTable::with_capacity(ids.len());
        for row in 0..ids.len() {
            let id = ids.get(row);
            let hash = hash_id(id);
            if let Some(&first) = index.find(hash, |&r: &u32| ids.get(r as usize) == id) {
                return Err((id.to_string(), first as usize, row));
            }
            index.insert_unique(hash, row as u32, |&r| hash_id(ids.get(r as usize)));
        }
        Ok(IdIndex { ids, index })
    }

    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        self.index.find(hash_id(id), |&row| self.ids.get(row as usize) == id).map(|&r| r as usize)
    }

    /// The row of `id`, added as the next row when it is new.
    pub(crate) fn intern(&mut self, id: &str) -> Result<usize, TooLarge> {
        if let Some(row) = self.find(id) {
            return Ok(row);
        }
        self.push_new(id)
    }

    /// Adds `id`, which must not be indexed yet, as the next row.
    pub(crate) fn push_new(&mut self, id: &str) -> Result<usize, TooLarge> {
        debug_assert!(self.find(id).is_none(), "push_new takes new ids only");
        let row = self.ids.len();
        self.ids.push(id)?;
        let ids = &self.ids;
        self.index.insert_unique(hash_id(id), row as u32, |&r| hash_id(ids.get(r as usize)));
        Ok(row)
    }

    pub(crate) fn get(&self, row: usize) -> &str {
        self.ids.get(row)
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn strings(&self) -> &Strings {
        &self.ids
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes() + self.index.capacity() * 5
    }
}

impl PartialEq for IdIndex {
    fn eq(&self, other: &IdIndex) -> bool {
        self.ids == other.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_numbers_ids_in_order_of_arrival_and_finds_them_again() {
        let mut index = IdIndex::default();
        for id in ["b", "a", "b", "", "a", "c"] {
            index.intern(id).unwrap();
        }
        let rows: Vec<&str> = (0..index.len()).map(|r| index.get(r)).collect();
        assert_eq!(rows, ["b", "a", "", "c"]);
        assert_eq!((index.find("a"), index.find(""), index.find("d")), (Some(1), Some(2), None));
        let again = IdIndex::from_strings(index.strings().clone()).unwrap();
        assert_eq!(again, index);
        assert_eq!(again.find("c"), Some(3));
    }

    #[test]
    fn a_repeated_id_is_refused_with_both_rows() {
        let mut s = Strings::with_capacity(3);
        for id in ["x", "y", "x"] {
            s.push(id).unwrap();
        }
        assert_eq!(IdIndex::from_strings(s).unwrap_err(), ("x".to_string(), 0, 2));
    }
}
