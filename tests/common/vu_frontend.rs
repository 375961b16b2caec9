//! A minimal, fully controllable vhost-user frontend (the driver side) for tests.
//!
//! Guest memory is one shared memfd region; the split virtqueues live at its start and a bump
//! allocator hands out buffers after them. Descriptors, the available ring and its index are
//! written by hand, so tests can submit arbitrary, malformed chains (virtio 1.2 §2.7).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest-physical address of the start of guest memory. Not zero, so that both low and high
/// addresses fall outside it.
pub const MEM_BASE: u64 = 0x4000_0000;
/// Size of the guest memory region.
pub const MEM_SIZE: usize = 16 << 20;
/// Bytes reserved for each queue's rings at the start of guest memory (enough for 1024 entries).
const RING_AREA: u64 = 32 << 10;

/// Descriptor flags (virtio 1.2 §2.7.5).
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// virtio-blk request types and status codes (virtio 1.2 §5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// How long the convenience helpers wait for a completion.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One descriptor of a well-formed chain: `submit` links them with NEXT flags.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub write: bool,
}

impl Desc {
    pub fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: false,
        }
    }

    pub fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: true,
        }
    }
}

/// A descriptor table entry exactly as written, for pathological chains.
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Next descriptor table slot `submit` uses (wraps around).
    next_desc: u16,
    /// Shadow of avail->idx.
    avail_idx: u16,
    /// Next used ring entry to consume.
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

pub struct VuFrontend {
    // Field order: the connection closes before the memory goes away.
    frontend: Frontend,
    queues: Vec<Queue>,
    mem: *mut u8,
    _memfd: File,
    /// Bump allocator cursor, as an offset into guest memory.
    alloc_start: u64,
    alloc_next: u64,
    protocol_features: VhostUserProtocolFeatures,
    acked_features: u64,
    /// Feature bits this driver does not acknowledge although the backend offers them.
    refused_features: u64,
    /// How far behind the used index rings restart (see `reconnect_lagging`).
    base_lag: u16,
}

// SAFETY: `mem` is a private shared mapping owned by this value; nothing else aliases it in this
// process.
unsafe impl Send for VuFrontend {}

impl VuFrontend {
    /// Connects, negotiates and starts `num_queues` rings of `queue_size` entries; panics on any
    /// failure.
    pub fn connect(socket: &Path, num_queues: usize, queue_size: u16) -> VuFrontend {
        Self::try_connect(socket, num_queues, queue_size)
            .unwrap_or_else(|e| panic!("vhost-user frontend setup on {}: {e}", socket.display()))
    }

    /// Like [`VuFrontend::connect`], returning setup errors instead.
    pub fn try_connect(
        socket: &Path,
        num_queues: usize,
        queue_size: u16,
    ) -> Result<VuFrontend, String> {
        Self::try_connect_refusing(socket, num_queues, queue_size, 0)
    }

    /// Like [`VuFrontend::connect`], as a driver that does not acknowledge the feature bits in
    /// `refused` (e.g. virtio-blk's FLUSH or CONFIG_WCE, as firmware drivers do), also on
    /// reconnects.
    pub fn connect_refusing(
        socket: &Path,
        num_queues: usize,
        queue_size: u16,
        refused: u64,
    ) -> VuFrontend {
        Self::try_connect_refusing(socket, num_queues, queue_size, refused)
            .unwrap_or_else(|e| panic!("vhost-user frontend setup on {}: {e}", socket.display()))
    }

    fn try_connect_refusing(
        socket: &Path,
        num_queues: usize,
        queue_size: u16,
        refused: u64,
    ) -> Result<VuFrontend, String> {
        assert!(queue_size.is_power_of_two() && queue_size as u64 * 16 <= RING_AREA / 2);
        let (frontend, protocol_features, acked_features) = negotiate(socket, num_queues, refused)?;

        // Guest memory: one memfd, mapped shared here and by the backend.
        // SAFETY: plain syscalls on a fresh fd we own; results are checked.
        let (memfd, mem) = unsafe {
            let fd = libc::memfd_create(c"vu-frontend".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
            }
            let file = File::from_raw_fd(fd);
            file.set_len(MEM_SIZE as u64)
                .map_err(|e| format!("ftruncate: {e}"))?;
            let p = libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            (file, p as *mut u8)
        };
        let ring_bytes = RING_AREA * num_queues as u64;
        let mut fe = VuFrontend {
            frontend,
            queues: Vec::new(),
            mem,
            _memfd: memfd,
            alloc_start: ring_bytes,
            alloc_next: ring_bytes,
            protocol_features,
            acked_features,
            refused_features: refused,
            base_lag: 0,
        };
        for q in 0..num_queues {
            let base = MEM_BASE + RING_AREA * q as u64;
            let n = queue_size as u64;
            let desc = base;
            let avail = desc + 16 * n;
            // The used ring is 4-byte aligned; start it on its own page-ish boundary.
            let used = (avail + 6 + 2 * n + 63) & !63;
            assert!(used + 6 + 8 * n <= base + RING_AREA);
            fe.queues.push(Queue {
                size: queue_size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
                kick: EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?,
                call: EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?,
            });
        }
        fe.start_rings(StartOrder::CallFirst)?;
        Ok(fe)
    }

    /// Connects again to `socket`, with the same guest memory and rings, as QEMU does after the
    /// backend went away: every ring restarts at its used index (SET_VRING_BASE), so requests
    /// that were available but not completed are presented again, and a fresh kick eventfd
    /// starts signalled. `order` chooses when the call eventfd is installed.
    pub fn reconnect(&mut self, socket: &Path, order: StartOrder) -> Result<(), String> {
        self.reconnect_with(socket, order, true)
    }

    /// Like [`VuFrontend::reconnect`], restarting every ring `lag` entries before its used index,
    /// as QEMU does when it read the used index before the backend's last completions landed.
    pub fn reconnect_lagging(
        &mut self,
        socket: &Path,
        order: StartOrder,
        lag: u16,
    ) -> Result<(), String> {
        self.base_lag = lag;
        let r = self.reconnect_with(socket, order, true);
        self.base_lag = 0;
        r
    }

    /// Like [`VuFrontend::reconnect`]; with `kick` false the fresh kick eventfd starts quiet,
    /// as from a frontend that never notifies again for requests it already made available.
    pub fn reconnect_with(
        &mut self,
        socket: &Path,
        order: StartOrder,
        kick: bool,
    ) -> Result<(), String> {
        let (frontend, protocol_features, acked_features) =
            negotiate(socket, self.queues.len(), self.refused_features)?;
        // The old connection closes here.
        self.frontend = frontend;
        self.protocol_features = protocol_features;
        self.acked_features = acked_features;
        for q in &mut self.queues {
            q.kick = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            q.call = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            if kick {
                q.kick.write(1).map_err(|e| format!("eventfd: {e}"))?;
            }
        }
        self.start_rings(order)
    }

    /// SET_MEM_TABLE and every ring's setup, ending with all rings enabled.
    fn start_rings(&mut self, order: StartOrder) -> Result<(), String> {
        let err = |what: &str| {
            let what = what.to_string();
            move |e: vhost::Error| format!("{what}: {e}")
        };
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: MEM_BASE,
            memory_size: MEM_SIZE as u64,
            userspace_addr: self.mem as u64,
            mmap_offset: 0,
            mmap_handle: self._memfd.as_raw_fd(),
        };
        self.frontend
            .set_mem_table(&[region])
            .map_err(err("SET_MEM_TABLE"))?;
        // QEMU's vhost_dev_init gives every ring a placeholder call eventfd it never forwards.
        let placeholders = if order == StartOrder::CallLast {
            let mut p = Vec::new();
            for q in 0..self.queues.len() {
                let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
                self.frontend
                    .set_vring_call(q, &fd)
                    .map_err(err("SET_VRING_CALL"))?;
                p.push(fd);
            }
            p
        } else {
            Vec::new()
        };
        for q in 0..self.queues.len() {
            let (size, desc, avail, used) = {
                let r = &self.queues[q];
                (r.size, r.desc, r.avail, r.used)
            };
            let config = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                // Ring addresses are frontend virtual addresses (vhost-user spec).
                desc_table_addr: self.hva(desc),
                used_ring_addr: self.hva(used),
                avail_ring_addr: self.hva(avail),
                log_addr: None,
            };
            // Restart from the used index, as QEMU does after a disconnection (0 at first).
            let base = self.used_idx(q).wrapping_sub(self.base_lag);
            self.frontend
                .set_vring_num(q, size)
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_base(q, base)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_addr(q, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            if order == StartOrder::CallFirst {
                self.frontend
                    .set_vring_call(q, &self.queues[q].call)
                    .map_err(err("SET_VRING_CALL"))?;
            }
            self.frontend
                .set_vring_kick(q, &self.queues[q].kick)
                .map_err(err("SET_VRING_KICK"))?;
        }
        for q in 0..self.queues.len() {
            self.frontend
                .set_vring_enable(q, true)
                .map_err(err("SET_VRING_ENABLE"))?;
        }
        if order == StartOrder::CallLast {
            for q in 0..self.queues.len() {
                self.frontend
                    .set_vring_call(q, &self.queues[q].call)
                    .map_err(err("SET_VRING_CALL"))?;
            }
        }
        drop(placeholders);
        Ok(())
    }

    /// Waits up to `timeout` for an interrupt on `queue`'s call eventfd, consuming it. Unlike
    /// [`VuFrontend::wait_used`], this does not look at the used ring: it tells whether the
    /// backend signalled the eventfd the frontend installed last.
    pub fn wait_interrupt(&self, queue: usize, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.queues[queue].call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        n == 1 && self.queues[queue].call.read().is_ok()
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The underlying connection, for raw vhost-user messages.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    pub fn queue_size(&self, queue: usize) -> u16 {
        self.queues[queue].size
    }

    // ---- guest memory ----

    fn offset(&self, gpa: u64, len: usize) -> usize {
        let off = gpa.checked_sub(MEM_BASE).filter(|o| {
            o.checked_add(len as u64)
                .is_some_and(|e| e <= MEM_SIZE as u64)
        });
        match off {
            Some(o) => o as usize,
            None => panic!("guest range {gpa:#x}+{len:#x} outside guest memory"),
        }
    }

    fn hva(&self, gpa: u64) -> u64 {
        self.mem as u64 + self.offset(gpa, 0) as u64
    }

    /// A fresh zeroed buffer of `len` bytes (512-byte aligned); returns its guest address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let start = (self.alloc_next + 511) & !511;
        let end = start + len.max(1) as u64;
        assert!(end <= MEM_SIZE as u64, "guest memory exhausted");
        self.alloc_next = end;
        let gpa = MEM_BASE + start;
        self.write_mem(gpa, &vec![0u8; len]);
        gpa
    }

    /// Where the next `alloc` starts: [`VuFrontend::release`] frees what was allocated since.
    pub fn alloc_mark(&self) -> u64 {
        self.alloc_next
    }

    /// Frees the buffers allocated since `mark` (from [`VuFrontend::alloc_mark`]).
    pub fn release(&mut self, mark: u64) {
        self.alloc_next = mark;
    }

    /// Frees every buffer `alloc` handed out.
    pub fn reset(&mut self) {
        self.alloc_next = self.alloc_start;
    }

    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        let off = self.offset(gpa, data.len());
        // SAFETY: the range is inside our mapping (checked by `offset`).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.add(off), data.len()) };
        fence(Ordering::SeqCst);
    }

    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        fence(Ordering::SeqCst);
        let off = self.offset(gpa, len);
        let mut out = vec![0u8; len];
        // SAFETY: the range is inside our mapping (checked by `offset`).
        unsafe { std::ptr::copy_nonoverlapping(self.mem.add(off), out.as_mut_ptr(), len) };
        out
    }

    fn u16_at(&self, gpa: u64) -> &AtomicU16 {
        let off = self.offset(gpa, 2);
        assert!(off.is_multiple_of(2));
        // SAFETY: aligned, inside our mapping, which lives as long as `self`.
        unsafe { &*(self.mem.add(off) as *const AtomicU16) }
    }

    // ---- virtqueues ----

    /// Writes descriptor table entry `index` of `queue` verbatim.
    pub fn write_desc(&self, queue: usize, index: u16, d: RawDesc) {
        let q = &self.queues[queue];
        assert!(index < q.size, "descriptor {index} outside the table");
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        self.write_mem(q.desc + 16 * index as u64, &b);
    }

    /// Publishes `head` in the next available ring slot, bumps avail->idx by one and kicks.
    pub fn push_avail(&mut self, queue: usize, head: u16) {
        self.publish(queue, head);
        self.kick(queue);
    }

    /// Publishes `head` in the next available ring slot and bumps avail->idx, without a kick.
    pub fn publish(&mut self, queue: usize, head: u16) {
        let (slot, avail, idx) = {
            let q = &self.queues[queue];
            (q.avail_idx % q.size, q.avail, q.avail_idx.wrapping_add(1))
        };
        self.write_mem(avail + 4 + 2 * slot as u64, &head.to_le_bytes());
        self.set_avail_idx(queue, idx);
    }

    /// Stores avail->idx as is (no kick): any value, including jumps beyond the queue size.
    pub fn set_avail_idx(&mut self, queue: usize, idx: u16) {
        let avail = self.queues[queue].avail;
        self.queues[queue].avail_idx = idx;
        fence(Ordering::SeqCst);
        self.u16_at(avail + 2).store(idx, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    pub fn avail_idx(&self, queue: usize) -> u16 {
        self.queues[queue].avail_idx
    }

    pub fn kick(&self, queue: usize) {
        self.queues[queue].kick.write(1).expect("kick");
    }

    /// Builds a well-formed chain from `descs` (linked with NEXT), makes it available and kicks.
    /// Returns the head index.
    pub fn submit(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        let head = self.submit_without_kick(queue, descs);
        self.kick(queue);
        head
    }

    /// Like [`VuFrontend::submit`], without the kick: the request waits in the ring.
    pub fn submit_without_kick(&mut self, queue: usize, descs: &[Desc]) -> u16 {
        assert!(!descs.is_empty());
        let size = self.queues[queue].size;
        assert!(descs.len() <= size as usize, "chain longer than the queue");
        let first = self.queues[queue].next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (first as usize + i) as u16 % size;
            let last = i + 1 == descs.len();
            let flags = if d.write { VRING_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VRING_DESC_F_NEXT };
            let next = if last { 0 } else { (index + 1) % size };
            self.write_desc(
                queue,
                index,
                RawDesc {
                    addr: d.addr,
                    len: d.len,
                    flags,
                    next,
                },
            );
        }
        self.queues[queue].next_desc = (first as usize + descs.len()) as u16 % size;
        self.publish(queue, first);
        first
    }

    /// Writes `descs` into the descriptor table at the given indices verbatim, then publishes
    /// `head` and kicks. For chains with arbitrary flags and `next` links.
    pub fn submit_raw(&mut self, queue: usize, descs: &[(u16, RawDesc)], head: u16) {
        for &(index, d) in descs {
            self.write_desc(queue, index, d);
        }
        self.push_avail(queue, head);
    }

    /// The device's used->idx.
    pub fn used_idx(&self, queue: usize) -> u16 {
        fence(Ordering::SeqCst);
        self.u16_at(self.queues[queue].used + 2)
            .load(Ordering::Acquire)
    }

    /// Takes the next used element, if the device has published one.
    pub fn try_used(&mut self, queue: usize) -> Option<(u16, u32)> {
        if self.used_idx(queue) == self.queues[queue].last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let q = &self.queues[queue];
        let elem = self.read_mem(q.used + 4 + 8 * (q.last_used % q.size) as u64, 8);
        let id = u32::from_le_bytes(elem[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(elem[4..8].try_into().unwrap());
        self.queues[queue].last_used = q.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Waits up to `timeout` for the next used element: `(descriptor id, written length)`.
    pub fn wait_used(&mut self, queue: usize, timeout: Duration) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.try_used(queue) {
                return Some(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Wait for the call eventfd, but never rely on it alone.
            let ms = (deadline - now).as_millis().clamp(1, 20) as i32;
            let mut pfd = libc::pollfd {
                fd: self.queues[queue].call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            let _ = self.queues[queue].call.read();
        }
    }

    /// Raw pointers to `queue`'s rings and its eventfds, with the driver's current indices, for
    /// benchmark drivers that run each queue on its own thread without this value's
    /// bookkeeping. The handle is valid while `self` lives; the helpers of `self` must not be
    /// used on that queue meanwhile (their shadow indices go stale).
    pub fn ring_handle(&self, queue: usize) -> RingHandle {
        let q = &self.queues[queue];
        let n = q.size as usize;
        RingHandle {
            size: q.size,
            desc: self.host_ptr(q.desc, 16 * n),
            avail: self.host_ptr(q.avail, 4 + 2 * n),
            used: self.host_ptr(q.used, 4 + 8 * n),
            avail_idx: q.avail_idx,
            last_used: q.last_used,
            kick_fd: q.kick.as_raw_fd(),
            call_fd: q.call.as_raw_fd(),
        }
    }

    /// This process's address of guest range `gpa..gpa+len` (panics outside guest memory).
    pub fn host_ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        let off = self.offset(gpa, len);
        // SAFETY: inside our mapping (checked by `offset`).
        unsafe { self.mem.add(off) }
    }

    // ---- device configuration ----

    /// GET_CONFIG; panics if the backend did not offer the CONFIG protocol feature.
    pub fn get_config(&mut self, offset: u32, len: u32) -> Vec<u8> {
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .frontend
            .get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
            .expect("GET_CONFIG");
        payload
    }

    /// SET_CONFIG of `buf` at `offset` (a driver writing the device's config space).
    pub fn set_config(&mut self, offset: u32, buf: &[u8]) {
        self.frontend
            .set_config(offset, VhostUserConfigFlags::WRITABLE, buf)
            .expect("SET_CONFIG");
    }

    /// Whether the last kick of `queue` is still unread by the backend (its eventfd is set).
    pub fn kick_pending(&self, queue: usize) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.queues[queue].kick.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        pfd.revents & libc::POLLIN != 0
    }

    // ---- virtio-blk convenience ----

    /// virtio-blk capacity in 512-byte sectors.
    pub fn blk_capacity(&mut self) -> u64 {
        u64::from_le_bytes(self.get_config(0, 8).try_into().unwrap())
    }

    /// A well-formed virtio-blk request on queue 0: header (16 bytes), then `data_out` as one
    /// readable descriptor if not empty, then `data_in_len` writable bytes if not zero, then the
    /// status byte. Returns the status and the data read. Panics unless the device completes it
    /// with the right id within [`TIMEOUT`].
    pub fn blk_request(
        &mut self,
        type_: u32,
        sector: u64,
        data_out: &[u8],
        data_in_len: usize,
    ) -> (u8, Vec<u8>) {
        let (status, data, used_len) = self.blk_request_on(0, type_, sector, data_out, data_in_len);
        if status != 0xff {
            assert!(
                used_len as usize >= 1 && used_len as usize <= data_in_len + 1,
                "used length {used_len} for {data_in_len} data bytes"
            );
        }
        (status, data)
    }

    /// [`VuFrontend::blk_request`] on any queue, also returning the used length. The status is
    /// 0xff if the device did not write it.
    pub fn blk_request_on(
        &mut self,
        queue: usize,
        type_: u32,
        sector: u64,
        data_out: &[u8],
        data_in_len: usize,
    ) -> (u8, Vec<u8>, u32) {
        let mark = self.alloc_next;
        let hdr = self.alloc(16);
        self.write_mem(hdr, &blk_header(type_, sector));
        let mut descs = vec![Desc::r(hdr, 16)];
        if !data_out.is_empty() {
            let out = self.alloc(data_out.len());
            self.write_mem(out, data_out);
            descs.push(Desc::r(out, data_out.len() as u32));
        }
        let data_in = self.alloc(data_in_len);
        if data_in_len > 0 {
            descs.push(Desc::w(data_in, data_in_len as u32));
        }
        let status = self.alloc(1);
        self.write_mem(status, &[0xff]);
        descs.push(Desc::w(status, 1));
        let head = self.submit(queue, &descs);
        let (id, len) = self
            .wait_used(queue, TIMEOUT)
            .expect("virtio-blk request not completed");
        assert_eq!(id, head, "completion for another chain");
        let s = self.read_mem(status, 1)[0];
        let data = self.read_mem(data_in, data_in_len);
        self.alloc_next = mark;
        (s, data, len)
    }

    /// Writes whole sectors; panics unless the status is OK.
    pub fn blk_write(&mut self, sector: u64, data: &[u8]) {
        let (s, _) = self.blk_request(VIRTIO_BLK_T_OUT, sector, data, 0);
        assert_eq!(s, VIRTIO_BLK_S_OK, "write at sector {sector}");
    }

    /// Queues a 4 KiB write of `fill` at `sector` on queue 0 without waiting for it (a request
    /// that may be held: a migration's destination, a guest owned by another daemon); returns
    /// its status byte's address (0xff until the device writes it).
    pub fn queue_blk_write(&mut self, sector: u64, fill: u8) -> u64 {
        self.queue_blk_write_len(sector, fill, 4096)
    }

    /// [`VuFrontend::queue_blk_write`] of `len` bytes (whole sectors).
    pub fn queue_blk_write_len(&mut self, sector: u64, fill: u8, len: usize) -> u64 {
        let hdr = self.alloc(16);
        self.write_mem(hdr, &blk_header(VIRTIO_BLK_T_OUT, sector));
        let data = self.alloc(len);
        self.write_mem(data, &vec![fill; len]);
        let status = self.alloc(1);
        self.write_mem(status, &[0xff]);
        self.submit(
            0,
            &[
                Desc::r(hdr, 16),
                Desc::r(data, len as u32),
                Desc::w(status, 1),
            ],
        );
        status
    }

    /// Reads whole sectors; panics unless the status is OK.
    pub fn blk_read(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let (s, data) = self.blk_request(VIRTIO_BLK_T_IN, sector, &[], len);
        assert_eq!(s, VIRTIO_BLK_S_OK, "read at sector {sector}");
        data
    }
}

impl Drop for VuFrontend {
    fn drop(&mut self) {
        // The socket closes when `frontend` drops (right after this); the backend has its own
        // mapping of the memfd, so unmapping ours first is harmless.
        // SAFETY: `mem` is our mapping of MEM_SIZE bytes, no longer used after this.
        unsafe { libc::munmap(self.mem as *mut libc::c_void, MEM_SIZE) };
    }
}

/// One split virtqueue as raw memory (see [`VuFrontend::ring_handle`]).
pub struct RingHandle {
    pub size: u16,
    /// Descriptor table, available ring and used ring, in this process's mapping.
    pub desc: *mut u8,
    pub avail: *mut u8,
    pub used: *mut u8,
    /// The driver's avail->idx and next used entry when the handle was taken.
    pub avail_idx: u16,
    pub last_used: u16,
    pub kick_fd: std::os::fd::RawFd,
    pub call_fd: std::os::fd::RawFd,
}

// SAFETY: plain addresses into a shared mapping owned by the `VuFrontend` the handle came from;
// the user keeps that alive and gives each ring to one thread.
unsafe impl Send for RingHandle {}

/// When a ring's call eventfd is installed during its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOrder {
    /// SET_VRING_CALL before SET_VRING_KICK, as QEMU's vhost-user-blk and libblkio do.
    CallFirst,
    /// A placeholder call eventfd first, the real one only after every SET_VRING_KICK and
    /// SET_VRING_ENABLE: QEMU's vhost-user-scsi (`vhost_scsi_common_start`).
    CallLast,
}

/// A dirty log as QEMU shares it in a live migration (vhost-user "Migration"): a memfd bitmap
/// with one bit per 4 KiB page of guest-physical address space, from address 0.
pub struct DirtyLogArea {
    bits: *mut u8,
    len: usize,
    _fd: File,
}

impl DirtyLogArea {
    /// Clears every bit, as QEMU does when it syncs the log.
    pub fn clear(&self) {
        for i in 0..self.len {
            // SAFETY: `i < len`, inside the mapping; volatile because the backend writes it too.
            unsafe { std::ptr::write_volatile(self.bits.add(i), 0) };
        }
        fence(Ordering::SeqCst);
    }

    /// Whether the page holding guest-physical address `gpa` is marked.
    pub fn dirty(&self, gpa: u64) -> bool {
        fence(Ordering::SeqCst);
        let page = (gpa >> 12) as usize;
        assert!(page / 8 < self.len, "address {gpa:#x} outside the log");
        // SAFETY: `page / 8 < len`, inside the mapping.
        let byte = unsafe { std::ptr::read_volatile(self.bits.add(page / 8)) };
        byte & (1 << (page % 8)) != 0
    }

    /// The marked pages among those of `[gpa, gpa + len)`, and how many pages that is.
    pub fn dirty_in(&self, gpa: u64, len: u64) -> (usize, usize) {
        let pages: Vec<u64> = ((gpa >> 12)..=((gpa + len - 1) >> 12)).collect();
        let marked = pages.iter().filter(|p| self.dirty(*p << 12)).count();
        (marked, pages.len())
    }
}

impl Drop for DirtyLogArea {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `VuFrontend::start_dirty_log`, unmapped once.
        unsafe { libc::munmap(self.bits.cast(), self.len) };
    }
}

// SAFETY: the mapping is owned by this value; the bytes are only accessed volatilely.
unsafe impl Send for DirtyLogArea {}

impl VuFrontend {
    /// Starts dirty page logging as QEMU does when a migration begins: SET_LOG_BASE with a
    /// fresh bitmap covering guest memory, then SET_FEATURES with `VHOST_F_LOG_ALL`.
    pub fn start_dirty_log(&mut self) -> DirtyLogArea {
        assert!(
            self.protocol_features
                .contains(VhostUserProtocolFeatures::LOG_SHMFD),
            "backend does not offer LOG_SHMFD"
        );
        let pages = (MEM_BASE + MEM_SIZE as u64) >> 12;
        let len = (pages as usize).div_ceil(8).next_multiple_of(4096);
        // SAFETY: plain syscalls on a fresh fd we own; results are checked.
        let (fd, bits) = unsafe {
            let fd = libc::memfd_create(c"vu-dirty-log".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            let file = File::from_raw_fd(fd);
            file.set_len(len as u64).expect("ftruncate");
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert!(
                p != libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            (file, p as *mut u8)
        };
        let region = VhostUserDirtyLogRegion {
            mmap_size: len as u64,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
        };
        self.frontend
            .set_log_base(0, Some(region))
            .expect("SET_LOG_BASE");
        self.set_log_all(true);
        DirtyLogArea { bits, len, _fd: fd }
    }

    /// Stops every ring with GET_VRING_BASE, as a migration's source QEMU does when the guest
    /// stops there; returns each ring's next avail index.
    pub fn stop_rings(&mut self) -> Vec<u32> {
        (0..self.queues.len())
            .map(|q| self.frontend.get_vring_base(q).expect("GET_VRING_BASE"))
            .collect()
    }

    /// SET_FEATURES with or without `VHOST_F_LOG_ALL` (QEMU's start and end of logging).
    pub fn set_log_all(&mut self, on: bool) {
        let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
        let features = if on {
            self.acked_features | log_all
        } else {
            self.acked_features & !log_all
        };
        self.frontend.set_features(features).expect("SET_FEATURES");
        self.acked_features = features;
    }
}

/// Connects and negotiates features: SET_OWNER, GET/SET_FEATURES and protocol features.
fn negotiate(
    socket: &Path,
    num_queues: usize,
    refused: u64,
) -> Result<(Frontend, VhostUserProtocolFeatures, u64), String> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: vhost::Error| format!("{what}: {e}")
    };
    let mut frontend = Frontend::connect(socket, num_queues as u64).map_err(err("connect"))?;
    frontend.set_owner().map_err(err("SET_OWNER"))?;
    let offered = frontend.get_features().map_err(err("GET_FEATURES"))?;
    let version_1 = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if offered & version_1 == 0 || offered & protocol == 0 {
        return Err(format!(
            "backend features {offered:#x} lack VERSION_1 or PROTOCOL_FEATURES"
        ));
    }
    // Device-specific bits 0..24, VERSION_1 and PROTOCOL_FEATURES; no EVENT_IDX, no
    // INDIRECT_DESC, no packed ring.
    let acked_features = offered & (((1u64 << 24) - 1) | version_1 | protocol) & !refused;

    let offered_pf = frontend
        .get_protocol_features()
        .map_err(err("GET_PROTOCOL_FEATURES"))?;
    let protocol_features = offered_pf
        & (VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD);
    frontend
        .set_protocol_features(protocol_features)
        .map_err(err("SET_PROTOCOL_FEATURES"))?;
    if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        // Every message is acknowledged: when a call returns, the backend has acted on it.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
        let max = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
        if (num_queues as u64) > max {
            return Err(format!("backend has {max} queues, {num_queues} wanted"));
        }
    } else if num_queues > 1 {
        return Err("backend lacks MQ".into());
    }
    frontend
        .set_features(acked_features)
        .map_err(err("SET_FEATURES"))?;
    Ok((frontend, protocol_features, acked_features))
}

/// The 16-byte virtio_blk_req header: type, reserved, sector.
pub fn blk_header(type_: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&type_.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// One 16-byte DISCARD / WRITE_ZEROES segment: sector, num_sectors, flags.
pub fn dwz_segment(sector: u64, num_sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num_sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Waits out the daemon's busy-poll after its last completion (`--poll-us`, at most 1 ms): a
/// request queued next without a kick then stays in the ring.
pub fn wait_out_poll() {
    std::thread::sleep(Duration::from_millis(20));
}
