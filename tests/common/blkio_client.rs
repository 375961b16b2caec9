//! A synchronous vhost-user-blk client built on libblkio, an independent implementation of the
//! protocol: what the daemon must interoperate with, besides QEMU.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, MemoryRegion, ReqFlags};

pub struct BlkClient {
    // Field order matters: the queues must go before the instance that owns their memory.
    queue: Blkioq,
    /// Queues 1.. when connected with several.
    others: Vec<Blkioq>,
    /// user_data of the request in flight, checked against its completion.
    tag: usize,
    region: MemoryRegion,
    blkio: Blkio,
}

/// The buffer region each client maps once; requests use its front.
pub const REGION_LEN: usize = 8 << 20;

impl BlkClient {
    pub fn connect(socket: &Path) -> Result<Self, blkio::Error> {
        Self::connect_queues(socket, 1)
    }

    pub fn connect_read_only(socket: &Path) -> Result<Self, blkio::Error> {
        Self::open(socket, 1, true)
    }

    pub fn connect_queues(socket: &Path, queues: i32) -> Result<Self, blkio::Error> {
        Self::open(socket, queues, false)
    }

    fn open(socket: &Path, queues: i32, read_only: bool) -> Result<Self, blkio::Error> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", queues)?;
        let mut started = blkio.start()?;
        let region = blkio.alloc_mem_region(REGION_LEN)?;
        blkio.map_mem_region(&region)?;
        let queue = started.queues.remove(0);
        Ok(BlkClient {
            queue,
            others: started.queues,
            tag: 0,
            region,
            blkio,
        })
    }

    /// Makes queue `q` (0-based) the one later requests use.
    pub fn use_queue(&mut self, q: usize) {
        if q > 0 {
            std::mem::swap(&mut self.queue, &mut self.others[q - 1]);
        }
    }

    /// The queue, for callers that drive it themselves (benchmarks).
    pub fn queue_and_region(&mut self) -> (&mut Blkioq, &MemoryRegion) {
        (&mut self.queue, &self.region)
    }

    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }

    /// An integer property of the connected device (`max-segments`, `max-segment-len`, ...).
    pub fn property(&self, name: &str) -> i32 {
        self.blkio.get_i32(name).unwrap()
    }

    pub fn read_only(&self) -> bool {
        self.blkio.get_bool("read-only").unwrap()
    }

    pub fn buf(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= REGION_LEN);
        // SAFETY: the region is mapped for REGION_LEN bytes while `self` lives.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, len) }
    }

    /// Waits for the completion of the one request in flight; returns its `ret` (0 or -errno).
    fn complete(&mut self) -> i32 {
        let mut c = [MaybeUninit::uninit()];
        let mut timeout = Duration::from_secs(30);
        let n = self
            .queue
            .do_io(&mut c, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert_eq!(n, 1, "request timed out");
        // SAFETY: do_io initialised `n` completions.
        let c = unsafe { c[0].assume_init_read() };
        assert_eq!(
            c.user_data, self.tag,
            "the completion is for the request in flight"
        );
        c.ret
    }

    fn check(ret: i32) -> Result<(), i32> {
        if ret == 0 {
            Ok(())
        } else {
            Err(ret)
        }
    }

    fn next_tag(&mut self) -> usize {
        self.tag += 1;
        self.tag
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), i32> {
        self.buf(data.len()).copy_from_slice(data);
        let ptr = self.region.addr as *const u8;
        let tag = self.next_tag();
        self.queue
            .write(offset, ptr, data.len(), tag, ReqFlags::empty());
        Self::check(self.complete())
    }

    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let ptr = self.region.addr as *mut u8;
        let tag = self.next_tag();
        self.queue.read(offset, ptr, len, tag, ReqFlags::empty());
        Self::check(self.complete())?;
        Ok(self.buf(len).to_vec())
    }

    pub fn flush(&mut self) -> Result<(), i32> {
        let tag = self.next_tag();
        self.queue.flush(tag, ReqFlags::empty());
        Self::check(self.complete())
    }

    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        let tag = self.next_tag();
        self.queue.discard(offset, len, tag, ReqFlags::empty());
        Self::check(self.complete())
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), i32> {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        let tag = self.next_tag();
        self.queue.write_zeroes(offset, len, tag, flags);
        Self::check(self.complete())
    }

    /// Submits `count` writes of `block` bytes at random aligned offsets below `span`, keeping
    /// `depth` in flight; returns the number completed with an error.
    pub fn random_writes(&mut self, count: usize, block: usize, depth: usize, span: u64) -> usize {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let blocks = span / block as u64;
        let ptr = self.region.addr as *const u8;
        let mut submitted = 0;
        let mut done = 0;
        let mut errors = 0;
        let mut comps: Vec<MaybeUninit<blkio::Completion>> =
            (0..depth).map(|_| MaybeUninit::uninit()).collect();
        while done < count {
            while submitted < count && submitted - done < depth {
                let off = rng.gen_range(0..blocks) * block as u64;
                self.queue.write(off, ptr, block, 0, ReqFlags::empty());
                submitted += 1;
            }
            let n = self.queue.do_io(&mut comps, 1, None, None).expect("do_io");
            for c in &comps[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                if unsafe { c.assume_init_ref() }.ret != 0 {
                    errors += 1;
                }
            }
            done += n;
        }
        errors
    }
}

/// Outcome of one sequence-numbered write of [`BlkClient::flood`].
pub struct FloodResult {
    /// `ok[seq]`: whether write `seq` completed successfully.
    pub ok: Vec<bool>,
}

impl BlkClient {
    /// Writes 4 KiB block `seq` (its LBA is `seq`, its content the seq number) for seq = 0, 1, ...
    /// with `depth` requests in flight, until `stop` is set or `max` blocks were issued.
    pub fn flood(
        &mut self,
        depth: usize,
        max: usize,
        stop: &std::sync::atomic::AtomicBool,
        progress: &std::sync::atomic::AtomicUsize,
    ) -> FloodResult {
        let mut free: Vec<usize> = (0..depth).collect();
        let mut slot_of = vec![usize::MAX; max];
        let mut ok = Vec::new();
        let mut in_flight = 0;
        let mut comps: Vec<MaybeUninit<blkio::Completion>> =
            (0..depth).map(|_| MaybeUninit::uninit()).collect();
        loop {
            let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
            while !stopping && ok.len() < max {
                let Some(slot) = free.pop() else { break };
                let seq = ok.len();
                ok.push(false);
                slot_of[seq] = slot;
                let buf = &mut self.buf((slot + 1) * 4096)[slot * 4096..];
                buf.fill(0);
                buf[..8].copy_from_slice(&(seq as u64 + 1).to_le_bytes());
                let ptr = self.region.addr + slot * 4096;
                self.queue.write(
                    seq as u64 * 4096,
                    ptr as *const u8,
                    4096,
                    seq,
                    ReqFlags::empty(),
                );
                in_flight += 1;
            }
            if in_flight == 0 {
                return FloodResult { ok };
            }
            let n = self.queue.do_io(&mut comps, 1, None, None).expect("do_io");
            for c in &comps[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                let c = unsafe { c.assume_init_ref() };
                ok[c.user_data] = c.ret == 0;
                free.push(slot_of[c.user_data]);
                in_flight -= 1;
            }
            progress.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
