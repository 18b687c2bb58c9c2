//! Sets of IP prefixes: normalising a list (what nftables interval sets accept) and
//! finding where two lists overlap. Both are sort-and-sweep, O(n log n), because
//! private prefixes come from config files that may list tens of thousands of them.

use std::cmp::Ordering;
use std::net::IpAddr;

use ipnet::IpNet;

/// Where a prefix sits on the address line: family, first address, last address.
/// IPv4 sorts before IPv6; the families never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    v6: bool,
    first: u128,
    last: u128,
}

fn span(net: &IpNet) -> Span {
    let value = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    Span {
        v6: matches!(net, IpNet::V6(_)),
        first: value(net.network()),
        last: value(net.broadcast()),
    }
}

/// Sort key that puts a prefix right before everything inside it: by family, then
/// first address, then shorter (wider) prefix first.
fn sort_key(net: &IpNet) -> (bool, u128, u8) {
    let s = span(net);
    (s.v6, s.first, net.prefix_len())
}

/// Sorted, deduplicated, host bits cleared, and without prefixes contained in another
/// (nftables interval sets reject overlapping elements).
///
/// Two prefixes are either disjoint or one contains the other. After sorting by
/// (family, first address, length), whatever a kept prefix contains follows it
/// directly, so one sweep that compares with the last kept prefix is enough.
pub fn normalise(prefixes: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    let mut all: Vec<IpNet> = prefixes.into_iter().map(|p| p.trunc()).collect();
    all.sort_unstable_by_key(sort_key);
    let mut kept: Vec<IpNet> = Vec::with_capacity(all.len());
    for net in all {
        match kept.last() {
            Some(last) if last.contains(&net) => {}
            _ => kept.push(net),
        }
    }
    kept
}

/// Every pair `(x, y)` with `x` from `a` and `y` from `b` that share an address,
/// ordered by address. Both inputs must be normalised (see [`normalise`]); each is
/// sorted here, so only "no prefix inside another of the same list" matters.
///
/// Sweep of two sorted lists of disjoint intervals: report the current pair if it
/// overlaps, then step past whichever ends first. O((n + m) log(n + m)) with the sort.
pub fn overlaps(a: &[IpNet], b: &[IpNet]) -> Vec<(IpNet, IpNet)> {
    let sorted = |list: &[IpNet]| {
        let mut v: Vec<(Span, IpNet)> = list.iter().map(|n| (span(&n.trunc()), *n)).collect();
        v.sort_unstable();
        debug_assert!(
            v.windows(2)
                .all(|w| w[0].0.v6 != w[1].0.v6 || w[0].0.last < w[1].0.first),
            "overlaps() needs normalised inputs"
        );
        v
    };
    let (a, b) = (sorted(a), sorted(b));
    let (mut i, mut j) = (0, 0);
    let mut found = Vec::new();
    while i < a.len() && j < b.len() {
        let ((x, xnet), (y, ynet)) = (a[i], b[j]);
        if x.v6 == y.v6 && x.first <= y.last && y.first <= x.last {
            found.push((xnet, ynet));
        }
        // The interval that ends first (by family, then last address) cannot meet
        // anything further along the other list.
        match (x.v6, x.last).cmp(&(y.v6, y.last)) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The definition, quadratic: what the sweep must agree with.
    fn naive_normalise(prefixes: &[IpNet]) -> Vec<IpNet> {
        let mut all: Vec<IpNet> = prefixes.iter().map(|p| p.trunc()).collect();
        all.sort_by_key(sort_key);
        all.dedup();
        all.iter()
            .filter(|p| !all.iter().any(|q| q != *p && q.contains(*p)))
            .copied()
            .collect()
    }

    fn naive_overlaps(a: &[IpNet], b: &[IpNet]) -> Vec<(IpNet, IpNet)> {
        let mut found: Vec<(IpNet, IpNet)> = a
            .iter()
            .flat_map(|x| b.iter().map(move |y| (*x, *y)))
            .filter(|(x, y)| x.contains(y) || y.contains(x))
            .collect();
        found.sort_by_key(|(x, y)| (sort_key(x), sort_key(y)));
        found
    }

    /// xorshift64*: deterministic, so a failure reproduces; no crate needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Prefixes clustered in a few small ranges so containment and duplicates are
    /// frequent; a quarter of them IPv6.
    fn random_prefixes(rng: &mut Rng, count: usize) -> Vec<IpNet> {
        (0..count)
            .map(|_| {
                if rng.below(4) == 0 {
                    let addr = std::net::Ipv6Addr::from(
                        (0xfd00u128 << 112) | (u128::from(rng.below(256)) << 104),
                    );
                    IpNet::new(addr.into(), 8 + rng.below(21) as u8).unwrap()
                } else {
                    let addr = std::net::Ipv4Addr::from(
                        (10u32 << 24)
                            | ((rng.below(4) as u32) << 16)
                            | (rng.below(256) as u32) << 8,
                    );
                    // Host bits left in on purpose: normalise must clear them.
                    IpNet::new(addr.into(), 14 + rng.below(11) as u8).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn drops_contained_and_duplicate_prefixes_and_clears_host_bits() {
        let got = normalise(nets(&[
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.168.0.0/24",
            "192.168.0.7/24",
            "172.16.5.0/24",
        ]));
        assert_eq!(
            got,
            nets(&["10.0.0.0/8", "172.16.5.0/24", "192.168.0.0/24"])
        );
    }

    #[test]
    fn keeps_adjacent_and_mixed_family_prefixes() {
        let got = normalise(nets(&[
            "fd00::/64",
            "10.0.1.0/24",
            "fd00::/48",
            "10.0.0.0/24",
            "::/0",
            "0.0.0.0/1",
        ]));
        // ::/0 contains no IPv4 prefix, 0.0.0.0/1 contains 10/8's children.
        assert_eq!(got, nets(&["0.0.0.0/1", "::/0"]));
        assert_eq!(
            normalise(nets(&["10.0.1.0/24", "10.0.0.0/24", "fd00::/64"])),
            nets(&["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"])
        );
        assert!(normalise(Vec::new()).is_empty());
    }

    #[test]
    fn normalise_agrees_with_the_naive_definition_on_random_inputs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let count = rng.below(60) as usize;
            let input = random_prefixes(&mut rng, count);
            assert_eq!(
                normalise(input.clone()),
                naive_normalise(&input),
                "round {round}: {input:?}"
            );
        }
    }

    #[test]
    fn overlaps_finds_every_containing_pair() {
        let private = normalise(nets(&["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"]));
        let reserved = normalise(nets(&[
            "127.0.0.0/8",
            "224.0.0.0/4",
            "10.20.0.0/16",
            "10.30.0.0/16",
            "192.168.0.0/16",
            "::1/128",
        ]));
        assert_eq!(
            overlaps(&private, &reserved),
            vec![
                (
                    "10.0.0.0/8".parse().unwrap(),
                    "10.20.0.0/16".parse().unwrap()
                ),
                (
                    "10.0.0.0/8".parse().unwrap(),
                    "10.30.0.0/16".parse().unwrap()
                ),
                (
                    "192.168.1.0/24".parse().unwrap(),
                    "192.168.0.0/16".parse().unwrap()
                ),
            ]
        );
        assert!(overlaps(&nets(&["10.0.0.0/24"]), &nets(&["10.0.1.0/24", "fd00::/8"])).is_empty());
        assert!(overlaps(&[], &nets(&["10.0.0.0/8"])).is_empty());
    }

    #[test]
    fn overlaps_agrees_with_the_naive_definition_on_random_inputs() {
        let mut rng = Rng(42);
        for round in 0..300 {
            let (n, m) = (rng.below(30) as usize, rng.below(30) as usize);
            let a = normalise(random_prefixes(&mut rng, n));
            let b = normalise(random_prefixes(&mut rng, m));
            assert_eq!(
                overlaps(&a, &b),
                naive_overlaps(&a, &b),
                "round {round}: {a:?} / {b:?}"
            );
        }
    }
}
