//! Socket buffering under the connection security of TCP connections.
//!
//! Without it, the stack above a TCP socket makes many small system calls:
//! - rustls (through futures-rustls) reads the socket in slices of at most 4 KiB, so a 16 KiB
//!   TLS record costs four or five `read`s;
//! - Yamux writes each frame's 12-byte header and its body with two separate writes, and
//!   futures-rustls seals and sends each write as its own TLS record, so every frame costs two
//!   `write`s and, with `TCP_NODELAY`, a 40-byte packet of its own.
//!
//! [`Buffered`] puts a read buffer and a write buffer of [`BUF_SIZE`] between the socket and the
//! security upgrade: reads fill the buffer with one system call, writes collect until the buffer
//! is full or the layer above flushes. Every layer above flushes when it waits for the other
//! side (multistream-select, the TLS and Noise handshakes, Yamux when it has nothing more to
//! send), so nothing waits in the buffer. On the 10-node loopback bench this removed most of
//! the servers' system calls during uploads (see the README's Performance section).

use futures::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};

/// Size of each of the two buffers of a connection.
pub const BUF_SIZE: usize = 64 * 1024;

/// A socket with a read buffer and a write buffer (see the module docs).
pub type Buffered<T> = BufReader<BufWriter<T>>;

/// Wraps `io` in a read and a write buffer of [`BUF_SIZE`] bytes each.
pub fn buffered<T: AsyncRead + AsyncWrite>(io: T) -> Buffered<T> {
    BufReader::with_capacity(BUF_SIZE, BufWriter::with_capacity(BUF_SIZE, io))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Poll},
    };
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// A real socket that counts the reads and writes that reach it.
    struct Counting<T> {
        io: T,
        reads: Arc<AtomicUsize>,
        writes: Arc<AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_read(cx, buf);
            if r.is_ready() {
                self.reads.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if r.is_ready() {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_close(cx)
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

    /// Yamux-over-TLS-shaped traffic (a 12-byte write, then a 16 KiB one, repeated) arrives
    /// whole and in order, crosses the socket in far fewer writes than it was made of, and is
    /// read back in 4 KiB slices (as rustls reads) with far fewer socket reads.
    #[tokio::test]
    async fn small_writes_and_reads_are_coalesced_and_arrive_in_order() {
        let (client, server) = tcp_pair().await;
        let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let count = |io| Counting {
            io,
            reads: reads.clone(),
            writes: writes.clone(),
        };
        let mut tx = buffered(count(client.compat()));
        let mut rx = buffered(count(server.compat()));

        const FRAMES: usize = 64;
        let frame = |i: usize| -> (Vec<u8>, Vec<u8>) {
            (
                vec![i as u8; 12],
                vec![(i as u8).wrapping_mul(7); 16 * 1024],
            )
        };
        let total = FRAMES * (12 + 16 * 1024);
        let send = async {
            for i in 0..FRAMES {
                let (h, b) = frame(i);
                tx.write_all(&h).await.unwrap();
                tx.write_all(&b).await.unwrap();
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
        let want: Vec<u8> = (0..FRAMES)
            .flat_map(|i| {
                let (h, b) = frame(i);
                h.into_iter().chain(b)
            })
            .collect();
        assert!(got == want, "bytes differ");
        let (w, r) = (
            writes.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
        );
        // Unbuffered: 128 writes and >= 260 reads of at most 4 KiB. Buffered: ~17 full buffers,
        // plus the partial writes of a full socket.
        assert!(w < FRAMES / 2, "{w} socket writes for {FRAMES} frames");
        assert!(r < total / 4096 / 2, "{r} socket reads for {total} bytes");
    }
}
