//! The `riskgate` binary as scripts use it: check-config, and serve with its flags,
//! SIGHUP and SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn riskgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_riskgate"))
}

/// A spawned gateway that is killed if the test fails before stopping it.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn check_config_summarises_the_default_config() {
    let out = riskgate()
        .args(["check-config", "config/riskgate.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "coupon_claim",
        "limit coupon_claim_device",
        "device_many_accounts",
        "blocked_devices",
        "counted, not scored",
        "state memory (256 MB)  timeout 50 ms  on error allow",
        "state error: allow",
        "model: config/../models/riskgate-default.model.json  random_forest",
        "coupon_claim (enforce)",
    ] {
        assert!(stdout.contains(needle), "missing {needle} in\n{stdout}");
    }
}

#[test]
fn check_config_reports_every_problem_with_line_and_key() {
    let cfg = ConfigDir::new(&small_config(
        r#"
[[routes.limits]]
key = "wallet"
rate = "3/h"

[[rules]]
name = "typo"
when = "users_per_devise_24h > 3"
score = 0.5

[[rules]]
name = "Bad-Name"
when = "has_device == 0"
score = 2.0
"#,
    ));
    let out = riskgate().arg("check-config").arg(cfg.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 problems"), "{err}");
    let file = cfg.path().display().to_string();
    for needle in [
        format!("{file}:21: routes[0].limits[0].key: unknown key `wallet`"),
        format!(
            "{file}:26: rules[0].when: in `users_per_devise_24h > 3`: column 1: unknown feature `users_per_devise_24h`"
        ),
        format!("{file}:30: rules[1].name: `Bad-Name` must be"),
        format!("{file}:32: rules[1].score: 2 must be in (0, 1]"),
    ] {
        assert!(err.contains(&needle), "missing `{needle}` in\n{err}");
    }

    // A syntax or type error stops at the first, with its line.
    let cfg = ConfigDir::new("[server]\nlisten = 8080\n");
    let out = riskgate().arg("check-config").arg(cfg.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("riskgate.toml:2:"), "{err}");
}

#[test]
fn serve_honours_its_flags_reloads_on_sighup_and_drains_on_sigterm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(Duration::ZERO));
    // Polling is off (an hour), so only SIGHUP can reload.
    let cfg = ConfigDir::new(&small_config("").replace("reload_poll_ms = 50", "reload_poll_ms = 3600000"));
    let [port, admin_port] = free_ports();
    let child = riskgate()
        .arg("serve")
        .arg("--config")
        .arg(cfg.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--upstream", &up.url(), "--shadow", "--state", "memory"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Served(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let c = client();
    rt.block_on(async {
        let up_now = eventually_for(Duration::from_secs(30), || std::net::TcpStream::connect(addr).is_ok()).await;
        assert!(up_now, "gateway listens");
        // Its descriptor table was grown before its threads started (`fd_table`), to the
        // hard open-files limit (which it inherits from us) or 64 Ki, whichever is less.
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
        let fd_size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize in /proc/PID/status");
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        let want = hard.unwrap_or(u64::MAX).min(riskgate::fd_table::MAX_PREPARED);
        assert!(fd_size >= want, "FDSize {fd_size}, expected at least {want}");
        // --shadow: a request without a device id under a strict rule is still forwarded.
        let a = send(
            &c,
            "POST",
            &format!("http://{addr}/api/coupon/claim"),
            &[("x-user-id", "u1")],
            "{}",
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(up.seen().len(), 1, "--upstream was used");

        cfg.write(
            "riskgate.toml",
            &small_config("[[rules]]\nname = \"no_device\"\nwhen = \"has_device == 0\"\nscore = 0.9\n")
                .replace("reload_poll_ms = 50", "reload_poll_ms = 3600000"),
        );
        let status = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut reloaded = false;
        for _ in 0..100 {
            let m = metrics(&c, admin).await;
            if metric(&m, r#"riskgate_config_reloads_total{outcome="success"}"#) == Some(1.0) {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reloaded, "SIGHUP reloads the config");
        let a = send(
            &c,
            "POST",
            &format!("http://{addr}/api/coupon/claim"),
            &[("x-user-id", "u1")],
            "{}",
        )
        .await;
        assert_eq!(a.status, 200, "still shadow after the reload");
        let seen = up.seen();
        assert_eq!(seen.last().unwrap().header("x-risk-reasons"), Some("no_device"));
        assert_eq!(seen.last().unwrap().header("x-risk-decision"), Some("review"));
    });
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let mut exited = None;
    // Up to 30 s: a loaded machine may make the drain and exit slow.
    for _ in 0..1_200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let status = exited.expect("riskgate exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_a_bad_config_and_an_unknown_state_backend() {
    let cfg = ConfigDir::new("[server]\nlisten = \"nowhere\"\n");
    let out = riskgate()
        .arg("serve")
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("riskgate.toml:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = riskgate()
        .args(["serve", "--config", "config/riskgate.toml", "--state", "etcd://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state"));
}
