//! Buffered frame I/O over non-blocking streams.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CodecError, FrameDecoder, encode_frame};

/// Outgoing bytes above which a peer that does not read is considered stuck.
const MAX_PENDING_OUT: usize = 64 << 20;

/// What [`Framed::read_from`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The stream is still open (it returned `WouldBlock`).
    Open,
    /// The peer closed its end.
    Closed,
}

/// One end of a control connection: decodes incoming frames, queues outgoing ones.
#[derive(Debug)]
pub struct Framed {
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    max: usize,
}

impl Framed {
    pub fn new(max_frame: usize) -> Self {
        Self {
            decoder: FrameDecoder::new(max_frame),
            out: Vec::new(),
            out_pos: 0,
            max: max_frame,
        }
    }

    /// Read everything available from a non-blocking (or blocking, if `Closed`/one read is
    /// acceptable) reader into the decoder.
    pub fn read_from<R: Read>(&mut self, reader: &mut R) -> io::Result<ReadStatus> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(ReadStatus::Closed),
                Ok(n) => self.decoder.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Feed bytes obtained elsewhere.
    pub fn extend(&mut self, data: &[u8]) {
        self.decoder.extend(data);
    }

    /// The next complete message, if any.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        match self.decoder.next_frame()? {
            Some(frame) => crate::decode(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// Queue a message for sending. A message larger than the frame limit is refused alone
    /// ([`CodecError::MessageTooLarge`]: nothing is queued, the connection stays usable); a peer
    /// that has not read [`MAX_PENDING_OUT`] bytes gets [`CodecError::Backlog`].
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        self.queue_encoded(&crate::encode(msg))
    }

    /// [`Framed::queue`] for a message already encoded with [`crate::encode`].
    pub fn queue_encoded(&mut self, payload: &[u8]) -> Result<(), CodecError> {
        if payload.len() > self.max {
            return Err(CodecError::MessageTooLarge {
                len: payload.len(),
                max: self.max,
            });
        }
        if self.pending_out() + payload.len() > MAX_PENDING_OUT {
            return Err(CodecError::Backlog {
                pending: self.pending_out(),
                max: MAX_PENDING_OUT,
            });
        }
        encode_frame(payload, self.max, &mut self.out)
    }

    /// The largest message payload this end sends or accepts.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Bytes queued but not yet written.
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Write as much queued output as the writer takes. `Ok(true)` when everything is written.
    pub fn flush_to<W: Write>(&mut self, writer: &mut W) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            match writer.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, ToDataplane};

    /// A writer that accepts at most `chunk` bytes per call, then would block.
    struct Trickle {
        data: Vec<u8>,
        chunk: usize,
        calls: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_messages_survive_partial_writes() {
        let mut tx = Framed::new(1 << 20);
        let msgs: Vec<ToDataplane> = (0..5)
            .map(|id| ToDataplane::Request {
                id,
                request: Request::Leave {
                    participant: format!("p{id}"),
                },
            })
            .collect();
        for m in &msgs {
            tx.queue(m).expect("queue");
        }
        let mut w = Trickle {
            data: Vec::new(),
            chunk: 7,
            calls: 0,
        };
        while !tx.flush_to(&mut w).expect("flush") {}
        assert_eq!(tx.pending_out(), 0);

        let mut rx = Framed::new(1 << 20);
        rx.read_from(&mut &w.data[..]).expect("read");
        let mut got = Vec::new();
        while let Some(m) = rx.next_message::<ToDataplane>().expect("decode") {
            got.push(m);
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn an_oversized_message_fails_alone_and_the_link_keeps_working() {
        let mut tx = Framed::new(100);
        let big = ToDataplane::Request {
            id: 1,
            request: Request::Leave {
                participant: "x".repeat(200),
            },
        };
        assert!(matches!(
            tx.queue(&big),
            Err(CodecError::MessageTooLarge { max: 100, .. })
        ));
        assert_eq!(tx.pending_out(), 0, "nothing of it was queued");
        let small = ToDataplane::Request {
            id: 2,
            request: Request::Leave {
                participant: "p".into(),
            },
        };
        tx.queue(&small).expect("the next message goes through");
        let mut wire = Vec::new();
        assert!(tx.flush_to(&mut wire).expect("flush"));
        let mut rx = Framed::new(100);
        rx.extend(&wire);
        assert_eq!(rx.next_message::<ToDataplane>(), Ok(Some(small)));
    }

    #[test]
    fn garbage_frame_is_a_malformed_error() {
        let mut wire = Vec::new();
        encode_frame(b"not json", 100, &mut wire).expect("fits");
        let mut rx = Framed::new(100);
        rx.extend(&wire);
        assert!(matches!(
            rx.next_message::<ToDataplane>(),
            Err(CodecError::Malformed { .. })
        ));
    }
}
