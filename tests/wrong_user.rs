//! Offline commands run as the wrong user (issue 10, item 6), with the real binary. Needs
//! root (to give a directory to another uid and to run as it with `setpriv`): as another user
//! they fail, saying so (CI runs as root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A uid with no name on a test machine.
const OTHER: u32 = 54321;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2).map(|u| u == "0")
        })
        .unwrap_or(false)
}

fn chown(path: &Path, uid: u32) {
    let ok = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Runs the binary with `args` (as `uid` when given), `stdin` on its input.
fn run(config: &Path, uid: Option<u32>, args: &[&str], stdin: &str) -> (bool, String) {
    let bin = env!("CARGO_BIN_EXE_keypad-bridge");
    let cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                bin,
            ]);
            c
        }
        None => Command::new(bin),
    };
    let (ok, _, err) = common::run_cli(cmd, config, args, stdin);
    (ok, err)
}

fn site() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "store:\n  path: {0}/db\n  secret_file: {0}/secret\n  cache_mb: 1\n\
             codes:\n  argon2: {{memory_kib: 1024, iterations: 1, parallelism: 1}}\nkeypads: []\n",
            state.display()
        ),
    )
    .unwrap();
    (dir, state, config)
}

#[test]
fn init_and_reset_master_by_another_user_than_the_owner_refuse_and_give_the_command() {
    assert!(
        is_root(),
        "these tests need root (to chown a directory and run as another uid): run them as \
         root, as `bash .ci/run` does"
    );
    let (_dir, state, config) = site();
    chown(&state, OTHER);
    let (ok, err) = run(&config, None, &["init"], "4826\n");
    assert!(!ok);
    assert!(
        err.contains(&format!("{} belongs to uid {OTHER}", state.display()))
            && err.contains("runs as root (uid 0)")
            && err.contains(&format!("sudo -u '#{OTHER}' "))
            && err.contains(&format!("--config {} init", config.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "nothing was created"
    );
    let (ok, err) = run(&config, Some(OTHER), &["init"], "4826\n");
    assert!(ok, "{err}");
    let (ok, err) = run(&config, None, &["reset-master"], "7319\n");
    assert!(!ok);
    assert!(
        err.contains("reset-master") && err.contains("sudo -u"),
        "{err}"
    );
    let (ok, err) = run(&config, Some(OTHER), &["users"], "");
    assert!(ok, "{err}");
}

#[test]
fn a_store_left_to_root_names_the_file_its_owner_the_user_needed_and_the_chown() {
    assert!(
        is_root(),
        "these tests need root (to chown a directory and run as another uid): run them as \
         root, as `bash .ci/run` does"
    );
    let (_dir, state, config) = site();
    // `init` as root in a root-owned directory, then the directory given to the service user
    // alone (what `StateDirectory=` does to the top directory only).
    let (ok, err) = run(&config, None, &["init"], "4826\n");
    assert!(ok, "{err}");
    let status = Command::new("chown")
        .arg(format!("{OTHER}:{OTHER}"))
        .arg(&state)
        .status()
        .unwrap();
    assert!(status.success());
    for command in ["users", "activity", "run"] {
        let (ok, err) = run(&config, Some(OTHER), &[command], "");
        assert!(!ok, "{command}");
        assert!(
            err.contains("belongs to root (uid 0)")
                && err.contains(&format!("uid {OTHER} needs it"))
                && err.contains(&format!(
                    "sudo chown -R {OTHER}:{OTHER} {}",
                    state.display()
                )),
            "{command}: {err}"
        );
        assert_eq!(
            err.matches("Permission denied").count(),
            1,
            "{command}: the cause once: {err}"
        );
    }
    chown(&state, OTHER);
    let (ok, err) = run(&config, Some(OTHER), &["users"], "");
    assert!(ok, "{err}");
}
