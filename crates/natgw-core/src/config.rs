//! What the admin asked for: the TOML config file and command-line flags, merged with
//! flags taking precedence. Unknown keys and malformed values are errors naming file,
//! line and column.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::dataplane::{DataplaneKind, Filtering, PortRange};
use crate::ha::HaConfig;
use crate::pool::{PortBlocksConfig, PortSelection, Timeouts};

/// The largest config file natgw reads: a wrong path (a device, a log file) must not
/// fill memory. Hand-written configs are a few KiB; generated prefix lists of 60,000
/// entries (what the plan benchmark measures) take about 1.2 MiB, so the cap leaves
/// room for three times that.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The config file as written (`/etc/natgw/natgw.toml`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public (uplink) interface; autodetected from the IPv4 default route when absent.
    pub public: Option<String>,
    /// Private interfaces; autodetected when empty.
    #[serde(default)]
    pub private: Vec<String>,
    /// Source addresses for translated packets: one, or a pool of addresses and ranges;
    /// the public interface's address when absent.
    #[serde(default, deserialize_with = "crate::pool::deserialize_snat_to")]
    pub snat_to: Vec<IpAddr>,
    /// How public ports are picked (`preserve`, the default, or `random`).
    #[serde(default)]
    pub port_selection: PortSelection,
    /// Conntrack timeouts of natgw's translated flows.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Deterministic port blocks per private host (RFC 7422), opt-in.
    pub port_blocks: Option<PortBlocksConfig>,
    /// Conntrack table size (entries); the kernel's default when absent.
    pub max_flows: Option<u64>,
    /// `natgw run` writes the mapping log to its default path.
    #[serde(default)]
    pub log_mappings: bool,
    /// Masquerade (follow the public interface's current address) instead of SNAT.
    #[serde(default)]
    pub masquerade: bool,
    /// Extra private prefixes to translate, beyond the private interfaces' own networks.
    #[serde(default)]
    pub private_prefixes: Vec<toml::Spanned<IpNet>>,
    /// Private networks behind routers on the private side (the recipe's static routes).
    #[serde(default)]
    pub routes: Vec<toml::Spanned<RouteEntry>>,
    /// Clamp the TCP MSS of forwarded connections to the path MTU.
    #[serde(default)]
    pub mss_clamp: bool,
    /// Active/standby pair with a second headnode (keepalived + conntrackd).
    pub ha: Option<HaConfig>,
    /// Outbound IPv6 for the private nodes (`[ipv6]`); autodetected when absent.
    #[serde(default)]
    pub ipv6: Ipv6Config,
    /// Which data plane translates IPv4 (`nftables`, the default, or `ebpf`).
    pub dataplane: Option<toml::Spanned<DataplaneKind>>,
    /// eBPF data plane: who may send to a binding (default endpoint-independent).
    pub filtering: Option<toml::Spanned<Filtering>>,
    /// eBPF data plane: the public ports handed out (default: outside the host's own
    /// ephemeral ports when a pool address is the host's).
    pub port_range: Option<toml::Spanned<PortRange>>,
    /// eBPF data plane: the flows the programs translate skip conntrack (faster; see
    /// the README for what foreign rules no longer see). Default false.
    pub bypass_conntrack: Option<toml::Spanned<bool>>,
    /// eBPF data plane with bypass_conntrack: flows the kernel's forward path has
    /// carried once skip it, as with an nftables flowtable. Default false.
    pub fast_path: Option<toml::Spanned<bool>>,
}

/// How private nodes reach the IPv6 internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    /// The upstream routes the private prefix here; no translation, stateful filter only.
    Routed,
    /// 1:1 prefix translation (RFC 6296) between a private and a public prefix.
    Nptv6,
    /// Many nodes behind one public IPv6 address.
    Nat66,
    /// natgw leaves IPv6 alone.
    Off,
}

impl std::fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ipv6Mode::Routed => "routed",
            Ipv6Mode::Nptv6 => "nptv6",
            Ipv6Mode::Nat66 => "nat66",
            Ipv6Mode::Off => "off",
        })
    }
}

/// The `[ipv6]` section.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6Config {
    /// Autodetected when absent.
    pub mode: Option<Ipv6Mode>,
    /// Extra private IPv6 prefixes, beyond the private interfaces' own networks.
    #[serde(default)]
    pub private_prefixes: Vec<Ipv6Net>,
    /// nptv6: the public prefix the upstream routes here (same length as the private one).
    pub public_prefix: Option<Ipv6Net>,
    /// nat66: the public address to translate to (the public interface's global address
    /// when absent).
    pub address: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub to: IpNet,
    pub via: IpAddr,
}

/// A route to a private network behind a router, with where it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub to: IpNet,
    pub via: IpAddr,
    /// Where the admin wrote it, for error messages (`natgw.toml:7`).
    #[serde(skip)]
    pub origin: String,
}

/// Command-line flags that override the config file.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub public: Option<String>,
    pub private: Vec<String>,
    pub snat_to: Vec<IpAddr>,
    pub masquerade: bool,
    /// `--ipv6-mode`
    pub ipv6_mode: Option<Ipv6Mode>,
    /// `--ipv6-public-prefix`
    pub ipv6_public_prefix: Option<Ipv6Net>,
    /// `--dataplane`
    pub dataplane: Option<DataplaneKind>,
}

/// Config and flags merged: what natgw was asked for, before looking at the system.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub public: Option<String>,
    pub private: Vec<String>,
    /// The SNAT address or pool (empty: the public interface's address).
    pub snat_to: Vec<IpAddr>,
    pub masquerade: bool,
    pub private_prefixes: Vec<(IpNet, String)>,
    pub routes: Vec<RouteSpec>,
    pub mss_clamp: bool,
    pub port_selection: PortSelection,
    pub timeouts: Timeouts,
    pub port_blocks: Option<PortBlocksConfig>,
    pub max_flows: Option<u64>,
    #[serde(default)]
    pub log_mappings: bool,
    /// The HA pair, when configured; `snat_to` is then its public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaConfig>,
    #[serde(default)]
    pub ipv6: Ipv6Config,
    #[serde(default)]
    pub dataplane: DataplaneKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtering: Option<Filtering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass_conntrack: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_path: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {value} is not a network address (host bits are set); write {suggestion} instead")]
    NotANetwork {
        origin: String,
        value: IpNet,
        suggestion: IpNet,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses config text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                file: file.display().to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.check_networks(text, file)?;
        Ok(config)
    }

    fn check_networks(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let prefixes = self
            .private_prefixes
            .iter()
            .map(|p| (*p.get_ref(), p.span()));
        let routes = self.routes.iter().map(|r| (r.get_ref().to, r.span()));
        for (net, span) in prefixes.chain(routes) {
            check_network(&net, || origin(text, file, span.start))?;
        }
        let ipv6 = self
            .ipv6
            .private_prefixes
            .iter()
            .map(|p| (IpNet::V6(*p), "private_prefixes"))
            .chain(
                self.ipv6
                    .public_prefix
                    .map(|p| (IpNet::V6(p), "public_prefix")),
            );
        for (net, key) in ipv6 {
            check_network(&net, || format!("{}: [ipv6] {key}", file.display()))?;
        }
        Ok(())
    }

    /// Merges flags over this config (flags win).
    pub fn merge(self, flags: &Flags, text: &str, file: &Path) -> Result<Settings, ConfigError> {
        let snat_to = if flags.snat_to.is_empty() {
            self.snat_to.clone()
        } else {
            let mut pool = flags.snat_to.clone();
            pool.dedup();
            pool
        };
        let masquerade = flags.masquerade || (self.masquerade && flags.snat_to.is_empty());
        self.timeouts
            .check()
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", file.display())))?;
        if self
            .max_flows
            .is_some_and(|n| !(1024..=1 << 26).contains(&n))
        {
            return Err(ConfigError::Invalid(format!(
                "{}: max_flows must be between 1024 and {}",
                file.display(),
                1u64 << 26
            )));
        }
        if masquerade && !snat_to.is_empty() {
            return Err(ConfigError::Invalid(
                "both masquerade and snat_to are set; choose one (--masquerade or --snat-to ADDR)"
                    .into(),
            ));
        }
        let dataplane = self.dataplane(flags, text, file);
        self.check_dataplane(&dataplane, masquerade, text, file)?;
        let public = flags.public.clone().or(self.public);
        let private = if flags.private.is_empty() {
            self.private
        } else {
            flags.private.clone()
        };
        let snat_to = match &self.ha {
            None => snat_to,
            Some(ha) => {
                let invalid = |e: String| ConfigError::Invalid(format!("{}: {e}", file.display()));
                ha.check(&snat_to, masquerade)
                    .map_err(|e| invalid(e.to_string()))?;
                // Detection could take the sync link for a private network.
                if public.is_none() || private.is_empty() {
                    return Err(invalid(
                        "[ha] needs the gateway's interfaces named: set `public` and `private`"
                            .into(),
                    ));
                }
                if public.as_deref() == Some(ha.sync_interface.as_str())
                    || private.contains(&ha.sync_interface)
                {
                    return Err(invalid(format!(
                        "[ha] sync_interface {} is also a gateway interface; give the dedicated sync link",
                        ha.sync_interface
                    )));
                }
                vec![IpAddr::V4(ha.public_vip.addr())]
            }
        };
        let mut ipv6 = self.ipv6;
        if flags.ipv6_mode.is_some() {
            ipv6.mode = flags.ipv6_mode;
        }
        if let Some(prefix) = flags.ipv6_public_prefix {
            check_network(&IpNet::V6(prefix), || "--ipv6-public-prefix".into())?;
            ipv6.public_prefix = Some(prefix);
        }
        Ok(Settings {
            public,
            private,
            snat_to,
            masquerade,
            private_prefixes: self
                .private_prefixes
                .iter()
                .map(|p| (*p.get_ref(), origin(text, file, p.span().start)))
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteSpec {
                    to: r.get_ref().to,
                    via: r.get_ref().via,
                    origin: origin(text, file, r.span().start),
                })
                .collect(),
            mss_clamp: self.mss_clamp,
            port_selection: self.port_selection,
            timeouts: self.timeouts,
            port_blocks: self.port_blocks,
            max_flows: self.max_flows,
            log_mappings: self.log_mappings,
            ha: self.ha,
            ipv6,
            dataplane: dataplane.kind,
            filtering: self.filtering.as_ref().map(|f| *f.get_ref()),
            port_range: self.port_range.as_ref().map(|r| *r.get_ref()),
            bypass_conntrack: self.bypass_conntrack.as_ref().is_some_and(|b| *b.get_ref()),
            fast_path: self.fast_path.as_ref().is_some_and(|b| *b.get_ref()),
        })
    }

    /// The data plane asked for: `--dataplane` over the config key over the default.
    fn dataplane(&self, flags: &Flags, text: &str, file: &Path) -> Chosen {
        match (flags.dataplane, &self.dataplane) {
            (Some(kind), _) => Chosen {
                kind,
                by: ChosenBy::Flag,
            },
            (None, Some(key)) => Chosen {
                kind: *key.get_ref(),
                by: ChosenBy::Key(origin(text, file, key.span().start)),
            },
            (None, None) => Chosen {
                kind: DataplaneKind::default(),
                by: ChosenBy::Default,
            },
        }
    }

    /// The eBPF plane's own keys need it, and it refuses what it cannot do yet; the
    /// error names where the plane was chosen (the config line or the flag).
    fn check_dataplane(
        &self,
        dataplane: &Chosen,
        masquerade: bool,
        text: &str,
        file: &Path,
    ) -> Result<(), ConfigError> {
        let at = |span: std::ops::Range<usize>| origin(text, file, span.start);
        if dataplane.kind != DataplaneKind::Ebpf {
            let own = [
                self.filtering.as_ref().map(|f| ("filtering", f.span())),
                self.port_range.as_ref().map(|r| ("port_range", r.span())),
                self.bypass_conntrack
                    .as_ref()
                    .map(|b| ("bypass_conntrack", b.span())),
                self.fast_path.as_ref().map(|b| ("fast_path", b.span())),
            ];
            if let Some((key, span)) = own.into_iter().flatten().next() {
                let add = match dataplane.by {
                    ChosenBy::Flag => "give --dataplane ebpf".to_string(),
                    _ => "add that line".to_string(),
                };
                return Err(ConfigError::Invalid(format!(
                    "{}: {key} applies only to dataplane = \"ebpf\"; {add} or remove {key}",
                    at(span)
                )));
            }
            return Ok(());
        }
        // The fast path learns a flow from the mark that takes it out of conntrack.
        if let Some(fast) = self.fast_path.as_ref().filter(|f| *f.get_ref()) {
            if !self.bypass_conntrack.as_ref().is_some_and(|b| *b.get_ref()) {
                return Err(ConfigError::Invalid(format!(
                    "{}: fast_path = true needs bypass_conntrack = true (the fast path carries only flows the programs take out of conntrack); add bypass_conntrack = true or remove fast_path",
                    at(fast.span())
                )));
            }
        }
        let unsupported = [
            (
                masquerade,
                "masquerade",
                "give snat_to, or leave it out to use the public interface's address",
            ),
            (
                self.port_blocks.is_some(),
                "[port_blocks]",
                "remove the section",
            ),
            (
                self.port_selection == PortSelection::Random,
                "port_selection = \"random\"",
                "remove it (the eBPF plane preserves ports, then searches the range)",
            ),
            (self.ha.is_some(), "[ha]", "remove the section"),
        ];
        if let Some((_, what, fix)) = unsupported.into_iter().find(|(set, ..)| *set) {
            let (chosen, other) = match &dataplane.by {
                ChosenBy::Key(origin) => (
                    format!("{origin}: dataplane = \"ebpf\""),
                    "dataplane = \"nftables\"",
                ),
                _ => ("--dataplane ebpf".to_string(), "--dataplane nftables"),
            };
            return Err(ConfigError::Invalid(format!(
                "{chosen} does not support {what} yet; {fix}, or use {other}"
            )));
        }
        Ok(())
    }
}

/// The data plane asked for and where.
struct Chosen {
    kind: DataplaneKind,
    by: ChosenBy,
}

enum ChosenBy {
    /// `--dataplane`
    Flag,
    /// The config key, at `natgw.toml:LINE`.
    Key(String),
    Default,
}

impl Settings {
    /// Settings from flags alone (no config file).
    pub fn from_flags(flags: &Flags) -> Result<Settings, ConfigError> {
        Config::default().merge(flags, "", Path::new("(flags)"))
    }
}

/// Rejects `10.0.0.5/24`: a prefix must be a network, not a host inside one.
pub fn check_network(net: &IpNet, origin: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if net.trunc() != *net {
        return Err(ConfigError::NotANetwork {
            origin: origin(),
            value: *net,
            suggestion: net.trunc(),
        });
    }
    Ok(())
}

fn origin(text: &str, file: &Path, offset: usize) -> String {
    let (line, _) = line_column(text, offset);
    format!("{}:{}", file.display(), line)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("natgw.toml"))
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
public = "wan0"
private = ["lan0", "lan1"]
snat_to = "203.0.113.1"
private_prefixes = ["10.9.0.0/16"]
routes = [{ to = "10.20.0.0/16", via = "10.0.0.254" }]
"#;
        let settings = parse(text)
            .unwrap()
            .merge(&Flags::default(), text, Path::new("natgw.toml"))
            .unwrap();
        assert_eq!(settings.public.as_deref(), Some("wan0"));
        assert_eq!(settings.private, vec!["lan0", "lan1"]);
        assert_eq!(
            settings.snat_to,
            vec!["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            settings.routes[0].to,
            "10.20.0.0/16".parse::<IpNet>().unwrap()
        );
        assert_eq!(settings.routes[0].origin, "natgw.toml:6");
        assert_eq!(settings.private_prefixes[0].1, "natgw.toml:5");
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = parse("public = \"wan0\"\nprivte = [\"lan0\"]\n").unwrap_err();
        let ConfigError::Parse {
            line,
            column,
            message,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((*line, *column), (2, 1));
        assert!(message.contains("unknown field `privte`"), "{message}");
        assert!(err.to_string().starts_with("natgw.toml:2:1:"), "{err}");
    }

    #[test]
    fn malformed_address_is_rejected_with_position() {
        let err = parse("snat_to = \"203.0.113.300\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err}");
        assert!(err.to_string().contains("invalid IP address"), "{err}");
    }

    #[test]
    fn prefix_with_host_bits_is_not_a_network() {
        let err = parse("\nprivate_prefixes = [\"10.0.0.5/24\"]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:2: 10.0.0.5/24 is not a network address (host bits are set); write 10.0.0.0/24 instead"
        );
        let err = parse("routes = [{ to = \"10.20.1.1/16\", via = \"10.0.0.254\" }]").unwrap_err();
        assert!(matches!(err, ConfigError::NotANetwork { .. }), "{err}");
    }

    #[test]
    fn flags_override_config() {
        let text = "public = \"wan0\"\nprivate = [\"lan0\"]\nmasquerade = true\n";
        let flags = Flags {
            public: Some("eth1".into()),
            private: vec!["eth0".into()],
            snat_to: vec!["198.51.100.7".parse().unwrap()],
            masquerade: false,
            ipv6_mode: Some(Ipv6Mode::Off),
            ipv6_public_prefix: None,
            dataplane: None,
        };
        let s = parse(text)
            .unwrap()
            .merge(&flags, text, Path::new("x"))
            .unwrap();
        assert_eq!(s.public.as_deref(), Some("eth1"));
        assert_eq!(s.private, vec!["eth0"]);
        assert_eq!(s.snat_to, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert!(
            !s.masquerade,
            "--snat-to overrides masquerade from the file"
        );
        assert_eq!(s.ipv6.mode, Some(Ipv6Mode::Off));
    }

    #[test]
    fn ipv6_section_parses_and_is_checked() {
        let text = "[ipv6]\nmode = \"nptv6\"\nprivate_prefixes = [\"fd00:77::/64\"]\npublic_prefix = \"2001:db8:177::/64\"\n";
        let s = parse(text)
            .unwrap()
            .merge(&Flags::default(), text, Path::new("natgw.toml"))
            .unwrap();
        assert_eq!(s.ipv6.mode, Some(Ipv6Mode::Nptv6));
        assert_eq!(
            s.ipv6.private_prefixes,
            vec!["fd00:77::/64".parse().unwrap()]
        );
        let err = parse("[ipv6]\nmode = \"nat44\"\n").unwrap_err();
        assert!(err.to_string().starts_with("natgw.toml:2:"), "{err}");
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err = parse("[ipv6]\npublic_prefix = \"2001:db8:177::1/64\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml: [ipv6] public_prefix: 2001:db8:177::1/64 is not a network address (host bits are set); write 2001:db8:177::/64 instead"
        );
        let err = parse("[ipv6]\nadress = \"2001:db8::1\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `adress`"), "{err}");
    }

    #[test]
    fn dataplane_keys_parse_and_default_to_nftables() {
        let s = merge_text("public = \"wan0\"\n").unwrap();
        assert_eq!(s.dataplane, DataplaneKind::Nftables);
        let text = "dataplane = \"ebpf\"\nfiltering = \"address-and-port-dependent\"\nport_range = \"20000-29999\"\n";
        let s = merge_text(text).unwrap();
        assert_eq!(s.dataplane, DataplaneKind::Ebpf);
        assert_eq!(s.filtering, Some(Filtering::AddressAndPortDependent));
        assert_eq!(s.port_range.unwrap().to_string(), "20000-29999");
        assert_eq!(
            merge_text("dataplane = \"ebpf\"\n").unwrap().filtering,
            None
        );
        // Conntrack keeps seeing the flows unless asked otherwise.
        assert!(
            !merge_text("dataplane = \"ebpf\"\n")
                .unwrap()
                .bypass_conntrack
        );
        assert!(
            merge_text("dataplane = \"ebpf\"\nbypass_conntrack = true\n")
                .unwrap()
                .bypass_conntrack
        );
        assert!(
            merge_text("dataplane = \"ebpf\"\nbypass_conntrack = true\nfast_path = true\n")
                .unwrap()
                .fast_path
        );
        let err = merge_text("dataplane = \"ebpf\"\n\nfast_path = true\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:3: fast_path = true needs bypass_conntrack = true (the fast path carries only flows the programs take out of conntrack); add bypass_conntrack = true or remove fast_path"
        );
        let err = merge_text("fast_path = true\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:1: fast_path applies only to dataplane = \"ebpf\"; add that line or remove fast_path"
        );
        let err = merge_text("\n\nbypass_conntrack = true\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:3: bypass_conntrack applies only to dataplane = \"ebpf\"; add that line or remove bypass_conntrack"
        );
    }

    #[test]
    fn bad_dataplane_values_name_the_line_and_the_fix() {
        let err = parse("\ndataplane = \"xdp\"\n").unwrap_err();
        assert!(err.to_string().starts_with("natgw.toml:2:"), "{err}");
        assert!(err.to_string().contains("unknown variant `xdp`"), "{err}");
        let err = parse("dataplane = \"ebpf\"\nfiltering = \"full-cone\"\n").unwrap_err();
        assert!(err.to_string().starts_with("natgw.toml:2:"), "{err}");
        let err = parse("dataplane = \"ebpf\"\nport_range = \"70-20\"\n").unwrap_err();
        assert!(err.to_string().contains("is not FIRST-LAST"), "{err}");
        // The eBPF plane's own keys need it.
        let err = merge_text("\nfiltering = \"address-dependent\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:2: filtering applies only to dataplane = \"ebpf\"; add that line or remove filtering"
        );
        // What the eBPF plane cannot do yet is refused at its line, naming the option.
        for (extra, what) in [
            ("masquerade = true\n", "masquerade"),
            (
                "port_selection = \"random\"\n",
                "port_selection = \"random\"",
            ),
            ("[port_blocks]\nsize = 512\n", "[port_blocks]"),
        ] {
            let err = merge_text(&format!("public = \"wan0\"\ndataplane = \"ebpf\"\n{extra}"))
                .unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "natgw.toml:2: dataplane = \"ebpf\" does not support {what} yet;"
                )),
                "{err}"
            );
        }
        // The mapping log works on both planes (the programs report their bindings).
        let s =
            merge_text("public = \"wan0\"\ndataplane = \"ebpf\"\nlog_mappings = true\n").unwrap();
        assert!(s.log_mappings);
        let err = merge_text(&format!("dataplane = \"ebpf\"\n{HA}")).unwrap_err();
        assert!(
            err.to_string().contains("does not support [ha] yet"),
            "{err}"
        );
    }

    #[test]
    fn dataplane_flag_overrides_the_key_and_is_checked_like_it() {
        let flags = |dataplane| Flags {
            dataplane: Some(dataplane),
            ..Flags::default()
        };
        let merge = |text: &str, dataplane| {
            parse(text)?.merge(&flags(dataplane), text, Path::new("natgw.toml"))
        };
        let s = Settings::from_flags(&flags(DataplaneKind::Ebpf)).unwrap();
        assert_eq!(s.dataplane, DataplaneKind::Ebpf);
        let s = merge("dataplane = \"ebpf\"\n", DataplaneKind::Nftables).unwrap();
        assert_eq!(s.dataplane, DataplaneKind::Nftables);
        let s = merge("filtering = \"address-dependent\"\n", DataplaneKind::Ebpf).unwrap();
        assert_eq!(s.filtering, Some(Filtering::AddressDependent));
        // The flag names itself in the error, the key its line.
        let err = Settings::from_flags(&Flags {
            masquerade: true,
            ..flags(DataplaneKind::Ebpf)
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--dataplane ebpf does not support masquerade yet; give snat_to, or leave it out to use the public interface's address, or use --dataplane nftables"
        );
        let err = merge("\nport_selection = \"random\"\n", DataplaneKind::Ebpf).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--dataplane ebpf does not support port_selection = \"random\" yet;"),
            "{err}"
        );
        let err = merge(
            "dataplane = \"ebpf\"\nfiltering = \"address-dependent\"\n",
            DataplaneKind::Nftables,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml:2: filtering applies only to dataplane = \"ebpf\"; give --dataplane ebpf or remove filtering"
        );
    }

    #[test]
    fn masquerade_and_snat_to_conflict() {
        let flags = Flags {
            masquerade: true,
            snat_to: vec!["198.51.100.7".parse().unwrap()],
            ..Flags::default()
        };
        assert!(matches!(
            Settings::from_flags(&flags),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn pools_timeouts_and_blocks_parse() {
        let text = r#"
snat_to = ["203.0.113.36", "203.0.113.40-203.0.113.41"]
port_selection = "random"
max_flows = 500000
log_mappings = true
[timeouts]
udp = 600
[port_blocks]
size = 512
"#;
        let s = parse(text)
            .unwrap()
            .merge(&Flags::default(), text, Path::new("natgw.toml"))
            .unwrap();
        assert_eq!(s.snat_to.len(), 3);
        assert_eq!(s.port_selection, PortSelection::Random);
        assert_eq!(s.timeouts.udp, 600);
        assert_eq!(
            s.timeouts.tcp_established, 7440,
            "unset keys keep their default"
        );
        assert_eq!(s.port_blocks.unwrap().size, 512);
        assert_eq!(s.max_flows, Some(500000));
        assert!(s.log_mappings);
        // A single address still reads as before.
        let s = parse("snat_to = \"203.0.113.1\"\n").unwrap();
        assert_eq!(s.snat_to.len(), 1);
    }

    const HA: &str = r#"
public = "wan0"
private = ["lan0"]
[ha]
peer = "192.168.255.2"
sync_interface = "sync0"
vrid = 51
priority = 150
private_vip = "10.0.0.1/24"
public_vip = "203.0.113.10/24"
advert_interval = 0.5
"#;

    fn merge_text(text: &str) -> Result<Settings, ConfigError> {
        parse(text)?.merge(&Flags::default(), text, Path::new("natgw.toml"))
    }

    #[test]
    fn ha_section_makes_the_public_vip_the_snat_address() {
        let s = merge_text(HA).unwrap();
        let ha = s.ha.as_ref().unwrap();
        assert_eq!((ha.vrid, ha.priority, ha.preempt_delay), (51, 150, 2));
        assert_eq!(s.snat_to, vec!["203.0.113.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_ha_sections_are_refused() {
        let err = merge_text(&HA.replace("vrid = 51", "vrid = 300")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { line: 7, .. }),
            "out of range for the type names the line: {err}"
        );
        let err = merge_text(&HA.replace("vrid = 51", "vrid = 51\nvrrp = 1")).unwrap_err();
        assert!(err.to_string().contains("unknown field `vrrp`"), "{err}");
        let err = merge_text(&HA.replace("priority = 150", "priority = 255")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "natgw.toml: [ha] priority must be between 1 and 254 (255 is reserved for the address owner)"
        );
        let err = merge_text(&HA.replace("private = [\"lan0\"]\n", "")).unwrap_err();
        assert!(
            err.to_string().contains("set `public` and `private`"),
            "{err}"
        );
        let err = merge_text(&HA.replace("\"lan0\"]", "\"lan0\", \"sync0\"]")).unwrap_err();
        assert!(
            err.to_string().contains("sync_interface sync0 is also"),
            "{err}"
        );
        let err = merge_text(&format!("masquerade = true\n{HA}")).unwrap_err();
        assert!(
            err.to_string().contains("masquerade cannot be used"),
            "{err}"
        );
        let err = merge_text(&format!("snat_to = \"203.0.113.9\"\n{HA}")).unwrap_err();
        assert!(err.to_string().contains("snat_to must be empty"), "{err}");
        let err = merge_text(&HA.replace("sync0", "sync\\\"0")).unwrap_err();
        assert!(err.to_string().contains("sync_interface"), "{err}");
    }

    #[test]
    fn bad_pools_and_timeouts_name_the_line() {
        let err =
            parse("\nsnat_to = [\"203.0.113.36-203.0.113.38\", \"203.0.113.37\"]\n").unwrap_err();
        assert!(err.to_string().starts_with("natgw.toml:2:"), "{err}");
        assert!(
            err.to_string()
                .contains("203.0.113.37 is in the SNAT pool twice"),
            "{err}"
        );
        let text = "[timeouts]\nudp = 30\n";
        let err = parse(text)
            .unwrap()
            .merge(&Flags::default(), text, Path::new("natgw.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("RFC 4787 REQ-5"), "{err}");
        let err = parse("port_selection = \"sequential\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
