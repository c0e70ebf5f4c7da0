//! Reading from a stream by polling before sleeping.

use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Reads from a stream by polling for a while before sleeping, when that pays.
///
/// A request and its answer that follow each other within the polling window pass without the
/// thread being put to sleep and woken again, which on a virtual machine costs more than most
/// requests take to answer. Whether to poll is learnt from the last read: if its data came within
/// the window (while polling, or while waiting), the next read polls; if not, polling would only
/// burn a core that others could use, so the next read waits at once. A new stream starts by
/// waiting: a client that opens a connection per request never makes it poll.
#[derive(Debug, Clone)]
pub struct Poller {
    window: Duration,
    poll_next: bool,
}

impl Poller {
    /// A poller with this window; `Duration::ZERO` never polls.
    pub fn new(window: Duration) -> Poller {
        Poller {
            window,
            poll_next: false,
        }
    }

    fn polls_now(&self) -> bool {
        self.poll_next && !self.window.is_zero()
    }

    /// Fills `buf` from `stream`: first, if the last read came quickly, by asking it again and
    /// again (yielding to the runtime between asks, so that it checks its sockets and runs other
    /// tasks), then by waiting.
    pub async fn read_exact<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let start = Instant::now();
        let until = start + self.window;
        let polling = self.polls_now();
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
        if filled == 0 && !buf.is_empty() {
            // Nothing came while polling (or polling was off): when the first bytes come
            // decides whether the next read polls.
            let n = stream.read(buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            filled = n;
        }
        self.poll_next = start.elapsed() <= self.window;
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
    async fn polls_after_quick_answers_and_waits_after_slow_ones() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut poller = Poller::new(Duration::from_millis(50));
        assert!(!poller.polls_now(), "a new stream starts by waiting");
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
        assert!(
            poller.polls_now(),
            "the answer came quickly: poll next time"
        );
        let mut a = writer.await.unwrap();

        // Long after the window: read by waiting; the next read does not poll.
        let mut short = Poller::new(Duration::from_micros(10));
        short.poll_next = true;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"efgh").await.unwrap();
            a
        });
        short.read_exact(&mut b, &mut buf).await.unwrap();
        assert_eq!(&buf, b"efgh");
        assert!(!short.polls_now(), "the answer was slow: wait next time");
        drop(writer.await.unwrap());

        // The peer closed: an error, not a hang, polling or not.
        for mut p in [poller, short] {
            let err = p.read_exact(&mut b, &mut buf).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn a_zero_window_never_polls() {
        let mut p = Poller::new(Duration::ZERO);
        p.poll_next = true;
        assert!(!p.polls_now());
    }
}
