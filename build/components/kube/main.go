// Command kube is the upstream Kubernetes components, etcd, containerd, flanneld,
// CoreDNS, crictl and rancher's local-path-provisioner in one multicall binary, as
// k3s links its node's daemons.
//
// The component is chosen by the name the binary is called by (a symlink such
// as kubelet -> kube), or by the first argument: `kube kubelet --version`.
// Components can also share one process (see embed.go):
// `kube kube-apiserver FLAGS + kube-scheduler FLAGS`.
//
// etcd and CoreDNS share client-go, gRPC and protobuf with Kubernetes, so in
// here they add 11 MB instead of 80 MB as separate binaries. Go's minimal
// version selection gives every shared module the highest version any of
// the three requires; go.sum pins the result.
//
// kubectl is not in here: its packages allocate ~5 MB at init, which every
// process of the multicall would carry (see ./kubectl).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "time/tzdata" // for CronJob time zone support, as in the upstream mains

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/restclient"
	_ "k8s.io/component-base/metrics/prometheus/version" // version metric
	"k8s.io/component-base/version"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	containerd "github.com/containerd/containerd/v2/cmd/containerd/command"
	ctr "github.com/containerd/containerd/v2/cmd/ctr/app"

	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"go.etcd.io/etcd/server/v3/storage/wal"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	// Only the plugins a Kubernetes node's DNS uses: the documented way to
	// build a smaller CoreDNS (see plugin.cfg upstream).
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"

	// rancher's local-path-provisioner, the default StorageClass (generated from
	// its pinned module: upstream keeps it all in package main)
	"k4s.dev/components/kube/localpath"

	// crictl and flanneld keep their code in package main upstream too: crictl's is
	// generated from its pinned module like local-path's, flanneld's is a reviewed copy
	// (see its header)
	"k4s.dev/components/kube/crictl"
	"k4s.dev/components/kube/flannel"
)

// The etcd WAL preallocates 4 MB segments instead of 64 MB, for etcd on its
// own and embedded alike. On a RAM-only node the WAL lives in tmpfs, where the
// current and the next preallocated 64 MB segment cost 128 MiB of memory for
// nothing (the largest request etcd takes is 1.5 MiB).
const walSegmentBytes = 4 * 1000 * 1000

func init() { wal.SegmentSizeBytes = walSegmentBytes }

// CoreDNS runs its plugins in this order (upstream's plugin.cfg order,
// restricted to the plugins linked in).
var corednsDirectives = []string{
	"reload", "ready", "health", "prometheus", "errors", "log", "loadbalance",
	"cache", "hosts", "kubernetes", "loop", "forward", "whoami",
}

var components = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":                 func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kube-proxy":              func() int { return cli.Run(proxy.NewProxyCommand()) },
	"etcd":                    runEtcd,
	"etcdctl":                 func() int { ctlv3.MustStart(); return 0 },
	"etcdutl":                 runEtcdutl,
	"coredns":                 runCoreDNS,
	"local-path-provisioner":  func() int { localpath.Main(); return 0 },
	"containerd":              func() int { return runApp("containerd", containerd.App()) },
	"ctr":                     func() int { return runApp("ctr", ctr.New()) },
	"flanneld":                func() int { flannel.Main(); return 0 },
	"crictl":                  func() int { crictl.Main(); return 0 },
}

// runApp runs one of containerd's urfave/cli commands as its own main does.
func runApp(name string, app interface {
	Run(context.Context, []string) error
}) int {
	if err := app.Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		return 1
	}
	return 0
}

func runEtcd() int {
	etcdmain.Main(os.Args)
	return 0
}

// runEtcdutl is etcdutl's snapshot restore and status (a server restored from
// an operator's snapshot, k4s.cluster.etcdsnapshot) and version: the commands of
// upstream's main that a node uses, with its defaults.
func runEtcdutl() int {
	etcdutl.FlockTimeout = 10 * time.Second
	etcdutl.OutputFormat = "simple"
	root := &cobra.Command{Use: "etcdutl", Short: "An administrative command line tool for etcd3."}
	root.AddCommand(etcdutl.NewSnapshotCommand(), etcdutl.NewVersionCommand())
	root.SetArgs(os.Args[1:])
	if err := root.Execute(); err != nil {
		return 1
	}
	return 0
}

func runCoreDNS() int {
	dnsserver.Directives = corednsDirectives
	coremain.Run()
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	var n []string
	for name := range m {
		n = append(n, name)
	}
	sort.Strings(n)
	return n
}

// settle lowers the garbage collector's target once the component has started,
// when K4S_SETTLED_GOGC is set: start-up allocates a lot of short-lived garbage
// and a low GOGC there costs many collections (seconds under emulation), while
// at idle a low GOGC is what keeps the heap near its live size. K4S_SETTLE_AFTER
// (a Go duration, default 60s) is how long start-up is taken to last.
func settle() {
	pct, err := strconv.Atoi(os.Getenv("K4S_SETTLED_GOGC"))
	if err != nil || pct <= 0 {
		pct = 0
	}
	procs, err := strconv.Atoi(os.Getenv("K4S_SETTLED_GOMAXPROCS"))
	if err != nil || procs <= 0 {
		procs = 0
	}
	if pct == 0 && procs == 0 {
		return
	}
	after, err := time.ParseDuration(os.Getenv("K4S_SETTLE_AFTER"))
	if err != nil {
		after = time.Minute
	}
	go func() {
		time.Sleep(after)
		if procs > 0 {
			runtime.GOMAXPROCS(procs)
		}
		if pct > 0 {
			debug.SetGCPercent(pct)
			debug.FreeOSMemory() // collect now and hand the freed pages back
		}
	}()
}

// profileStart writes a CPU profile of the process's first K4S_PROFILE_SECONDS
// (default 40) to K4S_PROFILE_DIR/<component>.pprof when K4S_PROFILE_DIR is
// set, and at their end its heap (<component>.heap.pprof), its goroutines
// (<component>.goroutines.txt) and a memstats line on stderr: how a slow start
// or a big process is measured in the VM (k4s.profile=SECONDS on the kernel
// command line; the kubelet serves the files under /logs/k4s/profile/).
func profileStart(name string) {
	dir := os.Getenv("K4S_PROFILE_DIR")
	if dir == "" {
		return
	}
	secs, err := strconv.Atoi(os.Getenv("K4S_PROFILE_SECONDS"))
	if err != nil || secs <= 0 {
		secs = 40
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube: no CPU profile: %v\n", err)
		return
	}
	time.AfterFunc(time.Duration(secs)*time.Second, func() {
		pprof.StopCPUProfile()
		f.Close()
		// and what the heap holds then (after a collection, as `go tool pprof` shows inuse)
		if h, err := os.Create(filepath.Join(dir, name+".heap.pprof")); err == nil {
			runtime.GC()
			pprof.WriteHeapProfile(h)
			h.Close()
		}
		if g, err := os.Create(filepath.Join(dir, name+".goroutines.txt")); err == nil {
			pprof.Lookup("goroutine").WriteTo(g, 1)
			g.Close()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Fprintf(os.Stderr, "kube: memstats heap_alloc=%d heap_inuse=%d heap_idle=%d heap_released=%d stack_inuse=%d "+
			"sys=%d goroutines=%d\n", m.HeapAlloc, m.HeapInuse, m.HeapIdle, m.HeapReleased, m.StackInuse, m.Sys,
			runtime.NumGoroutine())
	})
}

// versionRequested: kube-proxy merges the process's Go flags into its own, and in
// this multicall CoreDNS has registered a Go flag named "version" first, which
// shadows kube-proxy's: `kube-proxy --version` would start the proxy. Every
// other component prints its version through its own flag.
func versionRequested(args []string) bool {
	for _, a := range args {
		if a == "--version" || a == "--version=true" {
			return true
		}
	}
	return false
}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		// `kube kubelet --flags`: shift the component name into argv[0] so the
		// upstream command sees the argv it expects.
		if run, ok = components[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: unknown component %q; one of: %s\n", name, strings.Join(sortedKeys(components), " "))
		os.Exit(2)
	}
	if name := filepath.Base(os.Args[0]); name == "kube-proxy" && versionRequested(os.Args[1:]) {
		fmt.Printf("Kubernetes %s\n", version.Get().GitVersion)
		os.Exit(0)
	}
	host, embedded, err := splitEmbedded(os.Args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube: %v\n", err)
		os.Exit(2)
	}
	os.Args = host
	profileStart(filepath.Base(os.Args[0]))
	startEmbedded(embedded)
	settle()
	code := run()
	stopEmbedded()
	os.Exit(code)
}
