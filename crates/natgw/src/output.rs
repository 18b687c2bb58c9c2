//! Printing helpers shared by the commands.

use natgw_core::Desired;

pub fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable output")
    );
}

/// The detected gateway in a few lines.
pub fn describe(desired: &Desired) -> String {
    // Link-local IPv6 addresses are on every interface and say nothing about its role.
    let iface = |i: &natgw_core::Interface| {
        let addrs: Vec<String> = i
            .addresses
            .iter()
            .filter(|a| !matches!(a, ipnet::IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| a.to_string())
            .collect();
        format!("{} ({})", i.name, addrs.join(", "))
    };
    let private: Vec<String> = desired.private.iter().map(iface).collect();
    let prefixes: Vec<String> = desired
        .private_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut text = format!(
        "public:     {}\nprivate:    {}\ntranslate:  {} -> {}\n",
        iface(&desired.public),
        private.join(", "),
        prefixes.join(", "),
        desired.snat
    );
    match &desired.ipv6 {
        Some(v6) => text.push_str(&format!(
            "ipv6:       {} -> {}\n",
            natgw_core::join(&v6.outbound_prefixes),
            v6.translation
        )),
        None => text.push_str("ipv6:       off\n"),
    }
    text.push_str(&format!("dataplane:  {}\n", desired.dataplane));
    for route in &desired.routes {
        text.push_str(&format!("route:      {} via {}\n", route.to, route.via));
    }
    for warning in &desired.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}
