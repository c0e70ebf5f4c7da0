//! Reading from a stream by polling before sleeping.

use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Reads from a stream by polling for a while before sleeping, and learns whether that pays.
///
/// A request and its answer that follow each other within the polling window pass without the
/// thread being put to sleep and woken again, which on a virtual machine costs more than most
/// requests take to answer. When the data did not come within the window, polling only burnt a
/// core that others could use, so the next reads wait at once; every eighth read tries polling
/// again.
#[derive(Debug, Clone)]
pub struct Poller {
    window: Duration,
    misses: u32,
}

impl Poller {
    /// A poller with this window; `Duration::ZERO` never polls.
    pub fn new(window: Duration) -> Poller {
        Poller { window, misses: 0 }
    }

    fn polls_now(&self) -> bool {
        !self.window.is_zero() && (self.misses == 0 || self.misses.is_multiple_of(8))
    }

    /// Fills `buf` from `stream`: first by asking it again and again (yielding to the runtime
    /// between asks, so that it checks its sockets and runs other tasks), then by waiting.
    pub async fn read_exact<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let polling = self.polls_now();
        let until = Instant::now() + self.window;
        let mut filled = 0;
        while filled < buf.len() && polling {
            let mut rest = ReadBuf::new(&mut buf[filled..]);
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut *stream).poll_read(cx, &mut rest))
            })
            .await;
            match polled {
                Poll::Ready(Ok(())) if rest.filled().is_empty() => {
                    return Err(std::io::ErrorKind::UnexpectedEof.into())
                }
                Poll::Ready(Ok(())) => filled += rest.filled().len(),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending if Instant::now() < until => tokio::task::yield_now().await,
                Poll::Pending => break,
            }
        }
        if filled == 0 {
            self.misses = self.misses.wrapping_add(1);
        } else {
            self.misses = 0;
        }
        if filled < buf.len() {
            stream.read_exact(&mut buf[filled..]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_what_comes_within_the_window_and_after_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut poller = Poller::new(Duration::from_millis(50));
        // Within the window, in two pieces.
        let writer = tokio::spawn(async move {
            a.write_all(b"ab").await.unwrap();
            tokio::task::yield_now().await;
            a.write_all(b"cd").await.unwrap();
            a
        });
        let mut buf = [0u8; 4];
        poller.read_exact(&mut b, &mut buf).await.unwrap();
        assert_eq!(&buf, b"abcd");
        assert_eq!(poller.misses, 0);
        let mut a = writer.await.unwrap();

        // Long after the window: read by waiting; the next read does not poll.
        let mut short = Poller::new(Duration::from_micros(10));
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"efgh").await.unwrap();
            a
        });
        short.read_exact(&mut b, &mut buf).await.unwrap();
        assert_eq!(&buf, b"efgh");
        assert_eq!(short.misses, 1);
        assert!(!short.polls_now());
        drop(writer.await.unwrap());

        // The peer closed: an error, not a hang.
        let err = poller.read_exact(&mut b, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_zero_window_never_polls() {
        assert!(!Poller::new(Duration::ZERO).polls_now());
        let mut p = Poller::new(Duration::from_micros(1));
        p.misses = 8;
        assert!(p.polls_now(), "every eighth read tries polling again");
    }
}
