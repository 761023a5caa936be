// Command containerd is upstream containerd and its client ctr in one
// multicall binary, chosen by the name it is called by (ctr -> containerd) or
// by the first argument (`containerd ctr images ls`). ctr shares nearly all of
// its code with the daemon, so together they are 6 MB more than containerd
// alone instead of 23 MB for a separate ctr.
//
// The runc shim stays a binary of its own, as upstream ships it: one runs per
// pod, and a small binary keeps each one's memory small.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd/command"
	ctr "github.com/containerd/containerd/v2/cmd/ctr/app"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
)

type runner interface{ Run([]string) error }

// settle: as in the kube multicall, GOGC drops to K4S_SETTLED_GOGC once
// start-up (K4S_SETTLE_AFTER, default 60s) is over.
func settle() {
	pct, err := strconv.Atoi(os.Getenv("K4S_SETTLED_GOGC"))
	if err != nil || pct <= 0 {
		return
	}
	after, err := time.ParseDuration(os.Getenv("K4S_SETTLE_AFTER"))
	if err != nil {
		after = time.Minute
	}
	go func() {
		time.Sleep(after)
		debug.SetGCPercent(pct)
		debug.FreeOSMemory()
	}()
}

func main() {
	apps := map[string]func() runner{
		"containerd": func() runner { return command.App() },
		"ctr":        func() runner { return ctr.New() },
	}
	name := filepath.Base(os.Args[0])
	app, ok := apps[name]
	if !ok && len(os.Args) > 1 {
		if app, ok = apps[os.Args[1]]; ok {
			name, os.Args = os.Args[1], os.Args[1:]
		}
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "containerd: unknown command %q; one of: containerd ctr\n", name)
		os.Exit(2)
	}
	if name == "containerd" {
		settle()
	}
	if err := app().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", name, err)
		os.Exit(1)
	}
}
