//! Processes as `/proc` shows them: what stopping a command's leftovers looks for, inside a
//! box (its own PID namespace) and on the host (`--sandbox none`).

/// One process, from `/proc/PID/stat`.
pub(crate) struct Proc {
    pub pid: i32,
    pub name: String,
    /// Exited (a zombie, or dead): it runs no code and holds no files any more.
    pub gone: bool,
    pub pgrp: i32,
}

/// `PID (COMM) STATE PPID PGRP …` → name, whether it has exited, process group. The name
/// may hold spaces and parentheses.
pub(crate) fn parse_stat(stat: &str) -> Option<(String, bool, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?;
    let _ppid = rest.next()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((name, matches!(state, "Z" | "X" | "x"), pgrp))
}

/// Every process of this `/proc` but PID 1 (and the pids `skip` names), in pid order.
pub(crate) fn list(skip: impl Fn(i32) -> bool) -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 1 || skip(pid) {
            continue;
        }
        let Some((name, gone, pgrp)) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            continue;
        };
        out.push(Proc {
            pid,
            name,
            gone,
            pgrp,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}
