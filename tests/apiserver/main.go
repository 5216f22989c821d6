// Command dsync-apiserver runs a real kube-apiserver (k8s.io/kubernetes, in-process)
// on top of an embedded etcd, in one binary, for dsync's integration tests.
//
// Lifecycle contract (see README.md):
//   - everything is kept under --data-dir (etcd data, certificates, kubeconfigs, logs);
//     a second start on the same directory reuses the CA, certificates, etcd data and,
//     when possible, the same ports;
//   - once the server is ready, exactly one JSON line is printed on stdout;
//   - the process stops (apiserver first, then etcd) when stdin reaches EOF, or on
//     SIGTERM/SIGINT.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	genericrequest "k8s.io/apiserver/pkg/endpoints/request"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

const (
	leaseRoleName = "dsync-lease"
	stateFile     = "harness-state.json"
	// faultFile, in the data dir, names a namespace whose lease requests are answered 503
	// while the file exists (see faultFilter).
	faultFile = "fault-503"
)

// clientUser is a certificate-authenticated user for which a kubeconfig is written.
type clientUser struct {
	file   string   // base name of <file>.crt/.key/.kubeconfig
	cn     string   // user name
	groups []string // organizations = groups
}

var clientUsers = []clientUser{
	{file: "admin", cn: "admin", groups: []string{"system:masters"}},
	{file: "norights", cn: "dsync-norights"},
	{file: "leaseuser", cn: "dsync-leaseuser"},
}

// harnessState is persisted in the data dir so that a restart reuses the same ports.
type harnessState struct {
	Port           int `json:"port"`
	EtcdClientPort int `json:"etcdClientPort"`
	EtcdPeerPort   int `json:"etcdPeerPort"`
}

type readyLine struct {
	Ready     bool   `json:"ready"`
	Server    string `json:"server"`
	Port      int    `json:"port"`
	Admin     string `json:"admin"`
	NoRights  string `json:"norights"`
	LeaseUser string `json:"leaseuser"`
	CA        string `json:"ca"`
	DataDir   string `json:"dataDir"`
	PID       int    `json:"pid"`
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "dsync-apiserver: "+format+"\n", args...)
}

func main() {
	if err := run(); err != nil {
		logf("error: %v", err)
		os.Exit(1)
	}
}

func run() error {
	start := time.Now()
	var (
		dataDir      = flag.String("data-dir", "", "directory for etcd data, certificates, kubeconfigs and logs (required; reused on restart)")
		port         = flag.Int("port", 0, "secure port on 127.0.0.1; 0 = the port used last time with this data dir if it is free, else a free one")
		logStderr    = flag.Bool("log-stderr", false, "send the apiserver's klog output to stderr instead of <data-dir>/apiserver.log")
		verbosity    = flag.Int("v", 0, "klog verbosity of the apiserver")
		ignoreStdin  = flag.Bool("ignore-stdin", false, "do not exit on stdin EOF (only on SIGTERM/SIGINT)")
		etcdFsync    = flag.Bool("etcd-fsync", false, "let etcd fsync its WAL (off by default: faster; a killed process loses nothing, only a machine crash could)")
		startTimeout = flag.Duration("start-timeout", 3*time.Minute, "give up if the apiserver is not ready after this long")
	)
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s --data-dir DIR [--port N] [flags] [-- extra kube-apiserver flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *dataDir == "" {
		flag.Usage()
		return errors.New("--data-dir is required")
	}
	extraArgs := flag.Args() // everything after "--" goes to kube-apiserver as is

	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}

	if err := setupKlog(dir, *logStderr, *verbosity); err != nil {
		return err
	}
	defer klog.Flush()

	// Lifecycle: stop on stdin EOF or SIGTERM/SIGINT. Once ready, stopping is graceful
	// (apiserver, then etcd). Before ready, the process exits at once: cancelling the
	// apiserver while its post-start hooks run makes them klog.Fatal with a stack dump,
	// and etcd's data survives an abrupt exit anyway.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ready atomic.Bool
	var stopOnce sync.Once
	requestStop := func(reason string) {
		stopOnce.Do(func() {
			if !ready.Load() {
				logf("%s before the server was ready: exiting", reason)
				os.Exit(1)
			}
			logf("%s, shutting down", reason)
			cancel()
		})
	}
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigCh
		requestStop(fmt.Sprintf("received %v", s))
		<-sigCh
		logf("second signal, exiting now")
		os.Exit(1)
	}()
	if !*ignoreStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			requestStop("stdin closed")
		}()
	}

	// --- certificates ---------------------------------------------------------------
	pki, err := ensurePKI(pkiDir)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	// --- ports ----------------------------------------------------------------------
	prev := loadState(dir)
	apiListener, err := listenPort(*port, prev.Port)
	if err != nil {
		return fmt.Errorf("apiserver port: %w", err)
	}
	apiPort := apiListener.Addr().(*net.TCPAddr).Port
	etcdClientPort, err := reservePort(prev.EtcdClientPort, apiPort)
	if err != nil {
		return err
	}
	etcdPeerPort, err := reservePort(prev.EtcdPeerPort, apiPort, etcdClientPort)
	if err != nil {
		return err
	}
	if err := saveState(dir, harnessState{Port: apiPort, EtcdClientPort: etcdClientPort, EtcdPeerPort: etcdPeerPort}); err != nil {
		return err
	}

	// --- etcd -----------------------------------------------------------------------
	etcd, err := startEtcd(dir, etcdClientPort, etcdPeerPort, !*etcdFsync)
	if err != nil {
		apiListener.Close()
		return fmt.Errorf("etcd: %w", err)
	}
	var closeEtcdOnce sync.Once
	closeEtcd := func() {
		closeEtcdOnce.Do(func() {
			etcd.Close()
			<-etcd.Server.StopNotify()
		})
	}
	defer closeEtcd()
	logf("etcd ready on 127.0.0.1:%d (%s)", etcdClientPort, time.Since(start).Round(time.Millisecond))

	// --- kube-apiserver -------------------------------------------------------------
	apiArgs := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + pki.path("serving.crt"),
		"--tls-private-key-file=" + pki.path("serving.key"),
		"--client-ca-file=" + pki.path("ca.crt"),
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClientPort),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.path("sa.key"),
		"--service-account-signing-key-file=" + pki.path("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--endpoint-reconciler-type=none", // 127.0.0.1 is not a valid Endpoints address
		"--enable-priority-and-fairness=false",
	}
	apiArgs = append(apiArgs, extraArgs...)

	apiErrCh := make(chan error, 1)
	apiDone := make(chan struct{})
	if err := startAPIServer(ctx, apiArgs, apiListener, filepath.Join(dir, faultFile), apiErrCh, apiDone); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	stopAPIServer := func() {
		cancel()
		select {
		case <-apiDone:
		case <-time.After(30 * time.Second):
			logf("kube-apiserver did not stop within 30s")
		}
	}

	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	adminCfg := &rest.Config{
		Host: server,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   pki.path("ca.crt"),
			CertFile: pki.path("admin.crt"),
			KeyFile:  pki.path("admin.key"),
		},
		QPS:   100,
		Burst: 200,
	}
	readyCtx, readyCancel := context.WithTimeout(ctx, *startTimeout)
	err = waitReady(readyCtx, adminCfg, apiErrCh)
	readyCancel()
	if err == nil {
		err = ensureRBAC(ctx, adminCfg)
	}
	var paths map[string]string
	if err == nil {
		paths, err = writeKubeconfigs(dir, server, pki)
	}
	if err != nil {
		// No graceful stop before ready (see requestStop): report and exit at once.
		logf("error: %v", err)
		klog.Flush()
		os.Exit(1)
	}
	ready.Store(true)

	line, _ := json.Marshal(readyLine{
		Ready:     true,
		Server:    server,
		Port:      apiPort,
		Admin:     paths["admin"],
		NoRights:  paths["norights"],
		LeaseUser: paths["leaseuser"],
		CA:        pki.path("ca.crt"),
		DataDir:   dir,
		PID:       os.Getpid(),
	})
	if _, err := fmt.Fprintln(os.Stdout, string(line)); err != nil {
		stopAPIServer()
		return fmt.Errorf("writing ready line: %w", err)
	}
	logf("ready at %s after %s", server, time.Since(start).Round(time.Millisecond))

	// Serve until stopped.
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-apiErrCh:
		logf("kube-apiserver stopped unexpectedly: %v", runErr)
	case err := <-etcd.Err():
		runErr = fmt.Errorf("etcd failed: %w", err)
		logf("%v", runErr)
	}
	stopAPIServer()
	closeEtcd()
	logf("stopped")
	return runErr
}

// ---------------------------------------------------------------------------------------
// klog

func setupKlog(dir string, toStderr bool, v int) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	set := map[string]string{"v": strconv.Itoa(v)}
	if toStderr {
		set["logtostderr"] = "true"
	} else {
		set["logtostderr"] = "false"
		set["alsologtostderr"] = "false"
		set["stderrthreshold"] = "FATAL"
		set["one_output"] = "true" // one output for all severities: write each line once
	}
	for k, val := range set {
		if err := fs.Set(k, val); err != nil {
			return err
		}
	}
	if !toStderr {
		f, err := os.OpenFile(filepath.Join(dir, "apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		klog.SetOutput(f)
	}
	return nil
}

// ---------------------------------------------------------------------------------------
// ports and state

func loadState(dir string) harnessState {
	var st harnessState
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err == nil {
		_ = json.Unmarshal(b, &st)
	}
	return st
}

func saveState(dir string, st harnessState) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	return os.WriteFile(filepath.Join(dir, stateFile), append(b, '\n'), 0o600)
}

// listenPort binds 127.0.0.1:want (must succeed when want != 0), else tries the previous
// port, else any free port. The listener is handed to the apiserver as is (no race).
func listenPort(want, prev int) (net.Listener, error) {
	if want != 0 {
		return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(want)))
	}
	if prev != 0 {
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(prev))); err == nil {
			return l, nil
		}
		logf("previous port %d is busy, picking a free one", prev)
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// reservePort returns prev if it is free (and not in avoid), else a free port.
func reservePort(prev int, avoid ...int) (int, error) {
	ok := func(p int) bool {
		for _, a := range avoid {
			if a == p {
				return false
			}
		}
		return true
	}
	if prev != 0 && ok(prev) {
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(prev))); err == nil {
			l.Close()
			return prev, nil
		}
	}
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if ok(p) {
			return p, nil
		}
	}
	return 0, errors.New("could not find a free port")
}

// ---------------------------------------------------------------------------------------
// etcd

func startEtcd(dir string, clientPort, peerPort int, noFsync bool) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "dsync"
	cfg.Dir = filepath.Join(dir, "etcd")
	cu := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	pu := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.UnsafeNoFsync = noFsync
	// NewConfig leaves this at 0, which logs every request as "expensive".
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	cfg.MaxRequestBytes = 3 * 1024 * 1024

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd not ready after 60s (see etcd.log in the data dir)")
	}
}

// ---------------------------------------------------------------------------------------
// kube-apiserver

var errAPIServerExited = errors.New("kube-apiserver exited")

func startAPIServer(ctx context.Context, args []string, l net.Listener, faultPath string, errCh chan<- error, done chan<- struct{}) error {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return fmt.Errorf("feature gates / emulation version: %w", err)
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	s.SecureServing.Listener = l
	s.SecureServing.BindPort = l.Addr().(*net.TCPAddr).Port

	completed, err := s.Complete(ctx)
	if err != nil {
		return fmt.Errorf("complete options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return fmt.Errorf("validate options: %w", utilerrors.NewAggregate(errs))
	}
	go func() {
		defer close(done)
		err := runAPIServer(ctx, completed, faultPath)
		if err == nil && ctx.Err() == nil {
			err = errAPIServerExited
		} else if err != nil {
			err = fmt.Errorf("%w: %v", errAPIServerExited, err)
		}
		if err != nil && ctx.Err() == nil {
			errCh <- err
		}
	}()
	return nil
}

// runAPIServer is app.Run with one change: the fault filter (faultFilter) wrapped around
// the aggregator's API handler, inside its filter chain. The aggregator is the outermost
// server (it serves every request, delegating to kube-apiserver), and its chain's innermost
// handler runs after authentication, audit and authorization: a refused request is audited
// with its 503, and only requests that would have reached a Lease are refused.
func runAPIServer(ctx context.Context, opts options.CompletedOptions, faultPath string) error {
	config, err := app.NewConfig(opts)
	if err != nil {
		return err
	}
	gc := &config.Aggregator.GenericConfig.Config
	buildChain := gc.BuildHandlerChainFunc
	gc.BuildHandlerChainFunc = func(apiHandler http.Handler, c *genericapiserver.Config) http.Handler {
		return buildChain(faultFilter(apiHandler, faultPath), c)
	}
	completed, err := config.Complete()
	if err != nil {
		return err
	}
	server, err := app.CreateServerChain(completed)
	if err != nil {
		return err
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		return err
	}
	return prepared.Run(ctx)
}

// faultFilter answers every request on coordination.k8s.io leases in the namespace named by
// the file at path (whitespace trimmed) with 503 Service Unavailable and Retry-After: 1, as
// an overloaded apiserver does, for as long as the file exists. The file is read on each
// lease request (not polled) so that the fault starts and lifts exactly when the file is
// written and removed; without the file nothing changes. Watches already open stay open:
// only new requests are refused.
func faultFilter(next http.Handler, path string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		info, ok := genericrequest.RequestInfoFrom(req.Context())
		if ok && info.IsResourceRequest && info.APIGroup == "coordination.k8s.io" && info.Resource == "leases" {
			if b, err := os.ReadFile(path); err == nil && info.Namespace != "" && strings.TrimSpace(string(b)) == info.Namespace {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"injected fault: `+faultFile+` names this namespace","reason":"ServiceUnavailable","details":{"retryAfterSeconds":1},"code":503}`+"\n")
				return
			}
		}
		next.ServeHTTP(w, req)
	})
}

func waitReady(ctx context.Context, cfg *rest.Config, apiErrCh <-chan error) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var last error
	stage := "/readyz"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-apiErrCh:
			return err
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready (waiting for %s): %v (last error: %v; see apiserver.log in the data dir)", stage, ctx.Err(), last)
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if stage == "/readyz" {
			var body []byte
			body, last = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
			if last == nil && strings.TrimSpace(string(body)) == "ok" {
				stage = "namespace default"
			}
		}
		if stage == "namespace default" {
			_, last = cs.CoreV1().Namespaces().Get(rctx, metav1.NamespaceDefault, metav1.GetOptions{})
			if last == nil {
				cancel()
				return nil
			}
		}
		cancel()
	}
}

// ensureRBAC creates the ClusterRole dsync-lease (exactly get/create/update/watch/list on
// coordination.k8s.io leases) bound cluster-wide to user dsync-leaseuser. Idempotent.
func ensureRBAC(ctx context.Context, cfg *rest.Config) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: leaseRoleName},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"coordination.k8s.io"},
			Resources: []string{"leases"},
			Verbs:     []string{"get", "create", "update", "watch", "list"},
		}},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: leaseRoleName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: leaseRoleName},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "dsync-leaseuser"}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err1 := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err1) {
			err1 = nil
		}
		_, err2 := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err2) {
			err2 = nil
		}
		if err1 == nil && err2 == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("creating RBAC objects: %v", utilerrors.NewAggregate([]error{err1, err2}))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------------------
// kubeconfigs

func writeKubeconfigs(dir, server string, pki *pkiFiles) (map[string]string, error) {
	caPEM, err := os.ReadFile(pki.path("ca.crt"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, u := range clientUsers {
		crt, err := os.ReadFile(pki.path(u.file + ".crt"))
		if err != nil {
			return nil, err
		}
		key, err := os.ReadFile(pki.path(u.file + ".key"))
		if err != nil {
			return nil, err
		}
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["dsync"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
		cfg.AuthInfos[u.cn] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
		cfg.Contexts["dsync"] = &clientcmdapi.Context{Cluster: "dsync", AuthInfo: u.cn, Namespace: "default"}
		cfg.CurrentContext = "dsync"
		p := filepath.Join(dir, u.file+".kubeconfig")
		if err := writeAtomic(p, func(tmp string) error { return clientcmd.WriteToFile(*cfg, tmp) }); err != nil {
			return nil, err
		}
		out[u.file] = p
	}
	return out, nil
}

func writeAtomic(path string, write func(tmp string) error) error {
	tmp := path + ".tmp"
	if err := write(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ---------------------------------------------------------------------------------------
// PKI

type pkiFiles struct{ dir string }

func (p *pkiFiles) path(name string) string { return filepath.Join(p.dir, name) }

// ensurePKI creates, or reuses when present and valid, the CA, the serving certificate,
// the client certificates and the service-account key under dir.
func ensurePKI(dir string) (*pkiFiles, error) {
	p := &pkiFiles{dir: dir}
	caCert, caKey, err := loadPair(p.path("ca.crt"), p.path("ca.key"))
	if err != nil {
		logf("generating a new CA in %s", dir)
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		caKey = k
		tmpl := &x509.Certificate{
			SerialNumber:          newSerial(),
			Subject:               pkix.Name{CommonName: "dsync-test-ca"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().AddDate(10, 0, 0),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLenZero:        true,
			SubjectKeyId:          keyID(caKey.Public()),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
		if err != nil {
			return nil, err
		}
		caCert, _ = x509.ParseCertificate(der)
		if err := writeKey(p.path("ca.key"), caKey); err != nil {
			return nil, err
		}
		if err := writeCert(p.path("ca.crt"), der); err != nil {
			return nil, err
		}
		// A new CA invalidates every leaf issued before.
		for _, n := range []string{"serving", "admin", "norights", "leaseuser"} {
			os.Remove(p.path(n + ".crt"))
			os.Remove(p.path(n + ".key"))
		}
	}

	leaf := func(name, cn string, orgs []string, server bool) error {
		if c, _, err := loadPair(p.path(name+".crt"), p.path(name+".key")); err == nil &&
			c.CheckSignatureFrom(caCert) == nil && time.Until(c.NotAfter) > 24*time.Hour {
			return nil
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          newSerial(),
			Subject:               pkix.Name{CommonName: cn, Organization: orgs},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().AddDate(5, 0, 0),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			AuthorityKeyId:        caCert.SubjectKeyId,
		}
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return err
		}
		if err := writeKey(p.path(name+".key"), key); err != nil {
			return err
		}
		return writeCert(p.path(name+".crt"), der)
	}
	if err := leaf("serving", "dsync-apiserver", nil, true); err != nil {
		return nil, err
	}
	for _, u := range clientUsers {
		if err := leaf(u.file, u.cn, u.groups, false); err != nil {
			return nil, err
		}
	}

	// Service-account token signing key (the apiserver also derives the public key from it).
	if b, err := os.ReadFile(p.path("sa.key")); err != nil || len(b) == 0 {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := writeAtomic(p.path("sa.key"), func(tmp string) error {
			return os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
		}); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, errors.New("bad PEM")
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key is not a signer")
	}
	return cert, signer, nil
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(tmp string) error {
		return os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	})
}

func writeCert(path string, der []byte) error {
	return writeAtomic(path, func(tmp string) error {
		return os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	})
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func keyID(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return sum[:20]
}
