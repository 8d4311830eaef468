//! The target: an `http://` URL whose host is a loopback address. Load is never sent
//! anywhere else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A parsed, loopback-only target.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Host header sent with every request.
    pub host: String,
}

/// Parses `http://HOST:PORT` (a trailing `/` is allowed). HOST must be a loopback IP
/// literal or `localhost`: names are not resolved, so nothing can point elsewhere.
pub fn parse(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// targets"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!("{url}: give the target without a path (the workload sets it)"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("{url}: the host must be a loopback address"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{url}: {ip} is not a loopback address; load is only sent to this machine"
        ));
    }
    let port = authority.port_u16().unwrap_or(80);
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, ok: bool) {
        assert_eq!(parse(url).is_ok(), ok, "{url}: {:?}", parse(url));
    }

    #[test]
    fn only_loopback() {
        check("http://127.0.0.1:8080", true);
        check("http://127.0.0.1:8080/", true);
        check("http://127.9.9.9:1", true);
        check("http://localhost:8080", true);
        check("http://[::1]:8080", true);
        check("http://10.0.0.1:8080", false);
        check("http://192.168.1.1", false);
        check("http://8.8.8.8:80", false);
        check("http://example.com:80", false);
        check("https://127.0.0.1:8443", false);
        check("http://127.0.0.1:8080/api", false);
        assert_eq!(parse("http://localhost:81").unwrap().addr.port(), 81);
    }
}
