//! The README's first command runs to completion: gateway, stub backend and a short
//! simulated campaign over real HTTP on loopback.

use std::process::Command;

#[test]
fn the_demo_runs_and_stops_fraud_without_stopping_people() {
    let out = Command::new(env!("CARGO_BIN_EXE_riskgate"))
        .args(["demo", "--duration", "20", "--seed", "11"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("/metrics"), "the metrics address is shown: {stderr}");
    assert!(stdout.contains("final:"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("fraud requests stopped:"))
        .expect("summary line");
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let (stopped, wrongly) = (numbers[0], numbers[1]);
    assert!(stopped > 50.0, "{line}");
    assert!(wrongly < 2.0, "{line}");
    for kind in ["device_farm", "script", "normal", "carrier_nat"] {
        assert!(stdout.contains(kind), "{kind} missing from\n{stdout}");
    }
    assert!(!stdout.contains("transport errors"), "{stdout}");
}
