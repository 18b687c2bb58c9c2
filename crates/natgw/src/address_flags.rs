//! Typed values of the flags that take addresses. clap parses them, so a malformed
//! value is a usage error (exit 2) naming the flag, before root is needed or anything
//! is read. Host names stay host names: they are resolved when probed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// `ADDR[:PORT]`: a local address to listen on; the port defaults per flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn or_port(self, default: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(default))
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint {
                ip: addr.ip(),
                port: Some(addr.port()),
            });
        }
        unbracketed(text)
            .parse::<IpAddr>()
            .map(|ip| Endpoint { ip, port: None })
            .map_err(|_| {
                "not an address or address:port (e.g. 198.51.100.10:3478 or [2001:db8::1]:3478)"
                    .to_string()
            })
    }
}

/// A host to probe: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl FromStr for Host {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        check_host_name(text).map(|()| Host::Name(text.to_string()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// `HOST[:PORT]`: a probe target; the port defaults per probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: Option<u16>,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Target {
                host: Host::Ip(addr.ip()),
                port: Some(target_port(&addr.port().to_string())?),
            });
        }
        // A bare IPv6 address has colons but no port.
        if let Ok(ip) = unbracketed(text).parse::<IpAddr>() {
            return Ok(Target {
                host: Host::Ip(ip),
                port: None,
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Ok(Target {
                host: text.parse()?,
                port: None,
            });
        };
        Ok(Target {
            host: host.parse()?,
            port: Some(target_port(port)?),
        })
    }
}

/// `[2001:db8::1]` without a port, as in a URL, is the address inside.
fn unbracketed(text: &str) -> &str {
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text)
}

/// A port to send to: 0 names no service.
fn target_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {text:?} is not a number from 1 to 65535")),
    }
}

/// The form `reach::resolve` reads back: `host`, `host:port`, `[v6]:port`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (host, None) => write!(f, "{host}"),
            (Host::Ip(ip), Some(port)) => write!(f, "{}", SocketAddr::new(*ip, port)),
            (Host::Name(name), Some(port)) => write!(f, "{name}:{port}"),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens (underscore
/// tolerated, as some resolvers serve it). A last label of digits only is a mistyped
/// IPv4 address (`203.0.113.300`), not a name (RFC 3696 section 2).
fn check_host_name(name: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{name:?} is neither an IP address nor a host name (e.g. 198.51.100.10 or stun.example.org)"
        )
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !trimmed.split('.').all(label_ok) {
        return Err(bad());
    }
    let last = trimmed.rsplit('.').next().unwrap_or(trimmed);
    if last.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_takes_an_address_with_or_without_port() {
        let e: Endpoint = "198.51.100.10".parse().unwrap();
        assert_eq!(e.or_port(3478), "198.51.100.10:3478".parse().unwrap());
        let e: Endpoint = "198.51.100.10:5000".parse().unwrap();
        assert_eq!(e.or_port(3478), "198.51.100.10:5000".parse().unwrap());
        let e: Endpoint = "[2001:db8::1]".parse().unwrap();
        assert_eq!((e.ip, e.port), ("2001:db8::1".parse().unwrap(), None));
        assert!("[198.51.100.10".parse::<Endpoint>().is_err());
        let e: Endpoint = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(e.port, Some(5000));
        let e: Endpoint = "2001:db8::1".parse().unwrap();
        assert_eq!(e.port, None);
        for bad in [
            "not-an-address",
            "198.51.100.300",
            "198.51.100.10:70000",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn target_keeps_names_and_default_ports() {
        for (text, shown) in [
            ("198.51.100.10:3478", "198.51.100.10:3478"),
            ("198.51.100.10", "198.51.100.10"),
            ("stun.example.org:3478", "stun.example.org:3478"),
            ("stun.example.org", "stun.example.org"),
            ("localhost", "localhost"),
            ("[2001:db8::1]:80", "[2001:db8::1]:80"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
        ] {
            let target: Target = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(target.to_string(), shown);
        }
    }

    #[test]
    fn target_refuses_malformed_values() {
        for bad in [
            "198.51.100.300:80",
            "198.51.100.300",
            "host:0",
            "198.51.100.10:0",
            "host:http",
            "host:65536",
            "bad host:80",
            "-host",
            "a..b",
            ":80",
            "",
            "x\"}accept#",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} was accepted");
        }
        assert!(
            "203.0.113.1:80".parse::<Host>().is_err(),
            "--icmp takes no port"
        );
    }
}
