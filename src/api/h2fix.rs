//! A connection shim for the client listener that repairs the HTTP/2
//! `:authority` of requests from etcd's own Go clients.
//!
//! Why it exists: `etcdctl` 3.4 (grpc-go) dials an endpoint given as
//! `http://host:port` through the `passthrough:///` resolver, so the whole URL
//! becomes the `:authority` pseudo-header (`http://127.0.0.1:2379`). This is
//! what `endpoint status --cluster`, `endpoint hashkv` and friends send. etcd's
//! grpc-go server ignores the value; the `h2` crate under hyper/axum/tonic
//! validates it as a URI authority, rejects it as "malformed authority" and
//! resets the stream with `PROTOCOL_ERROR`, which etcdctl reports as
//! `stream terminated by RST_STREAM with error code: PROTOCOL_ERROR`. We cannot
//! configure h2 out of that, so we rewrite the request before h2 sees it.
//!
//! How: every accepted client socket becomes an [`H2FixStream`] (see
//! [`super::listener`]; [`H2FixListener`] does the same for a plain tokio
//! listener served by `axum::serve`, as tests do). Writes pass through
//! untouched. Reads go through a [`Rewriter`], a pure byte-stream transducer:
//!
//! - A connection that does not start with the HTTP/2 client preface (HTTP/1:
//!   `/health`, `/version`) is passed through byte for byte; after the first
//!   mismatching byte the stream is read straight into the caller's buffer.
//! - On an HTTP/2 connection frames are passed through unchanged until the
//!   first header block (a HEADERS frame and its CONTINUATION frames), which
//!   is held back until complete and HPACK-decoded (`loona-hpack`). If its
//!   `:authority` is one h2 accepts, or one we cannot repair, the block is
//!   forwarded verbatim and the rest of the connection is passed through
//!   (read straight into the caller's buffer): well-behaved clients (tonic,
//!   grpc-go with a bare `host:port`) pay for one decode per connection.
//!   This relies on grpc-go sending one authority for every stream of a
//!   connection (it is fixed per dial target); a client that sent a fine
//!   authority first and a URL later would get h2's rejection as before.
//! - If the first block's `:authority` contains `://` (and the `host:port`
//!   after it is a valid authority), the connection is re-encoded for good:
//!   every header block from then on is held back, decoded with a decoder
//!   that tracks the client's dynamic table, repaired, and re-encoded. (Once
//!   one block is changed, h2's decoder state differs from the client's
//!   encoder state, so no later block can be forwarded verbatim.) Re-encoded
//!   blocks use only literal fields without indexing (no dynamic-table
//!   references or insertions, no Huffman; never-indexed fields are not told
//!   apart by the decoder and go out without indexing too), so the size of
//!   h2's table (`SETTINGS_HEADER_TABLE_SIZE`, 4096 by default) never
//!   matters to them; the client's table-size updates are honoured by our
//!   decoder and not forwarded. Blocks are re-framed as HEADERS (+
//!   CONTINUATION) of at most 16384 bytes of payload, the smallest
//!   `SETTINGS_MAX_FRAME_SIZE` a peer may use; END_STREAM and PRIORITY are
//!   kept, padding is dropped.
//!
//! Invariants: bytes are never reordered, dropped or duplicated outside a
//! header block's own frames; held bytes are flushed at EOF. Anything we do not
//! understand (a malformed header block, a frame interleaved into a header
//! block, a block larger than [`MAX_HEADER_BLOCK`], an undecodable block)
//! turns the rest of the connection into plain pass-through: before any
//! rewrite the held bytes are forwarded verbatim, so h2 judges the client
//! exactly as it would without the shim; after a rewrite they are replaced by
//! a header block h2 must reject with a connection error, because verbatim
//! bytes could now be decoded against the wrong table. Our decoder accepts
//! table-size updates only up to h2's default 4096, like h2 itself, which
//! also bounds its memory.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::uri::Authority;
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Largest frame payload we emit: the default (and minimum) `SETTINGS_MAX_FRAME_SIZE`.
pub const MAX_FRAME_PAYLOAD: usize = 16_384;

/// Most bytes of one header block (its frames, headers included) held back
/// before giving up. hyper's h2 server refuses far smaller blocks (16 KiB
/// header lists) with a connection error, so giving up loses nothing.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Dynamic table size h2 allows (its `SETTINGS_HEADER_TABLE_SIZE`, the default).
const HEADER_TABLE_SIZE: usize = 4096;

/// Bytes read from the socket per call while frames are being parsed.
const READ_CHUNK: usize = 16 * 1024;

/// Returns the value h2 would accept for an `:authority` it would reject, if
/// the value is a URL (`http://127.0.0.1:2379/`): its `host:port` part.
/// Returns `None` for values h2 accepts and for values we cannot repair.
pub fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    if Authority::try_from(value).is_ok() {
        return None;
    }
    let start = value.windows(3).position(|w| w == b"://")? + 3;
    let rest = &value[start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    (!host.is_empty() && Authority::try_from(host).is_ok()).then(|| host.to_vec())
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the connection preface; `matched` bytes of it seen (and emitted).
    Preface { matched: usize },
    /// Collecting a 9-byte frame header into `hdr`.
    FrameHeader,
    /// Streaming `remaining` payload bytes of a frame we do not touch.
    Forward { remaining: usize },
    /// Holding `remaining` more payload bytes of a HEADERS/CONTINUATION frame.
    Collect { remaining: usize },
    /// Plain pass-through until EOF.
    Raw,
}

/// A header block being collected.
#[derive(Debug)]
struct Block {
    /// Every byte of the block's frames as received.
    raw: Vec<u8>,
    /// Stream identifier word of the HEADERS frame (as received).
    stream: u32,
    /// Flags of the HEADERS frame.
    flags: u8,
    /// The HEADERS frame's priority fields, if it had any.
    priority: Option<[u8; PRIORITY_LEN]>,
    /// The header block fragments, padding removed.
    fragment: Vec<u8>,
    /// Offset in `raw` of the payload of the frame being collected.
    payload_start: usize,
    /// Type and flags of the frame being collected.
    frame_type: u8,
    frame_flags: u8,
}

/// The client-to-server byte transducer behind [`H2FixStream`] (sans I/O).
pub struct Rewriter {
    phase: Phase,
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_len: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// Set when the first block needed repair: every block is re-encoded.
    rewriting: bool,
    /// Header blocks re-encoded so far.
    rewritten: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("phase", &self.phase)
            .field("rewriting", &self.rewriting)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Rewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface { matched: 0 },
            hdr: [0; FRAME_HEADER_LEN],
            hdr_len: 0,
            block: None,
            decoder,
            rewriting: false,
            rewritten: 0,
        }
    }

    /// True once everything left is passed through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.phase == Phase::Raw
    }

    /// True once the connection re-encodes its header blocks.
    pub fn is_rewriting(&self) -> bool {
        self.rewriting
    }

    /// Header blocks re-encoded so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Consumes `input`, appending what h2 should read to `out`. Bytes may be
    /// held back until the rest of their frame or header block arrives.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            // A zero-length frame completes without input.
            if let Phase::Collect { remaining: 0 } = self.phase {
                self.end_collected_frame(out);
                continue;
            }
            if input.is_empty() {
                return;
            }
            match self.phase {
                Phase::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                Phase::Preface { matched } => {
                    let n = input.len().min(PREFACE.len() - matched);
                    if input[..n] != PREFACE[matched..matched + n] {
                        self.phase = Phase::Raw;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.phase = if matched + n == PREFACE.len() {
                        Phase::FrameHeader
                    } else {
                        Phase::Preface {
                            matched: matched + n,
                        }
                    };
                }
                Phase::FrameHeader => {
                    let n = input.len().min(FRAME_HEADER_LEN - self.hdr_len);
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&input[..n]);
                    self.hdr_len += n;
                    input = &input[n..];
                    if self.hdr_len == FRAME_HEADER_LEN {
                        self.hdr_len = 0;
                        self.start_frame(out);
                    }
                }
                Phase::Forward { remaining } => {
                    let n = input.len().min(remaining);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.phase = if n == remaining {
                        Phase::FrameHeader
                    } else {
                        Phase::Forward {
                            remaining: remaining - n,
                        }
                    };
                }
                Phase::Collect { remaining } => {
                    let n = input.len().min(remaining);
                    if let Some(block) = self.block.as_mut() {
                        block.raw.extend_from_slice(&input[..n]);
                    }
                    input = &input[n..];
                    self.phase = Phase::Collect {
                        remaining: remaining - n,
                    };
                }
            }
        }
    }

    /// The client closed its side: flushes anything held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            self.give_up(block, out);
        }
        out.extend_from_slice(&self.hdr[..self.hdr_len]);
        self.hdr_len = 0;
        self.phase = Phase::Raw;
    }

    /// Acts on a complete frame header in `self.hdr`.
    fn start_frame(&mut self, out: &mut Vec<u8>) {
        let hdr = self.hdr;
        let len = usize::from(hdr[0]) << 16 | usize::from(hdr[1]) << 8 | usize::from(hdr[2]);
        let (ty, flags) = (hdr[3], hdr[4]);
        let stream = u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]);
        match self.block.take() {
            Some(mut block) => {
                let same_stream = stream & 0x7fff_ffff == block.stream & 0x7fff_ffff;
                if ty != TYPE_CONTINUATION || !same_stream {
                    // A frame interleaved into a header block: h2 refuses the
                    // connection for it; let it see the bytes (or a poison).
                    self.give_up(block, out);
                    out.extend_from_slice(&hdr);
                    return;
                }
                if block.raw.len() + FRAME_HEADER_LEN + len > MAX_HEADER_BLOCK {
                    self.give_up(block, out);
                    out.extend_from_slice(&hdr);
                    return;
                }
                block.raw.extend_from_slice(&hdr);
                block.payload_start = block.raw.len();
                block.frame_type = ty;
                block.frame_flags = flags;
                self.block = Some(block);
                self.phase = Phase::Collect { remaining: len };
            }
            None if ty == TYPE_HEADERS && FRAME_HEADER_LEN + len <= MAX_HEADER_BLOCK => {
                let mut raw = Vec::with_capacity(FRAME_HEADER_LEN + len);
                raw.extend_from_slice(&hdr);
                self.block = Some(Block {
                    raw,
                    stream,
                    flags,
                    priority: None,
                    fragment: Vec::new(),
                    payload_start: FRAME_HEADER_LEN,
                    frame_type: ty,
                    frame_flags: flags,
                });
                self.phase = Phase::Collect { remaining: len };
            }
            None if ty == TYPE_HEADERS => {
                // Too large to hold: h2 refuses it anyway.
                self.abandon();
                out.extend_from_slice(&hdr);
            }
            None => {
                // Any other frame (a stray CONTINUATION included) passes.
                out.extend_from_slice(&hdr);
                self.phase = if len == 0 {
                    Phase::FrameHeader
                } else {
                    Phase::Forward { remaining: len }
                };
            }
        }
    }

    /// Acts on a fully collected HEADERS or CONTINUATION frame.
    fn end_collected_frame(&mut self, out: &mut Vec<u8>) {
        self.phase = Phase::FrameHeader;
        let Some(mut block) = self.block.take() else {
            return;
        };
        let mut payload = &block.raw[block.payload_start..];
        if block.frame_type == TYPE_HEADERS {
            let mut pad = 0;
            if block.frame_flags & FLAG_PADDED != 0 {
                let Some((&p, rest)) = payload.split_first() else {
                    return self.give_up(block, out);
                };
                pad = usize::from(p);
                payload = rest;
            }
            if block.frame_flags & FLAG_PRIORITY != 0 {
                let Some(fields) = payload.get(..PRIORITY_LEN) else {
                    return self.give_up(block, out);
                };
                let mut p = [0; PRIORITY_LEN];
                p.copy_from_slice(fields);
                block.priority = Some(p);
                payload = &payload[PRIORITY_LEN..];
            }
            if pad > payload.len() {
                return self.give_up(block, out);
            }
            payload = &payload[..payload.len() - pad];
        }
        block.fragment.extend_from_slice(payload);
        if block.frame_flags & FLAG_END_HEADERS != 0 {
            self.end_block(block, out);
        } else {
            self.block = Some(block);
        }
    }

    /// Decodes a complete header block and forwards it, verbatim or rewritten.
    /// The first block decides which for the whole connection.
    fn end_block(&mut self, mut block: Block, out: &mut Vec<u8>) {
        let fragment = std::mem::take(&mut block.fragment);
        let mut headers = match self.decoder.decode(&fragment) {
            Ok(h) => h,
            Err(_) => return self.give_up(block, out),
        };
        let mut repaired = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(fixed) = repair_authority(value) {
                    *value = fixed;
                    repaired = true;
                }
            }
        }
        if !self.rewriting {
            if !repaired {
                // The connection's first block is fine: so are the others.
                out.extend_from_slice(&block.raw);
                return self.abandon();
            }
            tracing::debug!("re-encoding HTTP/2 header blocks to repair a URL :authority");
            self.rewriting = true;
        }
        self.rewritten += 1;
        let encoded = encode_literals(&headers);
        emit_header_frames(
            out,
            block.stream,
            block.flags & FLAG_END_STREAM,
            block.priority,
            &encoded,
        );
    }

    /// Stops interpreting the connection, forwarding `block` so that h2
    /// reaches the verdict it would have reached without us.
    fn give_up(&mut self, block: Block, out: &mut Vec<u8>) {
        if self.rewriting {
            // h2's table no longer matches the client's: verbatim bytes could
            // decode to something else. Index 0 is invalid in HPACK, so h2
            // fails the connection on this block.
            emit_header_frames(out, block.stream, 0, None, &[0x80]);
        } else {
            out.extend_from_slice(&block.raw);
        }
        self.abandon();
    }

    /// Switches to pass-through (nothing may be held).
    fn abandon(&mut self) {
        self.phase = Phase::Raw;
    }
}

/// Encodes `headers` as HPACK literals without indexing, without Huffman.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 11).sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // Writing to a Vec cannot fail.
            let _ = encode_integer_into(s.len(), 7, 0, &mut out);
            out.extend_from_slice(s);
        }
    }
    out
}

fn push_frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Frames `block` as one HEADERS frame plus CONTINUATION frames as needed.
fn emit_header_frames(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: u8,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: &[u8],
) {
    let room = MAX_FRAME_PAYLOAD - priority.map_or(0, |_| PRIORITY_LEN);
    let (first, mut rest) = block.split_at(block.len().min(room));
    let mut flags = end_stream & FLAG_END_STREAM;
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let len = first.len() + priority.map_or(0, |_| PRIORITY_LEN);
    push_frame_header(out, len, TYPE_HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        push_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

/// A socket whose reads go through a [`Rewriter`]; writes pass through.
#[derive(Debug)]
pub struct H2FixStream<S> {
    inner: S,
    rewriter: Rewriter,
    /// Read buffer used while frames are parsed (allocated on first use).
    scratch: Vec<u8>,
    /// Rewritten bytes not yet handed to the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<S> H2FixStream<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        H2FixStream {
            inner,
            rewriter: Rewriter::new(),
            scratch: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection's rewriter (for inspection).
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2FixStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_passthrough() {
                if this.scratch.capacity() > 0 || this.out.capacity() > 0 {
                    this.scratch = Vec::new();
                    this.out = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK];
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
            } else {
                this.rewriter.feed(rb.filled(), &mut this.out);
            }
        }
    }
}

crate::io_wrap::forward_writes!(H2FixStream);

/// A TCP listener for `axum::serve` whose connections go through [`H2FixStream`]
/// (the members' own listeners do the same in [`super::listener`]).
#[derive(Debug)]
pub struct H2FixListener {
    inner: TcpListener,
}

impl H2FixListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        H2FixListener { inner }
    }
}

impl axum::serve::Listener for H2FixListener {
    type Io = H2FixStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's impl retries on accept errors (and backs off on EMFILE).
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
        }
        (H2FixStream::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use proptest::prelude::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    /// Stream, END_STREAM, priority fields, fragments so far.
    type PendingBlock = (u32, bool, Option<[u8; 5]>, Vec<u8>);

    const TYPE_DATA: u8 = 0x0;
    const TYPE_SETTINGS: u8 = 0x4;
    const TYPE_PING: u8 = 0x6;
    const TYPE_WINDOW_UPDATE: u8 = 0x8;

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame_header(&mut out, payload.len(), ty, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut Encoder<'_>, h: &Headers) -> Vec<u8> {
        enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn fixed(mut h: Headers, authority: &str) -> Headers {
        for (n, v) in h.iter_mut() {
            if n.as_slice() == b":authority" {
                *v = authority.as_bytes().to_vec();
            }
        }
        h
    }

    /// Splits a byte stream (after the preface) into raw frames.
    fn split_frames(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while !b.is_empty() {
            let len = (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize;
            frames.push(b[..FRAME_HEADER_LEN + len].to_vec());
            b = &b[FRAME_HEADER_LEN + len..];
        }
        frames
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        /// A frame other than HEADERS/CONTINUATION, as bytes.
        Other(Vec<u8>),
        /// A decoded header block: stream, END_STREAM, priority, headers.
        Block(u32, bool, Option<[u8; 5]>, Headers),
    }

    /// What h2 sees in `out`: frames, with header blocks decoded by a decoder
    /// that starts fresh (as h2's does). Also checks frame-size limits.
    fn server_view(out: &[u8]) -> Vec<Seen> {
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut decoder = Decoder::new();
        let mut seen = Vec::new();
        let mut pending: Option<PendingBlock> = None;
        for f in split_frames(&out[PREFACE.len()..]) {
            let (ty, flags) = (f[3], f[4]);
            let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]);
            let mut p = &f[FRAME_HEADER_LEN..];
            match ty {
                TYPE_HEADERS => {
                    assert!(pending.is_none(), "HEADERS inside a header block");
                    if flags & FLAG_PADDED != 0 {
                        let pad = p[0] as usize;
                        p = &p[1..p.len() - pad];
                    }
                    let mut prio = None;
                    if flags & FLAG_PRIORITY != 0 {
                        prio = Some(p[..5].try_into().unwrap());
                        p = &p[5..];
                    }
                    pending = Some((stream, flags & FLAG_END_STREAM != 0, prio, p.to_vec()));
                }
                TYPE_CONTINUATION => {
                    let b = pending.as_mut().expect("CONTINUATION without HEADERS");
                    assert_eq!(b.0, stream);
                    assert_eq!(flags & !FLAG_END_HEADERS, 0);
                    b.3.extend_from_slice(p);
                }
                _ => {
                    assert!(pending.is_none(), "frame inside a header block");
                    seen.push(Seen::Other(f));
                    continue;
                }
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (s, es, prio, block) = pending.take().unwrap();
                seen.push(Seen::Block(s, es, prio, decoder.decode(&block).unwrap()));
            }
        }
        assert!(pending.is_none(), "unfinished header block");
        seen
    }

    fn run(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Rewriter) {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = sizes
                .next()
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            rw.feed(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        rw.finish(&mut out);
        (out, rw)
    }

    /// A conversation like etcdctl's: settings, then requests with a URL
    /// authority (padded + priority; split over CONTINUATION frames), then a
    /// well-formed one that leans on the client's dynamic table. Also returns
    /// where the first header block starts.
    fn conversation() -> (Vec<u8>, Vec<Seen>, usize) {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        let mut want = Vec::new();
        let push_other = |input: &mut Vec<u8>, want: &mut Vec<Seen>, f: Vec<u8>| {
            input.extend_from_slice(&f);
            want.push(Seen::Other(f));
        };
        push_other(
            &mut input,
            &mut want,
            frame(
                TYPE_SETTINGS,
                0,
                0,
                &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0],
            ),
        );
        push_other(
            &mut input,
            &mut want,
            frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]),
        );

        // Stream 1: URL authority, PADDED + PRIORITY + END_STREAM.
        let first_block = input.len();
        let h1 = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/HashKV");
        let block = encode(&mut enc, &h1);
        let mut payload = vec![4u8];
        payload.extend_from_slice(&[0x80, 0, 0, 1, 15]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 4]);
        let flags = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM;
        input.extend(frame(TYPE_HEADERS, flags, 1, &payload));
        want.push(Seen::Block(
            1,
            true,
            Some([0x80, 0, 0, 1, 15]),
            fixed(h1, "127.0.0.1:2379"),
        ));
        push_other(&mut input, &mut want, frame(TYPE_PING, 0, 0, b"12345678"));

        // Stream 3: URL authority with a path, over HEADERS + 2 CONTINUATION.
        let h3 = request("https://[::1]:2379/some/path", "/etcdserverpb.KV/Put");
        let block = encode(&mut enc, &h3);
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(5);
        input.extend(frame(TYPE_HEADERS, 0, 3, a));
        input.extend(frame(TYPE_CONTINUATION, 0, 3, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, c));
        want.push(Seen::Block(3, false, None, fixed(h3, "[::1]:2379")));
        push_other(&mut input, &mut want, frame(TYPE_DATA, 0, 3, &[7; 300]));
        push_other(
            &mut input,
            &mut want,
            frame(TYPE_DATA, FLAG_END_STREAM, 3, &[]),
        );

        // Stream 5: a fine authority, mostly indexed references now.
        let h5 = request("127.0.0.1:2379", "/etcdserverpb.Maintenance/HashKV");
        let flags = FLAG_END_HEADERS | FLAG_END_STREAM;
        input.extend(frame(TYPE_HEADERS, flags, 5, &encode(&mut enc, &h5)));
        want.push(Seen::Block(5, true, None, h5));
        (input, want, first_block)
    }

    #[test]
    fn url_authority_is_repaired_and_other_frames_are_untouched() {
        let (input, want, first_block) = conversation();
        let (out, rw) = run(&input, &[]);
        assert_eq!(server_view(&out), want);
        assert!(rw.is_rewriting());
        assert_eq!(rw.rewritten(), 3);
        assert_eq!(out[..first_block], input[..first_block]);
    }

    #[test]
    fn well_formed_connection_passes_byte_for_byte() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        for id in [1u32, 3, 5] {
            let h = request("localhost:2379", "/etcdserverpb.KV/Range");
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                id,
                &encode(&mut enc, &h),
            ));
            input.extend(frame(TYPE_DATA, FLAG_END_STREAM, id, b"\0\0\0\0\0"));
        }
        let (out, rw) = run(&input, &[3, 1, 8]);
        assert_eq!(out, input);
        assert!(!rw.is_rewriting());
        assert!(rw.is_passthrough());
    }

    #[test]
    fn first_block_decides_for_the_whole_connection() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        for (id, authority) in [(1u32, "localhost:2379"), (3, "http://localhost:2379")] {
            let h = request(authority, "/etcdserverpb.KV/Range");
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                id,
                &encode(&mut enc, &h),
            ));
        }
        let (out, rw) = run(&input, &[]);
        assert_eq!(out, input);
        assert!(rw.is_passthrough());
        assert_eq!(rw.rewritten(), 0);
    }

    #[test]
    fn http1_request_passes_byte_for_byte() {
        let input = b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n".to_vec();
        let (out, rw) = run(&input, &[1]);
        assert_eq!(out, input);
        assert!(rw.is_passthrough());
        // Even one that starts like the preface.
        let input = b"PRI * HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(run(&input, &[2]).0, input);
    }

    #[test]
    fn large_repaired_block_is_split_into_continuation_frames() {
        let mut h = request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
        h.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_STREAM,
            1,
            &encode(&mut Encoder::new(), &h)[..10],
        ));
        input.extend(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            &encode(&mut Encoder::new(), &h)[10..],
        ));
        let (out, _) = run(&input, &[4096]);
        let frames = split_frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 3);
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() - FRAME_HEADER_LEN <= MAX_FRAME_PAYLOAD);
            let last = i == frames.len() - 1;
            assert_eq!(f[4] & FLAG_END_HEADERS != 0, last);
        }
        assert_eq!(frames[0][3], TYPE_HEADERS);
        assert_eq!(frames[0][4], FLAG_END_STREAM);
        assert_eq!(
            server_view(&out),
            vec![Seen::Block(1, true, None, fixed(h, "127.0.0.1:2379"))]
        );
    }

    #[test]
    fn interleaved_frame_before_any_rewrite_passes_verbatim() {
        let h = request("http://127.0.0.1:2379", "/x");
        let block = encode(&mut Encoder::new(), &h);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &block[..4]));
        input.extend(frame(TYPE_PING, 0, 0, b"12345678"));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[4..]));
        let (out, rw) = run(&input, &[5]);
        assert_eq!(out, input);
        assert!(rw.is_passthrough());
    }

    #[test]
    fn broken_block_after_a_rewrite_becomes_an_invalid_block() {
        let mut enc = Encoder::new();
        let h = request("http://127.0.0.1:2379", "/x");
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut enc, &h),
        ));
        // Index 200 is in neither table.
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0xff, 0x49]));
        input.extend(frame(TYPE_PING, 0, 0, b"12345678"));
        let (out, rw) = run(&input, &[]);
        assert!(rw.is_passthrough());
        let frames = split_frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x80]));
        assert_eq!(frames[2], frame(TYPE_PING, 0, 0, b"12345678"));
    }

    #[test]
    fn held_bytes_are_flushed_at_eof() {
        let (input, want, first_block) = conversation();
        // Before any rewrite, a cut anywhere (in the preface, mid frame
        // header, mid header block) delivers exactly the bytes received.
        for cut in [10, PREFACE.len() + 4, first_block + 5, first_block + 30] {
            assert_eq!(run(&input[..cut], &[5]).0, input[..cut]);
        }
        // After a rewrite, a cut header block becomes the invalid block.
        let cut = input.len() - 5;
        let (out, _) = run(&input[..cut], &[]);
        let frames = split_frames(&out[PREFACE.len()..]);
        let (last, rest) = frames.split_last().unwrap();
        assert_eq!(*last, frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &[0x80]));
        let rest: Vec<u8> = PREFACE.iter().copied().chain(rest.concat()).collect();
        assert_eq!(server_view(&rest), want[..want.len() - 1]);
    }

    #[test]
    fn repair_authority_keeps_host_and_port_of_urls_only() {
        let r = |s: &str| repair_authority(s.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(r("127.0.0.1:2379"), None);
        assert_eq!(r("localhost"), None);
        assert_eq!(r("http://127.0.0.1:22379"), Some("127.0.0.1:22379".into()));
        assert_eq!(r("https://h:1/p?q#f"), Some("h:1".into()));
        assert_eq!(r("http://[::1]:2379"), Some("[::1]:2379".into()));
        assert_eq!(r("unix:///tmp/sock"), None);
        assert_eq!(r("bad value"), None);
    }

    #[tokio::test]
    async fn stream_reads_rewritten_bytes_through_small_buffers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (input, want, _) = conversation();
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn({
            let input = input.clone();
            async move {
                for chunk in input.chunks(13) {
                    client.write_all(chunk).await.unwrap();
                }
                client.shutdown().await.unwrap();
            }
        });
        let mut s = H2FixStream::new(server);
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(server_view(&out), want);
        assert_eq!(out, run(&input, &[]).0);
    }

    proptest! {
        #[test]
        fn output_does_not_depend_on_how_reads_split_the_stream(
            chunks in proptest::collection::vec(1usize..200, 1..20)
        ) {
            let (input, want, _) = conversation();
            let (out, _) = run(&input, &chunks);
            prop_assert_eq!(&out, &run(&input, &[]).0);
            prop_assert_eq!(server_view(&out), want);
        }

        #[test]
        fn arbitrary_bytes_pass_unchanged_unless_rewritten(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            preface in any::<bool>(),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let mut input = if preface { PREFACE.to_vec() } else { Vec::new() };
            input.extend_from_slice(&body);
            let (out, rw) = run(&input, &chunks);
            if !rw.is_rewriting() {
                prop_assert_eq!(out, input);
            }
        }

        #[test]
        fn random_frames_pass_unchanged_unless_rewritten(
            frames in proptest::collection::vec(
                (
                    prop::sample::select(vec![TYPE_DATA, TYPE_HEADERS, TYPE_SETTINGS, TYPE_PING, TYPE_CONTINUATION]),
                    any::<u8>(),
                    0u32..4,
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..12,
            ),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let mut input = PREFACE.to_vec();
            for (ty, flags, stream, payload) in &frames {
                input.extend(frame(*ty, *flags, *stream, payload));
            }
            let (out, rw) = run(&input, &chunks);
            if !rw.is_rewriting() {
                prop_assert_eq!(out, input);
            }
        }
    }
}
