//! High availability: the `[ha]` config section, its validation, and the keepalived
//! (VRRP, the gateway addresses) and conntrackd (FTFW over the sync link, the
//! connection state) configuration natgw renders from it. natgw writes no failover
//! protocol of its own; it renders these files into its own per-namespace state
//! directory (never the admin's /etc/keepalived or /etc/conntrackd), and every value
//! that reaches them is validated data, never syntax.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ifname::IfName;

/// `[ha]` as written in natgw.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// The other headnode's address on the sync link (conntrackd sends it the
    /// connection state).
    pub peer: Ipv4Addr,
    /// The dedicated link between the two headnodes, used by conntrackd only.
    pub sync_interface: String,
    /// VRRP virtual router id, 1-255, the same on both headnodes and unique on the
    /// private segment.
    pub vrid: u8,
    /// VRRP priority, 1-254: the higher one is primary while both are healthy.
    pub priority: u8,
    /// The private nodes' default gateway, with its prefix length (`10.0.0.1/24`).
    pub private_vip: Ipv4Net,
    /// The public address both headnodes translate to, with its prefix length
    /// (`203.0.113.10/24`). It is the SNAT address: translations stay valid on either
    /// node, so masquerade and address pools are refused with `[ha]`.
    pub public_vip: Ipv4Net,
    /// VRRP advertisement interval in seconds (0.01 steps). The backup takes over about
    /// 3.6 intervals after the primary falls silent: shorter fails over faster but
    /// costs more packets and risks a takeover on a short hiccup. Default 0.3.
    #[serde(default = "default_advert")]
    pub advert_interval: f64,
    /// Seconds a recovered primary waits before taking the addresses back, so that
    /// conntrackd has resynchronised the connections first.
    #[serde(default = "default_preempt_delay")]
    pub preempt_delay: u16,
}

/// Below keepalived's 1 s: TCP retransmits at 0.2, 0.6, 1.4, 3.0 s after a loss, so
/// the takeover (about 3.2 intervals after a link failure) must come before the 1.4 s
/// retransmission for connections to resume in under 3 s. Measured with `natgw lab
/// --ha`: 0.3 s takes over in ~1 s and TCP resumes after ~1.7 s; 0.5 s takes over in
/// ~1.7 s but TCP resumes only after ~3.2 s; 1 s after ~3.4 s.
fn default_advert() -> f64 {
    0.3
}

fn default_preempt_delay() -> u16 {
    2
}

/// Why an `[ha]` section cannot be used; each message names the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("[ha] {0}")]
pub struct HaError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, HaError> {
    Err(HaError(message.into()))
}

impl HaConfig {
    /// Checks the section on its own and against the rest of the config.
    pub fn check(&self, snat_to: &[std::net::IpAddr], masquerade: bool) -> Result<(), HaError> {
        if self.vrid == 0 {
            return err("vrid must be between 1 and 255");
        }
        if self.priority == 0 || self.priority == 255 {
            return err(
                "priority must be between 1 and 254 (255 is reserved for the address owner)",
            );
        }
        IfName::new(&self.sync_interface).map_err(|e| HaError(format!("sync_interface: {e}")))?;
        if !(0.01..=40.95).contains(&self.advert_interval)
            || ((self.advert_interval * 100.0).round() - self.advert_interval * 100.0).abs() > 1e-6
        {
            return err("advert_interval must be between 0.01 and 40.95 seconds, in 0.01 steps");
        }
        if self.preempt_delay > 1000 {
            return err("preempt_delay must be at most 1000 seconds");
        }
        let private = self.private_vip.addr();
        let public = self.public_vip.addr();
        if !private.is_private() {
            return err(format!(
                "private_vip {private} is not a private (RFC 1918) address; give the private nodes' gateway address"
            ));
        }
        if public.is_private() || !usable(public) {
            return err(format!(
                "public_vip {public} is not a public unicast address; give the address translations leave with"
            ));
        }
        for (key, net) in [
            ("private_vip", self.private_vip),
            ("public_vip", self.public_vip),
        ] {
            if net.prefix_len() < 8 || net.prefix_len() > 32 {
                return err(format!("{key} {net}: the prefix length must be 8 to 32"));
            }
            let addr = net.addr();
            if net.prefix_len() < 31 && (addr == net.network() || addr == net.broadcast()) {
                return err(format!(
                    "{key} {net} is the network's own or broadcast address; use a host address"
                ));
            }
        }
        if !usable(self.peer) || self.peer == private || self.peer == public {
            return err(format!(
                "peer {} must be the other headnode's unicast address on the sync link",
                self.peer
            ));
        }
        if masquerade {
            return err("masquerade cannot be used with [ha]: translations must stay valid on either headnode; remove `masquerade`");
        }
        if snat_to.iter().any(|a| *a != std::net::IpAddr::V4(public)) {
            return err(format!(
                "snat_to must be empty or {public} (the public_vip) with [ha]; remove `snat_to`"
            ));
        }
        Ok(())
    }

    /// What both headnodes must agree on, as a short hash: equal on both or the pair
    /// is misconfigured. Priority and peer differ between them by design.
    pub fn fingerprint(&self) -> String {
        let shared = format!(
            "vrid={} private_vip={} public_vip={} advert={:.2}",
            self.vrid, self.private_vip, self.public_vip, self.advert_interval
        );
        Sha256::digest(shared.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn usable(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.is_link_local())
}

/// The files of one HA instance, all inside natgw's per-namespace state directory, so
/// two pairs run side by side on one machine (each in its namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaFiles {
    pub dir: PathBuf,
}

impl HaFiles {
    /// `dir` must hold only plain path characters: it is written into config files.
    pub fn new(dir: PathBuf) -> Result<HaFiles, HaError> {
        check_path(&dir)?;
        Ok(HaFiles { dir })
    }
    pub fn keepalived_conf(&self) -> PathBuf {
        self.dir.join("keepalived.conf")
    }
    pub fn keepalived_pid(&self) -> PathBuf {
        self.dir.join("keepalived.pid")
    }
    pub fn vrrp_pid(&self) -> PathBuf {
        self.dir.join("keepalived-vrrp.pid")
    }
    pub fn checkers_pid(&self) -> PathBuf {
        self.dir.join("keepalived-checkers.pid")
    }
    pub fn conntrackd_conf(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }
    pub fn conntrackd_lock(&self) -> PathBuf {
        self.dir.join("conntrackd.lock")
    }
    pub fn conntrackd_socket(&self) -> PathBuf {
        self.dir.join("conntrackd.ctl")
    }
    pub fn conntrackd_log(&self) -> PathBuf {
        self.dir.join("conntrackd.log")
    }
}

/// Paths written into keepalived's and conntrackd's configs: plain characters only (no
/// space, quote, brace, `#` or newline that either parser would read as syntax).
pub fn check_path(path: &Path) -> Result<(), HaError> {
    let text = path.to_str().unwrap_or("");
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._+-".contains(&b);
    if !path.is_absolute() || text.is_empty() || !text.bytes().all(plain) {
        return err(format!(
            "the path {} cannot go into keepalived's or conntrackd's config (only letters, digits and / . _ + - are safe); install natgw under a plain path",
            path.display()
        ));
    }
    Ok(())
}

/// Everything the two configs are rendered from: the section and what the gateway
/// resolved (interfaces, the local sync address).
#[derive(Debug, Clone)]
pub struct HaRender<'a> {
    pub config: &'a HaConfig,
    pub public: &'a IfName,
    /// The private interface that carries `private_vip` (and VRRP).
    pub private: &'a IfName,
    pub sync: &'a IfName,
    /// This headnode's address on the sync link.
    pub sync_address: Ipv4Addr,
    pub files: &'a HaFiles,
    /// The natgw binary keepalived calls on each transition (`natgw ha-notify ROLE`).
    pub natgw: &'a Path,
}

/// conntrackd's UDP port on the sync link.
pub const SYNC_PORT: u16 = 3780;

impl HaRender<'_> {
    /// keepalived.conf: one VRRP instance on the private interface carrying both
    /// addresses, failing over when either gateway interface goes down.
    pub fn keepalived(&self) -> Result<String, HaError> {
        check_path(self.natgw)?;
        let c = self.config;
        let natgw = self.natgw.display();
        let mut out = String::new();
        let _ = write!(
            out,
            "# Written by natgw run; changes are overwritten. ha fingerprint {fp}
global_defs {{
\trouter_id natgw-{vrid}
\tenable_script_security
\tscript_user root
\tvrrp_version 3
\tvrrp_garp_master_delay 1
\tvrrp_garp_master_repeat 3
}}

vrrp_instance natgw {{
\tstate BACKUP
\tinterface {private}
\tvirtual_router_id {vrid}
\tpriority {priority}
\tadvert_int {advert:.2}
\tpreempt_delay {preempt}
\ttrack_interface {{
\t\t{public}
\t}}
\tvirtual_ipaddress {{
\t\t{private_vip} dev {private}
\t\t{public_vip} dev {public}
\t}}
\tnotify_master \"{natgw} ha-notify master\"
\tnotify_backup \"{natgw} ha-notify backup\"
\tnotify_fault \"{natgw} ha-notify fault\"
\tnotify_stop \"{natgw} ha-notify stop\"
}}
",
            fp = c.fingerprint(),
            vrid = c.vrid,
            private = self.private.as_str(),
            public = self.public.as_str(),
            priority = c.priority,
            advert = c.advert_interval,
            preempt = c.preempt_delay,
            private_vip = c.private_vip,
            public_vip = c.public_vip,
        );
        Ok(out)
    }

    /// conntrackd.conf: FTFW (reliable) over unicast UDP on the sync link, with the
    /// external cache committed on takeover, and a control socket and lock of its own.
    pub fn conntrackd(&self) -> Result<String, HaError> {
        let f = self.files;
        for path in [
            f.conntrackd_lock(),
            f.conntrackd_socket(),
            f.conntrackd_log(),
        ] {
            check_path(&path)?;
        }
        let mut out = String::new();
        let _ = write!(
            out,
            "# Written by natgw run; changes are overwritten. ha fingerprint {fp}
Sync {{
\tMode FTFW {{
\t\tDisableExternalCache Off
\t\tStartupResync on
\t}}
\tUDP {{
\t\tIPv4_address {local}
\t\tIPv4_Destination_Address {peer}
\t\tPort {port}
\t\tInterface {sync}
\t\tSndSocketBuffer 1249280
\t\tRcvSocketBuffer 1249280
\t\tChecksum on
\t}}
}}
General {{
\tHashSize 32768
\tHashLimit 262144
\tLogFile {log}
\tSyslog off
\tLockFile {lock}
\tUNIX {{
\t\tPath {socket}
\t}}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 8388608
\tFilter From Userspace {{
\t\tProtocol Accept {{
\t\t\tTCP
\t\t\tUDP
\t\t\tICMP
\t\t}}
\t\tAddress Ignore {{
\t\t\tIPv4_address 127.0.0.1
\t\t\tIPv4_address {local}
\t\t\tIPv4_address {peer}
\t\t}}
\t}}
}}
",
            fp = self.config.fingerprint(),
            local = self.sync_address,
            peer = self.config.peer,
            port = SYNC_PORT,
            sync = self.sync.as_str(),
            log = f.conntrackd_log().display(),
            lock = f.conntrackd_lock().display(),
            socket = f.conntrackd_socket().display(),
        );
        Ok(out)
    }
}

/// UDP port on the sync link where `natgw run` tells its peer (only) the fingerprint.
pub const FINGERPRINT_PORT: u16 = SYNC_PORT + 1;
const ASK: &[u8] = b"natgw-ha-fingerprint?";
const TELL: &[u8] = b"natgw-ha-fingerprint=";
/// Requests are padded to this size, at least the answer's: never an amplifier.
const REQUEST_LEN: usize = 40;

/// The question `doctor` sends to the peer.
pub fn fingerprint_request() -> Vec<u8> {
    let mut q = ASK.to_vec();
    q.resize(REQUEST_LEN, 0);
    q
}

/// What `natgw run` answers to `request` from `from`: only the configured peer, only a
/// well-formed question, never more bytes than it was sent.
pub fn fingerprint_answer(
    request: &[u8],
    from: std::net::SocketAddr,
    config: &HaConfig,
) -> Option<Vec<u8>> {
    if from.ip() != std::net::IpAddr::V4(config.peer) || request != fingerprint_request() {
        return None;
    }
    let mut a = TELL.to_vec();
    a.extend_from_slice(config.fingerprint().as_bytes());
    (a.len() <= request.len()).then_some(a)
}

/// The peer's fingerprint from its answer.
pub fn parse_fingerprint_answer(answer: &[u8]) -> Option<String> {
    let fp = std::str::from_utf8(answer.strip_prefix(TELL)?).ok()?;
    (fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit())).then(|| fp.to_string())
}

/// A headnode's role as keepalived last reported it through `natgw ha-notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Backup,
    Fault,
    Stop,
}

impl Role {
    pub fn parse(word: &str) -> Option<Role> {
        match word.to_ascii_lowercase().as_str() {
            "master" => Some(Role::Master),
            "backup" => Some(Role::Backup),
            "fault" => Some(Role::Fault),
            "stop" => Some(Role::Stop),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "primary",
            Role::Backup => "backup",
            Role::Fault => "fault",
            Role::Stop => "stopped",
        })
    }
}

/// The HA record `natgw ha-notify` keeps (`ha.json`): the role and when it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaRecord {
    pub role: Role,
    /// Unix seconds (with fraction) of the last transition.
    pub since: f64,
    /// Whether the connection-state commands of that transition all succeeded.
    pub sync_ok: bool,
    /// What went wrong with them, if anything.
    #[serde(default)]
    pub sync_problem: Option<String>,
    /// Each conntrackd step of that transition and how long it took
    /// (`conntrackd -c: 4 ms`).
    #[serde(default)]
    pub steps: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HaConfig {
        HaConfig {
            peer: "192.168.255.2".parse().unwrap(),
            sync_interface: "sync0".into(),
            vrid: 51,
            priority: 150,
            private_vip: "10.0.0.1/24".parse().unwrap(),
            public_vip: "203.0.113.10/24".parse().unwrap(),
            advert_interval: 0.5,
            preempt_delay: 2,
        }
    }

    #[test]
    fn a_good_section_passes() {
        let c = config();
        assert_eq!(c.check(&[], false), Ok(()));
        assert_eq!(c.check(&["203.0.113.10".parse().unwrap()], false), Ok(()));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        type Change = Box<dyn Fn(&mut HaConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.vrid = 0), "vrid"),
            (Box::new(|c| c.priority = 255), "priority"),
            (Box::new(|c| c.priority = 0), "priority"),
            (
                Box::new(|c| c.sync_interface = "sy\"nc".into()),
                "sync_interface",
            ),
            (Box::new(|c| c.sync_interface = "".into()), "sync_interface"),
            (Box::new(|c| c.advert_interval = 0.0), "advert_interval"),
            (Box::new(|c| c.advert_interval = 0.125), "advert_interval"),
            (Box::new(|c| c.advert_interval = 41.0), "advert_interval"),
            (
                Box::new(|c| c.private_vip = "203.0.113.1/24".parse().unwrap()),
                "private_vip",
            ),
            (
                Box::new(|c| c.private_vip = "10.0.0.0/24".parse().unwrap()),
                "private_vip",
            ),
            (
                Box::new(|c| c.public_vip = "10.1.0.1/24".parse().unwrap()),
                "public_vip",
            ),
            (
                Box::new(|c| c.public_vip = "224.0.0.18/24".parse().unwrap()),
                "public_vip",
            ),
            (Box::new(|c| c.peer = "10.0.0.1".parse().unwrap()), "peer"),
            (Box::new(|c| c.peer = "127.0.0.1".parse().unwrap()), "peer"),
            (Box::new(|c| c.preempt_delay = 5000), "preempt_delay"),
        ];
        for (change, key) in cases {
            let mut c = config();
            change(&mut c);
            let e = c.check(&[], false).unwrap_err().to_string();
            assert!(e.starts_with("[ha] ") && e.contains(key), "{key}: {e}");
        }
        let e = config().check(&[], true).unwrap_err().to_string();
        assert!(e.contains("masquerade"), "{e}");
        let e = config()
            .check(&["203.0.113.11".parse().unwrap()], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("snat_to"), "{e}");
    }

    #[test]
    fn fingerprint_covers_what_both_nodes_share_only() {
        let a = config();
        let mut b = config();
        b.priority = 100;
        b.peer = "192.168.255.1".parse().unwrap();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "priority and peer differ by design"
        );
        b.vrid = 52;
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = config();
        c.public_vip = "203.0.113.11/24".parse().unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }

    fn render<T>(f: impl FnOnce(&HaRender) -> T) -> T {
        let c = config();
        let files = HaFiles::new("/run/natgw/netns-42/ha".into()).unwrap();
        let (public, private, sync) = (
            IfName::new("wan0").unwrap(),
            IfName::new("lan0").unwrap(),
            IfName::new("sync0").unwrap(),
        );
        let r = HaRender {
            config: &c,
            public: &public,
            private: &private,
            sync: &sync,
            sync_address: "192.168.255.1".parse().unwrap(),
            files: &files,
            natgw: Path::new("/usr/sbin/natgw"),
        };
        f(&r)
    }

    #[test]
    fn keepalived_config_is_rendered_from_the_section() {
        let text = render(|r| r.keepalived()).unwrap();
        let fp = config().fingerprint();
        let expected = format!(
            "# Written by natgw run; changes are overwritten. ha fingerprint {fp}
global_defs {{
\trouter_id natgw-51
\tenable_script_security
\tscript_user root
\tvrrp_version 3
\tvrrp_garp_master_delay 1
\tvrrp_garp_master_repeat 3
}}

vrrp_instance natgw {{
\tstate BACKUP
\tinterface lan0
\tvirtual_router_id 51
\tpriority 150
\tadvert_int 0.50
\tpreempt_delay 2
\ttrack_interface {{
\t\twan0
\t}}
\tvirtual_ipaddress {{
\t\t10.0.0.1/24 dev lan0
\t\t203.0.113.10/24 dev wan0
\t}}
\tnotify_master \"/usr/sbin/natgw ha-notify master\"
\tnotify_backup \"/usr/sbin/natgw ha-notify backup\"
\tnotify_fault \"/usr/sbin/natgw ha-notify fault\"
\tnotify_stop \"/usr/sbin/natgw ha-notify stop\"
}}
"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn conntrackd_config_syncs_over_the_dedicated_link() {
        let text = render(|r| r.conntrackd()).unwrap();
        for line in [
            "\tMode FTFW {",
            "\t\tIPv4_address 192.168.255.1\n",
            "\t\tIPv4_Destination_Address 192.168.255.2\n",
            "\t\tPort 3780\n",
            "\t\tInterface sync0\n",
            "\tLockFile /run/natgw/netns-42/ha/conntrackd.lock\n",
            "\t\tPath /run/natgw/netns-42/ha/conntrackd.ctl\n",
            "\tLogFile /run/natgw/netns-42/ha/conntrackd.log\n",
            "\t\tDisableExternalCache Off\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Braces balance: the file is one well-formed block structure.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn paths_that_would_be_syntax_are_refused() {
        for bad in [
            "/tmp/a b",
            "/tmp/a\"b",
            "/tmp/a}b",
            "/tmp/a#b",
            "/tmp/a\nb",
            "relative/dir",
        ] {
            assert!(HaFiles::new(bad.into()).is_err(), "{bad:?}");
        }
        let c = config();
        let files = HaFiles::new("/run/natgw/x".into()).unwrap();
        let n = IfName::new("lan0").unwrap();
        let r = HaRender {
            config: &c,
            public: &n,
            private: &n,
            sync: &n,
            sync_address: "192.168.255.1".parse().unwrap(),
            files: &files,
            natgw: Path::new("/opt/my natgw/natgw"),
        };
        assert!(r.keepalived().is_err());
    }

    #[test]
    fn only_the_peer_gets_the_fingerprint_and_never_more_than_it_sent() {
        let c = config();
        let peer: std::net::SocketAddr = "192.168.255.2:40000".parse().unwrap();
        let other: std::net::SocketAddr = "192.168.255.9:40000".parse().unwrap();
        let q = fingerprint_request();
        let a = fingerprint_answer(&q, peer, &c).unwrap();
        assert!(a.len() <= q.len());
        assert_eq!(parse_fingerprint_answer(&a), Some(c.fingerprint()));
        assert_eq!(fingerprint_answer(&q, other, &c), None, "not the peer");
        assert_eq!(
            fingerprint_answer(&q[..20], peer, &c),
            None,
            "short question"
        );
        assert_eq!(fingerprint_answer(b"natgw-ha-fingerprint?", peer, &c), None);
        assert_eq!(parse_fingerprint_answer(b"natgw-ha-fingerprint=zz"), None);
    }

    #[test]
    fn roles_parse_from_keepalived_words() {
        assert_eq!(Role::parse("MASTER"), Some(Role::Master));
        assert_eq!(Role::parse("backup"), Some(Role::Backup));
        assert_eq!(Role::parse("fault"), Some(Role::Fault));
        assert_eq!(Role::parse("evil"), None);
        assert_eq!(Role::Master.to_string(), "primary");
    }
}
