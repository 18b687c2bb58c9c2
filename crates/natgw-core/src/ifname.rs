//! Interface names as natgw lets them reach nftables, sysctl paths and messages.
//!
//! Linux accepts almost any byte in a name (`"`, `}`, `#`, `*`, `\`, `$(...)`, UTF-8);
//! nftables would read some of those as syntax (`"x\"}accept#"` ends the string and
//! comments the rest out) and a trailing `*` as a wildcard (`"e*"` also matches `eth1`).
//! Rather than escape for one nft version's lexer, natgw only passes names made of
//! characters that mean nothing to it and refuses every other name by name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest name the kernel accepts (IFNAMSIZ - 1).
const MAX_LEN: usize = 15;

/// An interface name that is safe to render as an nftables string and a sysctl path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interface name {name:?} {reason}; natgw only uses names of letters, digits and `-_.@+=` (rename it: ip link set dev NAME name NEWNAME)")]
pub struct IfNameError {
    pub name: String,
    pub reason: &'static str,
}

impl IfName {
    pub fn new(name: &str) -> Result<IfName, IfNameError> {
        let refuse = |reason| {
            Err(IfNameError {
                name: name.to_string(),
                reason,
            })
        };
        if name.is_empty() || name == "." || name == ".." {
            return refuse("is not a valid interface name");
        }
        if name.len() > MAX_LEN {
            return refuse("is longer than 15 bytes");
        }
        if !name.bytes().all(is_plain) {
            return refuse("contains characters nftables could read as syntax or a wildcard");
        }
        Ok(IfName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.@+=".contains(&b)
}

impl TryFrom<String> for IfName {
    type Error = IfNameError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        IfName::new(&name)
    }
}

impl From<IfName> for String {
    fn from(name: IfName) -> String {
        name.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for IfName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for IfName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "eth0",
            "wan0",
            "eth0.100",
            "br-lan",
            "wg_0",
            "veth@x",
            "enp0s31f6",
        ] {
            assert_eq!(IfName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn names_that_are_syntax_or_patterns_are_refused() {
        for name in [
            "x\"}accept#",
            "e*",
            "a\\b",
            "a b",
            "$(reboot)",
            "a;b",
            "a'b",
            "a}b",
            "a/b",
            "é0",
            "",
            "..",
            "sixteen-bytes-xx",
        ] {
            let err = IfName::new(name).unwrap_err();
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<IfName>("\"e*\"").is_err());
        assert_eq!(
            serde_json::from_str::<IfName>("\"lan0\"").unwrap().as_str(),
            "lan0"
        );
    }
}
