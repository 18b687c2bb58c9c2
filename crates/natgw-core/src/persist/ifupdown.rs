//! ifupdown: `/etc/network/interfaces` and what it includes with `source` and
//! `source-directory`, parsed the way ifupdown 0.8 does: words separated by any
//! whitespace (tabs too), includes read in place, relative paths from the including
//! file's directory, and `source-directory` taking only names of `[A-Za-z0-9_-]`
//! (so editor backups such as `.eth0.swp` are not configuration).

use std::net::Ipv4Addr;

use super::text::{first_word, indent, Text};
use super::{children, edit, glob, Files, Found, Manager};

const MAIN: &str = "/etc/network/interfaces";
/// Includes nested deeper than this are a loop.
const MAX_DEPTH: usize = 8;

/// Words that start a new stanza, ending the options of an `iface` stanza.
fn starts_stanza(word: &str) -> bool {
    matches!(
        word,
        "iface"
            | "mapping"
            | "auto"
            | "source"
            | "source-directory"
            | "source-dir"
            | "rename"
            | "no-auto-down"
            | "no-scripts"
    ) || word.starts_with("allow-")
}

pub(super) fn plan(files: &Files, interface: &str, gateway: Ipv4Addr) -> Option<Found> {
    let mut order = Vec::new();
    read_order(files, MAIN, 0, &mut order);
    let (path, start, method) = order.iter().find_map(|path| {
        let text = Text::parse(&files[path.as_str()]);
        text.lines.iter().enumerate().find_map(|(i, line)| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["iface", name, "inet", method, ..] if *name == interface => {
                    Some((path.clone(), i, method.to_string()))
                }
                _ => None,
            }
        })
    })?;
    let found = |result, notes| {
        Some(Found {
            manager: Manager::Ifupdown,
            result,
            notes,
        })
    };
    if method != "static" {
        let why = match method.as_str() {
            "dhcp" => format!("{path}: `iface {interface} inet dhcp` takes its gateway from DHCP; point the DHCP server's router option at {gateway}, or make the stanza static"),
            other => format!("{path}: `iface {interface} inet {other}` gives ifupdown no address to put a gateway next to; make the stanza static"),
        };
        return found(Err(why), Vec::new());
    }
    let mut text = Text::parse(&files[path.as_str()]);
    let end = text.lines[start + 1..]
        .iter()
        .position(|l| starts_stanza(first_word(l).0))
        .map_or(text.lines.len(), |i| start + 1 + i);
    let options: Vec<usize> = (start + 1..end)
        .filter(|i| {
            let word = first_word(&text.lines[*i]).0;
            !word.is_empty() && !word.starts_with('#')
        })
        .collect();
    let gateways: Vec<usize> = options
        .iter()
        .copied()
        .filter(|i| first_word(&text.lines[*i]).0 == "gateway")
        .collect();
    let pad = options
        .first()
        .map_or("    ".to_string(), |i| indent(&text.lines[*i]).to_string());
    let line = format!("{pad}gateway {gateway}");
    match gateways.split_first() {
        Some((first, rest)) => {
            // Two gateway lines make ifup run a second, failing `ip route add default`.
            for i in rest.iter().rev() {
                text.lines.remove(*i);
            }
            if Some(gateway)
                != text.lines[*first]
                    .split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse().ok())
            {
                text.lines[*first] = line;
            }
        }
        None => text
            .lines
            .insert(options.last().map_or(start + 1, |i| i + 1), line),
    }
    found(
        Ok(vec![edit(files, &path, text.render())]),
        vec![format!(
            "apply with: ifdown {interface} && ifup {interface} (or at the next boot)"
        )],
    )
}

/// The files ifupdown reads, in the order it reads their stanzas (an included file
/// is listed where its `source` line is; its own lines come in its own entry, so
/// "first stanza wins" holds across files as long as includes come before the
/// stanza, the common layout).
fn read_order(files: &Files, path: &str, depth: usize, order: &mut Vec<String>) {
    let Some(content) = files.get(path) else {
        return;
    };
    if depth > MAX_DEPTH || order.iter().any(|p| p == path) {
        return;
    }
    order.push(path.to_string());
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    for line in Text::parse(content).lines {
        let (word, rest) = first_word(&line);
        let Some(target) = rest.split_whitespace().next() else {
            continue;
        };
        let target = if target.starts_with('/') {
            target.to_string()
        } else {
            format!("{dir}/{target}")
        };
        match word {
            "source" => {
                let (tdir, pattern) = target.rsplit_once('/').unwrap_or(("", &target));
                for (name, included) in children(files, tdir) {
                    // A shell glob's `*` does not match a leading dot.
                    let hidden = name.starts_with('.') && !pattern.starts_with('.');
                    if !hidden && glob::matches(pattern, name) {
                        read_order(files, included, depth + 1, order);
                    }
                }
            }
            "source-directory" | "source-dir" => {
                for (name, included) in children(files, &target) {
                    if name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        read_order(files, included, depth + 1, order);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{eth, files, only, GW};
    use super::super::{plan, Manager};

    #[test]
    fn static_stanza_gets_a_gateway_line_after_its_options() {
        let text = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address 10.0.0.11/24\n\nauto eth1\niface eth1 inet dhcp\n";
        let f = files(&[("/etc/network/interfaces", text)]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.manager, Some(Manager::Ifupdown));
        assert_eq!(only(&p), "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address 10.0.0.11/24\n    gateway 10.0.0.1\n\nauto eth1\niface eth1 inet dhcp\n");
        let again = plan(
            &files(&[("/etc/network/interfaces", only(&p))]),
            &eth("eth0"),
            GW,
        );
        assert!(again.up_to_date, "{again:#?}");
        let dhcp = plan(&f, &eth("eth1"), GW);
        assert!(dhcp.edits.is_empty() && dhcp.refused.unwrap().contains("DHCP"));
    }

    #[test]
    fn tabs_separate_words_and_end_stanzas() {
        // eth1's stanza follows eth0's, separated by tab-indented keywords only.
        let text = "auto\teth0\niface\teth0 inet static\n\taddress 10.0.0.11/24\nauto\teth1\niface\teth1 inet static\n\taddress 10.77.0.5/24\n\tgateway\t10.77.0.254\n";
        let p = plan(
            &files(&[("/etc/network/interfaces", text)]),
            &eth("eth0"),
            GW,
        );
        assert_eq!(only(&p), "auto\teth0\niface\teth0 inet static\n\taddress 10.0.0.11/24\n\tgateway 10.0.0.1\nauto\teth1\niface\teth1 inet static\n\taddress 10.77.0.5/24\n\tgateway\t10.77.0.254\n");
        let p = plan(
            &files(&[("/etc/network/interfaces", text)]),
            &eth("eth1"),
            GW,
        );
        assert!(
            only(&p).ends_with("\taddress 10.77.0.5/24\n\tgateway 10.0.0.1\n"),
            "{}",
            only(&p)
        );
    }

    #[test]
    fn a_second_gateway_line_is_removed_not_added() {
        let text = "iface eth0 inet static\n  address 10.0.0.11/24\n  gateway 10.0.0.254\n  gateway\t10.0.0.253\n";
        let p = plan(
            &files(&[("/etc/network/interfaces", text)]),
            &eth("eth0"),
            GW,
        );
        assert_eq!(
            only(&p),
            "iface eth0 inet static\n  address 10.0.0.11/24\n  gateway 10.0.0.1\n"
        );
    }

    #[test]
    fn follows_source_and_source_directory_but_not_backups() {
        let f = files(&[
            (
                "/etc/network/interfaces",
                "source interfaces.d/*\nsource-directory /etc/network/more\n",
            ),
            (
                "/etc/network/interfaces.d/.eth0.swp",
                "iface eth0 inet static\n address 10.9.9.9/24\n",
            ),
            (
                "/etc/network/interfaces.d/eth0",
                "iface eth0 inet static\r\n address 10.0.0.11/24\r\n",
            ),
            (
                "/etc/network/more/eth1.bak",
                "iface eth1 inet static\n address 10.9.9.9/24\n",
            ),
            (
                "/etc/network/more/eth1",
                "iface eth1 inet static\n address 10.0.0.12/24\n",
            ),
        ]);
        let p = plan(&f, &eth("eth0"), GW);
        assert_eq!(p.edits[0].path, "/etc/network/interfaces.d/eth0");
        assert_eq!(
            only(&p),
            "iface eth0 inet static\r\n address 10.0.0.11/24\r\n gateway 10.0.0.1\r\n",
            "CRLF kept"
        );
        let p = plan(&f, &eth("eth1"), GW);
        assert_eq!(p.edits[0].path, "/etc/network/more/eth1");
        // Not sourced at all: not ifupdown's.
        let f = files(&[("/etc/network/interfaces.d/eth0", "iface eth0 inet static\n")]);
        assert_eq!(plan(&f, &eth("eth0"), GW).manager, None);
    }
}
