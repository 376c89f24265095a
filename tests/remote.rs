//! Remote sources (docs/tree.md, remote sources) against real servers started here on 127.0.0.1: nginx over HTTP
//! and HTTPS (also laid out as a Hugging Face Hub repository), s3s-fs for S3, and a small
//! fault-injecting proxy in front of nginx. Every remote mount must give the same tree, byte
//! for byte, as the local mount of the same files.

use crate::common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fixtures served, as paths below tests/fixtures, with the file or prefix mounted.
const SERVED: &[&str] = &["savedmodel/tf_module", "savedmodel/tfk_functional", "ckpt/sharded", "ckpt/tf1_saver", "ckpt/tf2_dtypes", "ckpt/tf2_keras", "savedmodel/tf_module.zip", "savedmodel/tfk_deflated.zip", "h5", "keras3", "safetensors", "onnx", "gguf", "tflite", "numpy", "quant"];
const MOUNTED: &[&str] = &[
    // Quantized layers: the config beside the file is found over HTTP too (dequantized/ alike).
    "quant/gptq4/model.safetensors",
    "quant/bnb/model.safetensors",
    "quant/mlx/model.safetensors",
    "h5/k2_functional.h5",
    "h5/k2_sequential.h5",
    "h5/k2_weights.h5",
    "h5/k3_legacy.h5",
    "h5/plain_data.h5",
    "h5/v_bigendian.h5",
    "h5/v_compact.h5",
    "h5/v_fletcher_lzf.h5",
    "h5/v_float16.h5",
    "h5/v_gzip_shuffle.h5",
    "h5/v_latest.h5",
    "h5/v_unallocated.h5",
    "h5/v_userblock.h5",
    "keras3/k3_deflated.keras",
    "keras3/k3_functional.keras",
    "keras3/k3_mixed.keras",
    "keras3/k3_sharded.weights.json",
    "keras3/k3_sub.weights.h5",
    "safetensors/all_dtypes.safetensors",
    "safetensors/float6.safetensors",
    "safetensors/sharded/model.safetensors.index.json",
    "onnx/external_one/model.onnx",
    "onnx/external_per/model.onnx",
    "onnx/external_sub/model.onnx",
    "onnx/raw.onnx",
    "onnx/sparse.onnx",
    "onnx/typed.onnx",
    "gguf/align64.gguf",
    "gguf/all_types.gguf",
    "gguf/big_endian.gguf",
    "gguf/handmade.gguf",
    "gguf/v1.gguf",
    "gguf/v2.gguf",
    "tflite/buffer_offset.tflite",
    "tflite/constants.tflite",
    "tflite/float.tflite",
    "tflite/float16.tflite",
    "tflite/int8.tflite",
    "tflite/old_schema.tflite",
    "numpy/arrays.npz",
    "numpy/bytes.npy",
    "numpy/compressed.npz",
    "numpy/fortran_be.npy",
    "numpy/matrix.npy",
    "numpy/mixed.npz",
    "numpy/model.weights.npz",
    "ckpt/sharded/ckpt-1.index",
    "ckpt/tf1_saver/model.ckpt-5",
    "ckpt/tf2_dtypes/dtypes.index",
    "ckpt/tf2_keras/ckpt-2.index",
    "savedmodel/tf_module.zip",
    "savedmodel/tfk_deflated.zip",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process started by a test, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master stops its workers before it exits.
        // SAFETY: kill only sends a signal to the server this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// nginx serving `www/` over HTTP and HTTPS, with an access log of every request.
struct Nginx {
    dir: tempfile::TempDir,
    http: u16,
    https: u16,
    _process: Server,
}

impl Nginx {
    /// Serves the fixtures at `/<fixture path>` and as Hub repository `org/repo` at
    /// `/org/repo/resolve/main/`, plus `/moved/...` redirecting to `/...`.
    fn start() -> Nginx {
        let dir = tempfile::Builder::new().prefix("wfs-nginx-").tempdir().unwrap();
        let www = dir.path().join("www");
        for fixture_path in SERVED {
            copy_tree(&fixture(fixture_path), &www.join(fixture_path));
            copy_tree(&fixture(fixture_path), &www.join("org/repo/resolve/main").join(fixture_path));
        }
        // A dataset repository too, as the Hub lays them out (below /datasets/).
        for fixture_path in ["ckpt/tf2_keras", "safetensors/sharded"] {
            copy_tree(&fixture(fixture_path), &www.join("datasets/org/data/resolve/main").join(fixture_path));
        }
        let mut next_pages = Vec::new();
        for (repo, api) in [("org/repo", "api/models/org/repo"), ("datasets/org/data", "api/datasets/org/data")] {
            hub_listings(&www.join(repo).join("resolve/main"), "", &www, &format!("/{api}/tree/main"), &mut next_pages);
        }
        // A certificate authority of the test's own, and the server's certificate signed by it.
        let openssl = |args: &str| {
            let status = Command::new("openssl").args(args.split(' ')).current_dir(dir.path()).stderr(Stdio::null()).status();
            assert!(status.expect("openssl (tests/setup.sh installs it)").success(), "openssl {args}");
        };
        openssl("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=wfs-test-ca -keyout ca.key -out ca.pem");
        openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out server.csr");
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        openssl("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out cert.pem");
        // Below /private/, the same files for user alice only.
        let hash = Command::new("openssl").args(["passwd", "-apr1", "s3cretpw"]).output().expect("openssl").stdout;
        std::fs::write(dir.path().join("htpasswd"), format!("alice:{}", String::from_utf8(hash).unwrap())).unwrap();
        let (http, https) = (free_port(), free_port());
        let d = dir.path().display();
        // One listing whose next page is on another server (localhost is another origin): its
        // token must not follow it there.
        let foreign = "/api/models/org/repo/tree/main/h5";
        let mut links: String = next_pages.iter().filter(|(key, _)| key != foreign).map(|(key, next)| format!("    \"{key}\" '<http://127.0.0.1:{http}{next}>; rel=\"next\"';\n")).collect();
        links.push_str(&format!("    \"{foreign}\" '<http://localhost:{http}/api/models/org/repo/tree/main/h5?cursor=2>; rel=\"next\"';\n"));
        let conf = format!(
            "user root; daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  log_format counted '$request_method $request_uri $status \"$http_range\" \"$http_authorization\"';
  access_log {d}/access.log counted;
  log_format sent '$body_bytes_sent';
  access_log {d}/sent.log sent;
  default_type application/octet-stream;
  map_hash_bucket_size 256;
  map $request_uri $hub_next {{
    default \"\";
{links}  }}
  server {{
    listen 127.0.0.1:{http}; listen 127.0.0.1:{https} ssl;
    ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
    root {d}/www;
    location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
    location /private/ {{ auth_basic wfs; auth_basic_user_file {d}/htpasswd; alias {d}/www/; }}
    location /forbidden/ {{ return 403; }}
    location /api/ {{ try_files $uri/listing$arg_cursor.json =404; add_header Link $hub_next; }}
  }}
}}"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let process = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (tests/setup.sh installs it)");
        let process = Server(process);
        wait_for_port(http);
        wait_for_port(https);
        Nginx { dir, http, https, _process: process }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.http)
    }

    fn www(&self, path: &str) -> PathBuf {
        self.dir.path().join("www").join(path)
    }

    /// Bytes of response bodies sent so far.
    fn bytes_sent(&self) -> u64 {
        let log = std::fs::read_to_string(self.dir.path().join("sent.log")).unwrap_or_default();
        log.lines().map(|line| line.parse::<u64>().unwrap()).sum()
    }

    /// The access log's lines so far.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

/// Entries per page of the test's Hub listings (the Hub's own pages hold 1000): small, so that
/// most directories take several pages.
const HUB_PAGE: usize = 2;

/// The Hub's tree API answers for every directory below `repo` (`rel` below the repository's
/// top): `GET {api}/REL[?cursor=N]` (`/api/KIND/ORG/REPO/tree/REV/REL`) gives a page of
/// `[{"type", "oid", "size", "path"}, ...]`, served from `www{api}/REL/listing[N].json`. As on the Hub, a page with
/// more after it has a `Link: <URL?cursor=N>; rel="next"` header: `next` gets each such page's
/// request URI and the next one's, for nginx's map.
fn hub_listings(repo: &Path, rel: &str, www: &Path, api: &str, next: &mut Vec<(String, String)>) {
    let mut listing = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(repo.join(rel)).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = format!("{rel}{}", entry.file_name().to_str().unwrap());
        let meta = entry.metadata().unwrap();
        let kind = if meta.is_dir() { "directory" } else { "file" };
        listing.push(serde_json::json!({"type": kind, "oid": "0", "size": if meta.is_dir() { 0 } else { meta.len() }, "path": path}));
        if meta.is_dir() {
            hub_listings(repo, &format!("{path}/"), www, api, next);
        }
    }
    let path = format!("{api}/{rel}").trim_end_matches('/').to_string();
    let at = www.join(&path[1..]);
    std::fs::create_dir_all(&at).unwrap();
    let pages: Vec<_> = listing.chunks(HUB_PAGE).collect();
    for (i, page) in pages.iter().enumerate() {
        // The first page has no cursor; the others are numbered from 2.
        let cursor = |i: usize| if i == 0 { String::new() } else { (i + 1).to_string() };
        let uri = |i: usize| if i == 0 { path.clone() } else { format!("{path}?cursor={}", cursor(i)) };
        std::fs::write(at.join(format!("listing{}.json", cursor(i))), serde_json::to_vec(page).unwrap()).unwrap();
        if i + 1 < pages.len() {
            next.push((uri(i), uri(i + 1)));
        }
    }
    if listing.is_empty() {
        std::fs::write(at.join("listing.json"), "[]").unwrap();
    }
}

/// Every entry below `root`: kind, link target or bytes (info.json without its `source`).
fn tree_of(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{rel}{}", entry.file_name().to_str().unwrap());
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                out.insert(name, std::fs::read_link(entry.path()).unwrap().into_os_string().into_encoded_bytes());
            } else if kind.is_dir() {
                out.insert(format!("{name}/"), Vec::new());
                walk(root, &format!("{name}/"), out);
            } else if entry.file_name() == "info.json" {
                let mut info: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
                info.as_object_mut().unwrap().remove("source");
                out.insert(name, info.to_string().into_bytes());
            } else {
                let bytes = std::fs::read(entry.path()).unwrap_or_else(|e| panic!("read {name}: {e}"));
                out.insert(name, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn assert_same_tree(remote: &Mount, local: &Path, what: &str) {
    let local = Mount::new(local, &[]);
    let (r, l) = (tree_of(&remote.point), tree_of(&local.point));
    assert_eq!(r.keys().collect::<Vec<_>>(), l.keys().collect::<Vec<_>>(), "{what}: entries");
    for (name, bytes) in &l {
        assert!(r[name] == *bytes, "{what}: {name} differs");
    }
    assert!(l.contains_key("tensors.tsv"), "{what}: a whole tree");
}

#[test]
fn http_https_and_redirects_give_the_local_tree() {
    let nginx = Nginx::start();
    let cert = nginx.dir.path().join("ca.pem");
    for (i, path) in MOUNTED.iter().enumerate() {
        // Each fixture over one of the three ways in, all of them over the run.
        let (url, env) = match i % 3 {
            0 => (nginx.url(path), None),
            1 => (format!("https://127.0.0.1:{}/{path}", nginx.https), Some(&cert)),
            _ => (nginx.url(&format!("moved/{path}")), None),
        };
        let mount = mount_with_env(&url, &[], env.map(|c| ("SSL_CERT_FILE", c.as_os_str())));
        assert_same_tree(&mount, &fixture(path), &url);
        let info = mount.text("info.json");
        assert!(info.contains(&url), "info.json names the URL: {info}");
    }
    // Without the certificate trusted, HTTPS is refused at mount.
    let untrusted = format!("https://127.0.0.1:{}/{}", nginx.https, MOUNTED[0]);
    let out = wfs().args(["info", &untrusted, "--timeout", "5"]).env("SSL_CERT_FILE", "/dev/null").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

fn mount_with_env(url: &str, args: &[&str], env: Option<(&str, &std::ffi::OsStr)>) -> Mount {
    let dir = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
    let point = dir.path().join("m");
    let mut command = wfs();
    command.arg("mount").arg(url).arg(&point).args(args);
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "wfs mount {url}: {}", String::from_utf8_lossy(&out.stderr));
    let mount = Mount { dir, point };
    assert_daemon_shows_no_secret(&mount);
    mount
}

/// Every secret the tests put in URLs, environments and credentials files.
const SECRETS: &[&str] = &["alice", "s3cretpw", "qu3rysecret", "hf_test_token", S3_SECRET, "X-Amz-Signature", "X-Amz-Credential"];

/// The pid of the daemon serving `point` (the one process whose arguments name it).
fn daemon_pid(point: &Path) -> u32 {
    let point = point.to_str().unwrap();
    let pids = std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    let serving: Vec<u32> = pids
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == point.as_bytes())))
        .collect();
    assert_eq!(serving.len(), 1, "daemons of {point}: {serving:?}");
    serving[0]
}

/// `/proc/PID/FILE` as another user (nobody) reads it, or `None` where that user may not.
fn read_as_nobody(pid: u32, file: &str) -> Option<Vec<u8>> {
    let out = Command::new("setpriv").args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"]).arg(format!("/proc/{pid}/{file}")).output().unwrap();
    out.status.success().then_some(out.stdout)
}

/// The daemon of `mount`, as every user sees it: its command line names URLs without user
/// info and query, and neither it nor its environment (where another user can read it)
/// holds any of the tests' secrets.
fn assert_daemon_shows_no_secret(mount: &Mount) {
    let pid = daemon_pid(&mount.point);
    let cmdline = read_as_nobody(pid, "cmdline").expect("every user may read a command line");
    let cmdline = String::from_utf8(cmdline).unwrap();
    for arg in cmdline.split('\0').filter(|arg| arg.contains("://")) {
        let url = url::Url::parse(arg.trim_end()).unwrap_or_else(|e| panic!("{arg:?}: {e}"));
        assert!(url.username().is_empty() && url.password().is_none() && url.query().is_none(), "{cmdline:?}");
    }
    let environ = read_as_nobody(pid, "environ").unwrap_or_default();
    for shown in [cmdline.as_bytes(), &environ] {
        let shown = String::from_utf8_lossy(shown);
        assert!(SECRETS.iter().all(|secret| !shown.contains(secret)), "daemon {pid} shows a secret: {shown:?}");
    }
}

#[test]
fn hub_urls_use_revision_endpoint_and_token() {
    let nginx = Nginx::start();
    let endpoint = format!("http://127.0.0.1:{}", nginx.http);
    let dir = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
    let point = dir.path().join("m");
    let out = wfs()
        .args(["mount", "hf://org/repo@main/ckpt/tf2_keras/ckpt-1.index"])
        .arg(&point)
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_TOKEN", "hf_test_token_123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mount = Mount { dir, point };
    assert_daemon_shows_no_secret(&mount);
    assert_same_tree(&mount, &fixture("ckpt/tf2_keras/ckpt-1.index"), "hf://");
    let requests = nginx.requests();
    assert!(requests.iter().all(|r| r.contains("/org/repo/resolve/main/ckpt/tf2_keras/ckpt-1.") && r.contains("\"Bearer hf_test_token_123\"")), "{requests:#?}");
    assert!(!mount.text("info.json").contains("hf_test_token"));
    // Without @revision the Hub's default branch is read.
    let out = wfs().args(["ls", "hf://org/repo/ckpt/tf2_keras/ckpt-1"]).env("HF_ENDPOINT", &endpoint).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Directories are listed by the Hub's tree API: a SavedModel, a checkpoint directory.
    let hub = Some(("HF_ENDPOINT", endpoint.as_ref()));
    for (url, local) in [("hf://org/repo/savedmodel/tf_module", "savedmodel/tf_module"), ("hf://org/repo@main/ckpt/tf2_keras/", "ckpt/tf2_keras")] {
        assert_same_tree(&mount_with_env(url, &[], hub), &fixture(local), url);
    }
    // A directory of model files (as most repositories are) names them in one line.
    let out = wfs().args(["info", "hf://org/repo/safetensors"]).env("HF_ENDPOINT", &endpoint).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("name one of its files: all_dtypes.safetensors, ") && err.contains(" float6.safetensors,"), "{err}");
    // Listings of more than a page were read to their last page.
    let requests = nginx.requests();
    for page in ["/api/models/org/repo/tree/main/ckpt/tf2_keras?cursor=2 200", "/api/models/org/repo/tree/main/safetensors?cursor=2 200"] {
        assert!(requests.iter().any(|r| r.contains(page)), "{page}: {requests:#?}");
    }
    // A dataset repository: files and listed directories below /datasets/.
    for (url, local) in [("hf://datasets/org/data@main/ckpt/tf2_keras/", "ckpt/tf2_keras"), ("hf://datasets/org/data/safetensors/sharded/model.safetensors.index.json", "safetensors/sharded/model.safetensors.index.json")] {
        let mount = mount_with_env(url, &[], hub);
        assert!(mount.text("info.json").contains("\"hf://datasets/org/data"), "{}", mount.text("info.json"));
        assert_same_tree(&mount, &fixture(local), url);
    }
    let requests = nginx.requests();
    for asked in ["GET /api/datasets/org/data/tree/main/ckpt/tf2_keras?cursor=2 200", "GET /datasets/org/data/resolve/main/safetensors/sharded/model-00002-of-00002.safetensors 206"] {
        assert!(requests.iter().any(|r| r.starts_with(asked)), "{asked}: {requests:#?}");
    }
    // A next page on another server is not followed: the token would go with it.
    let out = wfs().args(["info", "hf://org/repo/h5/"]).env("HF_ENDPOINT", &endpoint).env("HF_TOKEN", "hf_test_token_123").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("next page is on another server (http://localhost:") && !err.contains("hf_test_token"), "{err}");
    assert!(!nginx.requests().iter().any(|r| r.contains("tree/main/h5?cursor")), "{:#?}", nginx.requests());
}

#[test]
fn secrets_in_urls_are_never_shown() {
    let nginx = Nginx::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let url = format!("http://alice:s3cretpw@127.0.0.1:{}/ckpt/tf2_keras/ckpt-1.index?token=qu3rysecret", nginx.http);
    let mount = mount_with_env(&url, &["-v", "--log-file", log.path().to_str().unwrap()], None);
    let shown = [
        mount.text("info.json"),
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        std::fs::read_to_string(log.path()).unwrap(),
    ];
    for text in &shown {
        assert!(!text.contains("s3cretpw") && !text.contains("qu3rysecret") && !text.contains("alice"), "{text}");
    }
    assert!(shown[0].contains(&format!("http://127.0.0.1:{}/ckpt/tf2_keras/ckpt-1.index", nginx.http)));
    // The user info was sent, as basic authentication.
    assert!(nginx.requests().iter().all(|r| r.ends_with("\"Basic YWxpY2U6czNjcmV0cHc=\"")), "{:#?}", nginx.requests());
    // Nor in errors.
    let missing = format!("http://alice:s3cretpw@127.0.0.1:{}/nothing/here.h5?token=qu3rysecret", nginx.http);
    let out = wfs().args(["info", &missing]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("s3cretpw") && !err.contains("qu3rysecret") && err.contains("not found"), "{err}");
}

/// A credentials file holding `lines`, private to its owner.
fn credentials_file(dir: &Path, lines: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("credentials");
    std::fs::write(&path, lines).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn daemons_keep_secrets_from_other_users() {
    let nginx = Nginx::start();
    let path = "ckpt/tf2_keras/ckpt-1.index";
    let plain = nginx.url(path);
    // In the URL: the daemon's command line shows it without user info and query.
    let url = format!("http://alice:s3cretpw@127.0.0.1:{}/{path}?token=qu3rysecret", nginx.http);
    let mount = mount_with_env(&url, &[], None);
    let cmdline = read_as_nobody(daemon_pid(&mount.point), "cmdline").unwrap();
    assert!(String::from_utf8(cmdline).unwrap().contains(&format!("\0{plain} ")), "the URL is shown, redacted");
    drop(mount);
    // In a credentials file: not on the command line, and not in the daemon's environment
    // either (read here as its owner, who may).
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path(), "# for wfs\nHTTP_USER=alice\nHTTP_PASSWORD=s3cretpw\n");
    let mount = mount_with_env(&plain, &["--credentials-file", file.to_str().unwrap()], None);
    let environ = std::fs::read(format!("/proc/{}/environ", daemon_pid(&mount.point))).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("s3cretpw"));
    assert_same_tree(&mount, &fixture(path), "with a credentials file");
    assert!(nginx.requests().last().unwrap().ends_with("\"Basic YWxpY2U6czNjcmV0cHc=\""), "{:#?}", nginx.requests());
    // The Hub's token.
    let file = credentials_file(dir.path(), "HF_TOKEN=hf_test_token_456\n");
    let endpoint = nginx.url("");
    let hub = Some(("HF_ENDPOINT", endpoint.as_ref()));
    let mount = mount_with_env(&format!("hf://org/repo/{path}"), &["--credentials-file", file.to_str().unwrap()], hub);
    assert!(nginx.requests().last().unwrap().ends_with("\"Bearer hf_test_token_456\""), "{:#?}", nginx.requests());
    drop(mount);
    // A file others may read is refused, in one line, before any request.
    let asked = nginx.requests().len();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = wfs().args(["info", &plain, "--credentials-file"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end(), format!("wfs: {0}: others may read or change it (mode 640); make it private: chmod 600 {0}", file.display()));
    assert_eq!(nginx.requests().len(), asked);
    // S3 keys from the file alone (the endpoint and region are no secret).
    let Some(s3) = S3::start() else { return };
    let file = credentials_file(dir.path(), &format!("AWS_ACCESS_KEY_ID={S3_KEY}\nAWS_SECRET_ACCESS_KEY={S3_SECRET}\n"));
    let endpoint = s3.endpoint();
    let tmp = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
    let point = tmp.path().join("m");
    let out = s3.wfs(&["mount", "s3://models/h5/k2_functional.h5", point.to_str().unwrap(), "--credentials-file", file.to_str().unwrap()], &[("AWS_ENDPOINT_URL", &endpoint), ("AWS_REGION", "us-east-1")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mount = Mount { dir: tmp, point };
    assert_daemon_shows_no_secret(&mount);
    let environ = std::fs::read(format!("/proc/{}/environ", daemon_pid(&mount.point))).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(S3_SECRET));
    assert_same_tree(&mount, &fixture("h5/k2_functional.h5"), "s3 with a credentials file");
}

#[test]
fn remote_failures_are_one_line_that_says_what_to_do() {
    let nginx = Nginx::start();
    let host = format!("127.0.0.1:{}", nginx.http);
    let file = "h5/k2_functional.h5";
    let info = |url: &str, args: &[&str]| {
        let out = wfs().arg("info").arg(url).args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let private = nginx.url(&format!("private/{file}"));
    let no_credentials = "no credentials were sent: give HTTP_USER and HTTP_PASSWORD in a --credentials-file";
    assert_eq!(info(&private, &[]), (Some(3), format!("wfs: {private}: {host} answered 401 Unauthorized; {no_credentials}\n")));
    let wrong = format!("http://alice:wrong@{host}/private/{file}");
    let refused = "the credentials sent (the URL's user name and password)";
    assert_eq!(info(&wrong, &[]), (Some(3), format!("wfs: {private}: {host} answered 401 Unauthorized to {refused}\n")));
    assert_eq!(info(&format!("http://alice:s3cretpw@{host}/private/{file}"), &[]).0, Some(0));
    let forbidden = nginx.url(&format!("forbidden/{file}"));
    assert_eq!(info(&forbidden, &[]), (Some(3), format!("wfs: {forbidden}: {host} answered 403 Forbidden; {no_credentials}\n")));
    let missing = nginx.url("nothing/here.h5");
    assert_eq!(info(&missing, &[]), (Some(3), format!("wfs: {missing}: not found ({host} answered 404 Not Found)\n")));
    // Nothing listening; a server that takes the connection and never answers.
    let closed = format!("http://127.0.0.1:{}/{file}", free_port());
    let closed_host = closed[7..].split('/').next().unwrap().to_string();
    assert_eq!(info(&closed, &[]), (Some(3), format!("wfs: {closed}: cannot connect to {closed_host}: Connection refused\n")));
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = silent.local_addr().unwrap().to_string();
    let silent_url = format!("http://{silent_host}/{file}");
    assert_eq!(info(&silent_url, &["--timeout", "1"]), (Some(3), format!("wfs: {silent_url}: {silent_host} did not answer within 1 s (--timeout), 4 tries\n")));
    // With -v, the library's whole account too (but no secret).
    let (code, err) = info(&wrong, &["-v"]);
    assert_eq!(code, Some(3));
    assert!(err.lines().count() > 1 && err.contains("401") && !err.contains("wrong"), "{err}");
}

/// A 1 GiB safetensors file of 1000 tensors of 1 MiB (sparse but for a pattern in tensor
/// 500), written by the test by the format's rules (the local mount of it is the oracle).
fn large_safetensors(path: &Path) {
    let mut header = String::from("{");
    for i in 0..1000u64 {
        header.push_str(&format!("\"t{i:03}\":{{\"dtype\":\"F32\",\"shape\":[512,512],\"data_offsets\":[{},{}]}},", i << 20, (i + 1) << 20));
    }
    header.pop();
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    file.write_all(header.as_bytes()).unwrap();
    let data_start = 8 + header.len() as u64;
    file.set_len(data_start + (1000 << 20)).unwrap();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &pattern, data_start + (500 << 20) + 4096).unwrap();
}

#[test]
fn few_requests_to_mount_a_large_file_and_one_per_read() {
    let nginx = Nginx::start();
    large_safetensors(&nginx.www("large.safetensors"));
    let local = Mount::new(&nginx.www("large.safetensors"), &[]);
    let mount = mount_with_env(&nginx.url("large.safetensors"), &[], None);
    let at_mount = nginx.requests();
    assert!(at_mount.len() <= 3, "{at_mount:#?}");
    assert!(at_mount.iter().all(|r| r.starts_with("HEAD") || (r.contains(" 206 ") && r.contains("bytes="))), "{at_mount:#?}");
    // One 4 KiB range of tensor 500: one more request, for one block.
    let read_4k = |m: &Mount| {
        let file = std::fs::File::open(m.path("tensors/t500.raw")).unwrap();
        let mut buf = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 4096).unwrap();
        buf
    };
    assert_eq!(read_4k(&mount), read_4k(&local));
    assert!(read_4k(&local).iter().any(|&b| b != 0));
    let after = nginx.requests();
    assert_eq!(after.len(), at_mount.len() + 1, "{after:#?}");
    assert!(after.last().unwrap().contains(" 206 \"bytes=5"), "{after:#?}");
}

/// Tensors of the large files below: 1040 of 64 KiB (65 MiB), each filled with its own number.
const LARGE_TENSORS: u32 = 1040;

fn large_tensor(i: u32) -> Vec<f32> {
    vec![i as f32; 128 * 128]
}

/// A 64 MiB `.npz` as numpy writes one: a stored zip of `.npy` members.
fn large_npz(path: &Path) {
    let members: Vec<(String, Vec<u8>)> = (0..LARGE_TENSORS)
        .map(|i| {
            let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (128, 128), }".to_string();
            while !(10 + header.len() + 1).is_multiple_of(64) {
                header.push(' ');
            }
            header.push('\n');
            let mut npy = b"\x93NUMPY\x01\x00".to_vec();
            npy.extend((header.len() as u16).to_le_bytes());
            npy.extend(header.as_bytes());
            npy.extend(large_tensor(i).iter().flat_map(|v| v.to_le_bytes()));
            (format!("t{i:04}.npy"), npy)
        })
        .collect();
    let members: Vec<(&str, Vec<u8>, bool)> = members.iter().map(|(name, npy)| (name.as_str(), npy.clone(), false)).collect();
    write_zip(path, &members);
}

/// A 64 MiB ONNX model whose initializers hold their bytes in `raw_data` (as onnx.save writes
/// them), in protobuf's wire format written here.
fn large_onnx(path: &Path) {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut graph = Vec::new();
    field(&mut graph, 2, b"g");
    for i in 0..LARGE_TENSORS {
        let mut tensor = Vec::new();
        for _ in 0..2 {
            varint(&mut tensor, 1 << 3); // dims: 128 x 128
            varint(&mut tensor, 128);
        }
        varint(&mut tensor, 2 << 3);
        varint(&mut tensor, 1); // FLOAT
        field(&mut tensor, 8, format!("w{i:04}").as_bytes());
        let raw: Vec<u8> = large_tensor(i).iter().flat_map(|v| v.to_le_bytes()).collect();
        field(&mut tensor, 9, &raw);
        field(&mut graph, 5, &tensor);
    }
    let mut model = Vec::new();
    varint(&mut model, 1 << 3);
    varint(&mut model, 8); // ir_version
    let mut opset = Vec::new();
    varint(&mut opset, 2 << 3);
    varint(&mut opset, 17);
    field(&mut model, 8, &opset);
    field(&mut model, 7, &graph);
    std::fs::write(path, model).unwrap();
}

/// A 64 MiB HDF5 file of 1000 contiguous datasets, written by libhdf5 (as h5py does).
fn large_h5(path: &Path) {
    let file = hdf5::File::create(path).unwrap();
    for i in 0..LARGE_TENSORS {
        let dataset = file.new_dataset::<f32>().shape([128, 128]).create(format!("t{i:04}").as_str()).unwrap();
        dataset.write_raw(&large_tensor(i)).unwrap();
    }
}

#[test]
fn a_mount_reads_metadata_and_a_tensor_read_its_bytes() {
    let nginx = Nginx::start();
    for (name, write, tensor) in [
        ("large.npz", large_npz as fn(&Path), "tensors/t0500.raw"),
        ("large.onnx", large_onnx, "tensors/w0500.raw"),
        ("large.h5", large_h5, "datasets/t0500.raw"),
    ] {
        write(&nginx.www(name));
        let size = std::fs::metadata(nginx.www(name)).unwrap().len();
        assert!(size >= 64 << 20, "{name}: {size} bytes");
        let before = nginx.bytes_sent();
        let mount = mount_with_env(&nginx.url(name), &[], None);
        let at_mount = nginx.bytes_sent() - before;
        assert!(at_mount <= size / 50 + (1 << 20), "{name}: {at_mount} bytes sent at mount");
        // One tensor costs its bytes and at most one block more.
        let local = Mount::new(&nginx.www(name), &[]);
        let before = nginx.bytes_sent();
        let bytes = mount.read(tensor);
        assert_eq!(bytes, local.read(tensor), "{name}");
        assert_eq!(bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>(), large_tensor(500), "{name}");
        let for_tensor = nginx.bytes_sent() - before;
        assert!(for_tensor <= bytes.len() as u64 + (1 << 20), "{name}: {for_tensor} bytes sent for {} of tensor", bytes.len());
        let names = |m: &Mount| {
            let dir = m.path(tensor.split('/').next().unwrap());
            let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&mount), names(&local), "{name}");
    }
}

#[test]
fn a_stalled_server_fails_a_read_within_the_read_timeout() {
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.http);
    let path = "ckpt/tf2_keras/ckpt-2.index";
    let local = Mount::new(&fixture(path), &[]);
    let tensor = &stored_tensors(&local)[0];
    // Each try may take 3 s, four tries: 12 s and more; the read gives up after 2.
    let mount = mount_with_env(&proxy.url(path), &["--cache-size", "0", "--timeout", "3", "--read-timeout", "2"], None);
    proxy.inject(Fault::Stall, 100);
    let started = Instant::now();
    assert_eq!(read(&mount, tensor).err(), Some(libc::EIO));
    let took = started.elapsed();
    proxy.inject(Fault::Pass, 0);
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "failing took {took:?}");
    assert_eq!(read(&mount, tensor).ok(), Some(local.read(tensor)));
    let help = wfs().args(["mount", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--read-timeout"));
}

#[test]
fn without_a_cache_a_tensor_read_is_one_ranged_request() {
    let nginx = Nginx::start();
    let url = nginx.url("ckpt/tf2_keras/ckpt-1.index");
    let local = Mount::new(&fixture("ckpt/tf2_keras/ckpt-1.index"), &[]);
    let tensors = stored_tensors(&local);
    let uncached = mount_with_env(&url, &["--cache-size", "0"], None);
    let before = nginx.requests().len();
    assert_eq!(uncached.read(&tensors[0]), local.read(&tensors[0]));
    let after = nginx.requests();
    assert_eq!(after.len(), before + 1, "{after:#?}");
    assert!(after[before].starts_with("GET /ckpt/tf2_keras/ckpt-1.data-00000-of-00001 206 \"bytes=0-"), "{}", after[before]);
}

/// The `.raw` files of the tensors read from the source when read (strings are read at mount).
fn stored_tensors(mount: &Mount) -> Vec<String> {
    let tsv = mount.text("tensors.tsv");
    let rows = tsv.lines().skip(1).map(|l| l.split('\t').collect::<Vec<_>>());
    rows.filter(|row| row[1] != "string").map(|row| format!("{}.raw", row[0].strip_suffix(".npy").unwrap())).collect()
}

/// What the proxy does with the next connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Fault {
    Pass,
    /// Close the connection without answering.
    Drop,
    Status500,
    Status503,
    /// Answer nothing until the client gives up.
    Stall,
    /// Forward the request without its Range header (a server that ignores ranges).
    NoRange,
}

/// A proxy in front of nginx that injects `fault` into the next `count` connections (then
/// passes), one request per connection.
struct Proxy {
    port: u16,
    fault: Arc<AtomicU8>,
    count: Arc<AtomicU32>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let count = Arc::new(AtomicU32::new(0));
        let (f, c) = (fault.clone(), count.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let injected = c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let fault = if injected { f.load(Ordering::SeqCst) } else { Fault::Pass as u8 };
                std::thread::spawn(move || serve(client, upstream, fault));
            }
        });
        Proxy { port, fault, count }
    }

    fn inject(&self, fault: Fault, count: u32) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        self.count.store(count, Ordering::SeqCst);
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn serve(mut client: TcpStream, upstream: u16, fault: u8) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let answer = |client: &mut TcpStream, status: &str| {
        let _ = write!(client, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    match fault {
        f if f == Fault::Drop as u8 => {}
        f if f == Fault::Status500 as u8 => answer(&mut client, "500 Internal Server Error"),
        f if f == Fault::Status503 as u8 => answer(&mut client, "503 Service Unavailable"),
        f if f == Fault::Stall as u8 => std::thread::sleep(Duration::from_secs(60)),
        _ => {
            let keep = |l: &String| {
                let lower = l.to_ascii_lowercase();
                let dropped = lower.starts_with("connection:") || (fault == Fault::NoRange as u8 && lower.starts_with("range:"));
                !dropped
            };
            let mut request: String = head.iter().filter(|l| keep(l)).cloned().collect();
            request.push_str("Connection: close\r\n\r\n");
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            if server.write_all(request.as_bytes()).is_ok() {
                let mut response = Vec::new();
                let _ = server.read_to_end(&mut response);
                let _ = client.write_all(&response);
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Reads `rel` in the mount: its bytes, or the errno of the failure.
fn read(mount: &Mount, rel: &str) -> Result<Vec<u8>, i32> {
    std::fs::read(mount.path(rel)).map_err(|e| e.raw_os_error().unwrap_or(0))
}

#[test]
fn faults_fail_reads_with_eio_and_the_mount_keeps_serving() {
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.http);
    let path = "ckpt/tf2_keras/ckpt-2.index";
    let local = Mount::new(&fixture(path), &[]);
    let tensors = stored_tensors(&local);
    assert!(tensors.len() >= 6);
    // No cache: every read of a tensor is a request.
    let mount = mount_with_env(&proxy.url(path), &["--cache-size", "0", "--timeout", "1"], None);
    let mut next = tensors.iter();
    let mut expect_read = |fault: Fault, count: u32, ok: bool| {
        let tensor = next.next().unwrap();
        proxy.inject(fault, count);
        let started = Instant::now();
        let got = read(&mount, tensor);
        let took = started.elapsed();
        proxy.inject(Fault::Pass, 0);
        if ok {
            assert_eq!(got.as_ref().ok(), Some(&local.read(tensor)), "{fault:?} x{count}: {tensor}");
        } else {
            assert_eq!(got.err(), Some(libc::EIO), "{fault:?} x{count}: {tensor}");
            assert!(took < Duration::from_secs(30), "{fault:?}: failing took {took:?}");
            // The same read works once the server answers again.
            assert_eq!(read(&mount, tensor).ok(), Some(local.read(tensor)), "after {fault:?}: {tensor}");
        }
    };
    // Passing faults are retried away; lasting ones fail the read, bounded in time.
    expect_read(Fault::Drop, 1, true);
    expect_read(Fault::Status503, 2, true);
    expect_read(Fault::Status500, 100, false);
    expect_read(Fault::Drop, 100, false);
    expect_read(Fault::Stall, 100, false);

    // An object replaced on the server (same size, new content): reads fail, never mix.
    let data = nginx.www("ckpt/tf2_keras/ckpt-2.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes.iter_mut().for_each(|b| *b = !*b);
    std::fs::write(&data, &bytes).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&data).unwrap().set_modified(later).unwrap();
    let tensor = next.next().unwrap();
    assert_eq!(read(&mount, tensor).err(), Some(libc::EIO), "changed object");
    assert!(mount.text("info.json").contains("tf-checkpoint"), "the mount still serves");
}

#[test]
fn a_server_that_ignores_range_is_refused_at_mount() {
    let nginx = Nginx::start();
    let proxy = Proxy::start(nginx.http);
    proxy.inject(Fault::NoRange, 1000);
    let out = wfs().args(["info", &proxy.url("savedmodel/tf_module.zip")]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ignores Range requests"), "{err}");
}

/// s3s-fs serving bucket `models` (the fixtures) with one access key.
struct S3 {
    dir: tempfile::TempDir,
    port: u16,
    _process: Server,
}

const S3_KEY: &str = "AKIAWFSTEST";
const S3_SECRET: &str = "wfs-test-s3cret-key";

impl S3 {
    /// `None` where s3s-fs is not installed (tests/setup.sh installs it).
    fn start() -> Option<S3> {
        S3::serving(|root| {
            for fixture_path in SERVED {
                copy_tree(&fixture(fixture_path), &root.join("models").join(fixture_path));
            }
        })
    }

    /// s3s-fs serving what `fill` puts below its root (a directory per bucket).
    fn serving(fill: impl FnOnce(&Path)) -> Option<S3> {
        let dir = tempfile::Builder::new().prefix("wfs-s3-").tempdir().unwrap();
        fill(dir.path());
        let port = free_port();
        let process = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(process) = process else {
            eprintln!("s3s-fs is not installed (tests/setup.sh installs it): skipping");
            return None;
        };
        let process = Server(process);
        wait_for_port(port);
        Some(S3 { dir, port, _process: process })
    }

    /// `wfs ARGS` with no AWS settings but those given.
    fn wfs(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut command = wfs();
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            command.env_remove(key);
        }
        command.args(args).env("HOME", self.dir.path()).envs(env.iter().copied()).output().unwrap()
    }
}

#[test]
fn s3_with_environment_or_profile_credentials_gives_the_local_tree() {
    let Some(s3) = S3::start() else { return };
    let endpoint = s3.endpoint();
    for path in ["h5/k2_functional.h5", "keras3/k3_sharded.weights.json", "safetensors/sharded/model.safetensors.index.json", "onnx/external_sub/model.onnx", "ckpt/tf2_keras/ckpt-2.index", "ckpt/tf1_saver/model.ckpt-5", "savedmodel/tf_module.zip"] {
        let url = format!("s3://models/{path}");
        assert_same_tree(&s3.mount(&url), &fixture(path), &url);
    }
    // The same from the shared profile files alone.
    let aws = s3.dir.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(aws.join("credentials"), format!("[default]\naws_access_key_id = {S3_KEY}\naws_secret_access_key = {S3_SECRET}\n")).unwrap();
    std::fs::write(aws.join("config"), format!("[default]\nregion = us-east-1\nendpoint_url = {endpoint}\n")).unwrap();
    let out = s3.wfs(&["cat", "s3://models/ckpt/tf2_keras/ckpt-1.index", "tensors.tsv"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = wfs().args(["cat", fixture("ckpt/tf2_keras/ckpt-1.index").to_str().unwrap(), "tensors.tsv"]).output().unwrap();
    assert_eq!(out.stdout, local.stdout);
    // A wrong secret is refused at mount, in one line that does not show it.
    let out = s3.wfs(&["info", "s3://models/h5/k2_functional.h5"], &[("AWS_SECRET_ACCESS_KEY", "not-the-s3cret")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("not-the-s3cret") && !err.contains(S3_SECRET), "{err}");
}

impl S3 {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `wfs ARGS` with the server's credentials in the environment.
    fn wfs_with_credentials(&self, args: &[&str]) -> std::process::Output {
        let endpoint = self.endpoint();
        let env = [("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET), ("AWS_ENDPOINT_URL", &endpoint), ("AWS_REGION", "us-east-1")];
        self.wfs(args, &env)
    }

    /// Mounts `url` with the server's credentials in the environment.
    fn mount(&self, url: &str) -> Mount {
        let tmp = tempfile::Builder::new().prefix("wfs-test-").tempdir().unwrap();
        let point = tmp.path().join("m");
        let out = self.wfs_with_credentials(&["mount", url, point.to_str().unwrap()]);
        assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        let mount = Mount { dir: tmp, point };
        assert_daemon_shows_no_secret(&mount);
        mount
    }

    /// A URL for GET of `key` in bucket `models`, signed in its query (SigV4, as `aws s3
    /// presign` makes them), by object_store's signer: a client needs no credentials of its own.
    fn presign(&self, key: &str) -> String {
        use object_store::signer::Signer;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("models")
            .with_access_key_id(S3_KEY)
            .with_secret_access_key(S3_SECRET)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = runtime.block_on(store.signed_url(reqwest::Method::GET, &key.into(), Duration::from_secs(600)));
        url.unwrap().to_string()
    }
}

#[test]
fn s3_directories_are_listed_savedmodels_and_checkpoints() {
    let Some(s3) = S3::start() else { return };
    // With and without the trailing slash; a SavedModel with assets/; several checkpoints
    // (parts and `latest`) and one sharded checkpoint.
    for (url, local) in [
        ("s3://models/savedmodel/tf_module", "savedmodel/tf_module"),
        ("s3://models/savedmodel/tfk_functional/", "savedmodel/tfk_functional"),
        ("s3://models/ckpt/tf2_keras/", "ckpt/tf2_keras"),
        ("s3://models/ckpt/sharded", "ckpt/sharded"),
    ] {
        let mount = s3.mount(url);
        assert_same_tree(&mount, &fixture(local), url);
    }
    assert!(s3.mount("s3://models/savedmodel/tf_module/").path("assets/vocab.txt").is_file());
    // A prefix with nothing below it is not found, in one line.
    let out = s3.wfs_with_credentials(&["info", "s3://models/savedmodel/nothing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_directory_wins_over_a_checkpoint_of_its_name_as_locally() {
    let fill = |root: &Path| {
        let both = root.join("models/both");
        copy_tree(&fixture("savedmodel/tf_module"), &both.join("model"));
        copy_tree(&fixture("ckpt/tf2_keras/ckpt-1.index"), &both.join("model.index"));
        copy_tree(&fixture("ckpt/tf2_keras/ckpt-1.data-00000-of-00001"), &both.join("model.data-00000-of-00001"));
    };
    let Some(s3) = S3::serving(fill) else { return };
    let local = s3.dir.path().join("models/both/model");
    let local_mount = Mount::new(&local, &[]);
    assert!(local_mount.text("info.json").contains("tf-savedmodel"), "{}", local_mount.text("info.json"));
    assert_same_tree(&s3.mount("s3://models/both/model"), &local, "s3://models/both/model");
    // The checkpoint is still reached by its .index.
    assert!(s3.mount("s3://models/both/model.index").text("info.json").contains("tf-checkpoint"));
}

#[test]
fn presigned_urls_need_no_credentials_and_stay_secret() {
    let Some(s3) = S3::start() else { return };
    for path in ["safetensors/all_dtypes.safetensors", "h5/k2_functional.h5", "gguf/all_types.gguf"] {
        let url = s3.presign(path);
        assert!(url.contains("X-Amz-Signature="), "{url}");
        let mount = mount_with_env(&url, &[], None);
        assert_same_tree(&mount, &fixture(path), path);
        let info = mount.text("info.json");
        assert!(!info.contains("X-Amz") && info.contains(&format!("{}/models/{path}", s3.endpoint())), "{info}");
    }
    // A presigned URL reaches its own object only: a checkpoint's data file beside it is refused.
    let out = wfs().args(["info", &s3.presign("ckpt/tf2_keras/ckpt-1.index")]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(err.contains("ckpt-1.data-00000-of-00001: ") && err.contains("403") && !err.contains("X-Amz"), "{err}");
    // A signature that does not match is refused at mount, in one line without the query.
    let url = s3.presign("h5/k2_functional.h5").replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let out = wfs().args(["info", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("X-Amz") && !err.contains(S3_KEY), "{err}");
}

#[test]
fn convert_and_export_read_urls() {
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    for path in ["safetensors/sharded/model.safetensors.index.json", "ckpt/tf2_keras/ckpt-2.index", "h5/k2_functional.h5"] {
        let (remote, local) = (dir.path().join("remote.safetensors"), dir.path().join("local.safetensors"));
        let out = wfs().arg("convert").arg(nginx.url(path)).arg(&remote).output().unwrap();
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        let out = wfs().arg("convert").arg(fixture(path)).arg(&local).output().unwrap();
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&remote).unwrap() == std::fs::read(&local).unwrap(), "{path}: convert differs");
    }
    // A directory URL over plain HTTP cannot be listed: said in one line.
    let out = wfs().args(["info", &nginx.url("savedmodel/tf_module/")]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does not list directories"), "{err}");
    // An empty object is read (by size) and refused as what it is.
    std::fs::write(nginx.www("empty.safetensors"), b"").unwrap();
    let out = wfs().args(["info", &nginx.url("empty.safetensors")]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("file is empty"), "{err}");
}

#[test]
fn diff_reads_urls_as_a_mount_does() {
    let nginx = Nginx::start();
    for path in ["h5/k2_functional.h5", "safetensors/sharded/model.safetensors.index.json"] {
        let out = wfs().args(["diff", &nginx.url(path)]).arg(fixture(path)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{path}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.lines().count() > 1 && text.lines().rev().skip(1).all(|l| l.starts_with("equal ")), "{path}: {text}");
    }
}

#[test]
fn real_models_over_s3_give_the_local_tree() {
    let Some(root) = real_models() else { return };
    let Some(s3) = S3::serving(|dir| copy_tree(&root, &dir.join("real"))) else { return };
    for (item, oracle) in real_items(&root) {
        for rel in real_item_sources(&item, &oracle) {
            let (local, url) = (root.join(&rel), format!("s3://real/{rel}"));
            let local_info = wfs().arg("info").arg(&local).output().unwrap();
            if !local_info.status.success() {
                assert!(real_item_refused(&item), "{rel} does not mount locally: {}", String::from_utf8_lossy(&local_info.stderr));
                // What fails locally fails remotely, the same way.
                let out = s3.wfs_with_credentials(&["info", &url]);
                assert_eq!(out.status.code(), local_info.status.code(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
                continue;
            }
            assert_same_tree(&s3.mount(&url), &local, &url);
        }
    }
}
