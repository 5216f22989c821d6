// Command clientgo-peer runs client-go leader elections (leaderelection + LeaseLock) for a set of
// Leases and reports what happens on stdout, one line per event. dsync's end-to-end benchmark
// (benches/e2e/) and its interop tests drive it over stdin/stdout, side by side with dsync
// replicas, against the same kube-apiserver. The Rust side of this protocol (parsing, commands,
// flags) is tests/harness/src/protocol.rs.
//
// Usage:
//
//	clientgo-peer --kubeconfig F --namespace NS --identity ID --leases a,b,c [timing flags]
//	clientgo-peer ... --lease-prefix p --count N      (leases p0 .. p{N-1})
//	clientgo-peer ... --leases a --coordinated --binary-version 1.36.0 --emulation-version 1.35.0
//
// With --coordinated (one Lease only: the LeaseCandidate is named after the identity) the peer
// runs client-go's coordinated mode (KEP-4355, LeaderElectionConfig{Coordinated: true}): it
// registers a LeaseCandidate (leaderelection.NewCandidate, strategy OldestEmulationVersion) and
// leads only when the API server's election controller assigns it the Lease.
//
// Output (stdout; times are Unix nanoseconds of the local wall clock, which all processes on one
// machine share):
//
//	ready                           every election has been started
//	elected <lease> <t>             OnStartedLeading
//	leader <lease> <identity> <t>   OnNewLeader (a leader was observed, maybe ourselves)
//	stopping <lease> <t>            a stop command was received (the release starts now)
//	lost <lease> <t>                OnStoppedLeading
//	released <lease> <t>            Run returned (with ReleaseOnCancel the Lease is released)
//	error <message>
//
// Input (stdin): "stop <lease>" cancels that election (ReleaseOnCancel releases the Lease);
// "stopall" cancels all. On EOF every election is cancelled and the process exits when all have
// returned. SIGKILL is the crash.
//
// The client is not rate limited (client-go's default is 5 QPS), as dsync's is not: a process
// running a thousand elections would otherwise measure the limiter.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

type output struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *output) line(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, format+"\n", args...)
	o.w.Flush()
}

func now() int64 { return time.Now().UnixNano() }

func main() {
	var (
		kubeconfig    = flag.String("kubeconfig", "", "kubeconfig file (required)")
		namespace     = flag.String("namespace", "default", "namespace of the Leases")
		identity      = flag.String("identity", "", "holder identity (required, unique per process)")
		leases        = flag.String("leases", "", "comma-separated Lease names")
		prefix        = flag.String("lease-prefix", "", "Lease name prefix, with --count")
		count         = flag.Int("count", 0, "number of Leases <prefix>0 .. <prefix>N-1")
		leaseDuration = flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
		renewDeadline = flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
		retryPeriod   = flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
		userAgent     = flag.String("user-agent", "", "User-Agent of this client (default: clientgo-peer/<identity>)")
		coordinated   = flag.Bool("coordinated", false, "coordinated leader election: register a LeaseCandidate, lead only when assigned")
		binaryVersion = flag.String("binary-version", "", "LeaseCandidate binaryVersion (with --coordinated)")
		emulationVer  = flag.String("emulation-version", "", "LeaseCandidate emulationVersion (with --coordinated)")
	)
	flag.Parse()
	out := &output{w: bufio.NewWriter(os.Stdout)}
	fail := func(format string, args ...any) {
		out.line("error "+format, args...)
		os.Exit(2)
	}
	if *kubeconfig == "" || *identity == "" {
		fail("--kubeconfig and --identity are required")
	}
	var names []string
	if *leases != "" {
		names = strings.Split(*leases, ",")
	}
	for i := 0; i < *count; i++ {
		names = append(names, fmt.Sprintf("%s%d", *prefix, i))
	}
	if len(names) == 0 {
		fail("no Leases: give --leases or --lease-prefix with --count")
	}
	if *coordinated && (len(names) != 1 || *binaryVersion == "" || *emulationVer == "") {
		fail("--coordinated needs exactly one Lease, --binary-version and --emulation-version")
	}
	// client-go logs lease errors through klog; keep them on stderr, terse.
	klog.InitFlags(nil)

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail("kubeconfig: %v", err)
	}
	cfg.QPS = 1e6
	cfg.Burst = 1e6
	cfg.UserAgent = *userAgent
	if cfg.UserAgent == "" {
		cfg.UserAgent = "clientgo-peer/" + *identity
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail("client: %v", err)
	}

	cancels := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	for _, name := range names {
		name := name
		ctx, cancel := context.WithCancel(context.Background())
		cancels[name] = cancel
		lock := &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: *namespace, Name: name},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
		}
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			ReleaseOnCancel: true,
			Coordinated:     *coordinated,
			Name:            name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { out.line("elected %s %d", name, now()) },
				OnStoppedLeading: func() { out.line("lost %s %d", name, now()) },
				OnNewLeader:      func(id string) { out.line("leader %s %s %d", name, id, now()) },
			},
		})
		if err != nil {
			fail("election %s: %v", name, err)
		}
		if *coordinated {
			candidate, waitForSync, err := leaderelection.NewCandidate(client, *namespace, *identity, name,
				*binaryVersion, *emulationVer, coordinationv1.OldestEmulationVersion)
			if err != nil {
				fail("candidate %s: %v", name, err)
			}
			go candidate.Run(ctx)
			waitForSync.WaitForCacheSync(ctx.Done())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			le.Run(ctx)
			out.line("released %s %d", name, now())
		}()
	}
	out.line("ready")

	stopAll := func() {
		for _, cancel := range cancels {
			cancel()
		}
	}
	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		switch {
		case len(fields) == 2 && fields[0] == "stop":
			cancel, ok := cancels[fields[1]]
			if !ok {
				out.line("error unknown lease %q", fields[1])
				continue
			}
			out.line("stopping %s %d", fields[1], now())
			cancel()
		case len(fields) == 1 && fields[0] == "stopall":
			stopAll()
		case len(fields) == 0:
		default:
			out.line("error unknown command %q", scanner.Text())
		}
	}
	stopAll()
	wg.Wait()
}
