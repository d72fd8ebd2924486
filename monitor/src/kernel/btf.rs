//! A small reader of raw BTF (the kernel's type information), just enough to find the byte
//! offsets of struct members. The eBPF programs need them because rustc emits no CO-RE
//! relocations: the daemon reads the running kernel's layout and passes it in
//! ([`KernelOffsets`]).

use std::fmt;

use monitor_common::KernelOffsets;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;
const INT: u32 = 1;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
/// Bound on typedef chains and anonymous-member nesting (real kernels nest a few levels).
const MAX_DEPTH: usize = 32;
/// Bound on the members visited by one lookup, so a malformed file cannot make it explode.
const MAX_STEPS: usize = 1 << 20;

#[derive(Debug)]
pub enum BtfError {
    /// The BTF file could not be read.
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The data is not valid BTF.
    Malformed(String),
    NoStruct(String),
    NoMember {
        strukt: String,
        member: String,
    },
    Bitfield {
        strukt: String,
        member: String,
    },
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BtfError::Read { path, source } => write!(
                f,
                "failed to read {path}: {source}; the kernel needs CONFIG_DEBUG_INFO_BTF=y"
            ),
            BtfError::Malformed(what) => write!(f, "malformed BTF: {what}"),
            BtfError::NoStruct(s) => write!(f, "failed to find struct `{s}` in the kernel's BTF"),
            BtfError::NoMember { strukt, member } => write!(
                f,
                "failed to find member `{member}` in struct `{strukt}` in the kernel's BTF"
            ),
            BtfError::Bitfield { strukt, member } => write!(
                f,
                "member `{member}` of struct `{strukt}` is a bitfield, which cannot be read by byte offset"
            ),
        }
    }
}

impl std::error::Error for BtfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BtfError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    at.checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed(format!("truncated at byte {at}")))
}

struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// INT only: the encoding word (bits 0-7 width, 16-23 bit offset).
    int_encoding: u32,
    /// STRUCT/UNION only.
    members: Vec<Member>,
}

/// Parsed BTF: the types (id 1 is `types[0]`) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Btf {{ {} types }}", self.types.len())
    }
}

impl Btf {
    /// Parses a raw (little-endian) BTF blob such as `/sys/kernel/btf/vmlinux`.
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        let magic = bytes.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(malformed("bad magic (not little-endian BTF)"));
        }
        let version = bytes.get(2).copied().unwrap_or(0);
        if version != 1 {
            return Err(malformed(format!("unsupported version {version}")));
        }
        let hdr_len = read_u32(bytes, 4)? as usize;
        if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
            return Err(malformed(format!("bad header length {hdr_len}")));
        }
        let section = |off_at: usize, what: &str| -> Result<&[u8], BtfError> {
            let (off, len) = (
                read_u32(bytes, off_at)? as usize,
                read_u32(bytes, off_at + 4)?,
            );
            let start = hdr_len.checked_add(off);
            start
                .and_then(|s| Some(s..s.checked_add(len as usize)?))
                .and_then(|r| bytes.get(r))
                .ok_or_else(|| malformed(format!("{what} section out of bounds")))
        };
        let data = section(8, "type")?;
        let strings = section(16, "string")?.to_vec();

        let mut types = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let id = types.len() + 1;
            let name_off = read_u32(data, pos)?;
            let info = read_u32(data, pos + 4)?;
            let size_or_type = read_u32(data, pos + 8)?;
            pos += 12;
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31 != 0);
            let vlen = vlen as usize;
            let trailing = match kind {
                2 | 7..=12 | 16 | 18 => 0,
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                _ => return Err(malformed(format!("type {id} has unknown kind {kind}"))),
            };
            let extra = pos
                .checked_add(trailing)
                .and_then(|end| data.get(pos..end))
                .ok_or_else(|| malformed(format!("type {id} is truncated")))?;
            pos += trailing;
            let mut ty = Type {
                name_off,
                kind,
                kind_flag,
                size_or_type,
                int_encoding: 0,
                members: Vec::new(),
            };
            if kind == INT {
                ty.int_encoding = read_u32(extra, 0)?;
            } else if kind == STRUCT || kind == UNION {
                for at in (0..extra.len()).step_by(12) {
                    ty.members.push(Member {
                        name_off: read_u32(extra, at)?,
                        type_id: read_u32(extra, at + 4)?,
                        offset: read_u32(extra, at + 8)?,
                    });
                }
            }
            types.push(ty);
        }
        Ok(Btf { types, strings })
    }

    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let bytes = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read {
            path: VMLINUX_BTF.to_string(),
            source,
        })?;
        Btf::parse(&bytes)
    }

    /// Byte offset of `member` in the struct (or union) `struct_name`, looking into anonymous
    /// struct/union members. Of several types with that name, the first with the member wins.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let mut seen = false;
        for ty in &self.types {
            if !matches!(ty.kind, STRUCT | UNION)
                || self.name(ty.name_off)? != struct_name.as_bytes()
            {
                continue;
            }
            seen = true;
            let mut steps = MAX_STEPS;
            if let Some((bits, bitfield)) = self.find(ty, member.as_bytes(), 0, &mut steps)? {
                if bitfield {
                    return Err(BtfError::Bitfield {
                        strukt: struct_name.to_string(),
                        member: member.to_string(),
                    });
                }
                return Ok(bits / 8);
            }
        }
        Err(if seen {
            BtfError::NoMember {
                strukt: struct_name.to_string(),
                member: member.to_string(),
            }
        } else {
            BtfError::NoStruct(struct_name.to_string())
        })
    }

    /// The NUL-terminated string at `off` in the string section (without the NUL).
    fn name(&self, off: u32) -> Result<&[u8], BtfError> {
        if off == 0 && self.strings.is_empty() {
            return Ok(&[]);
        }
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0);
        end.map(|end| &rest[..end])
            .ok_or_else(|| malformed(format!("bad string offset {off}")))
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        let index = (id as usize).checked_sub(1);
        index
            .and_then(|i| self.types.get(i))
            .ok_or_else(|| malformed(format!("reference to missing type {id}")))
    }

    /// Follows typedef/volatile/const/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.get(id)?;
            if !matches!(ty.kind, 8..=11 | 18) {
                return Ok(ty);
            }
            id = ty.size_or_type;
        }
        Err(malformed("type modifier chain too long"))
    }

    /// Bit offset of `member` in `ty` and whether it is a bitfield.
    fn find(
        &self,
        ty: &Type,
        member: &[u8],
        depth: usize,
        steps: &mut usize,
    ) -> Result<Option<(u32, bool)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deeply"));
        }
        for m in &ty.members {
            *steps = steps
                .checked_sub(1)
                .ok_or_else(|| malformed("member lookup too long"))?;
            let (bits, bitfield_size) = if ty.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let name = self.name(m.name_off)?;
            if name == member {
                let target = self.resolve(m.type_id)?;
                let int_bitfield = !ty.kind_flag && target.kind == INT && {
                    let (width, shift) = (
                        target.int_encoding & 0xff,
                        (target.int_encoding >> 16) & 0xff,
                    );
                    shift != 0 || u64::from(width) != u64::from(target.size_or_type) * 8
                };
                return Ok(Some((
                    bits,
                    bitfield_size != 0 || bits % 8 != 0 || int_bitfield,
                )));
            }
            if name.is_empty() && m.type_id != 0 {
                let inner = self.resolve(m.type_id)?;
                if matches!(inner.kind, STRUCT | UNION) {
                    if let Some((off, bitfield)) = self.find(inner, member, depth + 1, steps)? {
                        let total = bits
                            .checked_add(off)
                            .ok_or_else(|| malformed("offset overflow"))?;
                        return Ok(Some((total, bitfield)));
                    }
                }
            }
        }
        Ok(None)
    }
}

macro_rules! offsets {
    ($($field:ident: $s:literal, $m:literal;)*) => {
        /// Reads every offset the eBPF programs need from `btf`.
        pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
            Ok(KernelOffsets {
                $($field: btf.member_offset($s, $m)?,)*
                inode_ctime_sec: inode_ctime(btf)?.0,
                inode_ctime_nsec: inode_ctime(btf)?.1,
            })
        }

        #[cfg(test)]
        fn named_offsets(o: &KernelOffsets) -> Vec<(&'static str, u32)> {
            vec![$((stringify!($field), o.$field)),*]
        }
    };
}

/// The offsets of the seconds and nanoseconds of `inode`'s change time: `i_ctime_sec` and
/// `i_ctime_nsec` from 6.11, before that the members (`tv_sec`, then `tv_nsec` 8 bytes on)
/// of the `timespec64` `__i_ctime` (6.6) or `i_ctime`.
fn inode_ctime(btf: &Btf) -> Result<(u32, u32), BtfError> {
    if let (Ok(sec), Ok(nsec)) = (
        btf.member_offset("inode", "i_ctime_sec"),
        btf.member_offset("inode", "i_ctime_nsec"),
    ) {
        return Ok((sec, nsec));
    }
    let timespec = btf
        .member_offset("inode", "__i_ctime")
        .or_else(|_| btf.member_offset("inode", "i_ctime"))?;
    Ok((timespec, timespec + 8))
}

offsets! {
    task_tgid: "task_struct", "tgid";
    task_pid: "task_struct", "pid";
    task_group_leader: "task_struct", "group_leader";
    task_real_parent: "task_struct", "real_parent";
    task_start_boottime: "task_struct", "start_boottime";
    task_exit_code: "task_struct", "exit_code";
    task_signal: "task_struct", "signal";
    task_mm: "task_struct", "mm";
    task_fs: "task_struct", "fs";
    signal_live: "signal_struct", "live";
    mm_arg_start: "mm_struct", "arg_start";
    mm_arg_end: "mm_struct", "arg_end";
    fs_root: "fs_struct", "root";
    path_mnt: "path", "mnt";
    path_dentry: "path", "dentry";
    dentry_parent: "dentry", "d_parent";
    dentry_name: "dentry", "d_name";
    qstr_len: "qstr", "len";
    qstr_name: "qstr", "name";
    mount_mnt: "mount", "mnt";
    mount_parent: "mount", "mnt_parent";
    mount_mountpoint: "mount", "mnt_mountpoint";
    vfsmount_root: "vfsmount", "mnt_root";
    binprm_file: "linux_binprm", "file";
    binprm_filename: "linux_binprm", "filename";
    file_path: "file", "f_path";
    task_files: "task_struct", "files";
    files_fdt: "files_struct", "fdt";
    fdtable_max_fds: "fdtable", "max_fds";
    fdtable_fd: "fdtable", "fd";
    file_flags: "file", "f_flags";
    file_inode: "file", "f_inode";
    file_private_data: "file", "private_data";
    inode_mode: "inode", "i_mode";
    inode_rdev: "inode", "i_rdev";
    inode_ino: "inode", "i_ino";
    inode_sb: "inode", "i_sb";
    sb_dev: "super_block", "s_dev";
    fs_pwd: "fs_struct", "pwd";
    socket_type: "socket", "type";
    socket_sk: "socket", "sk";
    skc_daddr: "sock_common", "skc_daddr";
    skc_rcv_saddr: "sock_common", "skc_rcv_saddr";
    skc_dport: "sock_common", "skc_dport";
    skc_num: "sock_common", "skc_num";
    skc_family: "sock_common", "skc_family";
    skc_v6_daddr: "sock_common", "skc_v6_daddr";
    skc_v6_rcv_saddr: "sock_common", "skc_v6_rcv_saddr";
    dentry_inode: "dentry", "d_inode";
    binprm_argc: "linux_binprm", "argc";
    inode_nlink: "inode", "i_nlink";
    inode_private: "inode", "i_private";
    file_f_op: "file", "f_op";
    fop_open: "file_operations", "open";
    proc_inode_pid: "proc_inode", "pid";
    proc_inode_vfs_inode: "proc_inode", "vfs_inode";
    pid_tasks: "pid", "tasks";
    task_pid_links: "task_struct", "pid_links";
    bpf_map_id: "bpf_map", "id";
    bpf_link_id: "bpf_link", "id";
    bpf_prog_aux: "bpf_prog", "aux";
    bpf_prog_aux_id: "bpf_prog_aux", "id";
    inode_generation: "inode", "i_generation";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw BTF blobs by hand.
    struct Blob {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Blob {
        fn new() -> Self {
            Blob {
                strings: vec![0],
                types: Vec::new(),
            }
        }

        fn s(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn ty(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, size: u32, extra: &[u32]) {
            let info = vlen | (kind << 24) | (u32::from(flag) << 31);
            for w in [self.s(name), info, size].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        fn strukt(
            &mut self,
            name: &str,
            kind: u32,
            flag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) {
            let mut extra = Vec::new();
            for &(n, t, off) in members {
                extra.extend([self.s(n), t, off]);
            }
            self.ty(name, kind, flag, members.len() as u32, size, &extra);
        }

        fn build(&self) -> Vec<u8> {
            let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
            let mut out = vec![0x9f, 0xeb, 1, 0];
            for w in [24, 0, tl, tl, sl] {
                out.extend_from_slice(&u32::to_le_bytes(w));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Blob::new();
        b.ty("int", INT, false, 0, 4, &[32]); // 1
        b.ty("", 2, false, 0, 1, &[]); // 2: int *
        b.strukt("", STRUCT, false, 8, &[("hash", 1, 0), ("len", 1, 32)]); // 3
        b.strukt("", UNION, false, 8, &[("", 3, 0), ("word", 1, 0)]); // 4
        b.ty("", 10, false, 0, 4, &[]); // 5: const union
        b.strukt(
            "outer",
            STRUCT,
            false,
            24,
            &[("a", 1, 0), ("", 5, 64), ("name", 2, 128)],
        ); // 6
        b.strukt("flags", STRUCT, true, 8, &[("x", 1, 3 << 24), ("y", 1, 32)]); // 7
        b.strukt("dup", STRUCT, false, 4, &[("a", 1, 0)]); // 8
        b.strukt("dup", STRUCT, false, 8, &[("a", 1, 0), ("z", 1, 32)]); // 9
        b.ty("u_t", 8, false, 0, 4, &[]); // 10: typedef of the union
        b.strukt("td", STRUCT, false, 12, &[("b", 1, 0), ("", 10, 32)]); // 11
        b.ty("bf3", INT, false, 0, 4, &[3]); // 12: a 3-bit int
        b.strukt("old", STRUCT, false, 4, &[("f", 12, 0)]); // 13
        let e = b.s("E_ONE");
        b.ty("e", 6, false, 1, 4, &[e, 1]); // 14: enum
        b.ty("", 13, false, 1, 1, &[0, 1]); // 15: func proto
        b.build()
    }

    #[test]
    fn nested_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        let off = |s, m| btf.member_offset(s, m).unwrap();
        assert_eq!(off("outer", "a"), 0);
        assert_eq!(off("outer", "hash"), 8);
        assert_eq!(off("outer", "len"), 12);
        assert_eq!(off("outer", "word"), 8);
        assert_eq!(off("outer", "name"), 16);
        assert_eq!(off("flags", "y"), 4);
        assert_eq!(off("dup", "z"), 4);
        assert_eq!(off("td", "len"), 8);
    }

    #[test]
    fn lookup_errors() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf.member_offset("outer", "nope").unwrap_err();
        assert!(matches!(err, BtfError::NoMember { .. }));
        assert_eq!(
            err.to_string(),
            "failed to find member `nope` in struct `outer` in the kernel's BTF"
        );
        let kind = |s, m| btf.member_offset(s, m).unwrap_err();
        assert!(matches!(kind("missing", "a"), BtfError::NoStruct(_)));
        assert!(matches!(kind("flags", "x"), BtfError::Bitfield { .. }));
        assert!(matches!(kind("old", "f"), BtfError::Bitfield { .. }));
    }

    #[test]
    fn malformed_blobs_error() {
        let blob = sample();
        for len in 0..blob.len() {
            assert!(
                Btf::parse(&blob[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(Btf::parse(&bad).unwrap_err().to_string().contains("magic"));

        let mut b = Blob::new();
        b.ty("x", 25, false, 0, 0, &[]);
        assert!(Btf::parse(&b.build())
            .unwrap_err()
            .to_string()
            .contains("unknown kind 25"));

        // Corrupt single bytes: errors are fine, panics and hangs are not.
        for i in 0..blob.len() {
            for v in [0x00, 0x01, 0x0f, 0x80, 0xff] {
                let mut b = blob.clone();
                b[i] = v;
                if let Ok(btf) = Btf::parse(&b) {
                    for (s, m) in [("outer", "len"), ("td", "len"), ("dup", "z"), ("x", "y")] {
                        let _ = btf.member_offset(s, m);
                    }
                }
            }
        }
    }

    /// `bits_offset` of a direct member in `bpftool btf dump ... format raw` output.
    fn raw_member_bits(dump: &str, strukt: &str, member: &str) -> Option<u32> {
        let head = format!("] STRUCT '{strukt}' ");
        let want = format!("'{member}' ");
        let mut lines = dump
            .lines()
            .skip_while(|l| !(l.starts_with('[') && l.contains(&head)));
        lines.next()?;
        let line = lines
            .take_while(|l| !l.starts_with('['))
            .find(|l| l.trim_start().starts_with(&want))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("bits_offset="))?
            .parse()
            .ok()
    }

    #[test]
    fn running_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("note: {VMLINUX_BTF} is absent; skipping the running-kernel test");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        let o = kernel_offsets(&btf).unwrap();
        eprintln!("{o:#?}");
        // Legitimately zero: the first member of their struct.
        assert_eq!(o.path_mnt, 0);
        assert_eq!(o.vfsmount_root, 0);
        assert_eq!(o.path_dentry, 8);
        #[cfg(target_endian = "little")]
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8));
        for (name, v) in named_offsets(&o) {
            if ![
                "path_mnt",
                "vfsmount_root",
                "fdtable_max_fds",
                "proc_inode_pid",
                "inode_mode",
                "skc_daddr",
            ]
            .contains(&name)
            {
                assert_ne!(v, 0, "{name}");
            }
        }
        assert_eq!(o.task_tgid, o.task_pid + 4);
        // The change time, under whichever name this kernel gives it.
        assert_ne!(o.inode_ctime_sec, 0);
        assert!(o.inode_ctime_nsec > o.inode_ctime_sec);
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        assert!(o.dentry_name > o.dentry_parent);
        assert_eq!(o.mount_mountpoint, o.mount_parent + 8);

        let bpftool = ["bpftool", "/usr/sbin/bpftool", "/usr/local/sbin/bpftool"]
            .iter()
            .find_map(|p| {
                let out = std::process::Command::new(p)
                    .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            });
        let Some(dump) = bpftool else {
            eprintln!("note: bpftool is not installed; skipping the cross-check");
            return;
        };
        for (s, m, ours) in [
            ("task_struct", "pid", o.task_pid),
            ("task_struct", "real_parent", o.task_real_parent),
            ("task_struct", "mm", o.task_mm),
            // (d_name sits in an anonymous union on new kernels: the raw dump lists it there.)
            ("dentry", "d_parent", o.dentry_parent),
            ("linux_binprm", "filename", o.binprm_filename),
        ] {
            assert_eq!(raw_member_bits(&dump, s, m), Some(ours * 8), "{s}.{m}");
        }
    }
}
