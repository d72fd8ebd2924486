//! Which container a process runs in, read from its cgroup v2 path.
//!
//! Container runtimes name the cgroup of a container after its 64-hex-digit id, each
//! with its own prefix and suffix. The path is walked from the innermost component
//! outwards, so that the container a process is in wins over an outer one (a container
//! started inside another, or `/container` and `init.scope` directories that runtimes
//! and systemd create below the container's own cgroup).

use serde::Serialize;

use crate::host::workload::MetadataSlot;

/// The container a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    /// The container id: 64 lowercase hexadecimal digits.
    pub id: String,
    /// `"docker"`, `"containerd"`, `"cri-o"`, `"podman"` or `"unknown"`.
    pub runtime: &'static str,
    /// What the runtime's API says about it, filled in the background
    /// ([`crate::host::workload`]); shared by every process of the container, empty until then.
    #[serde(skip)]
    pub metadata: MetadataSlot,
}

/// Length of a container id, in hexadecimal digits.
const ID_LEN: usize = 64;

/// Prefixes of `<prefix>-<id>[.scope]` components, longest first so that
/// `crio-conmon-` is tried before `crio-`. `None` marks the cgroup of a runtime's
/// monitor process (conmon), which runs next to the container, not in it.
const PREFIXES: &[(&str, Option<&str>)] = &[
    ("cri-containerd-", Some("containerd")),
    ("libpod-conmon-", None),
    ("crio-conmon-", None),
    ("docker-", Some("docker")),
    ("libpod-", Some("podman")),
    ("crio-", Some("cri-o")),
];

/// What one path component says.
enum Component {
    Container(ContainerRef),
    /// The cgroup of conmon: the path is not a container's, whatever encloses it.
    Monitor,
    Other,
}

/// The container of a cgroup v2 path as written in `/proc/PID/cgroup` after `0::`,
/// or `None` when the path is not inside a container this recognises.
///
/// Recognised layouts (`<id>` is 64 lowercase hexadecimal digits):
/// - docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`
/// - containerd under Kubernetes: `/kubepods/besteffort/pod<uid>/<id>`,
///   `/kubepods.slice/.../cri-containerd-<id>.scope`,
///   `/system.slice/containerd.service/kubepods-...slice:cri-containerd:<id>`
/// - CRI-O: `.../crio-<id>.scope`, `.../crio-<id>.scope/container`; the conmon
///   cgroup `crio-conmon-<id>.scope` gives `None`
/// - podman: `/machine.slice/libpod-<id>.scope`, `.../libpod-<id>.scope/container`;
///   the conmon cgroup `libpod-conmon-<id>.scope` gives `None`
/// - a bare `<id>` component anywhere else gives runtime `"unknown"`
pub fn container_id(cgroup_path: &str) -> Option<ContainerRef> {
    let components: Vec<&str> = cgroup_path.split('/').filter(|c| !c.is_empty()).collect();
    for (index, component) in components.iter().enumerate().rev() {
        let parent = index.checked_sub(1).map(|i| components[i]);
        match classify(component, parent) {
            Component::Container(container) => return Some(container),
            Component::Monitor => return None,
            Component::Other => {}
        }
    }
    None
}

fn classify(component: &str, parent: Option<&str>) -> Component {
    // A bare id: the runtime is told by the directory that holds it.
    if is_id(component) {
        let runtime = match parent {
            Some("docker") => "docker",
            // The cgroupfs driver of the kubelet: `/kubepods/<qos>/pod<uid>/<id>`.
            // containerd is the default runtime; dockershim (before Kubernetes 1.24)
            // wrote the same layout and cannot be told apart from the path alone.
            Some(p) if p.starts_with("pod") => "containerd",
            _ => "unknown",
        };
        return container(component, runtime);
    }

    // The systemd cgroup driver of containerd when containerd itself does not run
    // under systemd: `kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>`.
    let mut parts = component.split(':');
    if let (Some(_slice), Some(kind), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let runtime = match kind {
            "cri-containerd" => "containerd",
            "crio" => "cri-o",
            "docker" => "docker",
            _ => return Component::Other,
        };
        return if is_id(id) {
            container(id, runtime)
        } else {
            Component::Other
        };
    }

    // `<prefix>-<id>.scope` under the systemd driver, `<prefix>-<id>` under cgroupfs.
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            if !is_id(id) {
                continue;
            }
            return match runtime {
                Some(runtime) => container(id, runtime),
                None => Component::Monitor,
            };
        }
    }
    Component::Other
}

fn container(id: &str, runtime: &'static str) -> Component {
    Component::Container(ContainerRef {
        id: id.to_owned(),
        runtime,
        metadata: MetadataSlot::default(),
    })
}

/// Runtimes write ids in lowercase; requiring it keeps unrelated hexadecimal-looking
/// names out.
fn is_id(text: &str) -> bool {
    text.len() == ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const POD: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const POD_SYSTEMD: &str = "0a1b2c3d_4e5f_6789_abcd_ef0123456789";

    fn expect(path: &str, runtime: &'static str) {
        let found = container_id(path);
        let wanted = ContainerRef {
            id: ID.to_owned(),
            runtime,
            metadata: MetadataSlot::default(),
        };
        assert_eq!(found, Some(wanted), "path {path}");
    }

    #[test]
    fn id_constant_is_well_formed() {
        assert!(is_id(ID));
    }

    #[test]
    fn docker_cgroupfs() {
        expect(&format!("/docker/{ID}"), "docker");
    }

    #[test]
    fn docker_systemd() {
        expect(&format!("/system.slice/docker-{ID}.scope"), "docker");
    }

    #[test]
    fn docker_systemd_with_systemd_inside() {
        expect(
            &format!("/system.slice/docker-{ID}.scope/init.scope"),
            "docker",
        );
    }

    #[test]
    fn kubernetes_cgroupfs() {
        expect(&format!("/kubepods/besteffort/pod{POD}/{ID}"), "containerd");
        // Guaranteed pods have no QoS level directory.
        expect(&format!("/kubepods/pod{POD}/{ID}"), "containerd");
    }

    #[test]
    fn containerd_systemd() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod{POD_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            ),
            "containerd",
        );
    }

    #[test]
    fn containerd_colon_form() {
        expect(
            &format!(
                "/system.slice/containerd.service/\
                 kubepods-burstable-pod{POD_SYSTEMD}.slice:cri-containerd:{ID}"
            ),
            "containerd",
        );
    }

    #[test]
    fn crio_scope() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{POD_SYSTEMD}.slice/crio-{ID}.scope"
            ),
            "cri-o",
        );
    }

    #[test]
    fn crio_scope_container_subdirectory() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{POD_SYSTEMD}.slice/crio-{ID}.scope/container"
            ),
            "cri-o",
        );
    }

    #[test]
    fn crio_conmon_is_not_a_container() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod{POD_SYSTEMD}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(container_id(&path), None);
    }

    #[test]
    fn podman_machine_slice() {
        expect(&format!("/machine.slice/libpod-{ID}.scope"), "podman");
    }

    #[test]
    fn podman_rootless() {
        expect(
            &format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/\
                 libpod-{ID}.scope/container"
            ),
            "podman",
        );
    }

    #[test]
    fn podman_conmon_is_not_a_container() {
        assert_eq!(
            container_id(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn innermost_container_wins() {
        let inner = "1111111111111111111111111111111111111111111111111111111111111111";
        assert_eq!(
            container_id(&format!("/docker/{ID}/docker/{inner}")),
            Some(ContainerRef {
                id: inner.to_owned(),
                runtime: "docker",
                metadata: MetadataSlot::default(),
            })
        );
    }

    #[test]
    fn bare_id_elsewhere_is_unknown_runtime() {
        expect(&format!("/some/where/{ID}"), "unknown");
    }

    #[test]
    fn negatives() {
        for path in [
            "/user.slice/user-0.slice/session-1.scope",
            "/",
            "",
            "/system.slice/containerd.service",
            "/kubepods.slice/kubepods-besteffort.slice",
            // 63 digits.
            &format!("/docker/{}", &ID[1..]),
            &format!("/system.slice/docker-{}.scope", &ID[1..]),
            // 65 digits.
            &format!("/docker/{ID}0"),
            // Uppercase is not what runtimes write.
            &format!("/docker/{}", ID.to_uppercase()),
            // Unknown prefix.
            &format!("/system.slice/foo-{ID}.scope"),
            // Unknown kind in the colon form.
            &format!("/system.slice/containerd.service/pod.slice:foo:{ID}"),
        ] {
            assert_eq!(container_id(path), None, "path {path}");
        }
    }
}
