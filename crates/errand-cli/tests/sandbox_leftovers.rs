//! `SandboxBox::stop_leftovers` on the real box: processes a command left running — in its
//! process group or out of it (`setsid`, a double fork, `nohup`, a respawning daemon) — are
//! killed by the box's PID 1, and the box runs the next command as before.
//!
//! Linux only; the machine must be able to start a box (`errand sandbox check`).

#[path = "common/sandbox.rs"]
mod sandbox;

use errand_sandbox::ns::{NamespaceBackend, NsOptions};
use errand_sandbox::{BoxSpec, ExecRequest, ExecResult, SandboxBackend, SandboxBox, Stream};
use sandbox::{BIN, assert_all_running, assert_none_left, host_sleeps, unique_sleep};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn new_box(ws: &std::path::Path, scratch: &std::path::Path) -> Box<dyn SandboxBox> {
    let backend = NamespaceBackend::new(NsOptions {
        exe: Some(BIN.into()),
        pool: 0,
        ..Default::default()
    })
    .unwrap();
    backend
        .create(BoxSpec {
            workspace: ws.to_path_buf(),
            scratch: scratch.to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Runs `script` with `bash -c`; returns how it ended and its stdout (stderr appended).
/// Background processes must not keep the output pipes open (the output is read to its end).
async fn run(b: &dyn SandboxBox, script: &str, timeout: Duration) -> (ExecResult, String) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let res = b
        .exec(
            ExecRequest {
                command: script.into(),
                workdir: None,
                timeout,
                cancel: CancellationToken::new(),
            },
            tx,
        )
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read = async {
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.extend(c.data),
                Stream::Stderr => err.extend(c.data),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the command's output never ended");
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    (res, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_that_left_the_process_group_are_stopped_and_the_box_goes_on() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let b = new_box(ws.path(), scratch.path()).await;
    let (a, nohup, waited, respawned) = (
        unique_sleep("986.1"),
        unique_sleep("986.2"),
        unique_sleep("986.3"),
        unique_sleep("986.4"),
    );
    let script = format!(
        "( setsid sleep {a} >/dev/null 2>&1 & ) ; nohup sleep {nohup} >/dev/null 2>&1 & \
         setsid sh -c 'sleep {waited} & wait' >/dev/null 2>&1 & \
         setsid sh -c 'while :; do (setsid sleep {respawned} >/dev/null 2>&1 &); sleep 0.05; done' \
         >/dev/null 2>&1 & echo started"
    );
    let (res, out) = run(b.as_ref(), &script, Duration::from_secs(30)).await;
    assert_eq!((res.exit_code, out.as_str()), (Some(0), "started\n"));
    // The command is over, its processes are not: they left its process group.
    assert_all_running(&[&a, &nohup, &waited, &respawned]);

    let stopped = b.stop_leftovers().await.unwrap();
    assert!(stopped.count >= 6, "{stopped:?}");
    assert_eq!(stopped.processes.len(), stopped.count, "{stopped:?}");
    assert_eq!(stopped.survivors, 0, "{stopped:?}");
    let names = stopped.names();
    assert!(
        names.contains(&"sleep") && names.contains(&"sh"),
        "{stopped:?}"
    );
    // Pids as the box sees them: PID 1 is the box's init and is never one of them.
    assert!(stopped.processes.iter().all(|p| p.pid > 1), "{stopped:?}");
    // Nothing is left at once (no wait here: stop_leftovers returns once they are gone) …
    for arg in [&a, &nohup, &waited, &respawned] {
        assert_eq!(
            host_sleeps(arg),
            Vec::<String>::new(),
            "sleep {arg} survived"
        );
    }
    // … nor later (the respawning loop is dead too).
    std::thread::sleep(Duration::from_millis(200));
    assert_none_left(&[&a, &nohup, &waited, &respawned]);

    // The next command runs normally and sees only itself and PID 1.
    let (res, out) = run(
        b.as_ref(),
        "echo next; for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm)\"; done",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(res.exit_code, Some(0), "{out}");
    assert!(out.starts_with("next\n1 "), "{out}");
    assert!(!out.contains("sleep"), "{out}");
    // A command that left nothing leaves nothing to stop.
    assert_eq!(b.stop_leftovers().await.unwrap(), Default::default());
    b.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_timed_out_command_started_outside_its_group_is_stopped() {
    let ws = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let b = new_box(ws.path(), scratch.path()).await;
    let escaped = unique_sleep("986.5");
    let (res, _) = run(
        b.as_ref(),
        &format!("setsid sleep {escaped} >/dev/null 2>&1 & echo started; sleep 60"),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(res.killed_by.as_deref(), Some("timeout"));
    // The timeout killed the command's process group; the setsid child is not in it.
    assert_all_running(&[&escaped]);
    let stopped = b.stop_leftovers().await.unwrap();
    assert_eq!(stopped.names(), ["sleep"], "{stopped:?}");
    assert_eq!(stopped.count, 1);
    assert_none_left(&[&escaped]);
    let (res, out) = run(b.as_ref(), "echo again", Duration::from_secs(30)).await;
    assert_eq!((res.exit_code, out.as_str()), (Some(0), "again\n"));
    b.destroy().await.unwrap();
}
