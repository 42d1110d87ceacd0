//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): builds a
//! service's lookup table, `MAGLEV_TABLE_SIZE` slots each holding a server id.
//!
//! Each server walks its own permutation of the slots (from a hash of its
//! identity) and claims the next free slot whenever its turn comes; a server
//! of weight w gets a turn w times as often as one of weight 1. Because the
//! permutations depend only on identities, removing a server moves mostly the
//! slots it held: other flows keep their server.

use lb_common::{MAGLEV_TABLE_SIZE, NO_SERVER};

/// A server as the table builder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub id: u32,
    /// Stable identity (hash of pool and server names): the permutation seed.
    pub identity: u64,
    pub weight: u32,
}

/// Builds the table over `members` (servers of weight 0 get no slot). With no
/// member of positive weight, every slot is `NO_SERVER`.
pub fn build_table(members: &[Member]) -> Vec<u32> {
    build_table_of_size(members, MAGLEV_TABLE_SIZE)
}

fn build_table_of_size(members: &[Member], size: u32) -> Vec<u32> {
    let size = size as u64;
    let mut table = vec![NO_SERVER; size as usize];
    // Sorted by identity, so the result does not depend on config order.
    let mut members: Vec<Member> = members.iter().copied().filter(|m| m.weight > 0).collect();
    members.sort_by_key(|m| m.identity);
    if members.is_empty() {
        return table;
    }
    let max_weight = members.iter().map(|m| m.weight as u64).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|m| {
            let offset = mix(m.identity ^ 0x9e37_79b9_7f4a_7c15) % size;
            let skip = mix(m.identity ^ 0x6a09_e667_f3bc_c909) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0u64;
    loop {
        for (i, member) in members.iter().enumerate() {
            credit[i] += member.weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            let slot = loop {
                let slot = (offset + next[i] * skip) % size;
                next[i] += 1;
                if table[slot as usize] == NO_SERVER {
                    break slot;
                }
            };
            table[slot as usize] = member.id;
            filled += 1;
            if filled == size {
                return table;
            }
        }
    }
}

/// SplitMix64's finaliser: a well-spread 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Stable identity of a pool member, from its names (FNV-1a, 64 bits).
pub fn identity(pool: &str, server: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pool.bytes().chain([b'/']).chain(server.bytes()) {
        h ^= byte as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member { id: i as u32, identity: identity("pool", &format!("server-{i}")), weight })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &id in table {
            counts[id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / table.len() as f64).collect()
    }

    #[test]
    fn equal_weights_share_evenly() {
        let table = build_table(&members(&[1, 1, 1]));
        assert!(table.iter().all(|&id| id != NO_SERVER));
        for share in shares(&table, 3) {
            assert!((share - 1.0 / 3.0).abs() < 0.01, "share {share}");
        }
    }

    #[test]
    fn weights_are_respected_within_a_few_percent() {
        let weights = [1, 3, 2, 10];
        let total: u32 = weights.iter().sum();
        let table = build_table(&members(&weights));
        for (i, share) in shares(&table, weights.len()).into_iter().enumerate() {
            let want = weights[i] as f64 / total as f64;
            assert!((share - want).abs() / want < 0.03, "server {i}: share {share}, want {want}");
        }
    }

    #[test]
    fn zero_weight_gets_nothing_and_no_members_means_no_server() {
        let table = build_table(&members(&[1, 0, 1]));
        assert!(!table.contains(&1));
        let empty = build_table(&members(&[0, 0]));
        assert!(empty.iter().all(|&id| id == NO_SERVER));
    }

    #[test]
    fn removing_a_server_moves_only_its_slots_or_nearly() {
        let all = members(&[1, 1, 1, 1, 1]);
        let before = build_table(&all);
        let after = build_table(&all[..4]);
        let (mut kept_moved, mut removed_slots) = (0usize, 0usize);
        for (b, a) in before.iter().zip(&after) {
            if *b == 4 {
                removed_slots += 1;
            } else if a != b {
                kept_moved += 1;
            }
        }
        assert!(removed_slots > 0);
        // Maglev trades perfect stability for balance: a small fraction of
        // other slots move too (a few percent).
        let moved = kept_moved as f64 / before.len() as f64;
        assert!(moved < 0.03, "{:.2}% of the remaining servers' slots moved", moved * 100.0);
    }

    #[test]
    fn table_does_not_depend_on_member_order() {
        let mut m = members(&[1, 2, 3]);
        let a = build_table(&m);
        m.reverse();
        assert_eq!(a, build_table(&m));
    }

    #[test]
    fn small_tables_fill_every_slot() {
        let table = build_table_of_size(&members(&[1, 5]), 13);
        assert!(table.iter().all(|&id| id != NO_SERVER));
    }
}
