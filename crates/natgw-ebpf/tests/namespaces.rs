//! The programs attached at TCX of a lab headnode's public interface, with real
//! traffic between namespaces (no nftables, no conntrack: the translation is theirs
//! alone): endpoint-independent mapping with port preservation, endpoint-independent
//! filtering, unsolicited inbound dropped under address-and-port-dependent filtering,
//! TCP through the translator, and nothing left attached once the plane is dropped.
//!
//! Root only; skips with a message otherwise, never under CI.

mod common;
use common::root_or_skip;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use natgw_ebpf::plane::attached;
use natgw_ebpf::{Plane, Side};
use natgw_lab::{in_netns, Lab, Spec, HEAD_PUBLIC, SERVER, SERVER_ALT};
use natgw_nat::{Config, Filtering, Timeouts};

const WAN: &str = "wan0";

fn lab() -> Lab {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "ngwe{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let lab = Lab::build(&name, Spec::nodes(1)).expect("build lab");
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    lab
}

/// The plane, loaded and attached inside the headnode.
fn attach(lab: &Lab, filtering: Filtering) -> Plane {
    let cfg = Config {
        private: vec!["10.0.0.0/24".parse().unwrap()],
        pool: vec![HEAD_PUBLIC],
        // Below the headnode's own ephemeral ports.
        ports: 1024..=32767,
        filtering,
        timeouts: Timeouts::default(),
        icmp_source: Ipv4Addr::new(10, 0, 0, 1),
    };
    in_netns(&lab.ns("head"), move || {
        let mut p = Plane::load(&cfg, 0x4e47).unwrap();
        p.attach(WAN).unwrap();
        p
    })
    .unwrap()
}

fn udp_in(lab: &Lab, role: &str, addr: SocketAddrV4) -> UdpSocket {
    in_netns(&lab.ns(role), move || {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s
    })
    .unwrap()
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

fn node() -> Ipv4Addr {
    Lab::node_address(1)
}

#[test]
fn full_cone_udp_through_the_attached_programs() {
    if !root_or_skip("full_cone_udp_through_the_attached_programs") {
        return;
    }
    let lab = lab();
    let plane = attach(&lab, Filtering::EndpointIndependent);
    let client = udp_in(&lab, "n1", SocketAddrV4::new(node(), 4500));
    let server = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, 7000));
    let alt = udp_in(&lab, "pub", SocketAddrV4::new(SERVER_ALT, 7001));
    // Endpoint-independent mapping, port preserved: both servers see one endpoint.
    let public = SocketAddr::from((HEAD_PUBLIC, 4500));
    client.send_to(b"one", (SERVER, 7000)).unwrap();
    assert_eq!(recv(&server), Some((b"one".to_vec(), public)));
    client.send_to(b"two", (SERVER_ALT, 7001)).unwrap();
    assert_eq!(recv(&alt), Some((b"two".to_vec(), public)));
    // The reply maps back.
    server.send_to(b"back", public).unwrap();
    assert_eq!(
        recv(&client),
        Some((b"back".to_vec(), (SERVER, 7000).into()))
    );
    // Endpoint-independent filtering: an endpoint never contacted gets through too.
    let stranger = udp_in(&lab, "pub", SocketAddrV4::new(SERVER_ALT, 7999));
    stranger.send_to(b"hello", public).unwrap();
    assert_eq!(
        recv(&client),
        Some((b"hello".to_vec(), (SERVER_ALT, 7999).into()))
    );
    let c = plane.counters().unwrap();
    assert!(c["out_translated"] >= 2 && c["in_translated"] >= 2, "{c:?}");
    assert_eq!(c["bindings_created"], 1, "{c:?}");
    // Dropping the plane detaches both programs.
    in_netns(&lab.ns("head"), move || {
        assert_eq!(attached(WAN, Side::Egress).unwrap(), ["natgw_egress"]);
        assert_eq!(attached(WAN, Side::Ingress).unwrap(), ["natgw_ingress"]);
        drop(plane);
        // Closing the last link descriptor detaches; the kernel may finish it a moment later.
        let detached = || {
            attached(WAN, Side::Egress).unwrap().is_empty()
                && attached(WAN, Side::Ingress).unwrap().is_empty()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !detached() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            detached(),
            "programs still attached after the plane was dropped"
        );
    })
    .unwrap();
    // And nothing translates any more.
    client.send_to(b"raw", (SERVER, 7000)).unwrap();
    assert_eq!(
        recv(&server).map(|(_, from)| from),
        Some((node(), 4500).into()),
        "untranslated once detached"
    );
}

#[test]
fn unsolicited_inbound_is_dropped_with_port_dependent_filtering() {
    if !root_or_skip("unsolicited_inbound_is_dropped_with_port_dependent_filtering") {
        return;
    }
    let lab = lab();
    let plane = attach(&lab, Filtering::AddressAndPortDependent);
    let client = udp_in(&lab, "n1", SocketAddrV4::new(node(), 4600));
    let server = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, 7000));
    let public = SocketAddr::from((HEAD_PUBLIC, 4600));
    client.send_to(b"one", (SERVER, 7000)).unwrap();
    assert_eq!(recv(&server), Some((b"one".to_vec(), public)));
    for port in [7001, 7002] {
        let other = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, port));
        other.send_to(b"unsolicited", public).unwrap();
    }
    server.send_to(b"reply", public).unwrap();
    // Only the reply arrives; the other ports were dropped and counted.
    assert_eq!(
        recv(&client),
        Some((b"reply".to_vec(), (SERVER, 7000).into()))
    );
    assert_eq!(recv(&client), None);
    assert_eq!(plane.counters().unwrap()["drop_filtered"], 2);
}

#[test]
fn tcp_connects_through_the_attached_programs() {
    if !root_or_skip("tcp_connects_through_the_attached_programs") {
        return;
    }
    let lab = lab();
    let plane = attach(&lab, Filtering::AddressAndPortDependent);
    let listener = in_netns(&lab.ns("pub"), || {
        TcpListener::bind(SocketAddrV4::new(SERVER, 8080)).unwrap()
    })
    .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, from) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&from.to_string().into_bytes()).unwrap();
        buf
    });
    let seen = in_netns(&lab.ns("n1"), || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((SERVER, 8080)), Duration::from_secs(3))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap();
    assert_eq!(&server.join().unwrap(), b"hello");
    let from: SocketAddr = seen.parse().unwrap();
    assert_eq!(from.ip(), HEAD_PUBLIC, "the server saw the public address");
    assert!(plane.counters().unwrap()["out_translated"] >= 3);
}

#[test]
fn an_icmp_error_from_outside_reaches_the_private_socket() {
    if !root_or_skip("an_icmp_error_from_outside_reaches_the_private_socket") {
        return;
    }
    let lab = lab();
    let plane = attach(&lab, Filtering::AddressAndPortDependent);
    // Nothing listens on the server's port 7999: its kernel answers port unreachable,
    // quoting the translated datagram; the programs translate the error back (RFC 5508)
    // and the private host's connected socket sees the refusal.
    let err = in_netns(&lab.ns("n1"), || {
        let s = UdpSocket::bind(SocketAddrV4::new(node(), 4700)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect((SERVER, 7999)).unwrap();
        s.send(b"anyone?").unwrap();
        let mut buf = [0u8; 64];
        s.recv(&mut buf).unwrap_err().kind()
    })
    .unwrap();
    assert_eq!(err, std::io::ErrorKind::ConnectionRefused);
    assert!(plane.counters().unwrap()["in_translated"] >= 1);
}

/// natgw's own RFC 5780 client (`natgw probe`'s) against its STUN server on the public
/// side classifies the attached programs as configured.
#[test]
fn an_rfc_5780_client_classifies_mapping_and_filtering() {
    if !root_or_skip("an_rfc_5780_client_classifies_mapping_and_filtering") {
        return;
    }
    use natgw_probe::behaviour::{discover, Kind, Options};
    use natgw_probe::server::{Config as StunConfig, Server};
    for (filtering, expected, coturn) in [
        (
            Filtering::EndpointIndependent,
            Kind::EndpointIndependent,
            "NAT with Endpoint Independent Filtering!",
        ),
        (
            Filtering::AddressDependent,
            Kind::AddressDependent,
            "NAT with Address Dependent Filtering!",
        ),
        (
            Filtering::AddressAndPortDependent,
            Kind::AddressAndPortDependent,
            "NAT with Address and Port Dependent Filtering!",
        ),
    ] {
        let lab = lab();
        let plane = attach(&lab, filtering);
        let _server = in_netns(&lab.ns("pub"), || {
            Server::start(StunConfig::new(
                (SERVER, 3478).into(),
                Some((SERVER_ALT, 3479).into()),
            ))
            .unwrap()
        })
        .unwrap();
        let b = in_netns(&lab.ns("n1"), || {
            discover(
                (SERVER, 3478).into(),
                Options {
                    timeout: Duration::from_millis(400),
                    lifetime_max: None,
                    classic: false,
                    tcp_lifetime: None,
                },
            )
            .unwrap()
        })
        .unwrap();
        assert_eq!(b.mapped.ip(), HEAD_PUBLIC, "{b:?}");
        assert_eq!(b.mapping, Some(Kind::EndpointIndependent), "{b:?}");
        assert_eq!(b.filtering, Some(expected), "{filtering:?}: {b:?}");
        // (The client's ephemeral port lies outside the configured range, so it is
        // not preserved; port preservation is tested above with a port inside it.)
        // A second implementation, coturn's RFC 5780 client, agrees.
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("n1"), "timeout", "20"])
            .args(["turnutils_natdiscovery", "-m", "-f", "198.51.100.10"])
            .output()
            .expect("turnutils_natdiscovery (Debian package coturn)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAT with Endpoint Independent Mapping!"),
            "{filtering:?}: {text}"
        );
        assert!(text.contains(coturn), "{filtering:?}: {text}");
        drop(plane);
    }
}

#[test]
fn fragmented_datagrams_cross_both_ways() {
    if !root_or_skip("fragmented_datagrams_cross_both_ways") {
        return;
    }
    let lab = lab();
    let plane = attach(&lab, Filtering::AddressAndPortDependent);
    // 4,000 bytes over 1,500-byte links: the senders fragment, the headnode forwards the
    // pieces (nothing reassembles there) and the programs translate every piece.
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let client = udp_in(&lab, "n1", SocketAddrV4::new(node(), 4800));
    let server = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, 7000));
    let public = SocketAddr::from((HEAD_PUBLIC, 4800));
    client.send_to(&big, (SERVER, 7000)).unwrap();
    let mut buf = vec![0u8; 8192];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the datagram arrives whole");
    assert_eq!((&buf[..n], from), (&big[..], public));
    server.send_to(&big, public).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("the reply arrives whole");
    assert_eq!((&buf[..n], from), (&big[..], (SERVER, 7000).into()));
    let c = plane.counters().unwrap();
    assert!(c["out_translated"] >= 3 && c["in_translated"] >= 3, "{c:?}");
}
