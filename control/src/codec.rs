//! Length-prefixed framing: `u32` big-endian payload length, then the payload.
//!
//! The decoder is pure: feed it bytes in any split ([`FrameDecoder::extend`]) and pull complete
//! frames ([`FrameDecoder::next_frame`]). A length above the maximum is reported as soon as the
//! four length bytes are known, before any payload is buffered, so a hostile peer cannot make us
//! allocate more than `max` bytes.

/// Default maximum frame payload (1 MiB). SDP offers of large rooms stay far below this.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

const HEADER_LEN: usize = 4;

/// Framing errors. Incoming, any of them means the byte stream can no longer be trusted: close
/// it. Outgoing, `MessageTooLarge` concerns one message only (fail that request, keep the link)
/// while `Backlog` means the peer is stuck.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame (incoming or outgoing) is larger than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    /// The peer does not read: more than `max` bytes are already waiting to be sent to it.
    #[error("{pending} bytes are waiting for the peer to read (limit {max})")]
    Backlog { pending: usize, max: usize },
    /// A complete frame did not hold a valid message.
    #[error("malformed message: {reason}")]
    Malformed { reason: String },
}

/// Incremental decoder of length-prefixed frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`; compacted lazily to avoid a memmove per frame.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Append received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let pending = &self.buf[self.start..];
        let Some(header) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max {
            return Err(CodecError::MessageTooLarge { len, max: self.max });
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame = pending[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(frame))
    }
}

/// Append one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if payload.len() > max || u32::try_from(payload.len()).is_err() {
        return Err(CodecError::MessageTooLarge {
            len: payload.len(),
            max,
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(p, 100, &mut out).expect("fits");
        }
        out
    }

    #[test]
    fn decodes_frames_split_at_every_byte() {
        let wire = frames(&[b"hello", b"", b"world!"]);
        for split in 0..=wire.len() {
            let mut dec = FrameDecoder::new(100);
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                dec.extend(chunk);
                while let Some(f) = dec.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(
                got,
                vec![b"hello".to_vec(), vec![], b"world!".to_vec()],
                "split {split}"
            );
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let wire = frames(&[b"abcdef"]);
        let mut dec = FrameDecoder::new(100);
        dec.extend(&wire[..3]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.extend(&wire[3..7]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.extend(&wire[7..]);
        assert_eq!(dec.next_frame(), Ok(Some(b"abcdef".to_vec())));
    }

    #[test]
    fn oversize_frame_is_rejected_from_its_header() {
        let mut dec = FrameDecoder::new(10);
        dec.extend(&11u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(CodecError::MessageTooLarge { len: 11, max: 10 })
        );
        // A maximal length prefix must not make the decoder allocate.
        let mut dec = FrameDecoder::new(10);
        dec.extend(&u32::MAX.to_be_bytes());
        assert!(dec.next_frame().is_err());
        assert!(dec.buffered() <= 4);
    }

    #[test]
    fn oversize_frame_is_not_encoded() {
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(&[0; 11], 10, &mut out),
            Err(CodecError::MessageTooLarge { len: 11, max: 10 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn many_frames_compact_the_buffer() {
        let mut dec = FrameDecoder::new(1 << 20);
        let payload = vec![7u8; 10_000];
        for _ in 0..100 {
            let mut wire = Vec::new();
            encode_frame(&payload, 1 << 20, &mut wire).expect("fits");
            dec.extend(&wire);
            assert_eq!(
                dec.next_frame().expect("valid").as_deref(),
                Some(&payload[..])
            );
        }
        assert!(
            dec.buf.capacity() < 200_000,
            "buffer grew to {}",
            dec.buf.capacity()
        );
    }
}
