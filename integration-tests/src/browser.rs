//! A real headless browser: Debian's `chromium`, driven through
//! `chromedriver` over the W3C WebDriver HTTP API, for tests of what a
//! person sees in the server's HTML pages. It fails loudly when either
//! cannot run; it never skips.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// One `chromedriver` with one headless Chromium session.
pub struct Browser {
    driver: Child,
    client: reqwest::Client,
    /// The session's URL: `http://127.0.0.1:PORT/session/ID`.
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and opens a headless
    /// Chromium session in a profile of its own.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromium cannot run here: chromedriver does not start ({e}); \
install Debian's chromium and chromium-driver (scripts/test does)"
                )
            });
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..200 {
            let status = client.get(format!("{base}/status")).send().await;
            if let Ok(response) = status
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut browser = Self {
            driver,
            client,
            session: String::new(),
            _profile: profile,
        };
        assert!(
            ready,
            "chromium cannot run here: chromedriver never got ready"
        );
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ]}
        }}});
        let created: Value = browser
            .client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromium cannot run here: chromedriver does not answer")
            .json()
            .await
            .expect("a WebDriver answer");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium cannot run here: no browser session ({created})"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// Navigates to `url` and waits for it to load, as a person typing it.
    pub async fn open(&self, url: &str) {
        self.command("url", json!({ "url": url })).await;
    }

    /// The text the page shows (`document.body.innerText`).
    pub async fn visible_text(&self) -> String {
        let value = self
            .command(
                "execute/sync",
                json!({"script": "return document.body.innerText", "args": []}),
            )
            .await;
        value.as_str().expect("the page's text").to_owned()
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        let answer: Value = (self.client.get(format!("{}/source", self.session)))
            .send()
            .await
            .expect("WebDriver source")
            .json()
            .await
            .expect("a WebDriver answer");
        answer["value"]
            .as_str()
            .expect("the page source")
            .to_owned()
    }

    /// The document's title.
    pub async fn title(&self) -> String {
        let answer: Value = (self.client.get(format!("{}/title", self.session)))
            .send()
            .await
            .expect("WebDriver title")
            .json()
            .await
            .expect("a WebDriver answer");
        answer["value"].as_str().expect("the title").to_owned()
    }

    async fn command(&self, path: &str, body: Value) -> Value {
        let answer: Value = (self.client.post(format!("{}/{path}", self.session)))
            .json(&body)
            .send()
            .await
            .expect("a WebDriver command")
            .json()
            .await
            .expect("a WebDriver answer");
        assert!(
            answer["value"].get("error").is_none(),
            "WebDriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    /// Closes the browser session, then `chromedriver`.
    pub async fn close(mut self) {
        let _ = self.client.delete(&self.session).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panicked before `close`: chromedriver must not
        // outlive it (it ends its own Chromium when it exits).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
