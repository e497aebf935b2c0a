//! The web control panel, end to end, in a real headless Chromium driven over WebDriver.
//!
//! Three in-process kith nodes form a grid by invitation ([`kith_tests::Grid`]); the test serves
//! node 0's local API ([`kith_node::api::router`] + [`kith_node::api::serve`], as `kith run`
//! does) on a loopback port, starts `chromedriver` (Debian `chromium-driver`) on another, and
//! drives `chromium --headless` through the panel with `fantoccini`: the overview shows the
//! node and its three members, "Invite a friend" yields a `kith1…` code that decodes, a friend
//! gets a 1 GiB grant and is then revoked (checked through `GET /api/v1/friends`), a file goes
//! up through the page and comes back down (the page's copy, the browser's saved file and the
//! API's bytes all match). Plain HTTP requests then check the API's defences: no token or a
//! wrong one is 401, a state change from another origin or a non-loopback `Host` is 403.
//!
//! Without chromium and chromedriver the test prints how to install them and passes, except
//! under `CI=true`, where it fails. Every wait is a deadline on a condition, never a sleep.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element, error::CmdError};
use futures::FutureExt;
use kith_tests::{Encoding, Grid, Listen};
use serde_json::{Value, json};

/// How long any one condition may take to become true.
const BOUND: Duration = Duration::from_secs(30);
/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_invites_grants_revokes_and_moves_files_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let started = std::time::Instant::now();
    let enc = Encoding {
        needed: 2,
        happy: 2,
        total: 3,
    };
    let grid = Grid::start(3, Listen::Tcp, enc).await.expect("grid");
    let api = Api::serve(&grid).await;
    let tmp = tempfile::tempdir().unwrap();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let driver = ChromeDriver::start(&chromedriver, tmp.path()).await;
    let browser = driver.session(&chromium, &downloads).await;

    // Run the steps, then close the browser whatever happened, so no Chromium outlives the test.
    let outcome = std::panic::AssertUnwindSafe(steps(&grid, &api, &browser, &downloads))
        .catch_unwind()
        .await;
    // A picture of the page after a failure (or on request) for whoever reads the log.
    let shot = match std::env::var_os("KITH_PANEL_SCREENSHOT") {
        Some(p) => Some(PathBuf::from(p)),
        None if outcome.is_err() => {
            Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("panel-failure.png"))
        }
        None => None,
    };
    if let Some(path) = shot {
        screenshot(&browser, &path).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.close()).await;
    drop(driver);
    api.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!("panel test took {:.1} s", started.elapsed().as_secs_f64());
}

async fn steps(grid: &Grid, api: &Api, c: &Client, downloads: &Path) {
    let me = grid.node(0).peer_id().to_string();
    let friend = grid.node(1).peer_id().to_string();

    // Open the panel with the token in the fragment: it moves to sessionStorage and leaves the
    // address bar.
    c.goto(&format!("{}/#token={}", api.base, api.token))
        .await
        .unwrap();
    until("the token to leave the address bar", async || {
        let url = c.current_url().await.unwrap();
        !url.as_str().contains(&api.token)
    })
    .await;
    let stored = c
        .execute("return sessionStorage.getItem('kith.api-token');", vec![])
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!(api.token),
        "the token is kept in sessionStorage"
    );

    // Overview and members.
    wait_text(c, "#ov-peer-id", "this node's peer id", |t| t == me).await;
    wait_text(c, "#ov-members", "3 members", |t| t == "3").await;
    // How the node is reachable, and the path to each connected peer (loopback: direct, or
    // relayed until a direct connection exists).
    let reach = wait_text(c, "#ov-reach", "the reachability line", |t| {
        t.starts_with("public at 127.0.0.1:") || t.starts_with("behind NAT")
    })
    .await;
    // The address tests behind it: the loopback address members observed, with its state.
    let tests = wait_text(c, "#ov-autonat", "an address AutoNAT tests", |t| {
        t.contains("/ip4/127.0.0.1/")
            && ["untested", "reachable", "unreachable", "no answer"]
                .iter()
                .any(|s| t.contains(s))
    })
    .await;
    // What the router was asked for: a node listening on loopback only has nothing to map
    // and says so.
    let router = wait_text(c, "#ov-upnp", "the router line", |t| {
        t.starts_with("failed: no IPv4 TCP or QUIC listen port to map")
    })
    .await;
    println!("reachability: {reach}; address tests: {tests}; router: {router}");
    wait_text(
        c,
        "#connections-table td[data-field='path']",
        "a connection's path",
        |t| ["direct", "relayed"].contains(&t),
    )
    .await;
    until("three member rows", async || {
        count(c, "#members-table tbody tr[data-peer]").await == 3
    })
    .await;
    let row = find(c, &format!("#members-table tr[data-peer='{friend}']")).await;
    assert!(row.text().await.unwrap().contains("node1"));

    // Invite a friend: the page shows a code that decodes.
    click(c, "#invite-button").await;
    let code = wait_text(c, "#invite-code", "an invitation code", |t| {
        t.starts_with("kith1")
    })
    .await;
    let inv = kith_gossip::Invitation::decode(&code).expect("the panel's code decodes");
    let now = unix_now();
    assert!(
        inv.expires > now + 6 * 86400,
        "the default invitation lasts 7 days"
    );

    // Upload a file through the page, then download it by its cap.
    let content: String = (0..200)
        .map(|i| format!("line {i}: kith panel upload test\n"))
        .collect();
    let file = downloads.parent().unwrap().join("hello-from-the-panel.txt");
    std::fs::write(&file, &content).unwrap();
    find(c, "#upload-file")
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    click(c, "#upload-button").await;
    let cap = wait_text(c, "#upload-cap", "the uploaded file's cap", |t| {
        t.starts_with("kith:chk:")
    })
    .await;
    let bytes = api.get_bytes(&format!("/files/{cap}")).await;
    assert!(
        bytes == content.as_bytes(),
        "the API returns what the page uploaded"
    );
    click(c, "#upload-cap-use").await;
    click(c, "#download-button").await;
    wait_text(c, "#download-status", "the download to finish", |t| {
        t.starts_with("Downloaded")
    })
    .await;
    let preview = find(c, "#download-preview").await.text().await.unwrap();
    assert_eq!(preview.trim_end(), content.trim_end(), "the page's copy");
    let saved = downloads.join("hello-from-the-panel.txt");
    until("the browser to save the download", async || {
        std::fs::read(&saved).is_ok_and(|b| b == content.as_bytes())
    })
    .await;
    // The upload and the download show as operations (once the node reports them).
    if api.get("/operations").await.0 == 200 {
        until(
            "the upload and the download in the operations list",
            async || count(c, "#ops-list [data-op-id][data-finished='true']").await >= 2,
        )
        .await;
    } else {
        assert!(
            find(c, "#ops-unavailable")
                .await
                .is_displayed()
                .await
                .unwrap(),
            "a node without /operations says so"
        );
        eprintln!("GET /api/v1/operations is not available: operations not checked");
    }

    directories(c, api, &file).await;

    // An API error shows in the message area.
    set_value(c, "#download-cap", "kith:chk:not-a-cap").await;
    click(c, "#download-button").await;
    wait_text(c, "#error-list", "the API's error for a bad cap", |t| {
        t.starts_with("Downloading: ") && t.len() > "Downloading: ".len()
    })
    .await;
    click(c, "#error-dismiss").await;
    until("the message area to clear", async || {
        !find(c, "#error").await.is_displayed().await.unwrap()
    })
    .await;

    // The collector runs from the page and reports its pass.
    click(c, "#collector-run").await;
    wait_text(c, "#collector-status", "the collector's pass", |t| {
        t.contains("Since start: 1 passes") || t.contains("Since start: 2 passes")
    })
    .await;
    let (code, v) = api.get("/collector").await;
    assert_eq!(code, 200);
    assert!(v["passes"].as_u64().unwrap() >= 1, "{v}");

    // Grant a friend 1 GiB, then revoke it, through the page; the API sees both.
    let (code, _) = api.get("/friends").await;
    if code == 404 {
        assert!(
            find(c, "#friends-unavailable")
                .await
                .is_displayed()
                .await
                .unwrap(),
            "a node without /friends says so"
        );
        eprintln!("GET /api/v1/friends is not available yet: grant and revoke not checked");
    } else {
        assert_eq!(code, 200, "GET /api/v1/friends");
        grant_and_revoke(c, api, &friend).await;
        policy(c, api).await;
    }

    // Nothing went wrong along the way.
    let error = find(c, "#error").await;
    assert!(
        !error.is_displayed().await.unwrap(),
        "the panel shows an error: {}",
        error.text().await.unwrap()
    );

    // The API's defences, with plain HTTP requests.
    let http = reqwest::Client::new();
    let r = http.get(api.url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = http
        .get(api.url("/status"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token");
    let r = http
        .post(api.url("/grid/invite"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a state change without the token");
    let r = http
        .post(api.url("/grid/invite"))
        .bearer_auth(&api.token)
        .header(reqwest::header::ORIGIN, "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a state change from another origin");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "a JSON error: {body}");
    let r = http
        .post(api.url("/grid/invite"))
        .bearer_auth(&api.token)
        .header(reqwest::header::ORIGIN, api.base.as_str())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a state change from the panel's origin");
    let r = http
        .get(api.url("/status"))
        .bearer_auth(&api.token)
        .header(
            reqwest::header::HOST,
            format!("evil.example:{}", api.addr.port()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a non-loopback Host (DNS rebinding)");

    // A wrong token in the URL: the page says so and asks for the token.
    c.goto(&format!("{}/#token=not-the-token", api.base))
        .await
        .unwrap();
    wait_text(c, "#error-list", "the API's refusal", |t| {
        t.contains("token")
    })
    .await;
    assert!(find(c, "#token-form").await.is_displayed().await.unwrap());
    // Pasting the right one brings it back.
    set_value(c, "#token-input", &api.token).await;
    click(c, "#token-save").await;
    until("the panel to work again", async || {
        !find(c, "#error").await.is_displayed().await.unwrap()
            && !find(c, "#token-form").await.is_displayed().await.unwrap()
    })
    .await;
    wait_text(c, "#live", "a fresh status", |t| t.starts_with("live")).await;
}

/// Directory browsing from the page: a root directory with an alias, a folder, an upload into
/// it, the listing (and its JSON twin), a deep-check, and back up.
async fn directories(c: &Client, api: &Api, file: &Path) {
    set_value(c, "#dir-root-name", "home").await;
    click(c, "#dir-root-create").await;
    wait_text(c, "#dir-where", "the new root directory open", |t| {
        t == "home:"
    })
    .await;
    assert!(find(c, "#dir-empty").await.is_displayed().await.unwrap());
    let (code, aliases) = api.get("/aliases").await;
    assert_eq!(code, 200);
    assert_eq!(aliases[0]["name"], "home", "{aliases}");
    assert!(aliases[0]["cap"].as_str().unwrap().starts_with("kith:dir:"));

    set_value(c, "#dir-mkdir-name", "docs").await;
    click(c, "#dir-mkdir").await;
    until("the new folder in the listing", async || {
        count(c, "#dir-table tr[data-name='docs'][data-kind='dir']").await == 1
    })
    .await;
    click(c, "#dir-table tr[data-name='docs'] a").await;
    wait_text(c, "#dir-where", "the folder open", |t| t == "home:docs").await;

    // Upload into the open directory.
    find(c, "#upload-file")
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    click(c, "#upload-button").await;
    let name = file.file_name().unwrap().to_str().unwrap();
    until("the upload in the folder's listing", async || {
        count(
            c,
            &format!("#dir-table tr[data-name='{name}'][data-kind='file']"),
        )
        .await
            == 1
    })
    .await;
    let (code, ls) = api.get("/ls?path=home%3Adocs").await;
    assert_eq!(code, 200);
    assert_eq!(ls["entries"][0]["name"], name, "{ls}");
    assert!(
        ls["entries"][0]["cap"]
            .as_str()
            .unwrap()
            .starts_with("kith:chk:")
    );

    // Check the folder (deep): the folder and the file are healthy.
    click(c, "#dir-check").await;
    wait_text(c, "#dir-check-result", "the check's summary", |t| {
        t.starts_with("checked 2: 2 healthy, 0 unhealthy")
    })
    .await;

    // Back up to the root.
    click(c, "#dir-table tr[data-up] a").await;
    wait_text(c, "#dir-where", "the root open again", |t| t == "home:").await;
}

/// Grants `friend` 1 GiB and revokes it with the default grace, through the friends table.
async fn grant_and_revoke(c: &Client, api: &Api, friend: &str) {
    let row = format!("#friends-table tr[data-peer='{friend}']");
    find(c, &row).await;
    // A member granted by the default policy offers "Change quota", otherwise "Grant".
    let mut opened = false;
    for action in ["grant", "quota"] {
        if count(c, &format!("{row} [data-action='{action}']")).await == 1 {
            click(c, &format!("{row} [data-action='{action}']")).await;
            opened = true;
            break;
        }
    }
    assert!(opened, "the friend's row offers Grant or Change quota");
    set_value(c, "#friend-quota", "1GiB").await;
    click(c, "#friend-submit").await;
    let f = until_friend(api, friend, "a 1 GiB grant", |f| {
        f["access"]["state"] == "granted" && f["access"]["quota"] == "1GiB"
    })
    .await;
    assert_eq!(f["access"]["explicit"], true, "{f}");
    wait_text(
        c,
        &format!("{row} [data-field='my-grant']"),
        "1 GiB in the row",
        |t| t.contains("1 GiB"),
    )
    .await;

    click(c, &format!("{row} [data-action='revoke']")).await;
    let grace = find(c, "#friend-grace").await;
    assert_eq!(grace.prop("value").await.unwrap().as_deref(), Some("7d"));
    let before = unix_now();
    click(c, "#friend-submit").await;
    let f = until_friend(api, friend, "the revocation", |f| {
        f["access"]["state"] == "revoked"
    })
    .await;
    let grace_end = f["access"]["grace_end"].as_u64().expect("a grace end");
    assert!(
        grace_end >= before + 7 * 86400 - 5 && grace_end <= unix_now() + 7 * 86400 + 5,
        "seven days of grace: {f}"
    );
    until("the row to show the revocation", async || {
        count(c, &format!("{row}[data-state='revoked']")).await == 1
    })
    .await;
    wait_text(
        c,
        &format!("{row} [data-field='my-grant']"),
        "revoked in the row",
        |t| t.contains("revoked"),
    )
    .await;
}

/// Sets the default grant and toggles invite-only through the policy form.
async fn policy(c: &Client, api: &Api) {
    let policy_is = async |what: &str, cond: &dyn Fn(&Value) -> bool| {
        until(what, async || cond(&api.get("/friends").await.1["policy"])).await;
    };
    set_value(c, "#policy-default-grant-input", "10GiB").await;
    click(c, "#policy-default-grant-set").await;
    policy_is("a 10 GiB default grant", &|p| p["default_grant"] == "10GiB").await;
    wait_text(c, "#policy-default-grant", "10 GiB on the page", |t| {
        t == "10 GiB"
    })
    .await;
    click(c, "#policy-invite-only-toggle").await;
    policy_is("invite-only on", &|p| p["invite_only"] == true).await;
    wait_text(c, "#policy-invite-only-toggle", "the toggle to flip", |t| {
        t == "Turn invite-only off"
    })
    .await;
    click(c, "#policy-invite-only-toggle").await;
    policy_is("invite-only off", &|p| p["invite_only"] == false).await;
    set_value(c, "#policy-default-grant-input", "unlimited").await;
    click(c, "#policy-default-grant-set").await;
    policy_is("the default grant back to unlimited", &|p| {
        p["default_grant"] == "unlimited"
    })
    .await;
}

/// Polls `GET /api/v1/friends` until `friend`'s entry satisfies `cond`.
async fn until_friend(api: &Api, friend: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + BOUND;
    loop {
        let (code, body) = api.get("/friends").await;
        let entry = body["friends"]
            .as_array()
            .and_then(|l| l.iter().find(|f| f["peer_id"] == friend).cloned());
        if let Some(f) = &entry
            && cond(f)
        {
            return f.clone();
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what} in GET /api/v1/friends ({code}): {entry:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- the node's API ---------------------------------------------------------------------------

/// Node 0's local API, served the way `kith run` serves it.
struct Api {
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, the panel's origin.
    base: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

impl Api {
    async fn serve(grid: &Grid) -> Api {
        let token = grid.dirs[0].api_token().expect("api token");
        let (stop_tx, _) = tokio::sync::mpsc::channel(1);
        let router = kith_node::api::router(grid.node(0), token.clone(), stop_tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(kith_node::api::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Api {
            addr,
            base: format!("http://{addr}"),
            token,
            stop,
            task,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Status code and JSON body (`null` when the body is not JSON).
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().await.unwrap().to_vec()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

// ---- chromedriver and the browser -------------------------------------------------------------

/// Finds chromium and chromedriver; `None` (after saying why) when the test should skip.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(which);
    let driver = which("chromedriver");
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromium/chromedriver not installed: CI must run the panel test \
                 (apt-get install chromium chromium-driver; .ci/run does)"
            );
            eprintln!(
                "skipping: chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A chromedriver child process on a loopback port, in a process group of its own so that it
/// and any browser it started are killed when the test ends, even by a panic.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start(exe: &Path, tmp: &Path) -> ChromeDriver {
        use std::os::unix::process::CommandExt;
        let log = tmp.join("chromedriver.log");
        let mut last = String::new();
        // The port is picked free and then handed over, so another process may grab it in
        // between: try a few.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = Command::new(exe)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver");
            let mut driver = ChromeDriver {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            match driver.wait_ready().await {
                Ok(()) => return driver,
                Err(e) => last = e,
            }
        }
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(2000)..];
        panic!("chromedriver did not start: {last}\n{tail}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited with {status}"));
            }
            if let Ok(r) = http.get(format!("{}/status", self.url)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                return Err("no ready answer from /status within 20 s".into());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A headless Chromium session that saves downloads to `downloads`.
    async fn session(&self, chromium: &Path, downloads: &Path) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--window-size=1400,1000",
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&self.url),
        )
        .await
        .expect("chromium started within 60 s")
        .expect("a WebDriver session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole process group: chromedriver and whatever browser it left behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- waiting on the page ----------------------------------------------------------------------

async fn until(what: &str, cond: impl AsyncFnMut() -> bool) {
    kith_tests::until(what, BOUND, cond).await;
}

/// Retries a WebDriver step while the element is missing, stale or not interactable yet (the
/// panel re-renders tables when the data changes).
async fn retry<T, F, Fut>(what: &str, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CmdError>>,
{
    let end = tokio::time::Instant::now() + BOUND;
    loop {
        match step().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < end,
                    "timed out on {what}: {e}"
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn find(c: &Client, css: &str) -> Element {
    retry(&format!("finding {css}"), || c.find(Locator::Css(css))).await
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

/// Clicks the element once it is displayed and enabled, scrolled to the middle of the window
/// first (chromedriver does not scroll an element that is in the viewport but under the
/// panel's sticky header).
async fn click(c: &Client, css: &str) {
    retry(&format!("clicking {css}"), async || {
        let e = c.find(Locator::Css(css)).await?;
        if !e.is_displayed().await? || !e.is_enabled().await? {
            return Err(CmdError::InvalidArgument(
                css.into(),
                "not displayed or disabled".into(),
            ));
        }
        let arg = serde_json::to_value(&e).map_err(CmdError::Json)?;
        c.execute(
            "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'});",
            vec![arg],
        )
        .await?;
        e.click().await
    })
    .await;
}

/// Replaces an input's value by typing.
async fn set_value(c: &Client, css: &str, value: &str) {
    retry(&format!("typing into {css}"), async || {
        let e = c.find(Locator::Css(css)).await?;
        e.clear().await?;
        e.send_keys(value).await
    })
    .await;
}

/// Waits until the element's visible text satisfies `cond`; returns it.
async fn wait_text(c: &Client, css: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let end = tokio::time::Instant::now() + BOUND;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if cond(t.trim()) {
                return t.trim().to_owned();
            }
            last = t;
        }
        if tokio::time::Instant::now() >= end {
            let errors = match c.find(Locator::Css("#error-list")).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!(
                "timed out waiting for {what} in {css}: last text {last:?}; panel errors: {errors:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Saves a screenshot of the whole page (the window grown to the page's height) to `path`.
async fn screenshot(c: &Client, path: &Path) {
    let height = c
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(1000);
    let _ = c
        .set_window_size(1400, height.clamp(600, 8000) as u32)
        .await;
    match c.screenshot().await {
        Ok(png) => match std::fs::write(path, png) {
            Ok(()) => eprintln!("screenshot of the panel: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("no screenshot: {e}"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
