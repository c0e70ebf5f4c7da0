//! Bounds on connections that have not authenticated yet: a listener takes a [`Slot`] for each
//! connection before its TLS handshake and gives it back once the peer has shown a certificate
//! (or the connection ends). A peer without a certificate can then hold at most a few slots,
//! and all of them together only so many, whatever it sends or does not send: the memory and
//! tasks spent on strangers stay bounded, and authenticated peers keep their own capacity.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts unauthenticated connections, in total and per address.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_address: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("Too many connections are being set up ({0}); this one is closed")]
    Total(usize),
    #[error("Too many connections from this address are being set up ({0}); this one is closed")]
    PerAddress(usize),
}

impl Gate {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `addr`, or why there is none.
    pub fn enter(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refused> {
        let mut st = self.state();
        if st.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        let n = st.per_address.entry(addr).or_default();
        if *n >= self.max_per_address {
            return Err(Refused::PerAddress(self.max_per_address));
        }
        *n += 1;
        st.total += 1;
        Ok(Slot {
            gate: self.clone(),
            addr,
        })
    }

    /// How many slots are taken.
    pub fn taken(&self) -> usize {
        self.state().total
    }
}

/// One unauthenticated connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.gate.state();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_address.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                st.per_address.remove(&self.addr);
            }
        }
    }
}

/// A connection that holds its slot for as long as it is open: reads and writes go to `stream`,
/// the slot is given back when it is dropped.
#[derive(Debug)]
pub struct Held<S> {
    stream: S,
    _slot: Slot,
}

impl<S> Held<S> {
    pub fn new(stream: S, slot: Slot) -> Held<S> {
        Held {
            stream,
            _slot: slot,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Held<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_total_and_per_address_and_come_back() {
        let gate = Gate::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = gate.enter(a).unwrap();
        let _s2 = gate.enter(a).unwrap();
        assert_eq!(gate.enter(a).unwrap_err(), Refused::PerAddress(2));
        let _s3 = gate.enter(b).unwrap();
        assert_eq!(gate.enter(b).unwrap_err(), Refused::Total(3));
        drop(s1);
        assert_eq!(gate.taken(), 2);
        let _s4 = gate.enter(a).unwrap();
    }
}
