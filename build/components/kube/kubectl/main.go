// Command kubectl is upstream kubectl, built from the same module and versions
// as the kube multicall but as a binary of its own: kubectl's packages
// allocate ~5 MB at init (k8s.io/kubectl/pkg/cmd/options alone 4.4 MB), which
// every process of the multicall would otherwise carry at run time. The
// appliance does not ship it (no shell there); the host uses it.
package main

import (
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // auth plugins, as in upstream's main
)

func main() {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	var command *cobra.Command = kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}
