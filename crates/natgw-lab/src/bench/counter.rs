//! An interface's packet counters in one namespace, counted where the packets arrive,
//! so a rate measures what the gateway forwarded, not what the generator sent.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::netns::{in_netns, NetnsError};

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Reads `/proc/thread-self/net/dev` opened inside the namespace: the open file stays
/// bound to that namespace, so any thread can read it, cheaply, many times a second.
pub struct IfaceCounter {
    file: File,
    ifname: String,
}

impl IfaceCounter {
    pub fn open(ns: &str, ifname: &str) -> Result<IfaceCounter, NetnsError> {
        let file = in_netns(ns, || File::open("/proc/thread-self/net/dev"))?.map_err(|source| {
            NetnsError::Enter {
                name: format!("{ns} (/proc/thread-self/net/dev)"),
                source,
            }
        })?;
        let counter = IfaceCounter {
            file,
            ifname: ifname.to_string(),
        };
        counter.read().map_err(|source| NetnsError::Enter {
            name: format!("{ns} (counters of {ifname})"),
            source,
        })?;
        Ok(counter)
    }

    pub fn read(&self) -> io::Result<IfaceStats> {
        let mut buf = [0u8; 8192];
        let n = self.file.read_at(&mut buf, 0)?;
        parse(&String::from_utf8_lossy(&buf[..n]), &self.ifname).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no counters for interface {}", self.ifname),
            )
        })
    }

    pub fn rx_packets(&self) -> io::Result<u64> {
        Ok(self.read()?.rx_packets)
    }
}

/// The line `IFNAME: rx_bytes rx_packets errs drop fifo frame compressed multicast
/// tx_bytes tx_packets ...` of /proc/net/dev.
fn parse(text: &str, ifname: &str) -> Option<IfaceStats> {
    text.lines().find_map(|line| {
        let (name, fields) = line.trim_start().split_once(':')?;
        if name != ifname {
            return None;
        }
        let fields: Vec<u64> = fields
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(IfaceStats {
            rx_bytes: *fields.first()?,
            rx_packets: *fields.get(1)?,
            tx_packets: *fields.get(9)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 3840123   64002    0    0    0     0          0         0     2310      33    0    0    0     0       0          0
 eth10:       7       1    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    #[test]
    fn finds_the_named_interface_only() {
        assert_eq!(
            parse(DEV, "eth0"),
            Some(IfaceStats {
                rx_bytes: 3_840_123,
                rx_packets: 64_002,
                tx_packets: 33
            })
        );
        assert_eq!(parse(DEV, "eth10").unwrap().rx_packets, 1);
        assert_eq!(parse(DEV, "eth1"), None);
    }
}

/// Packets conntrack refused in one namespace (`insert_failed` + `drop`, summed over
/// CPUs), from `/proc/thread-self/net/stat/nf_conntrack` opened inside it. Many
/// distribution kernels do not have the file (CONFIG_NF_CONNTRACK_PROCFS); then `open`
/// returns None and callers go without.
pub struct ConntrackDrops {
    file: File,
}

impl ConntrackDrops {
    pub fn open(ns: &str) -> Option<ConntrackDrops> {
        let file = in_netns(ns, || File::open("/proc/thread-self/net/stat/nf_conntrack"))
            .ok()?
            .ok()?;
        let drops = ConntrackDrops { file };
        drops.read().ok()?;
        Some(drops)
    }

    pub fn read(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8192];
        let n = self.file.read_at(&mut buf, 0)?;
        parse_conntrack_drops(&String::from_utf8_lossy(&buf[..n])).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected nf_conntrack statistics",
            )
        })
    }
}

/// A header line naming the columns, then one line of hex numbers per CPU.
fn parse_conntrack_drops(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name| header.iter().position(|h| *h == name);
    let (failed, drop) = (column("insert_failed")?, column("drop")?);
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u64::from_str_radix(fields.get(i)?, 16).ok();
            Some(hex(failed)? + hex(drop)?)
        })
        .sum()
}

#[cfg(test)]
mod conntrack_tests {
    use super::*;

    #[test]
    fn sums_refused_packets_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00010000  00000000 00000000 00000000 00000005 00000000 00000000 00000000 00000000 0000000a 00000001 00000000 00000000  00000000 00000000 00000000 00000000
00010000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000100 00000000 00000000 00000000  00000000 00000000 00000000 00000000
";
        assert_eq!(parse_conntrack_drops(text), Some(10 + 1 + 256));
        assert_eq!(parse_conntrack_drops("entries found\n1 2\n"), None);
    }
}
