//! How long natgw takes to resolve, plan and render a gateway with many private
//! prefixes (`cargo bench -p natgw-core --bench plan`). Prints the median of several
//! runs per size; a measurement, not a pass/fail test.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use natgw_core::observed::{Address, Link, Observed, Route};
use natgw_core::Settings;

const SIZES: [(usize, usize); 3] = [(1_000, 21), (10_000, 11), (60_000, 5)];

fn main() {
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "prefixes", "desired", "plan+render", "total"
    );
    for (count, runs) in SIZES {
        let settings = settings(count);
        let observed = headnode();
        let mut desired_times = Vec::new();
        let mut plan_times = Vec::new();
        let mut totals = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let desired = natgw_core::desired(&settings, &observed).expect("valid gateway");
            let resolved = start.elapsed();
            let plan = natgw_core::plan(&desired, &observed);
            let total = start.elapsed();
            assert!(!plan.is_empty(), "a fresh headnode needs changes");
            black_box((desired, plan));
            desired_times.push(resolved);
            plan_times.push(total - resolved);
            totals.push(total);
        }
        println!(
            "{count:>8} {:>12.1?} {:>12.1?} {:>12.1?}   (median of {runs})",
            median(desired_times),
            median(plan_times),
            median(totals)
        );
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `count` configured prefixes inside 10.0.0.0/8, scattered (not sorted), with one in
/// ten a duplicate or contained in another, as a long hand-kept list would be.
fn settings(count: usize) -> Settings {
    let prefixes = (0..count).map(|i| {
        let slot = (i as u32).wrapping_mul(7919) % 200_000 + 16;
        let (base, len) = match i % 10 {
            0 => (slot & !1, 27),
            _ => (slot, 26),
        };
        let addr = Ipv4Addr::from((10u32 << 24) | (base << 6));
        let net = IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc());
        (net, format!("natgw.toml:{}", i + 1))
    });
    Settings {
        private_prefixes: prefixes.collect(),
        ..Settings::default()
    }
}

/// lo; wan0 203.0.113.1/24 with the default route; lan0 10.0.0.1/24. Nothing applied.
fn headnode() -> Observed {
    let link = |index, name: &str| Link {
        index,
        name: name.into(),
        up: true,
        carrier: true,
        loopback: index == 1,
        mtu: 1500,
        kind: None,
    };
    let addr = |ifindex, address: &str, prefix_len| Address {
        ifindex,
        address: address.parse().unwrap(),
        prefix_len,
        secondary: false,
        dynamic: false,
    };
    Observed {
        links: vec![link(1, "lo"), link(2, "wan0"), link(3, "lan0")],
        addresses: vec![
            addr(1, "127.0.0.1", 8),
            addr(2, "203.0.113.1", 24),
            addr(3, "10.0.0.1", 24),
        ],
        routes: vec![Route {
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("203.0.113.254".parse().unwrap()),
            oif: Some(2),
            protocol: 4,
            metric: 0,
        }],
        nft_present: true,
        ..Observed::default()
    }
}
