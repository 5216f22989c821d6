//! The real kube-apiserver for tests and benches: built from source (`tests/apiserver`, cached)
//! and started once per test binary, or on its own with extra flags. If it cannot be built or
//! started, the caller fails saying why; it never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};

/// What the harness prints when it is ready: where it serves and its users' kubeconfigs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ready {
    /// The API server's URL.
    pub server: String,
    /// Its port on localhost.
    pub port: u16,
    /// Kubeconfig of `admin` (`system:masters`): everything, e.g. creating namespaces.
    pub admin: PathBuf,
    /// Kubeconfig of `dsync-norights`: discovery and health only, 403 on Leases.
    pub norights: PathBuf,
    /// Kubeconfig of `dsync-leaseuser`: ClusterRole `dsync-lease` (what dsync needs on Leases)
    /// in every namespace.
    pub leaseuser: PathBuf,
    /// Where the harness keeps etcd data, certificates, kubeconfigs and logs.
    #[serde(rename = "dataDir")]
    pub data_dir: PathBuf,
}

struct Running {
    child: Child,
    // Held open: the harness exits when its stdin closes (when this process ends).
    _stdin: ChildStdin,
    ready: Ready,
}

/// The kube-apiserver flags that turn on coordinated leader election (KEP-4355; beta and off
/// by default in Kubernetes 1.36): the feature gate, and the `coordination.k8s.io/v1beta1` API
/// for `LeaseCandidate`s. With them the server keeps a Lease's `spec.strategy` and
/// `spec.preferredHolder` (without them it drops both) and runs its election controller.
pub const COORDINATED_LEADER_ELECTION: &[&str] = &[
    "--feature-gates=CoordinatedLeaderElection=true",
    "--runtime-config=coordination.k8s.io/v1beta1=true",
];

/// A kube-apiserver harness process (kube-apiserver and etcd in one process), which exits when
/// this process ends.
pub struct Harness {
    bin: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    running: Mutex<Option<Running>>,
}

/// The root of the dsync repository (this crate lives in its `tests/harness`).
pub fn repo() -> PathBuf {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        std::fs::canonicalize(dir).unwrap_or_else(|e| panic!("the dsync repository at {dir}: {e}"))
    })
    .clone()
}

/// Runs a build script of this repository (`bash <script>`, its stderr shown) and returns the
/// last line it prints on stdout: the path it built. Fails, naming `needs`, if it cannot.
pub fn run_build_script(script: &Path, needs: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see the output above. It needs {needs}.",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(
        Path::new(&path).exists(),
        "{} printed no path: {stdout:?}",
        script.display()
    );
    PathBuf::from(path)
}

fn build() -> PathBuf {
    run_build_script(
        &repo().join("tests/apiserver/build.sh"),
        "Go >= 1.26 and the Go module proxy",
    )
}

/// Removes the data directories of harnesses whose test process has exited. A harness in a
/// `static` is never dropped, so its process cannot clean up after itself; each directory is
/// named `<pid>-<uuid>`, and one whose pid no longer runs is left over (etcd data, logs:
/// tens of MB each, gigabytes after a few hundred test runs). Only on systems with `/proc`.
fn prune_stale_runs(runs: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(runs) else {
        return; // no runs yet
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start(bin: &Path, data_dir: &Path, extra_args: &[String]) -> Running {
    let mut command = Command::new(bin);
    command.arg("--data-dir").arg(data_dir);
    if !extra_args.is_empty() {
        command.arg("--").args(extra_args);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(line) if !line.trim().is_empty() => line,
        Ok(_) => {
            let status = child.wait().ok();
            panic!(
                "the kube-apiserver harness exited before it was ready ({status:?}); its error is \
                 above and its log in {}/apiserver.log",
                data_dir.display()
            )
        }
        Err(_) => {
            let _ = child.kill();
            panic!(
                "the kube-apiserver harness was not ready within 180 s; log: {}/apiserver.log",
                data_dir.display()
            )
        }
    };
    let ready: Ready = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("unexpected ready line from the harness: {line:?}: {e}"));
    Running {
        child,
        _stdin: stdin,
        ready,
    }
}

impl Harness {
    /// The harness of this test binary, built and started on first use.
    pub fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(|| Harness::launch(Vec::new()))
    }

    /// A harness of this test binary with Kubernetes' coordinated leader election enabled
    /// ([`COORDINATED_LEADER_ELECTION`]), started on first use, besides [`Harness::get`]'s.
    pub fn coordinated() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(|| {
            Harness::launch(
                COORDINATED_LEADER_ELECTION
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        })
    }

    /// A harness of its own (built if needed) in a fresh data directory, with extra
    /// kube-apiserver flags (for example audit logging).
    pub fn launch(extra_args: Vec<String>) -> Harness {
        let bin = build();
        let runs = repo().join("target/apiserver/runs");
        prune_stale_runs(&runs);
        let data_dir = runs.join(format!(
            "{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&data_dir).unwrap();
        let running = start(&bin, &data_dir, &extra_args);
        Harness {
            bin,
            data_dir,
            extra_args,
            running: Mutex::new(Some(running)),
        }
    }

    /// Where this harness keeps etcd data, certificates, kubeconfigs and logs.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the running harness printed when it was ready. Panics if it is not running
    /// (after [`Harness::kill`], before [`Harness::start_again`]).
    pub fn ready(&self) -> Ready {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .expect("the harness is running")
            .ready
            .clone()
    }

    /// Process id of the running harness (kube-apiserver and etcd run in this one process).
    pub fn pid(&self) -> Option<u32> {
        self.running.lock().unwrap().as_ref().map(|r| r.child.id())
    }

    /// Kills the apiserver and its etcd (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut old) = self.running.lock().unwrap().take() {
            old.child.kill().unwrap();
            old.child.wait().unwrap();
        }
    }

    /// Starts the apiserver again on the same etcd data (and port, if it is free).
    pub fn start_again(&self) -> Ready {
        let mut running = self.running.lock().unwrap();
        assert!(running.is_none(), "the harness is still running");
        let new = start(&self.bin, &self.data_dir, &self.extra_args);
        let ready = new.ready.clone();
        *running = Some(new);
        ready
    }
}

/// A client for one of the harness users; create it inside the test's own System.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A fresh namespace for one test.
pub async fn namespace() -> String {
    namespace_on(&Harness::get().ready()).await
}

/// A fresh namespace on a given harness.
pub async fn namespace_on(ready: &Ready) -> String {
    let admin = client(&ready.admin).await;
    let name = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(admin)
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    name
}
