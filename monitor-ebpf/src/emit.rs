//! The one way a record leaves a kernel program: reserve it on the right ring, fill it,
//! submit it, with the emitted count and every loss counted under its reason.
//!
//! Every program goes through [`reserve`] (records filled in place, e.g. paths walked
//! straight into the ring) or [`emit`] (small records built on the stack), so that the ring,
//! the wake-up flags and the counters cannot differ from one hook to the next.
//!
//! A program that kills reserves first, then kills, then fills and submits: a kill whose
//! record finds no room is still sent and still counted as a loss (`Stat::LostRingFull`),
//! and no kill is sent before its report's room was asked for.

use core::{
    mem::MaybeUninit,
    ops::{Deref, DerefMut},
};

use aya_ebpf::maps::ring_buf::RingBufEntry;
use monitor_common::{EventKind, Stat, KERNEL_LOG_TARGET};

use crate::{count, ring, ring_flags};

/// A record reserved on a ring. It must be [`Record::submit`]ted on every path: the verifier
/// refuses a program that can leave a reservation unreleased.
pub struct Record<T: 'static> {
    entry: RingBufEntry<T>,
    kind: EventKind,
    priority: bool,
}

/// Reserves a record of `kind` on the priority ring (enforcement, tampering: what must not
/// be lost in a flood) or the bulk ring; counts a full ring as a loss of `kind`.
#[inline(always)]
pub fn reserve<T: 'static>(kind: EventKind, priority: bool) -> Option<Record<T>> {
    match ring(priority).reserve::<T>(0) {
        Some(entry) => Some(Record {
            entry,
            kind,
            priority,
        }),
        None => {
            count(Stat::LostRingFull, kind as u32);
            None
        }
    }
}

/// Reserves, writes and submits a record built on the stack.
#[inline(always)]
pub fn emit<T: 'static>(kind: EventKind, priority: bool, event: T) {
    if let Some(mut record) = reserve::<T>(kind, priority) {
        record.write(event);
        record.submit();
    }
}

impl<T: 'static> Record<T> {
    /// Counts that this record goes out without its whole payload (a kernel read failed):
    /// not a loss, the record still says what happened.
    #[inline(always)]
    pub fn incomplete(&self) {
        count(Stat::ReadFailed, self.kind as u32);
    }

    /// Sends the record: the bulk ring wakes the reader only past its threshold, the
    /// priority ring at once.
    #[inline(always)]
    pub fn submit(self) {
        count(Stat::Emitted, self.kind as u32);
        self.entry.submit(ring_flags(self.priority));
    }
}

impl<T: 'static> Deref for Record<T> {
    type Target = MaybeUninit<T>;

    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        &self.entry
    }
}

impl<T: 'static> DerefMut for Record<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.entry
    }
}

/// Kills the current task (`bpf_send_signal(SIGKILL)`): it dies on its way back to user
/// space, before the syscall or the new program goes on. Call it after [`reserve`].
#[inline(always)]
pub fn kill_current() {
    const SIGKILL: u32 = 9;
    // SAFETY: a helper call with no pointer argument; the kernel checks that the current
    // task may be signalled and returns an error (ignored: there is nothing left to do, and
    // the record already carries the verdict) when it may not.
    unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
}

/// Counts an event of `kind` that a hook gave up on because a kernel read it needed failed
/// (the `Err` of its `try_*`): the hook's entry point calls this instead of dropping the error.
/// A bad fd the process itself passed (`-EBADF` from `Task::file`) is not a loss: the syscall
/// fails too, and nothing happened to report.
#[inline(always)]
pub fn gave_up(result: Result<(), i64>, kind: EventKind) {
    const EBADF: i64 = 9;
    match result {
        Err(error) if error != -EBADF => {
            count(Stat::ReadDropped, kind as u32);
            // Off unless `--log monitor::kernel=debug`: the loader writes the level, and with
            // logging off the verifier drops this branch (the level is a read-only global).
            aya_log_ebpf::debug!(
                &(),
                target: KERNEL_LOG_TARGET,
                "{} hook gave up: a kernel read failed ({}); counted as lost (read-failed)",
                kind.name(),
                error
            );
        }
        _ => {}
    }
}

/// Counts a failed insert into a kernel map (full) that loses an event of `kind` or what
/// a later event of it needs.
#[inline(always)]
pub fn inserted<E>(result: Result<(), E>, kind: EventKind) {
    if result.is_err() {
        count(Stat::MapFull, kind as u32);
    }
}

/// The executable's inode, or `None` counted as [`Stat::InodeUnread`] when the kernel read
/// failed: the caller goes on without the check that needed it (the event is still sent).
#[inline(always)]
pub fn inode_or_count<T>(result: Result<Option<T>, i64>, kind: EventKind) -> Option<T> {
    match result {
        Ok(inode) => inode,
        Err(error) => {
            count(Stat::InodeUnread, kind as u32);
            aya_log_ebpf::debug!(
                &(),
                target: KERNEL_LOG_TARGET,
                "{} hook could not read the executable's inode ({}); counted (inode-unread)",
                kind.name(),
                error
            );
            None
        }
    }
}
