//! How translated connections get their public address, port and lifetime: SNAT
//! address pools (paired, RFC 4787 REQ-2), port selection, deterministic port blocks
//! (RFC 7422) and conntrack timeouts (RFC 4787 REQ-5, RFC 5382 REQ-5).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize};

/// Largest pool natgw renders (a /20 of public addresses is already a big gateway).
pub const MAX_POOL: usize = 4096;
/// Largest number of private hosts port blocks are computed for (a /12).
pub const MAX_BLOCK_HOSTS: u64 = 1 << 20;

/// `snat_to` as written: one address, or a list of addresses and ranges
/// (`"203.0.113.36-203.0.113.40"`), expanded in order, each address once.
pub fn deserialize_snat_to<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        One(String),
        Many(Vec<String>),
    }
    let entries = match Written::deserialize(d)? {
        Written::One(one) => vec![one],
        Written::Many(many) => many,
    };
    let mut pool = Vec::new();
    for entry in &entries {
        for addr in parse_entry(entry).map_err(serde::de::Error::custom)? {
            if pool.contains(&addr) {
                return Err(serde::de::Error::custom(format!(
                    "{addr} is in the SNAT pool twice (overlapping entries); list each address once"
                )));
            }
            pool.push(addr);
        }
        if pool.len() > MAX_POOL {
            return Err(serde::de::Error::custom(format!(
                "the SNAT pool has more than {MAX_POOL} addresses"
            )));
        }
    }
    Ok(pool)
}

/// `ADDR` or `FIRST-LAST` (IPv4, inclusive).
pub fn parse_entry(entry: &str) -> Result<Vec<IpAddr>, String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("invalid IP address syntax: {s:?}"))
    };
    let Some((first, last)) = entry.split_once('-') else {
        return Ok(vec![parse(entry)?]);
    };
    let (IpAddr::V4(first), IpAddr::V4(last)) = (parse(first)?, parse(last)?) else {
        return Err(format!(
            "address ranges are IPv4 only: {entry:?}; list IPv6 addresses one by one"
        ));
    };
    let (lo, hi) = (u32::from(first), u32::from(last));
    if lo > hi {
        return Err(format!("range {entry:?} ends before it starts"));
    }
    if (hi - lo) as usize >= MAX_POOL {
        return Err(format!(
            "range {entry:?} has more than {MAX_POOL} addresses"
        ));
    }
    Ok((lo..=hi).map(|a| IpAddr::V4(Ipv4Addr::from(a))).collect())
}

/// How the kernel picks the public source port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSelection {
    /// Keep the private port when it is free (the kernel's default; RFC 4787 REQ-3).
    #[default]
    Preserve,
    /// A random port for every new mapping (`fully-random`): no port-clash race between
    /// many hosts behind one address, no port preservation.
    Random,
}

/// Conntrack timeouts for natgw's translated flows, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// UDP mappings, replied or not (RFC 4787 REQ-5: at least 120, default 300).
    pub udp: u32,
    /// Established TCP (RFC 5382 REQ-5: at least 7440, 2 h 4 min).
    pub tcp_established: u32,
    /// TCP opening and closing states (RFC 5382 REQ-5: at least 240, 4 min).
    pub tcp_transitory: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
        }
    }
}

impl Timeouts {
    /// Refuses values below what the RFCs require (or absurdly long ones).
    pub fn check(&self) -> Result<(), String> {
        const WEEK: u32 = 7 * 24 * 3600;
        for (key, value, min, rfc) in [
            ("udp", self.udp, 120, "RFC 4787 REQ-5"),
            (
                "tcp_established",
                self.tcp_established,
                7440,
                "RFC 5382 REQ-5",
            ),
            ("tcp_transitory", self.tcp_transitory, 240, "RFC 5382 REQ-5"),
        ] {
            if value < min {
                return Err(format!(
                    "[timeouts] {key} = {value} is below the {min} s that {rfc} requires"
                ));
            }
            if value > WEEK {
                return Err(format!(
                    "[timeouts] {key} = {value} is longer than a week ({WEEK} s)"
                ));
            }
        }
        Ok(())
    }
}

/// `[port_blocks]`: each private host gets a fixed public address and port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortBlocksConfig {
    /// Ports per host.
    pub size: u16,
    /// First port handed out (the ones below stay for the headnode itself).
    #[serde(default = "default_first_port")]
    pub first_port: u16,
}

fn default_first_port() -> u16 {
    1024
}

/// One host's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBlock {
    pub private: Ipv4Addr,
    pub public: Ipv4Addr,
    pub first: u16,
    pub last: u16,
}

/// The deterministic assignment: host number i of the private prefixes (in address
/// order) gets block i: address i / blocks_per_address, ports in block i % that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBlocks {
    pub config: PortBlocksConfig,
    pub pool: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
}

impl PortBlocks {
    /// Checks that the pool covers every private host at this block size.
    pub fn new(
        config: PortBlocksConfig,
        pool: Vec<Ipv4Addr>,
        prefixes: Vec<Ipv4Net>,
    ) -> Result<PortBlocks, String> {
        if config.size == 0 {
            return Err("[port_blocks] size must be at least 1".into());
        }
        if pool.is_empty() {
            return Err("[port_blocks] needs SNAT addresses (snat_to), not masquerade".into());
        }
        let blocks = PortBlocks {
            config,
            pool,
            prefixes,
        };
        let per_address = blocks.per_address();
        if per_address == 0 {
            return Err(format!(
                "[port_blocks] size = {} does not fit between first_port = {} and 65535",
                config.size, config.first_port
            ));
        }
        let hosts = blocks.hosts();
        if hosts > MAX_BLOCK_HOSTS {
            return Err(format!(
                "the private prefixes hold {hosts} addresses; port blocks are computed for at most {MAX_BLOCK_HOSTS}"
            ));
        }
        let capacity = per_address * blocks.pool.len() as u64;
        if hosts > capacity {
            let needed = hosts.div_ceil(per_address);
            return Err(format!(
                "[port_blocks] the pool of {} address(es) holds {capacity} blocks of {} ports, but the private prefixes hold {hosts} hosts: use {needed} addresses, or a smaller size",
                blocks.pool.len(),
                config.size
            ));
        }
        Ok(blocks)
    }

    fn per_address(&self) -> u64 {
        (65536 - u64::from(self.config.first_port)) / u64::from(self.config.size)
    }

    fn hosts(&self) -> u64 {
        self.prefixes
            .iter()
            .map(|p| 1u64 << (32 - p.prefix_len()))
            .sum()
    }

    /// Every host's block, in host order.
    pub fn all(&self) -> Vec<PortBlock> {
        let per_address = self.per_address();
        let hosts = self
            .prefixes
            .iter()
            .flat_map(|p| (u32::from(p.network())..=u32::from(p.broadcast())).map(Ipv4Addr::from));
        hosts
            .enumerate()
            .map(|(i, private)| {
                let i = i as u64;
                let first = u64::from(self.config.first_port)
                    + (i % per_address) * u64::from(self.config.size);
                PortBlock {
                    private,
                    public: self.pool[(i / per_address) as usize],
                    first: first as u16,
                    last: (first + u64::from(self.config.size) - 1) as u16,
                }
            })
            .collect()
    }

    /// The private host that owns `public:port`, from the config alone.
    pub fn owner(&self, public: Ipv4Addr, port: u16) -> Option<PortBlock> {
        let address = self.pool.iter().position(|a| *a == public)? as u64;
        let offset = port.checked_sub(self.config.first_port)?;
        let block = u64::from(offset) / u64::from(self.config.size);
        let per_address = self.per_address();
        if block >= per_address {
            return None;
        }
        let mut host = address * per_address + block;
        for prefix in &self.prefixes {
            let size = 1u64 << (32 - prefix.prefix_len());
            if host < size {
                let private = Ipv4Addr::from(u32::from(prefix.network()) + host as u32);
                let first = u64::from(self.config.first_port) + block * u64::from(self.config.size);
                return Some(PortBlock {
                    private,
                    public,
                    first: first as u16,
                    last: (first + u64::from(self.config.size) - 1) as u16,
                });
            }
            host -= size;
        }
        None
    }
}

/// The IPv4 private prefixes port blocks are computed over.
pub fn v4_prefixes(prefixes: &[IpNet]) -> Vec<Ipv4Net> {
    prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect()
}

impl fmt::Display for PortSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortSelection::Preserve => "preserve",
            PortSelection::Random => "random",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expand_addresses_and_ranges() {
        assert_eq!(parse_entry("203.0.113.36").unwrap().len(), 1);
        let range = parse_entry("203.0.113.36-203.0.113.39").unwrap();
        assert_eq!(range.len(), 4);
        assert_eq!(range[3], "203.0.113.39".parse::<IpAddr>().unwrap());
        assert!(parse_entry("203.0.113.39-203.0.113.36")
            .unwrap_err()
            .contains("ends before"));
        assert!(parse_entry("203.0.113.300")
            .unwrap_err()
            .contains("invalid IP address syntax"));
        assert!(parse_entry("10.0.0.0-10.1.0.0")
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn timeouts_below_the_rfcs_are_refused() {
        Timeouts::default().check().unwrap();
        let short = Timeouts {
            udp: 30,
            ..Timeouts::default()
        };
        assert!(short.check().unwrap_err().contains("RFC 4787 REQ-5"));
        let short = Timeouts {
            tcp_established: 3600,
            ..Timeouts::default()
        };
        assert!(short.check().unwrap_err().contains("RFC 5382"));
    }

    fn blocks(size: u16, pool: &[&str], prefixes: &[&str]) -> Result<PortBlocks, String> {
        PortBlocks::new(
            PortBlocksConfig {
                size,
                first_port: 1024,
            },
            pool.iter().map(|a| a.parse().unwrap()).collect(),
            prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        )
    }

    #[test]
    fn blocks_are_deterministic_disjoint_and_invertible() {
        // 63 blocks of 1024 per address: a /24 needs 5 addresses.
        let b = blocks(1024, &["203.0.113.36"], &["10.0.0.0/24"]).unwrap_err();
        assert!(b.contains("use 5 addresses"), "{b}");
        let pool = [
            "203.0.113.36",
            "203.0.113.37",
            "203.0.113.38",
            "203.0.113.39",
            "203.0.113.40",
        ];
        let b = blocks(1024, &pool, &["10.0.0.0/24"]).unwrap();
        let all = b.all();
        assert_eq!(all.len(), 256);
        assert_eq!(all[0].first, 1024);
        assert_eq!(all[0].last, 2047);
        assert_eq!(all[63].public, "203.0.113.37".parse::<Ipv4Addr>().unwrap());
        for block in &all {
            for port in [block.first, block.last, block.first + 7] {
                assert_eq!(b.owner(block.public, port), Some(*block));
            }
        }
        assert_eq!(b.owner("203.0.113.36".parse().unwrap(), 80), None);
        assert_eq!(b.owner("198.51.100.1".parse().unwrap(), 2000), None);
        assert_eq!(all, b.all(), "the same config gives the same blocks");
    }
}
