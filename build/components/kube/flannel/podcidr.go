// k4s's own part of flanneld (Apache-2.0): the waits for the API server and for the node's podCIDR,
// and the network config read before the API server answers.

package flannel

import (
	"context"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-io/flannel/pkg/subnet"
	log "k8s.io/klog/v2"
)

// podCIDRPoll: how often the Node is read while it has no podCIDR (from the
// apiserver's watch cache). Upstream's lease polls every 3 s and gives up when
// the Node exists without one, which made k4s start flanneld only after the
// kubelet had registered and the podCIDR was set: a chain of waits on the
// way to Ready.
const podCIDRPoll = 250 * time.Millisecond

// apiServerPoll: how often the Nodes are listed while flanneld waits for the API server.
const apiServerPoll = 200 * time.Millisecond

// waitNodesReadable returns once the API server lists Nodes to flanneld's own identity (it
// serves, and the node's RBAC, bootstrap's first objects, is in), or when ctx ends. flanneld
// starts with the node, before the API server is ready: its process start (the multicall's
// package init, seconds under emulation) and the rules that need no API are done by then,
// where the subnet manager's informer, refused, would back off for seconds.
func waitNodesReadable(ctx context.Context, apiURL, kubeconfig string) error {
	client, err := clientOf(apiURL, kubeconfig)
	if err != nil {
		return err
	}
	said := false
	return wait.PollUntilContextCancel(ctx, apiServerPoll, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 1, ResourceVersion: "0"})
		if err != nil && !said {
			log.Infof("Waiting for the API server to list Nodes: %s", err)
			said = true
		}
		return err == nil, nil
	})
}

// localNetworkConfig is the network config as the Kubernetes subnet manager reads it (the
// net-conf.json file): what the traffic manager's rules need, before the API server answers.
func localNetworkConfig(path string) (*subnet.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return subnet.ParseConfig(string(data))
}

// waitPodCIDR returns once the Node named by $NODE_NAME (as the Kubernetes
// subnet manager finds it) has a podCIDR, or when ctx ends.
func waitPodCIDR(ctx context.Context, apiURL, kubeconfig string) error {
	name := os.Getenv("NODE_NAME")
	if name == "" {
		return nil // the subnet manager finds its Node another way and checks it itself
	}
	client, err := clientOf(apiURL, kubeconfig)
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

// clientOf is flanneld's own client (its kubeconfig), each request bounded: the waits above
// ask again rather than hang on an API server that is still starting.
func clientOf(apiURL, kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 5 * time.Second
	return kubernetes.NewForConfig(cfg)
}
