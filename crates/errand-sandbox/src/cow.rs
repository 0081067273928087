//! Copy-on-write workspaces: an overlay mount of a per-attempt upper directory over a cached,
//! read-only checkout of the base commit, so that preparing a workspace costs about the same
//! for ten files as for fifty thousand.
//!
//! Mounting an overlay needs a mount namespace the process owns. [`enter_private_namespace`]
//! gives the whole server one (a user namespace mapping its user to root, and a private mount
//! namespace), before any thread starts. The boxes inherit its mounts. Where this is not
//! possible, callers fall back to a full checkout.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static PRIVATE_NS: AtomicBool = AtomicBool::new(false);

/// Moves this process into its own user and mount namespaces, so it can mount overlays.
/// Must be called while the process is single-threaded. Returns why not, on failure; the
/// process is then unchanged.
pub fn enter_private_namespace() -> Result<(), String> {
    use nix::sched::{CloneFlags, unshare};
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare: {e}"))?;
    for (path, content) in [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ] {
        std::fs::write(path, content).map_err(|e| format!("writing {path}: {e}"))?;
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    PRIVATE_NS.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether [`enter_private_namespace`] succeeded in this process.
pub fn in_private_namespace() -> bool {
    PRIVATE_NS.load(Ordering::SeqCst)
}

/// Mounts `lower` (read-only) under `upper` at `merged`, with `work` as overlayfs' work dir.
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Result<(), String> {
    mount_overlay_layers(&[lower], upper, work, merged)
}

/// Like [`mount_overlay`] with several read-only lower layers, the first on top (a cached
/// setup snapshot over the base checkout, for example).
pub fn mount_overlay_layers(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> Result<(), String> {
    if lowers.is_empty() {
        return Err("an overlay needs at least one lower layer".into());
    }
    for d in [upper, work, merged] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let lowerdir = lowers
        .iter()
        .map(|l| escape(l))
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},userxattr",
        escape(upper),
        escape(work)
    );
    nix::mount::mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting the overlay on {}: {e}", merged.display()))
}

/// Detaches a mount (no error if nothing is mounted there).
pub fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

/// overlayfs splits options on ',' and lowerdir on ':'; escape both.
fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}
