// k4s's own part of flanneld (Apache-2.0): the wait for the node's podCIDR.

package flannel

import (
	"context"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	log "k8s.io/klog/v2"
)

// podCIDRPoll: how often the Node is read while it has no podCIDR (from the
// apiserver's watch cache). Upstream's lease polls every 3 s and gives up when
// the Node exists without one, which made k4s start flanneld only after the
// kubelet had registered and the podCIDR was set: a chain of waits on the
// way to Ready.
const podCIDRPoll = 250 * time.Millisecond

// waitPodCIDR returns once the Node named by $NODE_NAME (as the Kubernetes
// subnet manager finds it) has a podCIDR, or when ctx ends.
func waitPodCIDR(ctx context.Context, apiURL, kubeconfig string) error {
	name := os.Getenv("NODE_NAME")
	if name == "" {
		return nil // the subnet manager finds its Node another way and checks it itself
	}
	cfg, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	said := false
	return wait.PollUntilContextCancel(ctx, podCIDRPoll, true, func(ctx context.Context) (bool, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{ResourceVersion: "0"})
		if err == nil && n.Spec.PodCIDR != "" {
			log.Infof("Node %s has podCIDR %s", name, n.Spec.PodCIDR)
			return true, nil
		}
		if !said {
			log.Infof("Waiting for node %s to have a podCIDR", name)
			said = true
		}
		return false, nil
	})
}
