//! Yamux stream multiplexing for the stream transports (TCP, memory, Tor, relayed circuits).
//!
//! This is libp2p-yamux 0.48's muxer (MIT, Parity Technologies; the [`StreamMuxer`] glue below
//! follows it closely) with one setting that crate does not expose: the size a stream's writes
//! are split into. Yamux's default is 16 KiB; its connection task flushes the socket after every
//! frame, so each frame is a system call, a wakeup and a TLS flush on the sender and a frame
//! buffer on the receiver. Shares travel as writes of whole blocks (about 350 KiB for a 1 MiB
//! segment, 3-of-10), so [`SPLIT_SEND_SIZE`] frames make a quarter as many. Peers running
//! stock libp2p-yamux read them as usual: a frame may be as large as the receive window (256
//! KiB).

use std::{
    collections::VecDeque,
    io,
    io::{IoSlice, IoSliceMut},
    iter,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use futures::{
    future,
    io::{AsyncRead, AsyncWrite},
    ready,
};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};
use yamux::{Connection, ConnectionError};

/// Largest frame a stream's write is split into.
pub const SPLIT_SEND_SIZE: usize = 64 * 1024;

/// Streams in flight on one connection (storage traffic opens a stream per request).
pub const MAX_STREAMS: usize = 512;

/// Inbound streams buffered while the swarm is not asking for them (yamux's ACK backlog).
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// The Yamux upgrade, as configured for kith.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Default for Config {
    fn default() -> Self {
        let mut cfg = yamux::Config::default();
        cfg.set_max_num_streams(MAX_STREAMS);
        cfg.set_split_send_size(SPLIT_SEND_SIZE);
        Self(cfg)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(Connection::new(
            io,
            self.0,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(Connection::new(
            io,
            self.0,
            yamux::Mode::Client,
        ))))
    }
}

/// A Yamux connection.
#[derive(Debug)]
pub struct Muxer<C> {
    connection: Connection<C>,
    /// Inbound streams that arrived while [`StreamMuxer::poll`] drove the connection.
    inbound: VecDeque<Stream>,
    inbound_waker: Option<Waker>,
}

impl<C: AsyncRead + AsyncWrite + Unpin + 'static> Muxer<C> {
    fn new(connection: Connection<C>) -> Self {
        Self {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let stream = ready!(self.connection.poll_next_inbound(cx))
            .ok_or(Error(ConnectionError::Closed))?
            .map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin + 'static> StreamMuxer for Muxer<C> {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(res) = self.poll_inner(cx) {
            return Poll::Ready(res);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(self.connection.poll_new_outbound(cx)).map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx).map_err(Error)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_inner(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!(stream = %stream.0, "dropping an inbound stream: buffer full");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        // Let other code run, then come back for more.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A stream of a Yamux connection.
#[derive(Debug)]
pub struct Stream(yamux::Stream);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A Yamux connection error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(ConnectionError);

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err.0 {
            ConnectionError::Io(e) => e,
            e => io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt, future::poll_fn};
    use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// Owns a muxer on a task: opens one outbound stream, accepts one inbound stream, hands
    /// both over, and keeps the connection going until the test ends.
    fn run(
        mut m: StreamMuxerBox,
    ) -> (
        oneshot::Receiver<SubstreamBox>,
        oneshot::Receiver<SubstreamBox>,
    ) {
        let (out_tx, out_rx) = oneshot::channel();
        let (in_tx, in_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut out_tx, mut in_tx) = (Some(out_tx), Some(in_tx));
            poll_fn(|cx| {
                if out_tx.is_some()
                    && let Poll::Ready(s) = m.poll_outbound_unpin(cx)
                {
                    let _ = out_tx.take().map(|tx| tx.send(s.expect("outbound stream")));
                }
                if in_tx.is_some()
                    && let Poll::Ready(s) = m.poll_inbound_unpin(cx)
                {
                    let _ = in_tx.take().map(|tx| tx.send(s.expect("inbound stream")));
                }
                loop {
                    match m.poll_unpin(cx) {
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
        });
        (out_rx, in_rx)
    }

    /// A socket that keeps a copy of every byte written to it.
    struct Tap<T> {
        io: T,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                self.sent.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_close(cx)
        }
    }

    /// The largest data frame in a byte stream of Yamux frames (12-byte big-endian headers;
    /// only data frames, type 0, carry a body of the header's length).
    fn largest_data_frame(wire: &[u8]) -> usize {
        let (mut pos, mut largest) = (0, 0);
        while pos + 12 <= wire.len() {
            let len = u32::from_be_bytes(wire[pos + 8..pos + 12].try_into().unwrap()) as usize;
            pos += 12;
            if wire[pos - 11] == 0 {
                largest = largest.max(len);
                pos += len;
            }
        }
        assert_eq!(pos, wire.len(), "the captured bytes end inside a frame");
        largest
    }

    fn payload(seed: u8) -> Vec<u8> {
        (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(31) as u8) ^ seed)
            .collect()
    }

    /// Our muxer and stock libp2p-yamux on the two ends of a buffered loopback TCP connection:
    /// 3 MiB written as 350 KiB blocks cross intact both ways, ours in frames of
    /// [`SPLIT_SEND_SIZE`], stock in its 16 KiB ones (read from the bytes on the wire).
    #[tokio::test]
    async fn large_frames_interoperate_with_stock_libp2p_yamux_both_ways() {
        let (client, server) = crate::buffered::tests::tcp_pair().await;
        let (ours_wire, stock_wire) = (Arc::default(), Arc::default());
        let tap = |io, sent: &Arc<Mutex<Vec<u8>>>| {
            crate::buffered::buffered(Tap {
                io,
                sent: sent.clone(),
            })
        };
        let ours = Config::default()
            .upgrade_outbound(tap(client.compat(), &ours_wire), "/yamux/1.0.0")
            .await
            .unwrap();
        let stock = libp2p::yamux::Config::default()
            .upgrade_inbound(tap(server.compat(), &stock_wire), "/yamux/1.0.0")
            .await
            .unwrap();
        let (ours_out, ours_in) = run(StreamMuxerBox::new(ours));
        let (stock_out, stock_in) = run(StreamMuxerBox::new(stock));
        let send = |mut s: SubstreamBox, data: Vec<u8>| async move {
            for block in data.chunks(350 * 1024) {
                s.write_all(block).await.unwrap();
            }
            s.close().await.unwrap();
        };
        let recv = |mut s: SubstreamBox| async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        };
        let both = async {
            let (o, s) = tokio::join!(ours_out, stock_out);
            let (o, s) = (o.unwrap(), s.unwrap());
            tokio::join!(send(o, payload(1)), send(s, payload(2)));
        };
        let (_, from_ours, from_stock) =
            tokio::time::timeout(std::time::Duration::from_secs(30), async {
                tokio::join!(both, async { recv(stock_in.await.unwrap()).await }, async {
                    recv(ours_in.await.unwrap()).await
                })
            })
            .await
            .expect("transfers within 30 s");
        assert!(from_ours == payload(1), "stock side got different bytes");
        assert!(from_stock == payload(2), "our side got different bytes");
        assert_eq!(
            largest_data_frame(&ours_wire.lock().unwrap()),
            SPLIT_SEND_SIZE
        );
        assert_eq!(largest_data_frame(&stock_wire.lock().unwrap()), 16 * 1024);
    }
}
