//! Reading the dataplane's own numbers: stats over its control socket, CPU and memory from
//! `/proc/<pid>`.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use control::{Framed, FromDataplane, NodeStats, PROTOCOL_VERSION, Request, Response, ToDataplane};

/// A blocking control-protocol client (for statistics).
pub struct ControlClient {
    stream: UnixStream,
    framed: Framed,
    next_id: u64,
}

impl ControlClient {
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream =
            UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut c = Self {
            stream,
            framed: Framed::new(control::DEFAULT_MAX_FRAME),
            next_id: 1,
        };
        c.send(&ToDataplane::Hello {
            version: PROTOCOL_VERSION,
            client: "bench".into(),
            signaling_id: None,
        })?;
        match c.recv()? {
            FromDataplane::Welcome { .. } => Ok(c),
            other => bail!("unexpected handshake answer {other:?}"),
        }
    }

    fn send(&mut self, msg: &ToDataplane) -> anyhow::Result<()> {
        self.framed.queue(msg)?;
        while !self.framed.flush_to(&mut self.stream)? {}
        Ok(())
    }

    fn recv(&mut self) -> anyhow::Result<FromDataplane> {
        loop {
            if let Some(m) = self.framed.next_message::<FromDataplane>()? {
                return Ok(m);
            }
            let mut buf = [0u8; 65536];
            let n = std::io::Read::read(&mut self.stream, &mut buf)?;
            if n == 0 {
                bail!("dataplane closed the control connection");
            }
            self.framed.extend(&buf[..n]);
        }
    }

    /// Node statistics (snapshot at most 1 s old).
    pub fn stats(&mut self) -> anyhow::Result<NodeStats> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&ToDataplane::Request {
            id,
            request: Request::Stats,
        })?;
        loop {
            match self.recv()? {
                FromDataplane::Response {
                    id: rid,
                    response: Response::Stats(s),
                } if rid == id => return Ok(s),
                FromDataplane::Response { id: rid, response } if rid == id => {
                    bail!("stats failed: {response:?}")
                }
                _ => {}
            }
        }
    }
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let st = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some((st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Busy time of one CPU (user, nice, system, irq and softirq: everything but idle, iowait and
/// steal), in seconds. With the dataplane pinned alone on that CPU this charges it the kernel's
/// interrupt and softirq work done there too, which per-process accounting may leave out.
pub fn cpu_busy_seconds(cpu: usize) -> Option<f64> {
    use procfs::CurrentSI;
    let ks = procfs::KernelStats::current().ok()?;
    let c = ks.cpu_time.get(cpu)?;
    let ticks = c.user + c.nice + c.system + c.irq.unwrap_or(0) + c.softirq.unwrap_or(0);
    Some(ticks as f64 / procfs::ticks_per_second() as f64)
}

/// Resident memory of a process, KiB; `None` if it cannot be read (no such process, or a
/// zombie, which has no `VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .status()
        .ok()?
        .vmrss
}
