//! libiscsi's conformance suite (`iscsi-test-cu`, Debian's libiscsi-bin) against the daemon
//! binary's iSCSI target: `ALL.*` with `--dataloss`, two initiator names and two URLs (for
//! MultipathIO). Prints the per-suite table (passed / failed / skipped); asserts that every
//! persistent reservation test and every COMPARE AND WRITE test passes (none skipped) and that the failures are exactly the
//! documented list (docs/conformance.md, "iSCSI: iscsi-test-cu"), so a regression or a fix
//! turns it red. About 30 s on a loaded 2-core machine.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::iscsi_client::{free_port, INITIATOR_A, INITIATOR_B};
use common::process::DaemonProcess;
use common::tgt::Tgt;

/// The tests that fail, each for the reason docs/conformance.md gives.
const KNOWN_FAILURES: &[&str] = &[
    // libiscsi 1.19's test, not the target: its second case forces ImmediateData off while the
    // reconnect after the first case's drop is still logging in, and that login's answer
    // (ImmediateData=Yes, as the initiator itself offered) turns it back on, so the block goes
    // as immediate data and no Data-Out carries the bad DataSN; tgt fails it too.
    "iSCSIdatasn.iSCSIDataSnInvalid",
];

/// Persistent reservation suites: every test in them must pass, none skipped.
const PR_SUITES: &[&str] = &["Prin", "Prout"];

/// COMPARE AND WRITE's tests (the single-daemon LU offers it): every one must pass, none
/// skipped.
const CAW_TESTS: &[&str] = &["CompareAndWrite.", "MultipathIO.CompareAndWrite"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    Skipped,
    Failed,
}

/// `Suite.Test` → verdict, from iscsi-test-cu's text output. CUnit prints `passed` for a
/// skipped test, so a test whose output says `[SKIPPED]` counts as skipped; `[FAILED]` inside
/// a test's log lines is not its verdict.
fn parse(out: &str) -> BTreeMap<String, Verdict> {
    let mut results = BTreeMap::new();
    let mut suite = String::new();
    let mut current: Option<(String, String)> = None;
    let flush = |cur: &mut Option<(String, String)>, results: &mut BTreeMap<String, Verdict>| {
        if let Some((name, text)) = cur.take() {
            results.insert(name, verdict(&text));
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            flush(&mut current, &mut results);
            suite = s.trim().to_string();
        } else if let Some(t) = line.trim_start().strip_prefix("Test: ") {
            flush(&mut current, &mut results);
            let name = t.split(" ...").next().unwrap_or(t).trim();
            let rest = t.split_once(" ...").map(|x| x.1).unwrap_or("");
            current = Some((format!("{suite}.{name}"), format!("{rest}\n")));
        } else if line.starts_with("Run Summary") {
            flush(&mut current, &mut results);
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    flush(&mut current, &mut results);
    results
}

/// A test's verdict: the first bare `passed` or `FAILED` (not `[FAILED]`) in its text.
fn verdict(text: &str) -> Verdict {
    let bare = |w: &str| {
        text.match_indices(w)
            .find(|(i, _)| *i == 0 || text.as_bytes()[i - 1] != b'[')
            .map(|(i, _)| i)
    };
    match (bare("passed"), bare("FAILED")) {
        (Some(p), Some(f)) if f < p => Verdict::Failed,
        (None, Some(_)) => Verdict::Failed,
        _ if text.contains("[SKIPPED]") => Verdict::Skipped,
        (Some(_), _) => Verdict::Passed,
        (None, None) => Verdict::Failed,
    }
}

/// Counts per suite: [passed, skipped, failed].
fn per_suite(results: &BTreeMap<String, Verdict>) -> BTreeMap<String, [usize; 3]> {
    let mut suites: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for (name, v) in results {
        let suite = name.split('.').next().unwrap_or(name);
        suites.entry(suite.to_string()).or_default()[*v as usize] += 1;
    }
    suites
}

/// The per-suite table: ours, and tgt's beside it when it ran.
fn table(ours: &BTreeMap<String, Verdict>, tgt: Option<&BTreeMap<String, Verdict>>) -> String {
    let (a, b) = (per_suite(ours), tgt.map(per_suite).unwrap_or_default());
    let mut s = format!(
        "{:<24} {:>22} {:>22}\n{:<24} {:>6} {:>6} {:>8} {:>6} {:>6} {:>8}\n",
        "",
        "sharedisk",
        "tgt",
        "suite",
        "passed",
        "failed",
        "skipped",
        "passed",
        "failed",
        "skipped"
    );
    let cell = |c: Option<&[usize; 3]>| match c {
        Some([p, sk, f]) => format!("{p:>6} {f:>6} {sk:>8}"),
        None => format!("{:>6} {:>6} {:>8}", "-", "-", "-"),
    };
    let mut total = [[0usize; 3]; 2];
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for suite in names {
        s.push_str(&format!(
            "{suite:<24} {} {}\n",
            cell(a.get(suite)),
            cell(b.get(suite))
        ));
        for (t, m) in total.iter_mut().zip([&a, &b]) {
            if let Some(c) = m.get(suite) {
                for i in 0..3 {
                    t[i] += c[i];
                }
            }
        }
    }
    let tgt_total = tgt.map(|_| &total[1]);
    s.push_str(&format!(
        "{:<24} {} {}\n",
        "total",
        cell(Some(&total[0])),
        cell(tgt_total)
    ));
    s
}

/// Runs iscsi-test-cu `ALL.*` against `url` (twice, for MultipathIO); its parsed results and
/// its whole output.
fn conformance_run(url: &str) -> (BTreeMap<String, Verdict>, String) {
    let out = Command::new("iscsi-test-cu")
        .args([
            "--test=ALL.*",
            "--dataloss",
            "-i",
            INITIATOR_A,
            "-I",
            INITIATOR_B,
        ])
        .args([url, url])
        .output()
        .expect("iscsi-test-cu (Debian's libiscsi-bin, images/install-deps.sh) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (parse(&text), text)
}

/// Debian's tgt serving `image`, under the same run, for the table beside ours; `None` (and why,
/// printed) when it cannot run here. Its results are a comparison, not asserted.
fn tgt_run(image: &std::path::Path) -> Option<BTreeMap<String, Verdict>> {
    let tgt = Tgt::start(image, "iqn.2026-12.io.sharedisk.test:tgt")?;
    Some(conformance_run(&tgt.url()).0)
}

#[test]
fn iscsi_test_cu_all_with_dataloss_and_two_initiators() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = DaemonProcess::start_args(
        dir.path(),
        &["vm1"],
        "64M",
        &[
            "--iscsi-listen",
            &listen,
            "--iscsi-initiator",
            INITIATOR_A,
            "--iscsi-initiator",
            INITIATOR_B,
        ],
    );
    let log = daemon.log();
    let target = log
        .lines()
        .find_map(|l| l.split("iscsi: target ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the daemon logs its target name")
        .to_string();
    let url = format!("iscsi://{listen}/{target}/0");
    let started = std::time::Instant::now();
    let (results, text) = conformance_run(&url);
    let took = started.elapsed();
    daemon.assert_no_panic();
    daemon.stop();
    // tgt on the same image file, now that the daemon has let it go.
    let tgt = tgt_run(&daemon.image);
    println!(
        "iscsi-test-cu ALL.* against sharedisk in {took:.1?}:\n{}",
        table(&results, tgt.as_ref())
    );
    assert!(
        results.len() >= 200,
        "too few tests parsed ({}):\n{text}",
        results.len()
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, v)| **v == Verdict::Failed)
        .map(|(n, _)| n.as_str())
        .collect();
    let pr: Vec<(&String, &Verdict)> = results
        .iter()
        .filter(|(n, _)| PR_SUITES.iter().any(|p| n.starts_with(p)))
        .collect();
    assert!(pr.len() >= 20, "PR tests found: {pr:?}");
    for (name, v) in &pr {
        assert_eq!(**v, Verdict::Passed, "PR test {name}");
    }
    let caw: Vec<(&String, &Verdict)> = results
        .iter()
        .filter(|(n, _)| CAW_TESTS.iter().any(|p| n.starts_with(p)))
        .collect();
    assert!(caw.len() >= 7, "COMPARE AND WRITE tests found: {caw:?}");
    for (name, v) in &caw {
        // InvalidDataOutSize runs only on a disk with 2 or more logical blocks per physical
        // block (LBPPB); ours reports 512-byte physical blocks, so it skips.
        let lbppb = name.as_str() == "CompareAndWrite.InvalidDataOutSize";
        let ok = **v == Verdict::Passed || (lbppb && **v == Verdict::Skipped);
        assert!(ok, "COMPARE AND WRITE test {name}: {v:?}");
    }
    let mut known = KNOWN_FAILURES.to_vec();
    known.sort();
    assert_eq!(
        failed, known,
        "failures beyond (or short of) the documented list"
    );
}

#[test]
fn verdicts_are_read_from_cunit_output() {
    let out = "Suite: A\n  Test: One ...passed\n  Test: Two ...    [FAILED] log line\npassed\n  Test: Three ...    [SKIPPED] x\n    [SKIPPED] x\npassed\n  Test: Four ...    note\nFAILED\n    1. f.c:1 - x\nSuite: B\n  Test: Five ...FAILED\nRun Summary: x\n";
    let r = parse(out);
    assert_eq!(r["A.One"], Verdict::Passed);
    assert_eq!(r["A.Two"], Verdict::Passed);
    assert_eq!(r["A.Three"], Verdict::Skipped);
    assert_eq!(r["A.Four"], Verdict::Failed);
    assert_eq!(r["B.Five"], Verdict::Failed);
}
