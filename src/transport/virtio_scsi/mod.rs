//! The vhost-user-scsi device: a thin translator from virtio-scsi requests (virtio 1.2 §5.6) to
//! the [`Target`]. QEMU builds the config space itself, so this backend has no CONFIG feature.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_bindings::virtio_scsi::*;
use virtio_queue::DescriptorChain;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::image::buffers::{self, Buf, Bufs};
use crate::image::IoOp;
use crate::lun::fnv1a;
use crate::ops::stats::{self, DeviceStats, Op};
use crate::pr::replay::Origin;
use crate::scsi::cdb::op::PERSISTENT_RESERVE_OUT;
use crate::scsi::data::{DataIn, DataOut};
use crate::scsi::target::{Outcome, Started, Target, GOOD, RESERVATION_CONFLICT};
use crate::scsi::tasks::{Scope, TaskId, TaskState};
use crate::transport::virtqueue::{
    self, feature, AtomicMem, Chain, DirtyLog, EachAtOnce, ExitEvents, Handler, Mem, QueueThreads,
    Quiesce, QuiesceLatch, Reply, Slot, Ticket, UsedLens, Vring,
};
use crate::transport::Options;

/// Request queues we advertise, on top of the control and event queues.
pub const MAX_REQUEST_QUEUES: usize = 16;
const NUM_QUEUES: usize = 2 + MAX_REQUEST_QUEUES;
pub const MAX_QUEUE_SIZE: usize = 1024;

const CONTROL_QUEUE: u16 = 0;
/// FUNCTION COMPLETE shares the value of VIRTIO_SCSI_S_OK (virtio 1.2 §5.6.6.2).
const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u32 = VIRTIO_SCSI_S_OK;
const CDB_SIZE: usize = 32;
const SENSE_SIZE: usize = 96;
/// virtio_scsi_cmd_req: lun[8], tag, task_attr, prio, crn, cdb[32].
const REQ_HEADER_LEN: usize = 8 + 8 + 3 + CDB_SIZE;
/// virtio_scsi_cmd_resp: sense_len, resid, status_qualifier, status, response, sense[96].
const RESP_LEN: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;

/// Where a virtio-scsi LUN field points (virtio 1.2 §5.6.6.1).
enum Address {
    Lun0,
    /// Target 0, another LUN.
    MissingLun,
    BadTarget,
}

fn decode_lun(lun: &[u8]) -> Address {
    if lun[0] != 1 || lun[1] != 0 {
        return Address::BadTarget;
    }
    // Flat (0x40) or peripheral (0x00) addressing of a single-level LUN.
    let n = (u16::from(lun[2] & 0x3f) << 8) | u16::from(lun[3]);
    if matches!(lun[2] >> 6, 0 | 1) && n == 0 && lun[4..8] == [0; 4] {
        Address::Lun0
    } else {
        Address::MissingLun
    }
}

/// Bytes of a PR OUT's parameter list that go into its replay digest; SPC-4 lists are far
/// shorter.
const DIGEST_PARAM_BYTES: usize = 8192;

/// Numbers the vhost-user connections of this daemon run, for the replay records.
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

pub struct ScsiDevice {
    target: Arc<Target>,
    initiator: Arc<str>,
    /// This connection's number (each connection gets a fresh backend).
    connection: u64,
    mem: AtomicMem,
    event_idx: AtomicBool,
    exit: ExitEvents,
    /// The request rings' worker threads (the guest's `queues`), after thread 0.
    requests: QueueThreads,
    /// Whether this connection's data-in buffers go into a migration's dirty log.
    log: DirtyLog,
    /// This connection's place among the guest's connections (a live migration has two).
    ticket: Ticket,
    /// Closed before the daemon ends this connection.
    latch: QuiesceLatch,
    /// This guest alone sees a write-protected disk (`guest.read_only` in the configuration).
    guest_read_only: bool,
    stats: Arc<DeviceStats>,
    /// How long a request queue thread watches its ring after a round (`--poll-us`).
    poll: Duration,
}

#[derive(Clone)]
pub struct ScsiBackend(Arc<ScsiDevice>);

impl ScsiBackend {
    pub fn new(target: Arc<Target>, initiator: Arc<str>, mem: AtomicMem) -> io::Result<Self> {
        Self::with_options(target, initiator, mem, Options::default())
    }

    /// A device for a guest as the daemon serves it (see [`Options`]).
    pub fn with_options(
        target: Arc<Target>,
        initiator: Arc<str>,
        mem: AtomicMem,
        options: Options,
    ) -> io::Result<Self> {
        let Options {
            read_only,
            stats,
            poll,
            ticket,
            queue_threads,
        } = options;
        let requests = QueueThreads::new(2, MAX_REQUEST_QUEUES as u16, queue_threads);
        let exit = ExitEvents::new(requests.threads() + 1)?;
        Ok(ScsiBackend(Arc::new(ScsiDevice {
            target,
            initiator,
            connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            mem,
            event_idx: AtomicBool::new(false),
            log: DirtyLog::default(),
            ticket,
            exit,
            requests,
            latch: QuiesceLatch::default(),
            guest_read_only: read_only,
            stats,
            poll,
        })))
    }
}

impl ScsiDevice {
    /// One command on request queue `ring`: a READ or WRITE that passes its checks joins
    /// `batch` (see [`ScsiQueue`]); anything else completes here.
    fn process_request<'m>(
        &self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        ring: u16,
        slot: Slot,
        batch: &mut ScsiBatch<'m>,
    ) -> Reply {
        let req = match self.parse_request(mem, chain) {
            Ok(req) => req,
            Err(reply) => return reply,
        };
        let (data_out, data_in) = (DataOut::new(&req.data_out), DataIn::new(&req.data_in));
        let (in_cap, out_len) = (data_in.capacity(), data_out.len());
        let cdb = req.cdb();
        let start = std::time::Instant::now();
        let outcome = match decode_lun(&req.header[..8]) {
            Address::BadTarget => {
                return Reply::Done(failure(&req.resp_buf, VIRTIO_SCSI_S_BAD_TARGET));
            }
            Address::MissingLun => self.target.execute_missing_lun(cdb, data_in),
            // PR OUT is the one command whose replay after a reconnection must not run again.
            Address::Lun0 if cdb[0] == PERSISTENT_RESERVE_OUT => {
                let task = self.enter_task(&req, TaskState::InFlight);
                let origin = Origin {
                    connection: self.connection,
                    ring,
                    slot,
                    digest: request_digest(&req.header, &req.data_out),
                };
                let outcome = self.target.execute_for(
                    &self.initiator,
                    self.guest_read_only,
                    cdb,
                    data_out,
                    data_in,
                    Some(&origin),
                );
                self.target.lun().tasks.retire(task);
                outcome
            }
            Address::Lun0 => {
                // In flight while it runs here; a READ or WRITE then waits in the round's batch
                // as a queued task, which a TMF can still abort before its I/O.
                let task = self.enter_task(&req, TaskState::InFlight);
                let started = self.target.start_for(
                    &self.initiator,
                    self.guest_read_only,
                    cdb,
                    data_out,
                    data_in,
                );
                match started {
                    Started::Done(outcome) => {
                        self.target.lun().tasks.retire(task);
                        outcome
                    }
                    Started::Io(mut io) => {
                        self.target.lun().tasks.settle(task, TaskState::Queued);
                        io.task = Some(task);
                        batch.push(io, req, in_cap, out_len, start);
                        return Reply::Deferred;
                    }
                }
            }
        };
        self.count(cdb, &outcome, start.elapsed());
        Reply::Done(Self::respond(&req.resp_buf, outcome, in_cap, out_len))
    }

    /// Enters the command `req` in the LU's task set, under its virtio-scsi tag.
    fn enter_task(&self, req: &CmdRequest, state: TaskState) -> TaskId {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&req.header[8..16]);
        let tag = u64::from_le_bytes(tag);
        self.target.lun().tasks.enter(&self.initiator, tag, state)
    }

    /// Splits a command request's chain into its header, data and response buffers (virtio 1.2
    /// §5.6.6.1). `Err` is the reply of a request that goes no further.
    fn parse_request<'m>(
        &self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
    ) -> Result<CmdRequest<'m>, Reply> {
        let chain = Chain::parse(mem, chain).map_err(|e| {
            log::warn!("{}: scsi: dropping request: {e}", self.initiator);
            Reply::Done(0)
        })?;
        let Some((resp_buf, data_in)) = buffers::split_at(&chain.writable, RESP_LEN) else {
            log::warn!(
                "{}: scsi: request without room for a response",
                self.initiator
            );
            return Err(Reply::Done(0));
        };
        let Some((_, data_out)) = buffers::split_at(&chain.readable, REQ_HEADER_LEN) else {
            return Err(Reply::Done(failure(&resp_buf, VIRTIO_SCSI_S_FAILURE)));
        };
        let mut header = [0u8; REQ_HEADER_LEN];
        buffers::read_bytes(&chain.readable, &mut header);
        Ok(CmdRequest {
            header,
            resp_buf,
            data_out,
            data_in,
        })
    }

    /// Writes the response of a command (virtio 1.2 §5.6.6.1) into `resp_buf`; returns the
    /// bytes written into the chain. `in_cap` and `out_len` are its data buffers' lengths.
    fn respond(resp_buf: &[Buf], outcome: Outcome, in_cap: usize, out_len: usize) -> u32 {
        let mut resp = [0u8; RESP_LEN];
        let Outcome {
            status,
            sense,
            data_in: written,
        } = outcome;
        // The residual counts what was not transferred in the command's data direction.
        let resid = if in_cap > 0 {
            in_cap - written
        } else if status == GOOD {
            0
        } else {
            out_len
        };
        if let Some(s) = sense {
            let fixed = s.to_fixed();
            resp[0..4].copy_from_slice(&(fixed.len() as u32).to_le_bytes());
            resp[12..12 + fixed.len()].copy_from_slice(&fixed);
        }
        resp[4..8].copy_from_slice(&(resid.min(u32::MAX as usize) as u32).to_le_bytes());
        resp[10] = status;
        resp[11] = VIRTIO_SCSI_S_OK as u8;
        buffers::write_bytes(resp_buf, &resp);
        (RESP_LEN + written) as u32
    }

    /// Completes a round's READs and WRITEs: admitted in pieces of at most 4 MiB, each under one
    /// hold of the reservation lock held until the image has done the piece (as on blk).
    fn complete(&self, batch: &mut ScsiBatch, lens: &mut UsedLens) {
        if batch.ops.is_empty() {
            return;
        }
        let allowed = self
            .target
            .lun()
            .run_admitted(&self.initiator, &mut batch.ops);
        let done = std::time::Instant::now();
        let ops = batch.ops.drain(..).zip(allowed);
        let tasks = &self.target.lun().tasks;
        for (pending, (io, ok)) in batch.pending.drain(..).zip(ops) {
            // A TMF aborted it before its I/O started: VIRTIO_SCSI_S_ABORTED (virtio 1.2
            // §5.6.6.1), nothing reached the image.
            if io.task.is_some_and(|t| tasks.retire(t)) {
                lens.push(failure(&pending.resp_buf, VIRTIO_SCSI_S_ABORTED));
                continue;
            }
            if let (Ok(()), Err(e)) = (ok, &io.result) {
                let what = if io.write { "write" } else { "read" };
                log::warn!("{}: scsi {what}: {e}", self.initiator);
            }
            let outcome = self.target.finish_io(&io, ok);
            self.count(&pending.cdb, &outcome, done - pending.start);
            lens.push(Self::respond(
                &pending.resp_buf,
                outcome,
                pending.in_cap,
                pending.out_len,
            ));
        }
    }

    /// Counts a completed command (see `stats.rs`).
    fn count(&self, cdb: &[u8], outcome: &Outcome, took: std::time::Duration) {
        let (op, written) = stats::scsi_op(cdb);
        let result = match outcome.status {
            GOOD => stats::Result::Ok,
            RESERVATION_CONFLICT => stats::Result::Conflict,
            _ => stats::Result::Error,
        };
        let bytes = match op {
            Op::Read => outcome.data_in as u64,
            Op::Write => written,
            _ => 0,
        };
        self.stats.record(op, result, bytes, took);
        if cdb[0] == PERSISTENT_RESERVE_OUT {
            self.stats.record_prout(cdb[1] & 0x1f, result);
        }
    }

    /// Task management and asynchronous notification (virtio 1.2 §5.6.6.2).
    fn process_control(&self, mem: &Mem, chain: DescriptorChain<&Mem>) -> u32 {
        let Ok(chain) = Chain::parse(mem, chain) else {
            return 0;
        };
        let mut req = [0u8; 24];
        let n = buffers::read_bytes(&chain.readable, &mut req);
        let kind = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
        match kind {
            // A TMF without room for its response is malformed: it is not carried out, since
            // the driver could never learn that it was.
            VIRTIO_SCSI_T_TMF if n >= 24 && buffers::total(&chain.writable) > 0 => {
                let subtype = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
                let mut tag = [0u8; 8];
                tag.copy_from_slice(&req[16..24]);
                let tag = u64::from_le_bytes(tag);
                let response = match decode_lun(&req[8..16]) {
                    Address::BadTarget => VIRTIO_SCSI_S_BAD_TARGET,
                    // An I_T NEXUS RESET names the target only (QEMU reads just lun[1]): the
                    // nexus is the whole connection, whatever LUN the rest of the field names.
                    Address::MissingLun if subtype != VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
                        VIRTIO_SCSI_S_INCORRECT_LUN
                    }
                    Address::MissingLun | Address::Lun0 => self.tmf(subtype, tag),
                };
                buffers::write_bytes(&chain.writable, &[response as u8]) as u32
            }
            VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE if n >= 16 => {
                // event_actual = 0: we report no asynchronous events.
                let mut resp = [0u8; 5];
                resp[4] = VIRTIO_SCSI_S_OK as u8;
                buffers::write_bytes(&chain.writable, &resp) as u32
            }
            _ => {
                log::debug!("{}: scsi: malformed control request", self.initiator);
                0
            }
        }
    }

    /// One task management function on LUN 0 (SAM-5 §7; virtio 1.2 §5.6.6.2 maps the
    /// responses); `tag` names the task of ABORT TASK and QUERY TASK. A function that aborts
    /// answers once every task it names has ended: queued ones never do their I/O (their
    /// response is VIRTIO_SCSI_S_ABORTED), in-flight ones are waited for (`scsi/tasks.rs`).
    /// What each does here, and why, is the "Task management" table of docs/conformance.md.
    fn tmf(&self, subtype: u32, tag: u64) -> u32 {
        let lun = self.target.lun();
        let (res, me) = (&lun.reservations, &*self.initiator);
        match subtype {
            // SAM-5 §7.2: the task with this tag, if it is still in the task set.
            VIRTIO_SCSI_T_TMF_ABORT_TASK => {
                lun.tasks.abort(Scope::Task(me, tag));
                VIRTIO_SCSI_S_FUNCTION_COMPLETE
            }
            // §7.3, §7.5 (TST=000: one task set per I_T nexus): every task of this nexus. No
            // UA: §5.6 gives 2F/00 only to an initiator whose commands another one aborted.
            VIRTIO_SCSI_T_TMF_ABORT_TASK_SET | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => {
                lun.tasks.abort(Scope::Nexus(me));
                VIRTIO_SCSI_S_FUNCTION_COMPLETE
            }
            // §7.9, §7.10: FUNCTION SUCCEEDED when the task, or any task of the nexus, is in
            // the task set, FUNCTION COMPLETE when not.
            VIRTIO_SCSI_T_TMF_QUERY_TASK | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
                let scope = if subtype == VIRTIO_SCSI_T_TMF_QUERY_TASK {
                    Scope::Task(me, tag)
                } else {
                    Scope::Nexus(me)
                };
                if lun.tasks.contains(scope) {
                    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                } else {
                    VIRTIO_SCSI_S_FUNCTION_COMPLETE
                }
            }
            // SAM-5 §7.7, §6.3.3: every task of every nexus (every transport's) is aborted,
            // every I_T nexus gets 29/03, the SPC-2 reservation goes, PR state stays (SPC-4
            // §5.9.1).
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
                log::info!("{}: scsi: logical unit reset", self.initiator);
                lun.tasks.abort(Scope::All);
                res.with_mut(|a| a.logical_unit_reset());
                VIRTIO_SCSI_S_FUNCTION_COMPLETE
            }
            // SAM-5 §7.6, §6.3.4: an I_T nexus loss for this initiator only: its tasks are
            // aborted, 29/07 for it, its SPC-2 reservation goes, PR state stays.
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
                log::info!("{}: scsi: I_T nexus reset", self.initiator);
                lun.tasks.abort(Scope::Nexus(me));
                res.with_mut(|a| a.i_t_nexus_reset(&self.initiator));
                VIRTIO_SCSI_S_FUNCTION_COMPLETE
            }
            // SAM-5 §7.4: CLEAR ACA is only for a LU with NormACA=1. Ours reports NormACA=0 and
            // refuses NACA=1, so no ACA ever exists: the function is not supported, which is
            // FUNCTION REJECTED (virtio: "always a no-operation"; LIO and QEMU answer the same).
            // So is any subtype virtio does not define.
            _ => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        }
    }
}

/// A command request's parts (virtio 1.2 §5.6.6.1): `virtio_scsi_cmd_req` and the buffers
/// around it.
struct CmdRequest<'m> {
    header: [u8; REQ_HEADER_LEN],
    /// Room for `virtio_scsi_cmd_resp`.
    resp_buf: Bufs<'m>,
    data_out: Bufs<'m>,
    data_in: Bufs<'m>,
}

impl CmdRequest<'_> {
    fn cdb(&self) -> &[u8] {
        &self.header[19..19 + CDB_SIZE]
    }
}

/// Writes a response that carries only `response` (a request that did not reach a LUN); returns
/// the bytes written into the chain.
fn failure(resp_buf: &[Buf], response: u32) -> u32 {
    let mut resp = [0u8; RESP_LEN];
    resp[11] = response as u8;
    buffers::write_bytes(resp_buf, &resp);
    RESP_LEN as u32
}

/// What identifies a request's bytes: the virtio-scsi header (LUN, tag, attributes, CDB) and the
/// start of its data-out buffer.
fn request_digest(header: &[u8], data_out: &[Buf]) -> u64 {
    let mut bytes = header.to_vec();
    let mut params = vec![0u8; buffers::total(data_out).min(DIGEST_PARAM_BYTES)];
    buffers::read_bytes(data_out, &mut params);
    bytes.extend_from_slice(&params);
    fnv1a(&bytes)
}

impl Quiesce for ScsiBackend {
    fn quiesce(&self) {
        self.0.latch.close();
    }
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// QEMU offers the guest HOTPLUG and CHANGE on its own (they are not among the bits it masks
    /// with the backend's), and the Linux driver acks them after the firmware did not. A backend
    /// that does not list them fails that second SET_FEATURES with "invalid parameters": the
    /// firmware-then-kernel cycle on which vhost-device-scsi breaks. We list them; we simply never
    /// send such events.
    fn features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_SCSI_F_HOTPLUG)
            | feature(VIRTIO_SCSI_F_CHANGE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | DirtyLog::FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.0.log.set_features(features);
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.0.ticket.stopped(queue_index);
        Ok(())
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | DirtyLog::PROTOCOL_FEATURES
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, _mem: AtomicMem) -> io::Result<()> {
        // We hold a clone of the same `GuestMemoryAtomic`, which the handler updates in place.
        Ok(())
    }

    /// Thread 0 serves the control and event queues (a TMF there waits for commands of the
    /// request queues); the request queues share the guest's `queues` threads after it.
    fn queues_per_thread(&self) -> Vec<u64> {
        std::iter::once(0b11)
            .chain(self.0.requests.masks())
            .collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.0.exit.get(thread_index)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(vring) = virtqueue::kicked_ring(evset, device_event, vrings) else {
            return Ok(());
        };
        let d = &self.0;
        let Some(_open) = d.latch.enter() else {
            return Ok(());
        };
        // Thread 0 serves rings 0 and 1, the others the request rings (`queues_per_thread`).
        let ring = if thread_id == 0 {
            device_event
        } else {
            match d.requests.ring(thread_id - 1, device_event) {
                Some(ring) => ring,
                None => return Ok(()),
            }
        };
        if !d.ticket.enter(ring, vring) {
            return Ok(());
        }
        let event_idx = d.event_idx.load(Ordering::Relaxed);
        if thread_id == 0 {
            // Event-queue buffers are left in the ring: there are no events to report.
            if device_event == CONTROL_QUEUE {
                let mut control = EachAtOnce::new(|mem, c, _| d.process_control(mem, c));
                virtqueue::drain_queue(
                    vring,
                    &d.mem,
                    event_idx,
                    &d.log,
                    &d.latch,
                    Duration::ZERO,
                    &mut control,
                )?;
            }
            return Ok(());
        }
        // A thread that serves several rings does not spin on one of them.
        let poll = if d.requests.alone(thread_id - 1) {
            d.poll
        } else {
            Duration::ZERO
        };
        let mut requests = ScsiQueue {
            device: d,
            ring,
            vring,
            served: false,
        };
        let drained = virtqueue::drain_queue(
            vring,
            &d.mem,
            event_idx,
            &d.log,
            &d.latch,
            poll,
            &mut requests,
        );
        if requests.served {
            // Every request taken so far is completed in the used ring, and replays (the first
            // requests after a start) are over: no record of this ring can match again.
            d.target.lun().reservations.completed(&d.initiator, ring);
        }
        drained
    }
}

/// A round's READs and WRITEs, done together at its end.
#[derive(Default)]
struct ScsiBatch<'m> {
    ops: Vec<IoOp<'m>>,
    /// For each op, what its response needs.
    pending: Vec<PendingCommand<'m>>,
}

impl<'m> ScsiBatch<'m> {
    /// Defers `io`, the image I/O of `req`, whose data buffers hold `in_cap` and `out_len`
    /// bytes, to the end of the round.
    fn push(
        &mut self,
        io: IoOp<'m>,
        req: CmdRequest<'m>,
        in_cap: usize,
        out_len: usize,
        start: std::time::Instant,
    ) {
        let mut cdb = [0u8; CDB_SIZE];
        cdb.copy_from_slice(req.cdb());
        self.ops.push(io);
        self.pending.push(PendingCommand {
            resp_buf: req.resp_buf,
            cdb,
            in_cap,
            out_len,
            start,
        });
    }
}

struct PendingCommand<'m> {
    resp_buf: Bufs<'m>,
    cdb: [u8; CDB_SIZE],
    in_cap: usize,
    out_len: usize,
    start: std::time::Instant,
}

/// One request queue of a scsi device, as [`virtqueue::drain_queue`] serves it: the READs and
/// WRITEs of a round become one batch of image I/O, everything else is done as it comes.
struct ScsiQueue<'d> {
    device: &'d ScsiDevice,
    ring: u16,
    vring: &'d Vring,
    /// Whether any request was taken (see `handle_event`).
    served: bool,
}

impl Handler for ScsiQueue<'_> {
    type Batch<'m> = ScsiBatch<'m>;

    fn request<'m>(
        &mut self,
        mem: &'m Mem,
        chain: DescriptorChain<&'m Mem>,
        slot: Slot,
        batch: &mut ScsiBatch<'m>,
    ) -> Reply {
        self.served = true;
        self.device
            .process_request(mem, chain, self.ring, slot, batch)
    }

    fn complete(&mut self, batch: &mut ScsiBatch<'_>, lens: &mut UsedLens) {
        self.device.complete(batch, lens)
    }

    fn next_round(&mut self) -> bool {
        self.device.ticket.keeps(self.ring, self.vring)
    }
}
