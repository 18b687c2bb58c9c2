//! The traffic generator: UDP frames from the private side into the gateway, either as
//! fast as the kernel takes them (`flood`) or kept a little ahead of what arrives on the
//! far side (`paced`), to count flows without overrunning the gateway's input queue.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::frames::{Flow, UdpFrame};
use super::packet_socket::{PacketSocket, TxBatch};

/// Frames per sendmmsg call.
const BATCH: usize = 64;

pub struct Generator {
    socket: PacketSocket,
    template: UdpFrame,
}

impl Generator {
    pub fn new(socket: PacketSocket, template: UdpFrame) -> Generator {
        Generator { socket, template }
    }

    /// Sends packets `first`, `first + 1`, ... (flow of each from `flows`) until `stop`;
    /// `offered` counts every packet tried, also those the gateway's full input queue
    /// refused (that is the gateway falling behind). Returns the next packet number.
    pub fn flood(
        &self,
        flows: &(dyn Fn(u64) -> Flow + Sync),
        first: u64,
        stop: &AtomicBool,
        offered: &AtomicU64,
    ) -> io::Result<u64> {
        let mut batch = TxBatch::new(&self.template, BATCH);
        let mut next = first;
        while !stop.load(Ordering::Relaxed) {
            for k in 0..BATCH {
                batch.set_flow(k, flows(next + k as u64));
            }
            self.socket.send(&mut batch)?;
            next += BATCH as u64;
            offered.fetch_add(BATCH as u64, Ordering::Relaxed);
        }
        Ok(next)
    }

    /// Sends packets `first .. first + count`, never more than `ahead` beyond what
    /// `arrived` (a counter on the far side) has seen; packets that do not arrive within
    /// `patience` are taken as lost (dropped by the gateway) and no longer waited for.
    pub fn paced(
        &self,
        flows: &(dyn Fn(u64) -> Flow + Sync),
        first: u64,
        count: u64,
        arrived: &dyn Fn() -> io::Result<u64>,
        ahead: u64,
        patience: Duration,
    ) -> io::Result<()> {
        let mut batch = TxBatch::new(&self.template, BATCH);
        let base = arrived()?;
        let (mut sent, mut lost) = (0u64, 0u64);
        while sent < count {
            let since = Instant::now();
            loop {
                let got = arrived()?.saturating_sub(base);
                let in_flight = sent.saturating_sub(got + lost);
                if in_flight + BATCH as u64 <= ahead {
                    break;
                }
                if since.elapsed() > patience {
                    lost = sent.saturating_sub(got);
                    break;
                }
                std::thread::yield_now();
            }
            let n = (count - sent).min(BATCH as u64) as usize;
            for k in 0..n {
                batch.set_flow(k, flows(first + sent + k as u64));
            }
            batch.set_len(n);
            sent += self.socket.send(&mut batch)? as u64;
        }
        Ok(())
    }
}

/// Pins the calling thread to one CPU (so the generator and the gateway do not share one).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}
