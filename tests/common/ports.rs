//! Ports for servers a test starts.
#![allow(dead_code)]

/// A free TCP port of loopback below the kernel's range for outgoing
/// connections: a port the kernel handed out (port 0) and released could
/// be taken by any outgoing connection before the server binds it.
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_start.saturating_sub(2700).max(1024),
        ephemeral_start,
    );
    loop {
        let port = low + rand::random::<u16>() % (high - low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
