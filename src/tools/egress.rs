//! Where tools may reach: no SSRF through a tool, a redirect or a DNS answer.
//!
//! Every outbound call of a tool goes through one HTTP client built here. Three
//! checks, each on every hop:
//! - the host must be on `tools.allowed_hosts` when that list is not empty
//!   (checked on the first URL and on every redirect target);
//! - a literal IP address in a URL must not be private, loopback, link-local,
//!   unspecified, multicast or otherwise special unless it is inside
//!   `tools.allowed_private_networks`;
//! - a host name is resolved by the client's own resolver, which drops every
//!   address failing that same rule, so a name that resolves to 127.0.0.1 or
//!   169.254.169.254 (cloud metadata) is refused at connect time, where a
//!   check before the request could be raced by a second DNS answer.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::ToolsConfig;

/// An IP network, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address.parse().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is one an outside caller must not make us reach.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // Carrier-grade NAT, and 0.0.0.0/8.
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The egress policy of the tools.
#[derive(Debug, Clone)]
pub struct Egress {
    allowed_hosts: Vec<String>,
    allowed_networks: Vec<Network>,
}

impl Egress {
    pub fn new(config: &ToolsConfig) -> Self {
        Self {
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_networks: config
                .allowed_private_networks
                .iter()
                .filter_map(|n| Network::parse(n))
                .collect(),
        }
    }

    /// Whether a tool may connect to `ip`.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        !is_special(ip) || self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// Checks a URL before it is requested (and each redirect target).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{url}: only http and https are allowed"));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("{url}: no host"));
        };
        // IPv6 literals come bracketed.
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        if !self.allowed_hosts.is_empty()
            && !self
                .allowed_hosts
                .iter()
                .any(|allowed| match allowed.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => host == *allowed,
                })
        {
            return Err(format!("{host} is not on tools.allowed_hosts"));
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.address_allowed(ip)
        {
            return Err(format!(
                "{ip} is a private, loopback or link-local address (not in tools.allowed_private_networks)"
            ));
        }
        Ok(())
    }

    /// The HTTP client every outbound tool call uses.
    pub fn client(&self, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
        crate::install_tls_provider();
        let policy = self.clone();
        reqwest::Client::builder()
            // A proxy would resolve the target itself, past the guarded resolver.
            .no_proxy()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("microclaw/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                egress: self.clone(),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(format!("redirect refused: {refused}")),
                }
            }))
            .build()
    }
}

/// Resolves with the system resolver and drops the addresses tools may not reach.
struct GuardedResolver {
    egress: Egress,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| egress.address_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to private, loopback or link-local addresses ({})",
                    found
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(hosts: &[&str], networks: &[&str]) -> Egress {
        Egress::new(&ToolsConfig {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_private_networks: networks.iter().map(|n| n.to_string()).collect(),
            ..ToolsConfig::default()
        })
    }

    fn check(egress: &Egress, url: &str) -> Result<(), String> {
        egress.check_url(&reqwest::Url::parse(url).unwrap())
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed() {
        let open = egress(&[], &[]);
        for url in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert!(check(&open, url).is_err(), "{url}");
        }
        assert!(check(&open, "https://93.184.215.14/").is_ok());
        assert!(check(&open, "https://functions.example.com/").is_ok());
        assert!(check(&open, "file:///etc/passwd").is_err());
        let lab = egress(&[], &["127.0.0.1", "10.0.0.0/8"]);
        assert!(check(&lab, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&lab, "http://10.200.3.4/").is_ok());
        assert!(check(&lab, "http://127.0.0.2/").is_err());
    }

    #[test]
    fn the_host_allow_list_takes_names_and_subdomains() {
        let listed = egress(&["api.example.com", "*.functions.example.net"], &[]);
        assert!(check(&listed, "https://api.example.com/a").is_ok());
        assert!(check(&listed, "https://API.example.com/a").is_ok());
        assert!(check(&listed, "https://x.functions.example.net/").is_ok());
        assert!(check(&listed, "https://functions.example.net/").is_err());
        assert!(check(&listed, "https://evil.example.com/").is_err());
        assert!(check(&listed, "https://api.example.com.evil.net/").is_err());
    }

    #[test]
    fn networks_parse_and_match() {
        let net = Network::parse("192.168.0.0/16").unwrap();
        assert!(net.contains("192.168.44.1".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("nonsense").is_none());
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
    }
}
