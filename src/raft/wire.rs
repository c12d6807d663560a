//! The wire format of the Raft streams between members.
//!
//! A sender dials the peer URL (TCP, or TLS for `https://`), writes
//! [`PREAMBLE`], then one frame per batch of Raft messages: an 8-byte
//! big-endian length, then a `lcraftpb.RaftBatch` in its protobuf encoding
//! (cluster ID, sender ID, each message in raft-rs's own encoding). The
//! receiver writes nothing back unless it refuses the stream (another
//! cluster, a bad frame, the member stopping): then one frame holding the
//! reason in UTF-8, and it closes the connection. So a sender reads its
//! connection only to learn that the peer went away (end of stream: a killed
//! member's connections close at once) or why it was refused. Frames are read
//! with [`FrameReader`], which never trusts a length for more room than the
//! bytes that came.
//!
//! The peer listener also serves gRPC (`Probe`, `Members`, `Progress`) over
//! HTTP/2. [`sort`] reads the first bytes of each
//! connection and tells a Raft stream from anything else; HTTP/2 begins with
//! its connection preface (`PRI * HTTP/2.0`), never with the preamble, and
//! goes on to tonic with the bytes read so far put back ([`Rewound`]).
//!
//! Members of this version and older ones (which sent batches on a gRPC
//! `Send` stream, now refused) do not talk Raft to each other: a sender that
//! gets HTTP/2 back warns so, and a cluster is upgraded all members at once.
//!
//! Why not a gRPC stream for the batches themselves: a batch went through the
//! sender's task, the request body's task and the HTTP/2 connection's task on
//! one member, the connection's task and the stream's task on the other, with
//! HTTP/2 framing and flow control on the way. Here it is encoded once, straight
//! into its frame, written by the sender's task and read by the receiver's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::codec::Decoder;

/// The first bytes a sender writes on a Raft stream.
pub const PREAMBLE: &[u8; 8] = b"LCRAFT1\n";

/// Bytes of a frame's length prefix.
const LENGTH_BYTES: usize = 8;

/// How long a new peer connection may take to show its first bytes.
pub const SORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest batch a receiver takes: a batch may carry a snapshot (the
/// whole store, up to the largest `--quota-backend-bytes`).
pub const MAX_BATCH_FRAME: u64 = 1 << 36;

/// The largest refusal a sender reads back.
pub const MAX_REFUSAL_FRAME: u64 = 64 * 1024;

/// Reads frames: an 8-byte big-endian length, then that many bytes.
///
/// Unlike a codec that reserves a frame's whole length when its header
/// arrives, the buffer grows with the bytes that do arrive, so a length that
/// lies (garbage, or another protocol's bytes) costs nothing but an error
/// when it exceeds `max`.
#[derive(Debug)]
pub struct FrameReader {
    max: u64,
    /// The length of the frame being read, once its header is in.
    want: Option<usize>,
}

impl FrameReader {
    pub fn new(max: u64) -> Self {
        FrameReader { max, want: None }
    }
}

/// How much more room a reader makes at a time for a large frame.
const GROW: usize = 1 << 20;

impl Decoder for FrameReader {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let want = match self.want {
            Some(n) => n,
            None => {
                let Some(head) = src.get(..LENGTH_BYTES) else {
                    return Ok(None);
                };
                let mut len = [0u8; LENGTH_BYTES];
                len.copy_from_slice(head);
                let len = u64::from_be_bytes(len);
                if len > self.max {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a frame of {len} bytes, more than {}", self.max),
                    ));
                }
                src.advance(LENGTH_BYTES);
                let n = usize::try_from(len)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.want = Some(n);
                n
            }
        };
        if src.len() < want {
            src.reserve((want - src.len()).min(GROW));
            return Ok(None);
        }
        self.want = None;
        Ok(Some(src.split_to(want)))
    }
}

/// One frame holding `body` (a refusal's reason).
pub fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(LENGTH_BYTES + body.len());
    frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Encodes one frame (`RaftBatch` of `messages`) into `frame`, replacing what
/// it held, each message straight from raft-rs's encoder. Returns the bytes of
/// the messages alone (the peer's sent-bytes metric).
pub fn encode_frame(
    frame: &mut Vec<u8>,
    cluster_id: u64,
    from: u64,
    messages: &[Message],
) -> protobuf::ProtobufResult<u64> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    frame.clear();
    frame.extend_from_slice(&[0; LENGTH_BYTES]);
    // RaftBatch: cluster_id = 1, from = 2, repeated bytes messages = 3.
    prost::encoding::uint64::encode(1, &cluster_id, frame);
    prost::encoding::uint64::encode(2, &from, frame);
    let mut sent = 0u64;
    for m in messages {
        let size = m.compute_size();
        encode_key(3, WireType::LengthDelimited, frame);
        encode_varint(u64::from(size), frame);
        let start = frame.len();
        frame.resize(start + size as usize, 0);
        let mut os = protobuf::CodedOutputStream::bytes(&mut frame[start..]);
        m.write_to_with_cached_sizes(&mut os)?;
        os.check_eof();
        sent += u64::from(size);
    }
    let len = (frame.len() - LENGTH_BYTES) as u64;
    frame[..LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(sent)
}

/// What [`sort`] found a peer connection to be.
pub enum Sorted<S> {
    /// A Raft stream, its preamble read.
    Raft(S),
    /// Something else (HTTP/2 gRPC), to be read from its first byte.
    Other(Rewound<S>),
}

/// Reads the first bytes of `conn` to tell a Raft stream from the rest.
pub async fn sort<S: AsyncRead + Unpin>(mut conn: S) -> io::Result<Sorted<S>> {
    let mut head = [0u8; PREAMBLE.len()];
    let mut n = 0;
    while n < head.len() {
        let k = conn.read(&mut head[n..]).await?;
        let seen = n + k;
        if k == 0 || head[..seen] != PREAMBLE[..seen] {
            return Ok(Sorted::Other(Rewound::new(
                Bytes::copy_from_slice(&head[..seen]),
                conn,
            )));
        }
        n = seen;
    }
    Ok(Sorted::Raft(conn))
}

/// A connection whose first bytes were already read: they are read again
/// first, then the connection's own.
pub struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewound { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::io_wrap::forward_writes!(Rewound);

/// For tonic's server (the peer listener): no connection info is used.
impl<S> tonic::transport::server::Connected for Rewound<S> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::lcraftpb::RaftBatch;
    use futures::StreamExt;
    use prost::Message as _;
    use raft::prelude::{Entry, MessageType};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    fn append(to: u64, data: &[&[u8]]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.from = 1;
        m.term = 3;
        m.set_entries(
            data.iter()
                .enumerate()
                .map(|(i, d)| Entry {
                    index: i as u64 + 10,
                    data: Bytes::copy_from_slice(d),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
                .into(),
        );
        m
    }

    #[tokio::test]
    async fn a_frame_decodes_as_the_raft_batch_of_its_messages() {
        let messages = vec![
            append(2, &[b"a", b"bc"]),
            append(3, &[]),
            append(2, &[b"x"]),
        ];
        let mut frame = Vec::new();
        let sent = encode_frame(&mut frame, 0xabc, 1, &messages).unwrap();
        assert_eq!(
            sent,
            messages
                .iter()
                .map(|m| m.compute_size() as u64)
                .sum::<u64>()
        );
        // Two frames back to back, through the reader's codec.
        let mut wire = frame.clone();
        encode_frame(&mut frame, 0xabc, 1, &messages[..1]).unwrap();
        wire.extend_from_slice(&frame);
        let frames: Vec<_> = FramedRead::new(&wire[..], FrameReader::new(MAX_BATCH_FRAME))
            .map(|f| f.unwrap().freeze())
            .collect()
            .await;
        assert_eq!(frames.len(), 2);
        let batch = RaftBatch::decode(frames[0].clone()).unwrap();
        assert_eq!((batch.cluster_id, batch.from), (0xabc, 1));
        let back: Vec<Message> = batch
            .messages
            .iter()
            .map(|b| Message::parse_from_bytes(b).unwrap())
            .collect();
        assert_eq!(back, messages);
        assert_eq!(
            RaftBatch::decode(frames[1].clone()).unwrap().messages.len(),
            1
        );
    }

    #[tokio::test]
    async fn a_length_beyond_the_limit_is_an_error_not_an_allocation() {
        // An HTTP/2 server's first bytes (a SETTINGS frame) read as a length.
        let settings = [0u8, 0, 0x18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut frames = FramedRead::new(&settings[..], FrameReader::new(MAX_REFUSAL_FRAME));
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Within the limit, a frame is read as its bytes arrive.
        let mut reader = FrameReader::new(MAX_BATCH_FRAME);
        let mut buf = BytesMut::from(&(3u64 << 30).to_be_bytes()[..]);
        assert!(reader.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 2 * GROW, "no room made for 3 GiB at once");
        let mut buf = BytesMut::from(&frame_of(b"why")[..]);
        let mut reader = FrameReader::new(MAX_REFUSAL_FRAME);
        assert_eq!(&reader.decode(&mut buf).unwrap().unwrap()[..], b"why");
    }

    #[tokio::test]
    async fn a_raft_stream_is_told_from_http2_and_http2_keeps_every_byte() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b"LCRAFT1\nrest").await.unwrap();
        let Sorted::Raft(mut b) = sort(b).await.unwrap() else {
            panic!("a raft stream was not recognised");
        };
        let mut rest = [0u8; 4];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest");

        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(preface).await.unwrap();
        drop(a);
        let Sorted::Other(mut b) = sort(b).await.unwrap() else {
            panic!("HTTP/2 was taken for a raft stream");
        };
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, preface);

        // A connection that ends before the preamble is complete is not Raft.
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b"LCRA").await.unwrap();
        drop(a);
        let Sorted::Other(mut b) = sort(b).await.unwrap() else {
            panic!("a short preamble was taken for a raft stream");
        };
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"LCRA");
    }
}
