//! `--shard I/N`: one of N runs that share the repositories between them, e.g. the pods of a
//! Kubernetes Indexed Job (`--shard $(JOB_COMPLETION_INDEX)/N`).
//!
//! A repository belongs to the shard numbered by the xxh3 hash of its name modulo N: a
//! function of the name alone, so every run computes the same split whatever order the
//! configuration or the catalog lists the repositories in, and the shards are disjoint and
//! together cover them all. xxh3 rather than std's hasher, whose output may change between
//! Rust releases: shards built by different versions of archeio must agree.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Parses `I/N`, with 0 <= I < N.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let expected = || "expected I/N with 0 <= I < N, e.g. 0/4".to_string();
        let (index, count) = text.split_once('/').ok_or_else(expected)?;
        let number = |n: &str| n.parse::<u64>().map_err(|_| expected());
        let (index, count) = (number(index)?, number(count)?);
        if index >= count {
            return Err(expected());
        }
        Ok(Shard { index, count })
    }

    /// Its number, from 0.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Whether `repository` is this shard's to copy.
    pub fn contains(&self, repository: &str) -> bool {
        xxh3_64(repository.as_bytes()) % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_repository_is_in_exactly_one_shard() {
        let names: Vec<String> = (0..500)
            .map(|i| format!("k8s-artifacts-prod/images/component-{i}"))
            .chain(["", "a", "team/r0", "library/busybox"].map(String::from))
            .collect();
        for count in [1, 2, 3, 4, 7, 16] {
            let shards: Vec<Shard> = (0..count)
                .map(|i| Shard::parse(&format!("{i}/{count}")).unwrap())
                .collect();
            let mut sizes = vec![0; count as usize];
            for name in &names {
                let owners: Vec<usize> = (0..shards.len())
                    .filter(|&i| shards[i].contains(name))
                    .collect();
                assert_eq!(owners.len(), 1, "{name:?} of {count}: shards {owners:?}");
                sizes[owners[0]] += 1;
            }
            // A hash, not a lucky split: with 500 names no shard is empty or takes all.
            assert!(sizes.iter().all(|&s| s > 0), "{count}: {sizes:?}");
        }
    }

    #[test]
    fn the_split_is_fixed_by_the_names_alone() {
        // Pinned: a change of hash would move repositories between shards of runs that
        // straddle an upgrade, and copy some twice or not at all.
        let of = |name: &str| {
            (0..4)
                .find(|i| {
                    Shard {
                        index: *i,
                        count: 4,
                    }
                    .contains(name)
                })
                .unwrap()
        };
        assert_eq!(
            ["team/r0", "team/r1", "team/r2", "library/busybox"].map(of),
            [1, 3, 2, 0]
        );
    }

    #[test]
    fn shard_syntax() {
        assert_eq!(Shard::parse("0/1"), Ok(Shard { index: 0, count: 1 }));
        assert_eq!(Shard::parse("3/4").unwrap().to_string(), "3/4");
        for bad in [
            "1/1", "0/0", "4/4", "1", "a/2", "-1/2", "0/2/3", "/2", "0/", "",
        ] {
            let err = Shard::parse(bad).unwrap_err();
            assert!(
                err.starts_with("expected I/N with 0 <= I < N"),
                "{bad}: {err}"
            );
        }
    }
}
