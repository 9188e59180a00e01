//! The local control socket's safety: where it lives by default, who may own its directory, its
//! file mode, and who may be at the other end (`SO_PEERCRED`).
//!
//! The control socket carries room and display names and can end every call on the node, so
//! both ends check each other: the dataplane accepts only connections from its own user, root or
//! configured uids; signaling talks only to a socket held by its own user, root or configured
//! uids. A socket squatted by another user at the configured path is refused, never spoken to.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default control socket path, the same for both binaries: a private per-user runtime
/// directory (`$XDG_RUNTIME_DIR/sfu/`, else `/run/sfu/` for root, else `/tmp/sfu-<uid>/`, which
/// the dataplane creates with mode 0700 and refuses if another user owns it).
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d).join("sfu"),
        _ if uid == 0 => PathBuf::from("/run/sfu"),
        _ => PathBuf::from(format!("/tmp/sfu-{uid}")),
    };
    dir.join("dataplane.sock")
}

/// The uid at the other end of a Unix stream.
pub fn peer_uid(stream: &impl AsFd) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// Whether `uid` may be at the other end: our own user, root, or one of `allowed`.
pub fn uid_allowed(uid: u32, allowed: &[u32]) -> bool {
    uid == nix::unistd::geteuid().as_raw() || uid == 0 || allowed.contains(&uid)
}

/// Fail with `PermissionDenied` unless the peer of `stream` runs as an allowed user.
pub fn check_peer(stream: &impl AsFd, allowed: &[u32]) -> io::Result<()> {
    let uid = peer_uid(stream)?;
    if uid_allowed(uid, allowed) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("control socket peer runs as uid {uid}, which is not allowed"),
        ))
    }
}

/// Make sure the socket's directory exists and is safe: created with mode 0700 if missing;
/// otherwise owned by us or root, and not writable by others unless sticky (like `/tmp`, where
/// the peer check still protects the socket).
pub fn prepare_dir(socket: &Path) -> io::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            Ok(())
        }
        Err(e) => Err(e),
        Ok(m) => {
            let me = nix::unistd::geteuid().as_raw();
            if !m.is_dir() {
                return Err(insecure(dir, "is not a directory (or is a symlink)"));
            }
            if m.uid() != me && m.uid() != 0 {
                return Err(insecure(dir, &format!("is owned by uid {}", m.uid())));
            }
            let mode = m.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(insecure(
                    dir,
                    &format!("is writable by other users (mode {:o})", mode & 0o7777),
                ));
            }
            Ok(())
        }
    }
}

fn insecure(dir: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "control socket directory {} {why}; refusing to use it",
            dir.display()
        ),
    )
}

/// Set the socket file's mode explicitly (whatever the umask was at bind time).
pub fn set_mode(socket: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
}

/// Parse an octal file mode such as `0600` or `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal file mode"))?;
    if m > 0o777 || m & 0o007 != 0 {
        return Err(format!(
            "control socket mode {s} must be at most 0770 (never open to all users)"
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credentials_of_our_own_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(peer_uid(&a).expect("uid"), me);
        assert!(check_peer(&a, &[]).is_ok());
        assert!(uid_allowed(0, &[]), "root");
        assert!(uid_allowed(4242, &[4242]));
        assert!(!uid_allowed(me.wrapping_add(4243).max(1), &[]));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0666").is_err(), "world-writable");
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn socket_directories() {
        let base = std::env::temp_dir().join(format!(
            "sfu-local-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Missing: created private.
        let sock = base.join("new").join("x.sock");
        prepare_dir(&sock).expect("create");
        let m = std::fs::metadata(base.join("new")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        // World-writable without the sticky bit: refused.
        let open = base.join("open");
        std::fs::create_dir_all(&open).expect("mkdir");
        set_mode(&open, 0o777).expect("chmod");
        let e = prepare_dir(&open.join("x.sock")).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("writable by other users"), "{e}");
        // Sticky like /tmp: accepted.
        set_mode(&open, 0o1777).expect("chmod");
        prepare_dir(&open.join("x.sock")).expect("sticky ok");
        // A symlink is refused.
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).expect("symlink");
        assert!(prepare_dir(&link.join("x.sock")).is_err());
        let _ = std::fs::remove_dir_all(&base);
        // The default path is in a private per-user place, never directly in /tmp.
        let d = default_socket_path();
        assert_ne!(d.parent(), Some(Path::new("/tmp")), "{}", d.display());
    }
}
