//! How a [`TrackedStream`] reads and writes: through to its socket, except
//! that a connection being closed reads as end-of-stream and refuses writes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::TrackedStream;

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.closing.load(Ordering::Acquire) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.io).poll_read(context, buffer);
        if result.is_pending() {
            let mut reader = this.state.reader.lock();
            if !reader
                .as_ref()
                .is_some_and(|waker| waker.will_wake(context.waker()))
            {
                *reader = Some(context.waker().clone());
            }
            drop(reader);
            // A close between the check above and storing the waker.
            if this.state.closing.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.closing.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.io).poll_write(context, bytes)
    }

    // Forwarded, not left to the defaults: h2 writes a frame's header and a
    // payload over 256 bytes (a Decide reply) as two buffers, and without
    // vectored writes each went out in a `sendto` of its own, about three
    // per reply (BENCHMARKS.md, "Sixth session").
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.closing.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.io).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(context)
    }
}
