//! Browser end-to-end: the real binaries plus headless Debian Chromium (driven by npm
//! `playwright-core`, `scripts/browser/e2e.mjs`) using the real web page.
//!
//! Without `/usr/bin/chromium` or the npm dependencies the test is skipped with a loud message,
//! unless `SFU_REQUIRE_BROWSER=1` (set by `./scripts/test`), in which case that is a failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bench::harness::Node;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn browser_available() -> Result<(), String> {
    if !PathBuf::from("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing (apt-get install chromium)".into());
    }
    if !repo_root()
        .join("scripts/browser/node_modules/playwright-core")
        .exists()
    {
        return Err(
            "scripts/browser/node_modules is missing (cd scripts/browser && npm install)".into(),
        );
    }
    Ok(())
}

#[test]
fn browser_two_pages_see_each_other_and_chat() {
    if let Err(why) = browser_available() {
        assert!(
            std::env::var("SFU_REQUIRE_BROWSER").is_err(),
            "browser test required but {why}"
        );
        eprintln!("SKIPPED browser test: {why}");
        return;
    }
    let node = Node::start(2, &[]).expect("node starts");
    let base = format!("http://{}", node.signaling[0].0);
    let out_dir = repo_root().join("test-output");
    let started = Instant::now();
    let status = Command::new("node")
        .arg(repo_root().join("scripts/browser/e2e.mjs"))
        .env("BASE_URL", &base)
        .env("OUT_DIR", &out_dir)
        .current_dir(repo_root().join("scripts/browser"))
        .status()
        .expect("run node");
    let took = started.elapsed();
    assert!(
        status.success(),
        "browser e2e failed after {took:?}\n{}",
        node.logs()
    );
    assert!(took < Duration::from_secs(120));
}
