//! The operator endpoint on `--metrics-listen` (loopback by default): `GET /metrics` (the
//! Prometheus text the control thread refreshes every second) and `GET /healthz` (200 `ok`, or 503
//! with the reason while a worker is down after a failure). Served from a small thread of its
//! own, one connection at a time with short timeouts: this is for a scraper, not for the public.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the endpoint serves; written by the control thread.
#[derive(Debug, Default)]
pub struct AdminState {
    pub metrics: String,
    /// Why the node is not healthy, if it is not.
    pub unhealthy: Option<String>,
}

/// Shared between the control thread (writer) and the endpoint thread (reader).
pub type SharedAdmin = Arc<Mutex<AdminState>>;

/// Bind `addr` and serve it until `shutdown`. Returns the bound address.
pub fn serve(
    addr: SocketAddr,
    state: SharedAdmin,
    shutdown: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => answer(s, &state),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => {}
                }
            }
        })?;
    Ok(local)
}

fn answer(mut s: std::net::TcpStream, state: &SharedAdmin) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let head = req.starts_with("HEAD ");
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let get = req.starts_with("GET ") || head;
    let (status, ctype, body) = {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        match (get, path) {
            (true, "/metrics") => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                st.metrics.clone(),
            ),
            (true, "/healthz") => match &st.unhealthy {
                None => ("200 OK", "text/plain", "ok\n".to_string()),
                Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            },
            (true, _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
            (false, _) => (
                "405 Method Not Allowed",
                "text/plain",
                "method not allowed\n".to_string(),
            ),
        }
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head {
        let _ = s.write_all(body.as_bytes());
    }
}

/// CPU seconds (user + system) this process has used (`/proc/self/stat`); 0 if unreadable.
pub fn process_cpu_seconds() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map_or(0.0, |st| {
            (st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_seconds_grows_with_work() {
        let before = process_cpu_seconds();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_seconds();
        assert!(after > before && after >= 0.1, "{before} → {after}");
    }

    #[test]
    fn serves_metrics_health_and_head() {
        let state: SharedAdmin = Arc::default();
        state.lock().expect("lock").metrics = "m 1\n# EOF\n".into();
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve(([127, 0, 0, 1], 0).into(), state.clone(), stop.clone()).expect("bind");
        let get = |req: &str| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(req.as_bytes()).expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        assert!(get("GET /metrics HTTP/1.1\r\n\r\n").ends_with("m 1\n# EOF\n"));
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        state.lock().expect("lock").unhealthy = Some("worker 0 down".into());
        let h = get("GET /healthz HTTP/1.1\r\n\r\n");
        assert!(
            h.starts_with("HTTP/1.1 503") && h.ends_with("worker 0 down\n"),
            "{h}"
        );
        let head = get("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 10"),
            "{head}"
        );
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        stop.store(true, Ordering::SeqCst);
    }
}
