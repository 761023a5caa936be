// Command cni is the upstream CNI plugins a k4s node uses in one multicall
// binary, chosen by the name it is called by (bridge -> cni), as the runtime
// execs a plugin by its type's name in the CNI bin dir.
//
// The plugins keep their code in package main; build.py makes a library copy of
// each from the pinned module (its "mains"), so the four share one Go runtime and
// one copy of the CNI, netlink and iptables libraries: 6 MB instead of 13.5.
// A plugin runs for a moment per pod sandbox, so it stays apart from the kube
// multicall, whose package initialisers it would pay at every call.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k4s.dev/components/cni/bridge"
	"k4s.dev/components/cni/hostlocal"
	"k4s.dev/components/cni/loopback"
	"k4s.dev/components/cni/portmap"
)

var plugins = map[string]func(){
	"bridge":     bridge.Main,
	"host-local": hostlocal.Main,
	"loopback":   loopback.Main,
	"portmap":    portmap.Main,
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := plugins[name]
	if !ok && len(os.Args) > 1 {
		if run, ok = plugins[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	if !ok {
		names := make([]string, 0, len(plugins))
		for n := range plugins {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "cni: unknown plugin %q; one of: %s\n", name, strings.Join(names, " "))
		os.Exit(2)
	}
	run()
}
