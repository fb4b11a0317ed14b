//! The memory a process's control groups still allow it: the limit that kills a run under
//! SLURM, `systemd-run -p MemoryMax=`, Kubernetes or Docker, whether or not the process sees
//! its cgroup as the root of `/sys/fs/cgroup` (a cgroup namespace) or deep inside it (a host
//! without one).

use std::path::{Path, PathBuf};

/// Where the kernel mounts the cgroup filesystem.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Bytes the cgroups of this process still allow it to allocate, from `/proc/self/cgroup` and
/// the cgroup filesystem mounted at `root`; `None` where no cgroup limits memory.
pub(crate) fn headroom_of_this_process(root: &Path) -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    headroom(&membership, root)
}

/// The smallest headroom over the process's cgroup and every ancestor up to `root`: each
/// level's limit less what that level uses, page cache that the kernel reclaims first
/// (`inactive_file`) not counted as used, since it does not stand in the way of an allocation.
///
/// `membership` is `/proc/self/cgroup`: cgroup v2's `0::/path`, the limit the lower of
/// `memory.max` and `memory.high` (the throttling point); or v1's `N:…memory…:/path`, the limit
/// `memory.limit_in_bytes`.
fn headroom(membership: &str, root: &Path) -> Option<u64> {
    let v2 = membership.lines().find_map(|l| l.strip_prefix("0::"));
    let v1 = membership.lines().find_map(|l| {
        let mut fields = l.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let (hierarchy, path, files) = match (v1, v2) {
        (Some(path), _) => (root.join("memory"), path, &V1),
        (None, Some(path)) => (root.to_path_buf(), path, &V2),
        (None, None) => return None,
    };
    levels(&hierarchy, path)
        .iter()
        .filter_map(|dir| files.headroom(dir))
        .min()
}

/// The process's cgroup directory and its ancestors up to `hierarchy`. A path that is not
/// there (the membership names a cgroup outside this mount's namespace) is the mount itself.
fn levels(hierarchy: &Path, path: &str) -> Vec<PathBuf> {
    let own = hierarchy.join(path.trim_start_matches('/'));
    let own = match own.is_dir() && !path.split('/').any(|p| p == "..") {
        true => own,
        false => hierarchy.to_path_buf(),
    };
    own.ancestors()
        .take_while(|dir| dir.starts_with(hierarchy))
        .map(Path::to_path_buf)
        .collect()
}

/// The files of one cgroup version.
struct Files {
    /// The limits; the lowest counts.
    limits: &'static [&'static str],
    /// What the group uses, page cache included.
    usage: &'static str,
    /// The `memory.stat` key of inactive page cache.
    inactive_file: &'static str,
}

const V2: Files = Files {
    limits: &["memory.max", "memory.high"],
    usage: "memory.current",
    inactive_file: "inactive_file",
};

const V1: Files = Files {
    limits: &["memory.limit_in_bytes"],
    usage: "memory.usage_in_bytes",
    inactive_file: "total_inactive_file",
};

/// v1 writes "no limit" as the largest page-aligned `i64`; anything this large is none.
const UNLIMITED: u64 = 1 << 60;

impl Files {
    /// Limit less non-reclaimable usage at `dir`, where `dir` has a limit.
    fn headroom(&self, dir: &Path) -> Option<u64> {
        let limit = self
            .limits
            .iter()
            .filter_map(|file| read_number(&dir.join(file)))
            .filter(|&limit| limit < UNLIMITED)
            .min()?;
        let usage = read_number(&dir.join(self.usage)).unwrap_or(0);
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat
            .lines()
            .find_map(|l| l.strip_prefix(self.inactive_file)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Some(limit.saturating_sub(usage.saturating_sub(inactive)))
    }
}

/// A file holding one number; `max` (no limit) and anything unreadable are `None`.
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bit_testkit::ScratchDir;

    const MIB: u64 = 1 << 20;

    fn write(dir: &Path, files: &[(&str, String)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn v2_takes_the_tightest_level_up_to_the_root_and_discounts_page_cache() {
        let root = ScratchDir::new("cgroup-v2");
        let job = root.join("system.slice/job.scope");
        // The job: no memory.max of its own, memory.high 800 MiB; 300 MiB used, 200 of them
        // inactive page cache: 700 MiB of headroom.
        write(
            &job,
            &[
                ("memory.max", "max\n".into()),
                ("memory.high", format!("{}\n", 800 * MIB)),
                ("memory.current", format!("{}\n", 300 * MIB)),
                (
                    "memory.stat",
                    format!("anon 1\ninactive_file {}\n", 200 * MIB),
                ),
            ],
        );
        // Its slice: 1000 MiB, 600 used of which 100 reclaimable: 500 MiB, the tighter.
        write(
            &root.join("system.slice"),
            &[
                ("memory.max", format!("{}\n", 1000 * MIB)),
                ("memory.current", format!("{}\n", 600 * MIB)),
                ("memory.stat", format!("inactive_file {}\n", 100 * MIB)),
            ],
        );
        let membership = "0::/system.slice/job.scope\n";
        assert_eq!(headroom(membership, &root), Some(500 * MIB));
        // The slice unlimited: the job's own memory.high counts.
        write(
            &root.join("system.slice"),
            &[("memory.max", "max\n".into())],
        );
        assert_eq!(headroom(membership, &root), Some(700 * MIB));
    }

    #[test]
    fn a_namespaced_container_reads_the_root_of_its_mount() {
        let root = ScratchDir::new("cgroup-ns");
        write(
            &root,
            &[
                ("memory.max", format!("{}\n", 4096 * MIB)),
                ("memory.current", format!("{}\n", 1024 * MIB)),
                ("memory.stat", "inactive_file 0\n".into()),
            ],
        );
        assert_eq!(headroom("0::/\n", &root), Some(3072 * MIB));
        // A path from outside the namespace (not under this mount) is the mount itself.
        assert_eq!(headroom("0::/../other\n", &root), Some(3072 * MIB));
        assert_eq!(headroom("0::/not/here\n", &root), Some(3072 * MIB));
    }

    #[test]
    fn v1_reads_the_memory_hierarchy_and_ignores_its_no_limit_value() {
        let root = ScratchDir::new("cgroup-v1");
        let job = root.join("memory/slurm/uid_1/job_7");
        write(
            &job,
            &[
                ("memory.limit_in_bytes", format!("{}\n", 2048 * MIB)),
                ("memory.usage_in_bytes", format!("{}\n", 1536 * MIB)),
                (
                    "memory.stat",
                    format!("cache 9\ntotal_inactive_file {}\n", 1024 * MIB),
                ),
            ],
        );
        write(
            &root.join("memory/slurm"),
            &[("memory.limit_in_bytes", "9223372036854771712\n".into())],
        );
        let membership = "12:cpuset:/\n4:memory:/slurm/uid_1/job_7\n1:name=systemd:/x\n";
        assert_eq!(headroom(membership, &root), Some(1536 * MIB));
    }

    #[test]
    fn no_limit_anywhere_is_none() {
        let root = ScratchDir::new("cgroup-none");
        write(&root.join("user.slice"), &[("memory.max", "max\n".into())]);
        assert_eq!(headroom("0::/user.slice\n", &root), None);
        assert_eq!(headroom("", &root), None);
        assert_eq!(headroom("0::/user.slice\n", &root.join("absent")), None);
    }
}
