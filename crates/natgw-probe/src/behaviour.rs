//! NAT behaviour discovery (RFC 5780 section 4) and what it means against RFC 4787
//! (UDP) and RFC 5382 (TCP, in `tcp`).

pub mod tcp;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{self, binding, binding_as, ClientError, Dialect};
use crate::wire::{AttrRepr, Repr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// No translation seen at all (mapped = local).
    NoNat,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::NoNat => "no NAT (endpoint-independent)",
            Kind::EndpointIndependent => "endpoint-independent",
            Kind::AddressDependent => "address-dependent",
            Kind::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// The names RFC 3489 gave NAT types, which many users still know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassicType {
    OpenInternet,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    SymmetricUdpFirewall,
}

impl std::fmt::Display for ClassicType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClassicType::OpenInternet => "open internet",
            ClassicType::FullCone => "full cone",
            ClassicType::RestrictedCone => "restricted cone",
            ClassicType::PortRestrictedCone => "port-restricted cone",
            ClassicType::Symmetric => "symmetric",
            ClassicType::SymmetricUdpFirewall => "symmetric UDP firewall",
        })
    }
}

/// RFC 3489's type from RFC 4787's mapping and filtering: a cone is endpoint-independent
/// mapping, named after its filtering; any dependent mapping is "symmetric".
pub fn classic_type(mapping: Kind, filtering: Kind) -> ClassicType {
    match (mapping, filtering) {
        (Kind::NoNat, Kind::EndpointIndependent | Kind::NoNat) => ClassicType::OpenInternet,
        (Kind::NoNat, _) => ClassicType::SymmetricUdpFirewall,
        (Kind::EndpointIndependent, Kind::EndpointIndependent | Kind::NoNat) => {
            ClassicType::FullCone
        }
        (Kind::EndpointIndependent, Kind::AddressDependent) => ClassicType::RestrictedCone,
        (Kind::EndpointIndependent, Kind::AddressAndPortDependent) => {
            ClassicType::PortRestrictedCone
        }
        (Kind::AddressDependent | Kind::AddressAndPortDependent, _) => ClassicType::Symmetric,
    }
}

/// RFC 5780 4.3: mapping from the mapped addresses of tests I, II (alternate address,
/// primary port) and III (alternate address and port).
pub fn classify_mapping(
    local: SocketAddr,
    m1: SocketAddr,
    m2: SocketAddr,
    m3: Option<SocketAddr>,
) -> Kind {
    if m1 == local {
        Kind::NoNat
    } else if m2 == m1 {
        Kind::EndpointIndependent
    } else if m3 == Some(m2) {
        Kind::AddressDependent
    } else {
        Kind::AddressAndPortDependent
    }
}

/// RFC 5780 4.4: filtering from whether a response came back when the server answered
/// from the other address and port (test II) or only the other port (test III).
pub fn classify_filtering(other_address_and_port: bool, other_port: bool) -> Kind {
    if other_address_and_port {
        Kind::EndpointIndependent
    } else if other_port {
        Kind::AddressDependent
    } else {
        Kind::AddressAndPortDependent
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Lifetime {
    /// Longest idle time after which the binding still delivered a packet.
    pub alive_after_secs: Option<u64>,
    /// Shortest idle time after which it no longer did.
    pub expired_after_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Behaviour {
    pub server: SocketAddr,
    pub local: SocketAddr,
    /// The address and port the outside world sees.
    pub mapped: SocketAddr,
    pub other_address: Option<SocketAddr>,
    pub mapping: Option<Kind>,
    pub filtering: Option<Kind>,
    pub hairpinning: Option<bool>,
    pub port_preserved: bool,
    pub lifetime: Option<Lifetime>,
    /// TCP behaviour (STUN over TCP); `None` with a note when it could not be measured.
    pub tcp: Option<tcp::TcpBehaviour>,
    /// The RFC 3489 name, when asked for (`--classic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classic_type: Option<ClassicType>,
    /// Why a test could not run.
    pub notes: Vec<String>,
}

impl Behaviour {
    /// Whether anything translated the address on the way to the server.
    pub fn translated(&self) -> bool {
        self.mapped != self.local
    }

    /// The hairpinning line of the report.
    pub fn hairpinning_text(&self) -> &'static str {
        match (self.translated(), self.hairpinning) {
            (false, _) => "n/a (no NAT)",
            (true, None) => "not measured",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "no",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub timeout: Duration,
    /// Measure the binding lifetime up to this many seconds (beside the other tests).
    pub lifetime_max: Option<u64>,
    /// Speak RFC 3489 (no magic cookie; CHANGED-ADDRESS) and name the type its way.
    pub classic: bool,
    /// Measure how long an idle TCP connection stays open, for this many seconds.
    pub tcp_lifetime: Option<u64>,
}

fn socket(local_ip: std::net::IpAddr) -> Result<UdpSocket, ClientError> {
    UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .map_err(|e| ClientError::Io(SocketAddr::new(local_ip, 0), e.to_string()))
}

fn wildcard(server: SocketAddr) -> std::net::IpAddr {
    if server.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

/// Local address the kernel picks towards `server` (a connected UDP socket sends nothing).
fn local_towards(server: SocketAddr) -> Result<std::net::IpAddr, ClientError> {
    let s = socket(wildcard(server))?;
    s.connect(server)
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    Ok(s.local_addr()
        .map_err(|e| ClientError::Io(server, e.to_string()))?
        .ip())
}

/// Runs the RFC 5780 tests against `server`.
pub fn discover(server: SocketAddr, options: Options) -> Result<Behaviour, ClientError> {
    let t = options.timeout;
    let dialect = if options.classic {
        Dialect::Classic
    } else {
        Dialect::Rfc5389
    };
    let local_ip = local_towards(server)?;
    let main = socket(local_ip)?;
    let local = main
        .local_addr()
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    let test1 = binding_as(dialect, &main, server, vec![], t)?;
    let mapped = test1
        .repr
        .mapped_address()
        .ok_or_else(|| ClientError::Io(server, "response without a mapped address".into()))?;
    let other = test1.repr.other_address();
    // The binding lifetime mostly waits: it runs beside every other test.
    let (behaviour, lifetime) = std::thread::scope(|scope| {
        let lifetime = options
            .lifetime_max
            .map(|max| scope.spawn(move || lifetime(server, local_ip, max, t)));
        let behaviour = other_tests(&main, server, local, mapped, other, dialect, options);
        let lifetime = lifetime.map(|h| h.join().expect("the lifetime thread does not panic"));
        (behaviour, lifetime)
    });
    let mut behaviour = behaviour?;
    behaviour.lifetime = lifetime.transpose()?;
    Ok(behaviour)
}

/// Everything after test I: mapping, filtering, hairpinning, TCP.
fn other_tests(
    main: &UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    dialect: Dialect,
    options: Options,
) -> Result<Behaviour, ClientError> {
    let t = options.timeout;
    let local_ip = local.ip();
    let mut behaviour = Behaviour {
        server,
        local,
        mapped,
        other_address: other,
        mapping: None,
        filtering: None,
        hairpinning: None,
        port_preserved: mapped.port() == local.port(),
        lifetime: None,
        tcp: None,
        classic_type: None,
        notes: Vec::new(),
    };

    match other {
        None => behaviour.notes.push(format!(
            "the server sent no {}: mapping and filtering need a server with two addresses",
            if options.classic {
                "CHANGED-ADDRESS"
            } else {
                "OTHER-ADDRESS"
            }
        )),
        Some(alt) => {
            let bind = |to| binding_as(dialect, main, to, vec![], t);
            let m2 = bind(SocketAddr::new(alt.ip(), server.port()))?
                .repr
                .mapped_address()
                .unwrap_or(mapped);
            let m3 = if m2 == mapped {
                None
            } else {
                bind(alt)?.repr.mapped_address()
            };
            let mapping = classify_mapping(local, mapped, m2, m3);
            let filtering = filtering(dialect, server, local_ip, t)?;
            behaviour.mapping = Some(mapping);
            behaviour.filtering = Some(filtering);
            if options.classic {
                behaviour.classic_type = Some(classic_type(mapping, filtering));
            }
        }
    }
    // Without translation a packet "to the mapped address" is just a packet to the
    // local socket: it arrives, and says nothing about hairpinning.
    if behaviour.translated() {
        behaviour.hairpinning = Some(hairpinning(main, mapped, local_ip, t)?);
    } else {
        behaviour.notes.push(
            "no NAT on this path: the server sees the local address; hairpinning does not apply"
                .into(),
        );
    }
    match tcp::discover(server, other, local_ip, t, options.tcp_lifetime) {
        Ok(tcp) => behaviour.tcp = Some(tcp),
        Err(e) => behaviour
            .notes
            .push(format!("TCP not measured: STUN over TCP failed: {e}")),
    }
    Ok(behaviour)
}

/// Fresh socket, so the mapping tests' packets to the alternate address have opened no
/// filter for it.
fn filtering(
    dialect: Dialect,
    server: SocketAddr,
    local_ip: std::net::IpAddr,
    t: Duration,
) -> Result<Kind, ClientError> {
    let s = socket(local_ip)?;
    binding_as(dialect, &s, server, vec![], t)?;
    let answered = |ip, port| match binding_as(
        dialect,
        &s,
        server,
        vec![AttrRepr::ChangeRequest { ip, port }],
        t,
    ) {
        Ok(_) => Ok(true),
        Err(ClientError::Timeout(..)) => Ok(false),
        Err(e) => Err(e),
    };
    let both = answered(true, true)?;
    let port = !both && answered(false, true)?;
    Ok(classify_filtering(both, port))
}

/// RFC 5780 4.5: a request from a second socket to the first socket's mapped address
/// must arrive at the first socket.
fn hairpinning(
    main: &UdpSocket,
    mapped: SocketAddr,
    local_ip: std::net::IpAddr,
    t: Duration,
) -> Result<bool, ClientError> {
    let other = socket(local_ip)?;
    let tid = [0x68; 12];
    let probe = Repr::binding_request(tid)
        .emit(true)
        .map_err(|e| ClientError::Io(mapped, e.to_string()))?;
    other
        .send_to(&probe, mapped)
        .map_err(|e| ClientError::Io(mapped, e.to_string()))?;
    let mut buf = [0u8; 2048];
    main.set_read_timeout(Some(t))
        .map_err(|e| ClientError::Io(mapped, e.to_string()))?;
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        match main.recv_from(&mut buf) {
            Ok((n, _)) if Repr::parse_bytes(&buf[..n]).is_ok_and(|r| r.transaction_id == tid) => {
                return Ok(true)
            }
            Ok(_) => continue,
            Err(_) => return Ok(false),
        }
    }
    Ok(false)
}

/// RFC 5780 4.6: bindings opened together, one per idle time (1, 2, 4, … seconds and
/// `max`), each left idle until its time and then answered into by the server
/// (RESPONSE-PORT from a second socket). The whole measurement takes `max` seconds (plus
/// a timeout), not the sum of the idle times, and runs beside the other tests.
fn lifetime(
    server: SocketAddr,
    local_ip: std::net::IpAddr,
    max: u64,
    t: Duration,
) -> Result<Lifetime, ClientError> {
    let mut result = Lifetime {
        alive_after_secs: None,
        expired_after_secs: None,
    };
    let mut idles: Vec<u64> = std::iter::successors(Some(1u64), |i| i.checked_mul(2))
        .take_while(|i| *i < max)
        .collect();
    idles.push(max);
    let mut bindings = Vec::new();
    for idle in idles {
        let a = socket(local_ip)?;
        let mapped = binding(&a, server, vec![], t)?
            .repr
            .mapped_address()
            .unwrap_or(server);
        bindings.push((idle, a, mapped, Instant::now()));
    }
    for (idle, a, mapped, opened) in bindings {
        let due = opened + Duration::from_secs(idle);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if answered_into(&a, mapped.port(), server, local_ip, t)? {
            result.alive_after_secs = Some(idle);
        } else {
            result.expired_after_secs = Some(idle);
            break;
        }
    }
    Ok(result)
}

/// From a second socket, asks the server to answer into `a`'s binding (RESPONSE-PORT),
/// retransmitting only until the answer arrives at `a` (the server limits such requests).
fn answered_into(
    a: &UdpSocket,
    port: u16,
    server: SocketAddr,
    local_ip: std::net::IpAddr,
    t: Duration,
) -> Result<bool, ClientError> {
    let b = socket(local_ip)?;
    let request = client::request(Dialect::Rfc5389, vec![AttrRepr::ResponsePort(port)]);
    let tid = (request.cookie, request.transaction_id);
    let bytes = request
        .emit(true)
        .map_err(|e| ClientError::Io(server, e.to_string()))?;
    let deadline = Instant::now() + t;
    let mut rto = Duration::from_millis(250);
    while Instant::now() < deadline {
        b.send_to(&bytes, server)
            .map_err(|e| ClientError::Io(server, e.to_string()))?;
        let until = (Instant::now() + rto).min(deadline);
        rto *= 2;
        if client::receive(a, &tid, until, server)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One line of the conformance report.
#[derive(Debug, Clone, Serialize)]
pub struct Requirement {
    pub id: &'static str,
    pub text: &'static str,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
    pub observed: String,
}

/// RFC 4787 (UDP) requirements the observed behaviour meets or misses.
pub fn requirements(b: &Behaviour) -> Vec<Requirement> {
    let show = |k: Option<Kind>| k.map_or("not measured".to_string(), |k| k.to_string());
    let eim = b
        .mapping
        .map(|m| matches!(m, Kind::EndpointIndependent | Kind::NoNat));
    let filtering_ok = b.filtering.map(|f| f != Kind::AddressAndPortDependent);
    let lifetime_ok =
        b.lifetime
            .as_ref()
            .and_then(|l| match (l.alive_after_secs, l.expired_after_secs) {
                (_, Some(expired)) if expired < 120 => Some(false),
                (Some(alive), _) if alive >= 120 => Some(true),
                _ => None,
            });
    let secs = |s: Option<u64>| s.map_or("-".to_string(), |s| format!("{s} s"));
    let lifetime_seen =
        b.lifetime
            .as_ref()
            .map_or("not measured (use --lifetime)".to_string(), |l| {
                format!(
                    "alive after {} idle, expired after {}",
                    secs(l.alive_after_secs),
                    secs(l.expired_after_secs)
                )
            });
    let tcp_mapping = b.tcp.as_ref().and_then(|t| t.mapping);
    let (tcp_lifetime_ok, tcp_lifetime_seen) = tcp_lifetime(b);
    vec![
        Requirement { id: "RFC 4787 REQ-1", text: "MUST have endpoint-independent mapping", met: eim, observed: show(b.mapping) },
        Requirement { id: "RFC 4787 REQ-3", text: "port preservation is not required (informational)", met: None, observed: format!("local port {} mapped to {}", b.local.port(), b.mapped.port()) },
        Requirement { id: "RFC 4787 REQ-5", text: "a UDP binding MUST NOT expire in less than 2 minutes", met: lifetime_ok, observed: lifetime_seen },
        Requirement { id: "RFC 4787 REQ-8", text: "RECOMMENDED endpoint-independent filtering (transparency) or address-dependent filtering (stricter)", met: filtering_ok, observed: show(b.filtering) },
        Requirement { id: "RFC 4787 REQ-9", text: "MUST support hairpinning", met: b.hairpinning.filter(|_| b.translated()), observed: b.hairpinning_text().to_string() },
        Requirement { id: "RFC 5382 REQ-1", text: "MUST have endpoint-independent mapping for TCP", met: tcp_mapping.map(|m| matches!(m, Kind::EndpointIndependent | Kind::NoNat)), observed: if b.tcp.is_some() { show(tcp_mapping) } else { "not measured (no STUN over TCP)".into() } },
        Requirement { id: "RFC 5382 REQ-5", text: "an established TCP connection MUST NOT time out in less than 2 h 4 min idle", met: tcp_lifetime_ok, observed: tcp_lifetime_seen },
    ]
}

/// REQ-5 for TCP from one idle period: an expiry before 2 h 4 min misses it; only a
/// connection alive after at least that long meets it.
fn tcp_lifetime(b: &Behaviour) -> (Option<bool>, String) {
    let Some(l) = b.tcp.as_ref().and_then(|t| t.lifetime.as_ref()) else {
        return (
            None,
            format!("not measured (use --tcp-lifetime {})", tcp::REQ5_SECS),
        );
    };
    let how = if l.server_first {
        "the server sent first"
    } else {
        "the client sent first: a NAT that picks up mid-stream packets can hide an expiry"
    };
    match (l.alive, l.idle_secs >= tcp::REQ5_SECS) {
        (true, true) => (
            Some(true),
            format!("alive after {} s idle ({how})", l.idle_secs),
        ),
        (true, false) => (
            None,
            format!(
                "alive after {} s idle ({how}); measured for less than {} s",
                l.idle_secs,
                tcp::REQ5_SECS
            ),
        ),
        (false, true) => (None, format!("gone after {} s idle ({how})", l.idle_secs)),
        (false, false) => (
            Some(false),
            format!("gone after {} s idle ({how})", l.idle_secs),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_classes() {
        let local = a("10.0.0.11:5000");
        assert_eq!(classify_mapping(local, local, local, None), Kind::NoNat);
        assert_eq!(
            classify_mapping(local, a("203.0.113.1:5000"), a("203.0.113.1:5000"), None),
            Kind::EndpointIndependent
        );
        assert_eq!(
            classify_mapping(
                local,
                a("203.0.113.1:5000"),
                a("203.0.113.1:6000"),
                Some(a("203.0.113.1:6000"))
            ),
            Kind::AddressDependent
        );
        assert_eq!(
            classify_mapping(
                local,
                a("203.0.113.1:5000"),
                a("203.0.113.1:6000"),
                Some(a("203.0.113.1:7000"))
            ),
            Kind::AddressAndPortDependent
        );
    }

    #[test]
    fn classic_names_follow_mapping_and_filtering() {
        use Kind::*;
        assert_eq!(
            classic_type(NoNat, EndpointIndependent),
            ClassicType::OpenInternet
        );
        assert_eq!(
            classic_type(NoNat, AddressAndPortDependent),
            ClassicType::SymmetricUdpFirewall
        );
        assert_eq!(
            classic_type(EndpointIndependent, EndpointIndependent),
            ClassicType::FullCone
        );
        assert_eq!(
            classic_type(EndpointIndependent, AddressDependent),
            ClassicType::RestrictedCone
        );
        assert_eq!(
            classic_type(EndpointIndependent, AddressAndPortDependent),
            ClassicType::PortRestrictedCone
        );
        for filtering in [EndpointIndependent, AddressAndPortDependent] {
            assert_eq!(
                classic_type(AddressDependent, filtering),
                ClassicType::Symmetric
            );
            assert_eq!(
                classic_type(AddressAndPortDependent, filtering),
                ClassicType::Symmetric
            );
        }
    }

    #[test]
    fn filtering_classes() {
        assert_eq!(classify_filtering(true, false), Kind::EndpointIndependent);
        assert_eq!(classify_filtering(false, true), Kind::AddressDependent);
        assert_eq!(
            classify_filtering(false, false),
            Kind::AddressAndPortDependent
        );
    }

    #[test]
    fn a_path_without_nat_has_no_hairpinning_to_speak_of() {
        let b = Behaviour {
            server: a("198.51.100.10:3478"),
            local: a("203.0.113.1:5000"),
            mapped: a("203.0.113.1:5000"),
            other_address: None,
            mapping: Some(Kind::NoNat),
            filtering: None,
            // What the old code measured: the "hairpinned" packet simply arrived.
            hairpinning: Some(true),
            port_preserved: true,
            lifetime: None,
            tcp: None,
            classic_type: None,
            notes: vec![],
        };
        assert!(!b.translated());
        assert_eq!(b.hairpinning_text(), "n/a (no NAT)");
        let req9 = &requirements(&b)[4];
        assert_eq!(req9.id, "RFC 4787 REQ-9");
        assert_eq!((req9.met, req9.observed.as_str()), (None, "n/a (no NAT)"));
    }

    #[test]
    fn requirements_follow_the_observations() {
        let mut b = Behaviour {
            server: a("198.51.100.10:3478"),
            local: a("10.0.0.11:5000"),
            mapped: a("203.0.113.1:5000"),
            other_address: None,
            mapping: Some(Kind::EndpointIndependent),
            filtering: Some(Kind::AddressAndPortDependent),
            hairpinning: Some(false),
            port_preserved: true,
            lifetime: Some(Lifetime {
                alive_after_secs: Some(4),
                expired_after_secs: None,
            }),
            tcp: None,
            classic_type: None,
            notes: vec![],
        };
        let met: Vec<Option<bool>> = requirements(&b).iter().map(|r| r.met).collect();
        assert_eq!(
            met,
            [Some(true), None, None, Some(false), Some(false), None, None]
        );
        b.lifetime = Some(Lifetime {
            alive_after_secs: Some(16),
            expired_after_secs: Some(32),
        });
        assert_eq!(requirements(&b)[2].met, Some(false));

        let tcp = |mapping, idle_secs, alive| {
            Some(tcp::TcpBehaviour {
                local: a("10.0.0.11:5000"),
                mapped: a("203.0.113.1:5000"),
                mapping: Some(mapping),
                port_preserved: true,
                lifetime: Some(tcp::TcpLifetime {
                    idle_secs,
                    alive,
                    server_first: true,
                }),
            })
        };
        let tcp_met = |b: &Behaviour| {
            let r = requirements(b);
            (r[5].met, r[6].met)
        };
        b.tcp = tcp(Kind::EndpointIndependent, 7440, true);
        assert_eq!(tcp_met(&b), (Some(true), Some(true)));
        b.tcp = tcp(Kind::AddressAndPortDependent, 60, true);
        assert_eq!(tcp_met(&b), (Some(false), None));
        b.tcp = tcp(Kind::EndpointIndependent, 60, false);
        assert_eq!(tcp_met(&b), (Some(true), Some(false)));
        assert!(requirements(&b)[6].observed.contains("gone after 60 s"));
    }
}
