//! What one packet costs inside the programs, measured by the kernel
//! (BPF_PROG_TEST_RUN's duration, program time only: no routing, no driver).
//! `cargo run --release -p natgw-ebpf --example cost [-- [--log] FILL...]` as root;
//! `--log` turns the binding events on (as `natgw run --log-mappings` does).

use std::net::Ipv4Addr;

use natgw_ebpf::{Plane, Side};
use natgw_nat::packet::{private_host, remote_host, udp};
use natgw_nat::{Config, Filtering, Timeouts};

fn frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    f.extend_from_slice(ip);
    f
}

fn main() {
    let cfg = Config {
        private: vec!["10.0.0.0/8".parse().unwrap()],
        pool: vec![Ipv4Addr::new(203, 0, 113, 1)],
        ports: 1024..=65535,
        filtering: Filtering::EndpointIndependent,
        timeouts: Timeouts::default(),
        icmp_source: Ipv4Addr::new(10, 0, 0, 1),
    };
    let mut plane = Plane::load(&cfg, 1).expect("load (root?)");
    let log = std::env::args().any(|a| a == "--log");
    plane.set_logging(log).unwrap();
    println!("binding events: {}", if log { "on" } else { "off" });
    let server = remote_host(1, 53);
    // New bindings: every packet from another private endpoint, until the range is
    // `fill` full; the cost of the last 1,000 at each level.
    let mut made = 0u32;
    // Fill levels to measure at (fractions, ascending), e.g. `-- 0.05 0.1`.
    let fills: Vec<f64> = std::env::args()
        .skip(1)
        .filter(|a| a != "--log")
        .map(|a| a.parse().expect("a fill level such as 0.5"))
        .collect();
    let fills = if fills.is_empty() {
        vec![0.10, 0.50, 0.90, 0.95, 0.99]
    } else {
        fills
    };
    for fill in fills {
        let target = (64512.0 * fill) as u32;
        let mut total = std::time::Duration::ZERO;
        let mut n = 0;
        while made < target {
            let host = 0x0a00_0000 + 2 + made / 4; // 4 sockets per host, all on port 40000+k
            let src = natgw_nat::Endpoint::new(Ipv4Addr::from(host), 40000 + (made % 4) as u16);
            let r = plane
                .run_timed(Side::Egress, &frame(&udp(src, server, b"x")), 1)
                .unwrap();
            assert_eq!(r.0.verdict, 0);
            if target - made <= 1000 {
                total += r.1;
                n += 1;
            }
            made += 1;
        }
        println!(
            "new binding at {:>3.0} % of the range: {:>6.0} ns",
            fill * 100.0,
            total.as_nanos() as f64 / n as f64
        );
    }
    // An established flow: the same packet, one run at a time (a repeated run would
    // see the packet it already rewrote).
    let pkt = frame(&udp(private_host(2, 5000), server, b"x"));
    plane.run(Side::Egress, &pkt).unwrap();
    let runs = 20_000u32;
    let mut total = std::time::Duration::ZERO;
    for _ in 0..runs {
        let (r, d) = plane.run_timed(Side::Egress, &pkt, 1).unwrap();
        assert_eq!(r.verdict, 0);
        total += d;
    }
    println!(
        "established flow, egress: {:>6.0} ns",
        total.as_nanos() as f64 / f64::from(runs)
    );
    // The floor of the measurement: a packet the program leaves alone at once.
    let foreign = frame(&udp(remote_host(9, 5000), server, b"x"));
    let mut total = std::time::Duration::ZERO;
    for _ in 0..runs {
        total += plane.run_timed(Side::Egress, &foreign, 1).unwrap().1;
    }
    println!(
        "left alone (floor), egress: {:>6.0} ns",
        total.as_nanos() as f64 / f64::from(runs)
    );
    println!("counters: {:?}", plane.counters().unwrap());
}
