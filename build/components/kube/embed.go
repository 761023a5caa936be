package main

// Several components in one process, as k3s runs its control plane:
//
//	kube kube-apiserver FLAGS + etcd FLAGS + kube-controller-manager FLAGS + kube-scheduler FLAGS
//	kube kubelet FLAGS + kube-proxy FLAGS
//	kube kube-controller-manager FLAGS + kube-scheduler FLAGS  (with leader election)
//
// The first component runs as on its own and owns the process: its signal
// handling, its exit code. Each one after a "+" runs in a goroutine; if it
// has a --kubeconfig it starts once that API server answers /readyz. On
// SIGTERM the embedded components stop too: the API server's graceful
// shutdown waits for its clients' watches, and the in-process ones would
// otherwise hold it until it is killed. A component that loses its leader
// lease ends the process (upstream's choice: its controllers do not all stop
// on a cancelled context), so the elected ones run in a process of their own,
// never the API server's and etcd's. The datastore is the exception: etcd
// stops after the host has returned, when nothing needs it any more. When an
// embedded component returns on its own, the process exits non-zero and the
// supervisor restarts the group.
//
// Every Go process of the multicall pays ~14 MB of package-init allocations
// (API schemes, protobuf registries) and its own runtime and GC headroom;
// embedding shares them. On a RAM-only node that is the largest saving left.
//
// Shared process state, and how it is kept consistent:
//   - signal handlers: upstream sets one up per command and panics on the
//     second, so only the host's command does. The scheduler and the
//     controller-manager start through their exported Config/Setup and Run
//     rather than their cobra commands, to get a context that SIGTERM
//     cancels (the scheduler's command would also install a handler).
//   - logging: applied once per process by the host; an embedded component
//     may re-apply only an identical configuration (ReapplyHandling).
//   - feature gates and the metrics registry are process-wide in upstream
//     too; every component of a group is given the same feature gates.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	etcdflags "go.etcd.io/etcd/pkg/v3/flags"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	controllermanageroptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

const embedMark = "+"

// embeddable: the components that can run inside another one's process.
var embeddable = map[string]func(ctx context.Context, args []string) error{
	"kube-controller-manager": runControllerManager,
	"kube-scheduler":          runScheduler,
	"etcd":                    runEtcdEmbedded,
	// kube-proxy runs with its command's own background context: the kubelet,
	// its host, does not wait for clients when it stops.
	"kube-proxy": func(_ context.Context, args []string) error {
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		return cmd.Execute()
	},
}

// splitEmbedded splits argv at each "+": the host's own arguments, then one
// argv per embedded component (its name first).
func splitEmbedded(args []string) (host []string, embedded [][]string, err error) {
	parts := [][]string{{}}
	for _, a := range args {
		if a == embedMark {
			parts = append(parts, []string{})
			continue
		}
		parts[len(parts)-1] = append(parts[len(parts)-1], a)
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || embeddable[p[0]] == nil {
			return nil, nil, fmt.Errorf("after %q comes the name of a component that can be embedded, one of: %s",
				embedMark, strings.Join(sortedKeys(embeddable), " "))
		}
	}
	return parts[0], parts[1:], nil
}

// startEmbedded runs each embedded component in its own goroutine.
func startEmbedded(embedded [][]string) {
	if len(embedded) == 0 {
		return
	}
	// The host has applied the logging configuration; the embedded
	// components' (equal) configurations must not fail for being second.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	// The host's handler sees the same signals (signal.Notify fans out).
	ctx, _ := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	// Upstream ends the process through klog when a component fails, which
	// it does while stopping, too: the controller-manager, cancelled while it
	// builds its controllers, exits 1. Once stopping, such an exit ends only
	// the calling goroutine; the host decides when the process ends.
	exit := klog.OsExit
	klog.OsExit = func(code int) {
		if ctx.Err() != nil {
			runtime.Goexit()
		}
		exit(code)
	}
	for _, argv := range embedded {
		go func(name string, args []string) {
			err := runEmbedded(ctx, name, args)
			if ctx.Err() != nil {
				return // stopping: the host decides when the process ends
			}
			if err == nil {
				err = fmt.Errorf("returned")
			}
			klog.ErrorS(err, "Embedded component stopped; exiting so that the group restarts", "component", name)
			klog.Flush()
			os.Exit(1)
		}(argv[0], argv[1:])
	}
}

// atExit: what must stop after the host has returned (the datastore).
var (
	atExitMu sync.Mutex
	atExit   []func()
)

func stopEmbedded() {
	atExitMu.Lock()
	defer atExitMu.Unlock()
	for i := len(atExit) - 1; i >= 0; i-- {
		atExit[i]()
	}
}

// runEtcdEmbedded starts etcd through its embed package. etcdmain's SIGTERM
// handler would stop the server at once and then kill the process, cutting
// the API server's graceful shutdown short. The flags are parsed as etcdmain
// does: embed's flag set, then the list-valued flags read back from it.
func runEtcdEmbedded(_ context.Context, args []string) error {
	cfg := embed.NewConfig()
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	cfg.AddFlags(fs)
	clusterState := etcdflags.NewSelectiveStringValue(embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	fs.Var(clusterState, "initial-cluster-state", "'new' or 'existing'")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	cfg.ListenPeerUrls = etcdflags.UniqueURLsFromFlag(fs, "listen-peer-urls")
	cfg.AdvertisePeerUrls = etcdflags.UniqueURLsFromFlag(fs, "initial-advertise-peer-urls")
	cfg.ListenClientUrls = etcdflags.UniqueURLsFromFlag(fs, "listen-client-urls")
	cfg.ListenClientHttpUrls = etcdflags.UniqueURLsFromFlag(fs, "listen-client-http-urls")
	cfg.AdvertiseClientUrls = etcdflags.UniqueURLsFromFlag(fs, "advertise-client-urls")
	cfg.ListenMetricsUrls = etcdflags.UniqueURLsFromFlag(fs, "listen-metrics-urls")
	cfg.CORS = etcdflags.UniqueURLsMapFromFlag(fs, "cors")
	cfg.HostWhitelist = etcdflags.UniqueStringsMapFromFlag(fs, "host-whitelist")
	cfg.ClientTLSInfo.AllowedHostnames = etcdflags.StringsFromFlag(fs, "client-cert-allowed-hostname")
	cfg.PeerTLSInfo.AllowedCNs = etcdflags.StringsFromFlag(fs, "peer-cert-allowed-cn")
	cfg.PeerTLSInfo.AllowedHostnames = etcdflags.StringsFromFlag(fs, "peer-cert-allowed-hostname")
	cfg.CipherSuites = etcdflags.StringsFromFlag(fs, "cipher-suites")
	cfg.MaxConcurrentStreams = etcdflags.Uint32FromFlag(fs, "max-concurrent-streams")
	cfg.LogOutputs = etcdflags.UniqueStringsFromFlag(fs, "log-outputs")
	cfg.ClusterState = clusterState.String()
	// at 0 every request is logged as slow, its content formatted: a thousand lines of CPU
	// at start (etcd 3.6's embed.NewConfig left it 0; 3.7's defaults it)
	if cfg.WarningUnaryRequestDuration == 0 {
		cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	}
	if etcdflags.IsSet(fs, "listen-client-urls") && !etcdflags.IsSet(fs, "advertise-client-urls") {
		cfg.AdvertiseClientUrls = nil
	}
	fs.Visit(func(f *flag.Flag) { cfg.FlagsExplicitlySet[f.Name] = true })
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	atExitMu.Lock()
	atExit = append(atExit, e.Close)
	atExitMu.Unlock()
	return <-e.Err()
}

func runEmbedded(ctx context.Context, name string, args []string) error {
	if kc := flagValue(args, "kubeconfig"); kc != "" {
		if err := waitAPIServerReady(ctx, kc); err != nil {
			return err
		}
	}
	klog.InfoS("Starting embedded component", "component", name)
	return embeddable[name](ctx, args)
}

func parseFlags(name string, nfs cliflag.NamedFlagSets, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// runControllerManager is the controller-manager command's RunE with a
// context that can be cancelled, minus the logging set-up (the host's).
func runControllerManager(ctx context.Context, args []string) error {
	s, err := controllermanageroptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	known := controllermanager.KnownControllers()
	disabled := controllermanager.ControllersDisabledByDefault()
	aliases := controllermanager.ControllerAliases()
	nfs := s.Flags(known, disabled, aliases)
	s.ParsedFlags = &nfs
	if err := parseFlags("kube-controller-manager", nfs, args); err != nil {
		return err
	}
	// as its PersistentPreRunE: quiet client-go warnings, then feature gates
	restclient.SetDefaultWarningHandler(restclient.NoWarnings{})
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	c, err := s.Config(ctx, known, disabled, aliases)
	if err != nil {
		return err
	}
	return controllermanager.Run(ctx, c.Complete())
}

// runScheduler is the scheduler's runCommand minus its signal handler and
// logging set-up, both of which belong to the host.
func runScheduler(ctx context.Context, args []string) error {
	opts := scheduleroptions.NewOptions()
	if err := parseFlags("kube-scheduler", *opts.Flags, args); err != nil {
		return err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	cc, sched, err := scheduler.Setup(ctx, opts)
	if err != nil {
		return err
	}
	return scheduler.Run(ctx, cc, sched)
}

// flagValue finds --name=value or --name value.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// waitAPIServerReady polls /readyz as the component's own identity, so that
// controllers that give up on an absent API server start only once it is up.
func waitAPIServerReady(ctx context.Context, kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.Timeout = 5 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	// every 200 ms: each embedded component starts at most that long after the API server is ready
	// (a second's poll was up to a second on the boot's critical path, twice over)
	return wait.PollUntilContextCancel(ctx, readyPoll, true, func(ctx context.Context) (bool, error) {
		status := 0
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return status == 200, nil
	})
}

const readyPoll = 200 * time.Millisecond
