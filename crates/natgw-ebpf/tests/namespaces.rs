//! The programs attached at TCX of a lab headnode's public interface, with real
//! traffic between namespaces (no nftables, no conntrack: the translation is theirs
//! alone): endpoint-independent mapping with port preservation, endpoint-independent
//! filtering, unsolicited inbound dropped under address-and-port-dependent filtering,
//! TCP through the translator, hairpinning between two private hosts (natgw_private on
//! the private interface), ICMP 3/13 to a host that gets no port, and nothing left
//! attached once the plane is dropped.
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
use natgw_lab::{in_netns, Lab, Spec, HEAD_PUBLIC, PRIVATE_GATEWAY, SERVER, SERVER_ALT};
use natgw_nat::{Config, Filtering, Timeouts};

const WAN: &str = "wan0";
const LAN: &str = "lan0";

fn lab() -> Lab {
    lab_of(1)
}

fn lab_of(nodes: usize) -> Lab {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "ngwe{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let lab = Lab::build(&name, Spec::nodes(nodes)).expect("build lab");
    lab.sysctl("head", "net.ipv4.ip_forward", "1").unwrap();
    lab
}

/// The plane, loaded and attached inside the headnode.
fn attach(lab: &Lab, filtering: Filtering) -> Plane {
    // Below the headnode's own ephemeral ports.
    attach_with(lab, filtering, 1024..=32767)
}

/// The plane with this port range, on the public interface and (hairpinning) on
/// the private one.
fn attach_with(lab: &Lab, filtering: Filtering, ports: std::ops::RangeInclusive<u16>) -> Plane {
    let cfg = Config {
        private: vec!["10.0.0.0/24".parse().unwrap()],
        pool: vec![HEAD_PUBLIC],
        ports,
        filtering,
        timeouts: Timeouts::default(),
        icmp_source: PRIVATE_GATEWAY,
    };
    in_netns(&lab.ns("head"), move || {
        let mut p = Plane::load(&cfg, 0x4e47).unwrap();
        p.attach(WAN).unwrap();
        p.attach_private(LAN).unwrap();
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
        assert_eq!(attached(LAN, Side::Private).unwrap(), ["natgw_private"]);
        drop(plane);
        // Closing the last link descriptor detaches; the kernel may finish it a moment later.
        let detached = || {
            attached(WAN, Side::Egress).unwrap().is_empty()
                && attached(WAN, Side::Ingress).unwrap().is_empty()
                && attached(LAN, Side::Private).unwrap().is_empty()
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

/// Hairpinning (RFC 4787 REQ-9): n2 reaches n1 at n1's public endpoint, and n1 sees
/// n2's public endpoint as the source, both ways; what is for the gateway's own
/// address and no binding reaches the headnode untouched.
#[test]
fn a_private_host_reaches_another_at_its_public_endpoint() {
    if !root_or_skip("a_private_host_reaches_another_at_its_public_endpoint") {
        return;
    }
    let lab = lab_of(2);
    let plane = attach(&lab, Filtering::EndpointIndependent);
    let n1 = udp_in(&lab, "n1", SocketAddrV4::new(Lab::node_address(1), 4500));
    let n2 = udp_in(&lab, "n2", SocketAddrV4::new(Lab::node_address(2), 4600));
    let server = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, 7000));
    // n1 learns its public endpoint (a STUN client would, from the server's answer).
    let public1 = SocketAddr::from((HEAD_PUBLIC, 4500));
    n1.send_to(b"who am I", (SERVER, 7000)).unwrap();
    assert_eq!(recv(&server), Some((b"who am I".to_vec(), public1)));
    // n2 sends to it: n1 gets the datagram from n2's public endpoint...
    let public2 = SocketAddr::from((HEAD_PUBLIC, 4600));
    n2.send_to(b"hi n1", public1).unwrap();
    assert_eq!(recv(&n1), Some((b"hi n1".to_vec(), public2)));
    // ...and its answer to that endpoint reaches n2 from n1's public endpoint.
    n1.send_to(b"hi n2", public2).unwrap();
    assert_eq!(recv(&n2), Some((b"hi n2".to_vec(), public1)));
    assert_eq!(plane.counters().unwrap()["hairpinned"], 2);
    // A port of the gateway's own, no binding: delivered to the headnode as sent.
    let own = udp_in(&lab, "head", SocketAddrV4::new(HEAD_PUBLIC, 33999));
    n2.send_to(b"to the gateway", (HEAD_PUBLIC, 33999)).unwrap();
    assert_eq!(
        recv(&own),
        Some((
            b"to the gateway".to_vec(),
            (Lab::node_address(2), 4600).into()
        ))
    );
    assert_eq!(plane.counters().unwrap()["hairpinned"], 2);
}

/// No public port left (RFC 4787 REQ-3 forbids sharing one): the sender is told with
/// ICMP destination unreachable, code 13, from the gateway, instead of silence.
#[test]
fn a_host_that_gets_no_port_is_told_so() {
    if !root_or_skip("a_host_that_gets_no_port_is_told_so") {
        return;
    }
    let lab = lab_of(2);
    // One public port, which n1 takes.
    let plane = attach_with(&lab, Filtering::EndpointIndependent, 4500..=4500);
    let n1 = udp_in(&lab, "n1", SocketAddrV4::new(Lab::node_address(1), 4500));
    let server = udp_in(&lab, "pub", SocketAddrV4::new(SERVER, 7000));
    n1.send_to(b"mine", (SERVER, 7000)).unwrap();
    assert_eq!(
        recv(&server),
        Some((b"mine".to_vec(), (HEAD_PUBLIC, 4500).into()))
    );
    let (icmp, err) = in_netns(&lab.ns("n2"), || {
        use socket2::{Domain, Protocol, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let s = UdpSocket::bind(SocketAddrV4::new(Lab::node_address(2), 4600)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect((SERVER, 7000)).unwrap();
        s.send(b"and me?").unwrap();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        let n = raw.recv(&mut buf).unwrap();
        // SAFETY: recv initialised the first n bytes.
        let icmp: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let mut data = [0u8; 64];
        (icmp, s.recv(&mut data).unwrap_err().raw_os_error())
    })
    .unwrap();
    // From the gateway's private address, type 3 code 13, quoting n2's datagram.
    assert_eq!(icmp[12..16], PRIVATE_GATEWAY.octets(), "{icmp:02x?}");
    assert_eq!((icmp[20], icmp[21]), (3, 13), "{icmp:02x?}");
    assert_eq!(icmp[28 + 12..28 + 16], Lab::node_address(2).octets());
    assert_eq!(icmp[48..52], [0x11, 0xf8, 0x1b, 0x58], "ports 4600 -> 7000");
    // Code 13 is EHOSTUNREACH on a connected socket (the kernel's icmp_err_convert).
    assert_eq!(err, Some(113), "EHOSTUNREACH expected");
    assert_eq!(recv(&server), None, "nothing of n2 got out");
    let c = plane.counters().unwrap();
    assert_eq!((c["drop_no_port"], c["drop_no_route"]), (1, 0), "{c:?}");
}
