//! A real headless Chromium (Debian's `chromium` and `chromedriver`),
//! driven over WebDriver with fantoccini, in a network namespace of the
//! test: create it and use it from a thread in that namespace (`NetNs::run`)
//! so that the browser and the driver's connections live there. The guard
//! kills the driver's whole process group (the browser with it) and removes
//! the browser's profile, even if the test fails. Screenshots go to
//! `target/screenshots/<test>/`.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

use crate::netns::NetNs;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER_PORT: u16 = 9515;

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
    shots: PathBuf,
    taken: u32,
}

/// Where screenshots of `test` are kept (the workspace's target directory).
pub fn screenshot_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("screenshots").join(test)
}

impl Browser {
    /// Starts chromedriver in `ns` and opens a browser session.
    pub async fn start(ns: &NetNs, test: &str, width: u32, height: u32) -> Browser {
        let profile = std::env::temp_dir().join(format!("{}-chromium", ns.name));
        let _ = std::fs::remove_dir_all(&profile);
        let driver = ns
            .command(CHROMEDRIVER)
            .arg(format!("--port={DRIVER_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver, installed by cargo xtask setup)");
        let shots = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser { client: connect(&profile, width, height).await, driver, profile, shots, taken: 0 }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Saves a screenshot as NN-name.png.
    pub async fn screenshot(&mut self, name: &str) {
        self.taken += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.taken)), png).expect("save screenshot");
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        let value = self.client.execute(script, vec![json!(css)]).await.expect("read text");
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits up to `timeout` for `css`'s text to satisfy `ok`; returns it.
    pub async fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            assert!(start.elapsed() < timeout, "{css} reads {text:?} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(profile: &std::path::Path, width: u32, height: u32) -> Client {
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_owned(), json!({ "binary": CHROMIUM, "args": args }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let url = format!("http://127.0.0.1:{DRIVER_PORT}");
    let start = Instant::now();
    loop {
        match ClientBuilder::new(connector.clone()).capabilities(capabilities.clone()).connect(&url).await {
            Ok(client) => return client,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("no browser session within 20 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's process group holds the browser and its helpers.
        // SAFETY: kill has no memory preconditions; the group is the one
        // this guard started (process_group(0): its id is the driver's pid).
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
