//! Accept etcd clients that send a URL as the HTTP/2 `:authority`.
//!
//! etcdctl 3.4 (Debian's) dials `passthrough:///http://127.0.0.1:2379` when its endpoint is
//! written as a URL, and grpc-go then sends the whole URL, scheme included, as `:authority`.
//! Go's HTTP/2 server takes any authority; the h2 crate under tonic validates it as an RFC 3986
//! authority and resets the stream with PROTOCOL_ERROR (`malformed authority`), so every
//! `etcdctl --endpoints=http://…` command failed against k8sd while etcd answered.
//!
//! [`AuthorityFix`] wraps a client connection (TCP, or TLS after the handshake) below h2 and
//! looks at the first request's header block. A well-formed authority (kube-apiserver,
//! etcdctl with `host:port` endpoints, etcd 3.5+ clients) turns the wrapper into a plain
//! pass-through for the rest of the connection: one HPACK decode per connection, then reads go
//! straight to the socket. A `scheme://host:port` authority switches the connection to
//! rewrite mode: every header block from the client is decoded (the HPACK dynamic table is the
//! client's, so the decoder must see them all, in order) and re-encoded with the authority
//! reduced to `host:port`, as literals without indexing, so h2's own dynamic table stays empty
//! and can never disagree with ours. Server-to-client bytes are never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server never lowers: rewritten header
/// blocks are split into frames no larger than this.
const MAX_FRAME: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the first complete header block.
    Inspect,
    /// The client sends URL authorities: rewrite every header block.
    Rewrite,
    /// Nothing to fix on this connection.
    Pass,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The frames as received, forwarded unchanged when nothing needs rewriting.
    raw: Vec<u8>,
    block: Vec<u8>,
}

/// The pure part: client bytes in, bytes for h2 out.
pub(crate) struct Rewriter {
    mode: Mode,
    preface_left: usize,
    decoder: hpack::Decoder<'static>,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            mode: Mode::Inspect,
            preface_left: PREFACE_LEN,
            decoder: hpack::Decoder::new(),
            pending: None,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Rewriter {
    fn passing(&self) -> bool {
        self.mode == Mode::Pass
    }

    /// Move every complete frame of `input` to `out`, rewritten where needed. An incomplete
    /// frame stays in `input` until more bytes arrive.
    pub(crate) fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input.split_to(n));
            self.preface_left -= n;
        }
        while self.mode != Mode::Pass && self.preface_left == 0 && input.len() >= FRAME_HEADER_LEN {
            let len = (usize::from(input[0]) << 16) | (usize::from(input[1]) << 8) | usize::from(input[2]);
            if input.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = input.split_to(FRAME_HEADER_LEN + len);
            self.frame(&frame, out)?;
        }
        if self.mode == Mode::Pass {
            out.extend_from_slice(&input.split());
        }
        Ok(())
    }

    fn frame(&mut self, frame: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        if let Some(p) = self.pending.as_mut() {
            if kind != TYPE_CONTINUATION || stream_id != p.stream_id {
                // A protocol error of the client's own: hand it to h2 unchanged to report.
                return self.give_up(frame, out);
            }
            p.raw.extend_from_slice(frame);
            p.block.extend_from_slice(payload);
            if flags & FLAG_END_HEADERS != 0 {
                return self.finish(out);
            }
            return Ok(());
        }
        if kind != TYPE_HEADERS {
            out.extend_from_slice(frame);
            return Ok(());
        }
        let mut start = 0;
        let mut pad = 0;
        if flags & FLAG_PADDED != 0 {
            let Some(&n) = payload.first() else {
                return self.give_up(frame, out);
            };
            pad = usize::from(n);
            start = 1;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            let Some(p) = payload.get(start..start + 5) else {
                return self.give_up(frame, out);
            };
            priority = Some([p[0], p[1], p[2], p[3], p[4]]);
            start += 5;
        }
        let Some(block) = payload
            .get(start..payload.len().saturating_sub(pad))
            .filter(|_| start + pad <= payload.len())
        else {
            return self.give_up(frame, out);
        };
        self.pending = Some(Pending {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            raw: frame.to_vec(),
            block: block.to_vec(),
        });
        if flags & FLAG_END_HEADERS != 0 {
            return self.finish(out);
        }
        Ok(())
    }

    /// Forward what we have unchanged and stop looking. Only safe before rewriting started:
    /// after that, h2 would decode a block against a dynamic table it never built.
    fn give_up(&mut self, frame: &[u8], out: &mut BytesMut) -> io::Result<()> {
        if self.mode == Mode::Rewrite {
            return Err(invalid("malformed HTTP/2 header frames from the client".into()));
        }
        if let Some(p) = self.pending.take() {
            out.extend_from_slice(&p.raw);
        }
        out.extend_from_slice(frame);
        self.mode = Mode::Pass;
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> io::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let headers = match self.decoder.decode(&p.block) {
            Ok(h) => h,
            Err(e) if self.mode == Mode::Inspect => {
                tracing::debug!(error = ?e, "undecodable first header block, passed to h2 unchanged");
                out.extend_from_slice(&p.raw);
                self.mode = Mode::Pass;
                return Ok(());
            }
            Err(e) => return Err(invalid(format!("cannot decode an HTTP/2 header block: {e:?}"))),
        };
        let fixed = headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .and_then(|(_, v)| strip_scheme(v));
        if self.mode == Mode::Inspect {
            if fixed.is_none() {
                out.extend_from_slice(&p.raw);
                self.mode = Mode::Pass;
                return Ok(());
            }
            tracing::debug!("client sends URL authorities; rewriting its header blocks");
            self.mode = Mode::Rewrite;
        }
        let mut block = Vec::with_capacity(p.block.len() + 64);
        for (name, value) in &headers {
            let value = match (&fixed, name.as_slice()) {
                (Some(f), b":authority") => f.as_slice(),
                _ => value.as_slice(),
            };
            encode_literal(name, value, &mut block);
        }
        emit_block(&p, &block, out);
        Ok(())
    }
}

/// `host:port` of an authority written as `scheme://host:port[/...]`; None when it is already
/// a plain authority.
fn strip_scheme(v: &[u8]) -> Option<Vec<u8>> {
    let at = v.windows(3).position(|w| w == b"://")?;
    let rest = &v[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn encode_int(mut v: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        // Fits in the prefix: v < 2^n <= 128.
        out.push(first | u8::try_from(v).unwrap_or(u8::MAX));
        return;
    }
    out.push(first | u8::try_from(max).unwrap_or(u8::MAX));
    v -= max;
    while v >= 128 {
        out.push(u8::try_from(v % 128).unwrap_or(0) | 0x80);
        v /= 128;
    }
    out.push(u8::try_from(v).unwrap_or(0));
}

/// A literal header field without indexing, with a literal name, no Huffman (§6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_int(name.len(), 7, 0, out);
    out.extend_from_slice(name);
    encode_int(value.len(), 7, 0, out);
    out.extend_from_slice(value);
}

/// HEADERS (+ CONTINUATION) frames carrying `block` for the stream of `p`.
fn emit_block(p: &Pending, block: &[u8], out: &mut BytesMut) {
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(MAX_FRAME - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = 0;
    if p.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    if p.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    frame_header(prio_len + first.len(), TYPE_HEADERS, flags, p.stream_id, out);
    if let Some(prio) = p.priority {
        out.extend_from_slice(&prio);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(chunk.len(), TYPE_CONTINUATION, flags, p.stream_id, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream_id: u32, out: &mut BytesMut) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// A client connection with [`Rewriter`] on its read side.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    input: BytesMut,
    out: BytesMut,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            input: BytesMut::new(),
            out: BytesMut::new(),
            scratch: vec![0; 32 * 1024].into_boxed_slice(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.passing() && this.input.is_empty() {
                // The common case after the first request: no copy, no parsing.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // A truncated frame at EOF goes to h2 as it is, for h2 to report.
                this.out = this.input.split();
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(rb.filled());
            this.rewriter.process(&mut this.input, &mut this.out)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers_frame(block: &[u8], stream: u32, flags: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_header(block.len(), TYPE_HEADERS, flags, stream, &mut out);
        out.extend_from_slice(block);
        out.to_vec()
    }

    fn request(enc: &mut hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        let hs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ];
        enc.encode(hs)
    }

    /// Split `out` (after the preface) into frames and decode every header block with a fresh
    /// decoder, as h2 would.
    fn decode_all(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = hpack::Decoder::new();
        let mut rest = &out[PREFACE_LEN..];
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(dec.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    fn authority(h: &[(Vec<u8>, Vec<u8>)]) -> String {
        let v = &h.iter().find(|(n, _)| n == b":authority").unwrap().1;
        String::from_utf8(v.clone()).unwrap()
    }

    #[test]
    fn url_authorities_are_rewritten_on_every_request_of_the_connection() {
        let mut enc = hpack::Encoder::new();
        let mut input = BytesMut::from(PREFACE);
        // SETTINGS first, as every client sends.
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for stream in [1, 3, 5] {
            let block = request(&mut enc, b"http://127.0.0.1:2379");
            input.extend_from_slice(&headers_frame(&block, stream, FLAG_END_HEADERS));
        }
        let mut r = Rewriter::default();
        let mut out = BytesMut::new();
        // Byte by byte: frames arrive split anywhere.
        let all = input.split();
        for b in all.iter() {
            input.extend_from_slice(&[*b]);
            r.process(&mut input, &mut out).unwrap();
        }
        assert!(input.is_empty());
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 3);
        for b in &blocks {
            assert_eq!(authority(b), "127.0.0.1:2379");
            assert_eq!(b.len(), 5, "every other header is kept");
        }
    }

    #[test]
    fn plain_authorities_pass_through_unchanged() {
        let mut enc = hpack::Encoder::new();
        let mut input = BytesMut::from(PREFACE);
        let first = headers_frame(&request(&mut enc, b"127.0.0.1:2379"), 1, FLAG_END_HEADERS);
        input.extend_from_slice(&first);
        input.extend_from_slice(b"anything after the first block is not parsed");
        let expected = input.clone();
        let mut r = Rewriter::default();
        let mut out = BytesMut::new();
        r.process(&mut input, &mut out).unwrap();
        assert!(r.passing());
        assert_eq!(out, expected);
    }

    #[test]
    fn padded_and_continued_header_blocks_are_reassembled() {
        let mut enc = hpack::Encoder::new();
        let block = request(&mut enc, b"https://k8sd.example:2379/");
        let (a, b) = block.split_at(10);
        let mut payload = vec![3u8];
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = BytesMut::from(PREFACE);
        input.extend_from_slice(&headers_frame(&payload, 1, FLAG_PADDED | FLAG_END_STREAM));
        let mut cont = BytesMut::new();
        frame_header(b.len(), TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &mut cont);
        cont.extend_from_slice(b);
        input.extend_from_slice(&cont);
        let mut r = Rewriter::default();
        let mut out = BytesMut::new();
        r.process(&mut input, &mut out).unwrap();
        let blocks = decode_all(&out);
        assert_eq!(authority(&blocks[0]), "k8sd.example:2379");
        // END_STREAM survives, padding is gone.
        assert_eq!(out[PREFACE_LEN + 4], FLAG_END_STREAM | FLAG_END_HEADERS);
    }

    #[test]
    fn hpack_integers_past_the_prefix() {
        let mut out = Vec::new();
        encode_int(1337, 5, 0, &mut out);
        // RFC 7541 C.1.2.
        assert_eq!(out, vec![31, 154, 10]);
    }
}
