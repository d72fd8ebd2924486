//! The kernel side as user space drives it: loading and attaching the eBPF programs
//! ([`sensor`]), the running kernel's type information and syscall tables ([`btf`],
//! [`syscalls`]), the filesystems they need ([`mounts`]), the encoding of a configuration
//! into the policy maps ([`policy`]), and the fanotify host guards ([`guard`]).
//!
//! Third layer of the data flow: it uses [`crate::event`], [`crate::host`] and
//! [`crate::config`], and nothing above them.

pub mod btf;
pub mod guard;
pub mod mounts;
pub mod policy;
pub mod sensor;
pub mod syscalls;
