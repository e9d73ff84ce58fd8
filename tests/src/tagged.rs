//! Keys `<prefix>NNNNN` whose values carry a tag (`i * 1000 + tag`, 8
//! bytes big-endian), so a test can write a range again with another tag
//! and tell which write each store or read has.

use std::ops::Range;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_raftstore::store::Client;

/// The tagged keys of one test file (its prefix keeps them apart).
#[derive(Debug, Clone, Copy)]
pub struct Tagged(pub &'static str);

impl Tagged {
    /// Key number `i`.
    pub fn key(&self, i: u64) -> Vec<u8> {
        format!("{}{i:05}", self.0).into_bytes()
    }

    /// The value of key `i` written with `tag`.
    pub fn value(i: u64, tag: u64) -> [u8; 8] {
        (i * 1000 + tag).to_be_bytes()
    }

    /// Writes every key of `range` with `tag`.
    ///
    /// # Panics
    /// On a failed write.
    pub fn write(&self, client: &Client, range: Range<u64>, tag: u64) {
        for i in range {
            client.put(&self.key(i), &Self::value(i, tag)).expect("put");
        }
    }

    /// Reads every key of `range` and checks it holds `tag`'s value.
    ///
    /// # Panics
    /// On a failed read or another value.
    pub fn assert_reads(&self, client: &Client, range: Range<u64>, tag: u64) {
        for i in range {
            let v = client.get(&self.key(i)).expect("get");
            assert_eq!(v.as_deref(), Some(&Self::value(i, tag)[..]), "key {i}");
        }
    }

    /// Whether `engine` holds `tag`'s values for every key of `range`.
    ///
    /// # Panics
    /// On an engine read error.
    pub fn holds(&self, engine: &Engine, range: Range<u64>, tag: u64) -> bool {
        range.into_iter().all(|i| {
            engine
                .get(Cf::Default, &keys::data_key(&self.key(i)))
                .unwrap()
                .is_some_and(|v| v == Self::value(i, tag))
        })
    }
}
