//! The server under load: its base URL, accepted only on a loopback address. A load generator
//! pointed at someone else's server by mistake is a denial of service.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::Error;

#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
}

impl Target {
    /// Parses `http://host:port[/]` and checks that every address `host` names is loopback.
    pub fn parse(url: &str) -> Result<Target, Error> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::Target(format!("{url}: only http:// targets are supported")))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(Error::Target(format!("{url}: give the server's base URL, without a path")));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| Error::Target(format!("{url}: cannot resolve: {e}")))?
            .collect();
        if addrs.is_empty() || !addrs.iter().all(|a| is_loopback(a.ip())) {
            return Err(Error::Target(format!(
                "{url}: not a loopback address ({addrs:?}); the load generator only targets this machine"
            )));
        }
        Ok(Target { base: format!("http://{authority}") })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_loopback_and_refuses_anything_else() {
        assert_eq!(Target::parse("http://127.0.0.1:8080/").unwrap().base, "http://127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://localhost:9").unwrap().url("/v1/rank"),
            "http://localhost:9/v1/rank"
        );
        assert!(Target::parse("http://[::1]:8080").is_ok());
        for bad in [
            "http://10.0.0.1:8080",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8080/v1/rank",
            "127.0.0.1:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
