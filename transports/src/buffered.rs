//! Socket buffering under the connection security of TCP connections.
//!
//! Without it, the stack above a TCP socket makes many small system calls:
//! - rustls (through futures-rustls) reads the socket in slices of at most 4 KiB, so a 16 KiB
//!   TLS record costs four or five `read`s;
//! - Yamux writes each frame's 12-byte header and its body with two separate writes, and
//!   futures-rustls seals and sends each write as its own TLS record, so every frame costs two
//!   `write`s and, with `TCP_NODELAY`, a 40-byte packet of its own.
//!
//! [`Buffered`] puts a read buffer of [`BUF_SIZE`] between the socket and the security upgrade
//! (reads fill it with one system call) and a [`Gather`] write buffer: small writes collect
//! until the buffer would overflow or the layer above flushes, and a write too large to collect
//! goes out in the same `writev` as whatever was collected before it. A large write is never
//! copied, and a frame's header record never leaves in a packet of its own ahead of its body
//! (`futures::io::BufWriter`, used before, flushed the 34-byte header record with one `write`
//! and then sent the body's records with another: two system calls and two packets for every
//! 64 KiB Yamux frame). Every layer above flushes when it waits for the other side
//! (multistream-select, the TLS and Noise handshakes, Yamux when it has nothing more to send),
//! so nothing waits in the buffer. On the 10-node loopback bench this removed most of the
//! servers' system calls during uploads (see the README's Performance section).

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::io::{AsyncRead, AsyncWrite, BufReader};

/// Size of the read buffer and of the write buffer of a connection.
pub const BUF_SIZE: usize = 64 * 1024;

/// Most slices one gathered write passes on (the collected bytes count as one).
const MAX_SLICES: usize = 64;

/// A socket with a read buffer and a gathering write buffer (see the module docs).
pub type Buffered<T> = BufReader<Gather<T>>;

/// Wraps `io` in a read buffer and a write buffer of [`BUF_SIZE`] bytes each.
pub fn buffered<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Buffered<T> {
    BufReader::with_capacity(BUF_SIZE, Gather::new(io, BUF_SIZE))
}

/// A write buffer that collects small writes and sends each large one, uncopied, in one
/// vectored write together with what it collected before (see the module docs). Reads pass
/// through.
#[derive(Debug)]
pub struct Gather<T> {
    io: T,
    buf: Vec<u8>,
    cap: usize,
}

impl<T> Gather<T> {
    /// Wraps `io`, collecting up to `cap` bytes of small writes.
    pub fn new(io: T, cap: usize) -> Self {
        Gather {
            io,
            buf: Vec::with_capacity(cap),
            cap,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Gather<T> {
    /// Writes `bufs` (total `len` bytes, more than fit) after the collected bytes, in one
    /// vectored write when the socket takes it; returns how many bytes of `bufs` went out.
    fn poll_gathered(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.buf.is_empty() {
                return if len <= self.cap {
                    self.collect(bufs, len);
                    Poll::Ready(Ok(len))
                } else {
                    Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
                };
            }
            let mut slices = Vec::with_capacity(bufs.len().min(MAX_SLICES - 1) + 1);
            slices.push(IoSlice::new(&self.buf));
            slices.extend(bufs.iter().take(MAX_SLICES - 1).map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < self.buf.len() {
                self.buf.drain(..n);
                continue;
            }
            let of_bufs = n - self.buf.len();
            self.buf.clear();
            if of_bufs > 0 {
                return Poll::Ready(Ok(of_bufs));
            }
        }
    }

    fn collect(&mut self, bufs: &[IoSlice<'_>], len: usize) {
        self.buf.reserve(len);
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
    }

    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gather<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum::<usize>();
        if this.buf.len() + len <= this.cap {
            this.collect(bufs, len);
            return Poll::Ready(Ok(len));
        }
        this.poll_gathered(cx, bufs, len)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gather<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read_vectored(cx, bufs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};

    /// A real socket that counts the reads and writes that reach it (vectored writes included,
    /// as `writev` on the socket, the way libp2p's TCP stream passes them).
    struct Counting {
        io: tokio::net::TcpStream,
        reads: Arc<AtomicUsize>,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut rb = ReadBuf::new(buf);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(rb.filled().len()))
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if r.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            if r.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Both ends of a loopback TCP connection.
    pub(crate) async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// Sends `frames` (each a list of writes, the last one vectored in `parts` slices) through
    /// [`buffered`] sockets on loopback, reads them back in 4 KiB slices (as rustls reads) and
    /// returns (socket writes, socket reads) after checking every byte arrived in order.
    async fn send_frames(frames: &[Vec<Vec<u8>>], parts: usize) -> (usize, usize) {
        let (client, server) = tcp_pair().await;
        let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let count = |io| Counting {
            io,
            reads: reads.clone(),
            writes: writes.clone(),
        };
        let mut tx = buffered(count(client));
        let mut rx = buffered(count(server));
        let want: Vec<u8> = frames.iter().flatten().flatten().copied().collect();
        let total = want.len();
        let send = async {
            for frame in frames {
                let (last, first) = frame.split_last().unwrap();
                for w in first {
                    tx.write_all(w).await.unwrap();
                }
                // The last write vectored, as rustls hands over a frame's records.
                let mut off = 0;
                while off < last.len() {
                    let rest = &last[off..];
                    let step = rest.len().div_ceil(parts).max(1);
                    let slices: Vec<IoSlice<'_>> = rest.chunks(step).map(IoSlice::new).collect();
                    let n = tx.write_vectored(&slices).await.unwrap();
                    assert!(n > 0);
                    off += n;
                }
            }
            tx.flush().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::with_capacity(total);
            let mut slice = vec![0u8; 4096];
            while got.len() < total {
                let n = rx.read(&mut slice).await.unwrap();
                assert!(n > 0, "connection ended after {} bytes", got.len());
                got.extend_from_slice(&slice[..n]);
            }
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert!(got == want, "bytes differ");
        (
            writes.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
        )
    }

    fn frame(i: usize, header: usize, body: usize) -> Vec<Vec<u8>> {
        vec![
            vec![i as u8; header],
            (0..body).map(|j| (i * 7 + j) as u8).collect(),
        ]
    }

    /// Yamux-over-TLS-shaped traffic with small frames (a 12-byte write, then a 16 KiB one,
    /// repeated) arrives whole and in order, crosses the socket in far fewer writes than it
    /// was made of, and is read back in 4 KiB slices with far fewer socket reads.
    #[tokio::test]
    async fn small_writes_and_reads_are_coalesced_and_arrive_in_order() {
        const FRAMES: usize = 64;
        let frames: Vec<_> = (0..FRAMES).map(|i| frame(i, 12, 16 * 1024)).collect();
        let total = FRAMES * (12 + 16 * 1024);
        let (w, r) = send_frames(&frames, 1).await;
        // Unbuffered: 128 writes and >= 260 reads of at most 4 KiB. Buffered: ~17 full buffers,
        // plus the partial writes of a full socket.
        assert!(w < FRAMES / 2, "{w} socket writes for {FRAMES} frames");
        assert!(r < total / 4096 / 2, "{r} socket reads for {total} bytes");
    }

    /// A 64 KiB Yamux frame sealed by TLS: its header's 34-byte record, then the body's four
    /// records in one vectored write larger than the buffer. The header goes out in the same
    /// socket write as the body (one write per frame, plus the partial writes of a full
    /// socket), never in a write of its own.
    #[tokio::test]
    async fn a_small_write_leaves_with_the_large_write_after_it() {
        const FRAMES: usize = 48;
        let record = 16 * 1024 + 22;
        let frames: Vec<_> = (0..FRAMES).map(|i| frame(i, 34, 4 * record)).collect();
        let (w, _) = send_frames(&frames, 4).await;
        // futures' BufWriter: a write for the header record and one for the body, 2 per frame.
        assert!(
            w <= FRAMES + FRAMES / 4,
            "{w} socket writes for {FRAMES} frames"
        );
    }

    /// A socket that takes at most a few bytes per write and is often not ready: whatever
    /// sequence of small, large and vectored writes goes through [`Gather`], the bytes come out
    /// whole and in order.
    #[test]
    fn partial_and_pending_socket_writes_lose_and_reorder_nothing() {
        struct Stingy {
            out: Vec<u8>,
            state: u64,
        }
        impl Stingy {
            fn next(&mut self) -> u64 {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                self.state >> 33
            }
        }
        impl AsyncWrite for Stingy {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.poll_write_vectored(cx, &[IoSlice::new(buf)])
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                if this.next().is_multiple_of(3) {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let mut room = 1 + (this.next() % 70_000) as usize;
                let mut n = 0;
                for b in bufs {
                    let take = b.len().min(room);
                    this.out.extend_from_slice(&b[..take]);
                    n += take;
                    room -= take;
                    if room == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(n))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        for seed in 0..16u64 {
            let mut w = Gather::new(
                Stingy {
                    out: Vec::new(),
                    state: seed,
                },
                BUF_SIZE,
            );
            let mut rng = Stingy {
                out: Vec::new(),
                state: seed ^ 0x9e37_79b9,
            };
            let mut want = Vec::new();
            futures::executor::block_on(async {
                for i in 0..120u64 {
                    let len = match rng.next() % 4 {
                        0 => (rng.next() % 64) as usize,
                        1 => (rng.next() % 20_000) as usize,
                        2 => BUF_SIZE + (rng.next() % 4) as usize - 2,
                        _ => (rng.next() % 300_000) as usize,
                    };
                    let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
                    want.extend_from_slice(&data);
                    if rng.next().is_multiple_of(2) {
                        w.write_all(&data).await.unwrap();
                    } else {
                        let mut off = 0;
                        while off < data.len() {
                            let slices: Vec<IoSlice<'_>> =
                                data[off..].chunks(5000).map(IoSlice::new).collect();
                            off += w.write_vectored(&slices).await.unwrap();
                        }
                    }
                    if rng.next().is_multiple_of(10) {
                        w.flush().await.unwrap();
                    }
                }
                w.close().await.unwrap();
            });
            assert!(w.get_ref().out == want, "seed {seed}: bytes differ");
        }
    }
}
