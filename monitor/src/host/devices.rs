//! Accelerator device numbers: which character-device majors belong to which class, and the
//! /dev node of a (major, minor) when the kernel could not give a path.

use std::{
    collections::BTreeMap, os::unix::fs::FileTypeExt as _, os::unix::fs::MetadataExt as _,
    path::Path,
};

use crate::event::DeviceClass;

/// Majors with a fixed number: NVIDIA's frontend (195), DRM (226), the accel subsystem (261).
const FIXED: [(u32, DeviceClass); 3] = [
    (195, DeviceClass::Nvidia),
    (226, DeviceClass::Dri),
    (261, DeviceClass::Accel),
];

/// Major -> class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccelMajors(BTreeMap<u32, DeviceClass>);

impl AccelMajors {
    /// The fixed majors plus the dynamic ones registered on this host (nvidia-uvm,
    /// nvidia-caps, kfd) from /proc/devices.
    pub fn detect() -> AccelMajors {
        let text = std::fs::read_to_string("/proc/devices").unwrap_or_default();
        Self::from_proc_devices(&text)
    }

    pub fn from_proc_devices(text: &str) -> AccelMajors {
        let mut majors: BTreeMap<u32, DeviceClass> = FIXED.into_iter().collect();
        let mut in_char = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("Character devices") {
                in_char = true;
                continue;
            }
            if line.starts_with("Block devices") {
                in_char = false;
                continue;
            }
            if !in_char {
                continue;
            }
            let Some((major, name)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let Ok(major) = major.parse::<u32>() else {
                continue;
            };
            let class = match name.trim() {
                "nvidia-uvm" => DeviceClass::NvidiaUvm,
                "nvidia-caps" | "nvidia-caps-imex-channels" => DeviceClass::NvidiaCaps,
                "nvidia-frontend" | "nvidia" => DeviceClass::Nvidia,
                "kfd" => DeviceClass::Kfd,
                "drm" => DeviceClass::Dri,
                "accel" => DeviceClass::Accel,
                _ => continue,
            };
            majors.insert(major, class);
        }
        AccelMajors(majors)
    }

    /// Declares another major as an accelerator class (`--accel-major N=class`).
    pub fn insert(&mut self, major: u32, class: DeviceClass) {
        self.0.insert(major, class);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, DeviceClass)> + '_ {
        self.0.iter().map(|(&m, &c)| (m, c))
    }
}

/// Parses `N=class` for `--accel-major`.
pub fn parse_accel_major(text: &str) -> Result<(u32, DeviceClass), String> {
    let (major, class) = text.split_once('=').ok_or_else(|| {
        format!("invalid --accel-major `{text}`: expected MAJOR=CLASS, e.g. 1=accel")
    })?;
    let major = major
        .trim()
        .parse()
        .map_err(|e| format!("invalid major in `{text}`: {e}"))?;
    let class = DeviceClass::from_name(class.trim()).ok_or_else(|| {
        let names: Vec<&str> = DeviceClass::ALL.iter().map(|c| c.name()).collect();
        format!(
            "unknown device class in `{text}`: use one of {}",
            names.join(", ")
        )
    })?;
    Ok((major, class))
}

/// Whether `path` (following symlinks, as an open does) is the character device (major, minor).
pub fn is_node(path: &Path, major: u32, minor: u32) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| {
        meta.file_type().is_char_device() && meta.rdev() == libc::makedev(major, minor)
    })
}

/// Finds the character device node for (major, minor) under `dir` (recursively, bounded).
pub fn find_node(dir: &Path, major: u32, minor: u32) -> Option<String> {
    fn walk(dir: &Path, rdev: u64, depth: u32) -> Option<String> {
        if depth > 3 {
            return None;
        }
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_char_device() && meta.rdev() == rdev {
                return Some(entry.path().to_string_lossy().into_owned());
            }
            if meta.is_dir() {
                if let Some(found) = walk(&entry.path(), rdev, depth + 1) {
                    return Some(found);
                }
            }
        }
        None
    }
    walk(dir, libc::makedev(major, minor), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dynamic_majors_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n234 nvidia-uvm\n235 nvidia-caps\n240 kfd\n\nBlock devices:\n  8 sd\n234 blkext\n";
        let majors = AccelMajors::from_proc_devices(text);
        let all: Vec<(u32, DeviceClass)> = majors.iter().collect();
        assert!(all.contains(&(195, DeviceClass::Nvidia)));
        assert!(all.contains(&(234, DeviceClass::NvidiaUvm)));
        assert!(all.contains(&(235, DeviceClass::NvidiaCaps)));
        assert!(all.contains(&(240, DeviceClass::Kfd)));
        assert!(all.contains(&(226, DeviceClass::Dri)));
        assert!(!all.contains(&(1, DeviceClass::Accel)));
    }

    #[test]
    fn parses_accel_major_flags() {
        assert_eq!(parse_accel_major("1=accel"), Ok((1, DeviceClass::Accel)));
        assert!(parse_accel_major("1").unwrap_err().contains("MAJOR=CLASS"));
        assert!(parse_accel_major("x=nvidia").is_err());
        assert!(parse_accel_major("1=tpu").unwrap_err().contains("nvidia"));
    }

    #[test]
    fn checks_a_node_by_its_numbers() {
        assert!(is_node(Path::new("/dev/null"), 1, 3));
        assert!(!is_node(Path::new("/dev/null"), 1, 5));
        assert!(!is_node(Path::new("/nonexistent"), 1, 3));
    }

    #[test]
    fn finds_dev_null() {
        assert_eq!(
            find_node(Path::new("/dev"), 1, 3).as_deref(),
            Some("/dev/null")
        );
    }
}
