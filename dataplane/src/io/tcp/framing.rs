//! RFC 4571 framing on one ICE-TCP connection: deframing what arrives (whole frames straight
//! from the read buffer, a partial one kept), and screening connections that do not speak ICE.

use std::net::SocketAddr;

use super::{Close, Conn, HEADER, TcpStats};

/// Frames an unbound connection may send (ICE checks and their retransmissions) before it is
/// dropped as not speaking ICE.
pub(super) const MAX_UNBOUND_FRAMES: u32 = 32;
/// Largest frame an unbound connection may send: an ICE check is a STUN message of a few hundred
/// bytes at most.
const MAX_UNBOUND_FRAME: usize = 1500;

/// Deframe `data` (appended to the connection's partial frame) and deliver every complete
/// datagram. `Err(Garbage)` if the connection does not speak ICE.
pub(super) fn feed(
    conn: &mut Conn,
    mut data: &[u8],
    stats: &mut TcpStats,
    deliver: &mut impl FnMut(SocketAddr, &[u8], bool) -> bool,
) -> Result<(), Close> {
    // Complete a partial frame first (copying only the bytes it still needs).
    if !conn.partial.is_empty() {
        if conn.partial.len() < HEADER {
            let take = (HEADER - conn.partial.len()).min(data.len());
            conn.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if conn.partial.len() < HEADER {
                return Ok(());
            }
        }
        let want = HEADER + usize::from(u16::from_be_bytes([conn.partial[0], conn.partial[1]]));
        let take = want.saturating_sub(conn.partial.len()).min(data.len());
        conn.partial.extend_from_slice(&data[..take]);
        data = &data[take..];
        screen(conn, &conn.partial)?;
        if conn.partial.len() < want {
            return Ok(());
        }
        let frame = std::mem::take(&mut conn.partial);
        on_frame(conn, &frame[HEADER..], stats, deliver)?;
        // Keep the allocation for the next partial frame.
        conn.partial = frame;
        conn.partial.clear();
    }
    // Whole frames straight from the read buffer.
    while data.len() >= HEADER {
        screen(conn, data)?;
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        if data.len() < HEADER + len {
            break;
        }
        on_frame(conn, &data[HEADER..HEADER + len], stats, deliver)?;
        data = &data[HEADER + len..];
    }
    screen(conn, data)?;
    conn.partial.extend_from_slice(data);
    Ok(())
}

/// Reject the start of a frame (`start`: its header and what has arrived of it) on a connection
/// not yet bound to a participant, as soon as it cannot be an ICE check: RFC 7983 STUN starts
/// with 0..=3, and a check is 20..=[`MAX_UNBOUND_FRAME`] bytes. So HTTP, TLS or random bytes are
/// refused on their first bytes, not after a 64 KiB "frame" arrives.
fn screen(conn: &Conn, start: &[u8]) -> Result<(), Close> {
    if conn.bound || start.is_empty() {
        return Ok(());
    }
    if start.len() >= HEADER {
        let len = usize::from(u16::from_be_bytes([start[0], start[1]]));
        if !(20..=MAX_UNBOUND_FRAME).contains(&len) {
            return Err(Close::Garbage);
        }
    }
    if start.len() > HEADER && start[HEADER] > 3 {
        return Err(Close::Garbage);
    }
    Ok(())
}

fn on_frame(
    conn: &mut Conn,
    frame: &[u8],
    stats: &mut TcpStats,
    deliver: &mut impl FnMut(SocketAddr, &[u8], bool) -> bool,
) -> Result<(), Close> {
    stats.frames_in += 1;
    if !conn.bound {
        conn.frames += 1;
        // RFC 7983: STUN starts with 0..=3. The first frame of an ICE-TCP connection is an ICE
        // check; anything else (HTTP, TLS, random bytes) is not ours.
        let stun = frame.len() >= 20 && frame[0] <= 3;
        if (conn.frames == 1 && !stun) || conn.frames > MAX_UNBOUND_FRAMES {
            return Err(Close::Garbage);
        }
    }
    if frame.is_empty() {
        return Ok(());
    }
    if deliver(conn.peer, frame, !conn.bound) {
        conn.bound = true;
    }
    Ok(())
}
