//! Drives the fake Anthropic Messages API (`tests/fake_anthropic/server.py`) from Rust tests:
//! starts it on loopback, scripts its answers, reads what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::{LIMIT, Watchdog, repo_root};

pub struct FakeApi {
    pub url: String,
    child: Child,
}

impl FakeApi {
    /// Starts the server accepting `key`; it prints its URL as its first line.
    pub fn start(key: &str) -> Self {
        let python = std::env::var("MNEMOSYNE_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/fake_anthropic/server.py"))
            .args(["--key", key, "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the fake API starts");
        let mut first = String::new();
        let watchdog = Watchdog::arm(&child, LIMIT);
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut first)
            .expect("it prints its URL");
        drop(watchdog);
        let announced: Value = serde_json::from_str(&first).expect("the first line is JSON");
        let url = announced["url"].as_str().expect("url").to_owned();
        Self { url, child }
    }

    /// Appends scripted answers (see the server's docstring for their kinds).
    pub fn script(&self, entries: &[Value]) {
        let body = serde_json::to_string(entries).expect("entries serialise");
        self.http("POST", "/_fake/script", &body);
    }

    /// Every request the server received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        let text = self.http("GET", "/_fake/requests", "");
        serde_json::from_str(&text).expect("the request log is JSON")
    }

    fn http(&self, method: &str, path: &str, body: &str) -> String {
        let address = self.url.trim_start_matches("http://").trim_end_matches('/');
        let mut stream = TcpStream::connect(address).expect("the fake API accepts connections");
        stream
            .set_read_timeout(Some(LIMIT))
            .expect("a read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("request written");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"),
            "{head}"
        );
        body.to_owned()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
