//! Writing a file so that its path always holds either the old or the new content, whole.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `dest` through `write` on a sibling temporary file, then renames it over `dest`: a
/// crash or a full disk at any moment leaves the previous file (or none) at `dest`, never a
/// partial one. The file gets the usual permissions (`0666` less the umask), and the leftovers
/// of writers of this same path that were killed (temporary files of processes no longer
/// running) are removed first, so crashes do not pile up full-size copies.
///
/// ```
/// let path = std::env::temp_dir().join("bit_hub_doc_atomic.txt");
/// bit_hub::write_atomically(&path, |f| {
///     use std::io::Write;
///     f.write_all(b"whole or nothing")
/// })?;
/// assert_eq!(std::fs::read_to_string(&path)?, "whole or nothing");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomically(
    dest: &Path,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    replaceable(dest)?;
    remove_stale_siblings(dest);
    let tmp = temp_sibling(dest)?;
    let result = (|| {
        // `create_new` neither follows a planted symlink nor truncates anything.
        let mut file = io::BufWriter::new(File::create_new(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}

/// Refuses a `dest` that renaming over would wrongly replace: a device (`/dev/full`), a
/// directory, a FIFO or socket, or a symbolic link (whose target a rename would leave unchanged
/// while replacing the link). Absent paths and regular files are fine.
fn replaceable(dest: &Path) -> io::Result<()> {
    let kind = match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) if meta.is_symlink() => "a symbolic link (name its target instead)",
        Ok(meta) if meta.is_dir() => "a directory",
        Ok(_) => "not a regular file",
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is {kind}: refusing to replace it", dest.display()),
    ))
}

/// `dir/.name.tmp-<pid>-<n>`: on the same filesystem as `dest`, so the rename is atomic.
fn temp_sibling(dest: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", dest.display()),
        )
    })?;
    Ok(dest.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Removes the temporary siblings of `dest` left by dead processes: ours
/// (`.name.tmp-<pid>-<n>`) and those of Burn's file stores (`name.<pid>-<n>.tmp`).
fn remove_stale_siblings(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let ours = format!(".{name}.tmp-");
    let burns = format!("{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = if let Some(rest) = file.strip_prefix(&ours) {
            rest.split('-').next()
        } else if let Some(rest) = file
            .strip_prefix(&burns)
            .and_then(|r| r.strip_suffix(".tmp"))
        {
            rest.split('-').next()
        } else {
            None
        };
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
            && !is_running(pid)
        {
            std::fs::remove_file(entry.path()).ok();
        }
    }
}

/// Whether process `pid` exists. Where that cannot be known (no `/proc`), every process is
/// assumed alive, so nothing is removed.
fn is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn links_directories_and_special_files_are_refused_not_replaced() {
        let dir = std::env::temp_dir().join(format!("bit-hub-special-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (dest, kind) in [
            (&link, "a symbolic link"),
            (&dir.join("sub"), "a directory"),
            (&fifo, "not a regular file"),
        ] {
            let err = write_atomically(dest, |f| f.write_all(b"new")).unwrap_err();
            assert!(err.to_string().contains(kind), "{err}");
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert!(std::fs::metadata(dir.join("sub")).unwrap().is_dir());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn leftovers_of_dead_writers_go_and_the_file_gets_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bit-hub-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("model.safetensors");
        // PIDs above the kernel's maximum (4194304) are never running.
        let dead_ours = dir.join(".model.safetensors.tmp-4999999-0");
        let dead_burns = dir.join("model.safetensors.4999999-3.tmp");
        let live = dir.join(format!(".model.safetensors.tmp-{}-99", std::process::id()));
        let unrelated = dir.join("other.4999999-1.tmp");
        for f in [&dead_ours, &dead_burns, &live, &unrelated] {
            std::fs::write(f, b"x").unwrap();
        }
        write_atomically(&dest, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!dead_ours.exists() && !dead_burns.exists());
        assert!(live.exists() && unrelated.exists());
        // 0666 less the umask: at least readable by the group and others under the usual 022.
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        let reference = dir.join("plain");
        std::fs::write(&reference, b"").unwrap();
        assert_eq!(
            mode,
            std::fs::metadata(&reference).unwrap().permissions().mode() & 0o777
        );
        // A failed write leaves the old content and no temporary file.
        let err = write_atomically(&dest, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).ok();
    }
}
