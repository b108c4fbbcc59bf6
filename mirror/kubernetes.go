package mirror

import (
	"fmt"
	"strings"
)

// k8sBundle is the Kubernetes image set of one Talos minor release, as
// `talosctl images default` prints it for the .0 release (talos
// pkg/machinery/constants and pkg/images.DefaultSandboxImage).
type k8sBundle struct {
	kubernetes, etcd, coredns, flannel, pause, networkPolicies string
}

var k8sBundles = map[string]k8sBundle{
	"v1.12": {kubernetes: "v1.35.0", etcd: "v3.6.7", coredns: "v1.13.2", flannel: "v0.27.4", pause: "3.10"},
	"v1.13": {kubernetes: "v1.36.0", etcd: "v3.6.9", coredns: "v1.14.2", flannel: "v0.28.4", pause: "3.10.1", networkPolicies: "v1.0.0"},
}

// KubernetesImages returns the upstream references of the Kubernetes images
// a Talos version ("v1.13.0") runs by default: kubelet, kube-apiserver,
// -controller-manager, -scheduler, -proxy, etcd, CoreDNS, flannel, pause and,
// from v1.13, kube-network-policies. Versions are known per minor release;
// for others, or other Kubernetes versions, set Selection.KubernetesImages.
func KubernetesImages(talosVersion string) ([]string, error) {
	core, _, _ := strings.Cut(strings.TrimPrefix(talosVersion, "v"), "-")
	parts := strings.Split(core, ".")

	if len(parts) < 2 {
		return nil, fmt.Errorf("talos version %q: want vX.Y.Z", talosVersion)
	}

	b, ok := k8sBundles["v"+parts[0]+"."+parts[1]]
	if !ok {
		return nil, fmt.Errorf("talos version %s: no Kubernetes image set known, list the images explicitly", talosVersion)
	}

	refs := []string{
		"ghcr.io/siderolabs/flannel:" + b.flannel,
		"registry.k8s.io/coredns/coredns:" + b.coredns,
		"registry.k8s.io/etcd:" + b.etcd,
		"registry.k8s.io/pause:" + b.pause,
		"registry.k8s.io/kube-apiserver:" + b.kubernetes,
		"registry.k8s.io/kube-controller-manager:" + b.kubernetes,
		"registry.k8s.io/kube-scheduler:" + b.kubernetes,
		"registry.k8s.io/kube-proxy:" + b.kubernetes,
		"ghcr.io/siderolabs/kubelet:" + b.kubernetes,
	}

	if b.networkPolicies != "" {
		refs = append(refs, "registry.k8s.io/networking/kube-network-policies:"+b.networkPolicies)
	}

	return refs, nil
}
