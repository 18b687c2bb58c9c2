//! A send-only AF_PACKET socket: whole Ethernet frames out of one interface, many per
//! system call (sendmmsg), past the queueing discipline. It never receives: it is bound
//! with protocol 0, so the kernel hands it no incoming frames to copy.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::frames::{Flow, UdpFrame};

const SEND_BUFFER: libc::c_int = 32 << 20;

pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket on `ifname` of the calling thread's network namespace (the
    /// socket stays bound to that interface wherever it is used from).
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name =
            CString::new(ifname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: plain system calls on a fresh descriptor owned by `fd`.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let bypass: libc::c_int = 1;
            if libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&bypass as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Each frame in flight is charged to the socket until the far side frees it; with
            // the default buffer the sender would wait for the whole path and never get
            // ahead of the gateway. A large buffer lets it overrun the gateway's queue.
            let sndbuf: libc::c_int = SEND_BUFFER;
            if libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&sndbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            if libc::bind(
                raw,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(PacketSocket { fd })
        }
    }

    /// Sends the frames of `batch` without waiting; returns how many the kernel took.
    pub fn send(&self, batch: &mut TxBatch) -> io::Result<usize> {
        let mut done = 0;
        while done < batch.len {
            // SAFETY: `msgs[done..len]` point at iovecs and frames that `batch` owns and
            // keeps alive, unmoved, for the duration of the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    batch.msgs.as_mut_ptr().add(done),
                    (batch.len - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The buffer is full (frames still in flight): what was taken counts, the
                    // rest is not sent.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => return Ok(done),
                    _ => return Err(error),
                }
            }
            done += n as usize;
        }
        Ok(done)
    }
}

/// Frames with their sendmmsg headers, built once; the frames are then varied in place.
pub struct TxBatch {
    frames: Vec<UdpFrame>,
    // Read by the kernel through `msgs`; never resized after `new`.
    _iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
}

impl TxBatch {
    /// `size` copies of `template`.
    pub fn new(template: &UdpFrame, size: usize) -> TxBatch {
        let frames = vec![template.clone(); size];
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.bytes().as_ptr() as *mut libc::c_void,
                iov_len: f.bytes().len(),
            })
            .collect();
        let msgs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero msghdr is a valid "no name, no control" header.
                let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
                msg.msg_hdr.msg_iov = v as *mut libc::iovec;
                msg.msg_hdr.msg_iovlen = 1;
                msg
            })
            .collect();
        TxBatch {
            frames,
            _iov: iov,
            msgs,
            len: size,
        }
    }

    /// Varies frame `i` in place (the frames never move: the headers point at them).
    pub fn set_flow(&mut self, i: usize, flow: Flow) {
        self.frames[i].set_flow(flow);
    }

    pub fn capacity(&self) -> usize {
        self.frames.len()
    }

    /// How many of the frames the next send takes.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.frames.len());
    }
}
