//! What user space knows about the host, kept from the events and from `/proc`: the process
//! table, the cgroup hierarchy, containers and their runtime metadata, accelerator devices
//! and per-process GPU ioctl counts.
//!
//! Second layer of the data flow: it uses only [`crate::event`].

pub mod cgroup;
pub mod container;
pub mod devices;
pub mod ioctls;
pub mod process;
pub mod procfs;
pub mod workload;
