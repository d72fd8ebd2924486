//! Per-process GPU ioctl counts: the kernel counts (per CPU) by (process, class, type,
//! number); this turns them into periodic summaries of what is new, and forgets processes
//! that exited so the maps cannot grow without bound.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use aya::maps::{HashMap, MapData, PerCpuHashMap};
use monitor_common::{FdKey, IoctlKey};

use crate::event::{DeviceClass, IoctlCount};

pub struct IoctlTracker {
    counts: PerCpuHashMap<MapData, IoctlKey, u64>,
    fds: HashMap<MapData, FdKey, u32>,
    reported: StdHashMap<IoctlKey, u64>,
    /// Processes that may have entries in either map: those that opened an accelerator
    /// (their device event), and those found in the maps by the periodic full pass (which
    /// covers a device event lost on the way). Iterating a BPF hash map walks every bucket
    /// in the kernel, so a process that never opened an accelerator must not cost a walk:
    /// at each exit on the host, three walks took half of the daemon's CPU (profiled with
    /// `perf record` during the fork+exec benchmark; see BENCHMARKS.md).
    holders: HashSet<u32>,
}

impl IoctlTracker {
    pub fn new(
        counts: PerCpuHashMap<MapData, IoctlKey, u64>,
        fds: HashMap<MapData, FdKey, u32>,
    ) -> Self {
        IoctlTracker {
            counts,
            fds,
            reported: StdHashMap::new(),
            holders: HashSet::new(),
        }
    }

    /// A process opened an accelerator (the kernel may file its fd and count its ioctls).
    pub fn note(&mut self, tgid: u32) {
        self.holders.insert(tgid);
    }

    /// What was counted since the last call, by process (only `tgid` when given).
    pub fn collect(&mut self, only: Option<u32>) -> BTreeMap<u32, Vec<IoctlCount>> {
        let mut out: BTreeMap<u32, Vec<IoctlCount>> = BTreeMap::new();
        match only {
            Some(tgid) if !self.holders.contains(&tgid) => return out,
            Some(_) => {}
            // The periodic pass: whoever holds an fd or a counter, device event seen or not.
            None => {
                let fds = self.fds.keys().filter_map(Result::ok).map(|k| k.tgid);
                self.holders.extend(fds.collect::<Vec<_>>());
            }
        }
        let entries: Vec<(IoctlKey, u64)> = self
            .counts
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| only.is_none_or(|tgid| key.tgid == tgid))
            .map(|(key, values)| (key, values.iter().sum()))
            .collect();
        for (key, total) in entries {
            self.holders.insert(key.tgid);
            let before = self.reported.insert(key, total).unwrap_or(0);
            let Ok(class) = DeviceClass::try_from(key.class) else {
                continue;
            };
            if total > before {
                out.entry(key.tgid).or_default().push(IoctlCount {
                    class,
                    ioctl_type: key.ioctl_type as u8,
                    nr: key.nr as u8,
                    count: total - before,
                });
            }
        }
        out
    }

    /// Drops the counters and open accelerator fds of a process that exited.
    pub fn forget(&mut self, tgid: u32) {
        if !self.holders.remove(&tgid) {
            return;
        }
        let keys: Vec<IoctlKey> = self
            .counts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for key in keys {
            let _ = self.counts.remove(&key);
            self.reported.remove(&key);
        }
        let fds: Vec<FdKey> = self
            .fds
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for key in fds {
            let _ = self.fds.remove(&key);
        }
    }
}
