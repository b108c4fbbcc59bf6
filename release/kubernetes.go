package release

import (
	"errors"
	"fmt"
	"slices"
)

//go:generate go run ../hack/k8s-images -o kubernetes_table.go

// kubernetesRow is one Talos version's cluster images.
type kubernetesRow struct {
	Version Version
	Images  []string
}

// ErrNoKubernetesImages marks a Talos version kiln has no cluster image
// list for: the caller has to name the images itself.
var ErrNoKubernetesImages = errors.New("no Kubernetes image list")

// KubernetesImages returns the upstream references of the cluster images
// a Talos version runs by default:
// flannel, CoreDNS, etcd, the Kubernetes control plane, kube-proxy,
// kubelet, pause and, from v1.13, kube-network-policies, in the order
// `talosctl images default` of that version prints them. The list is per
// patch version (kubernetes_table.go, generated from each version's
// machinery by hack/k8s-images). A version without a row, in particular
// one newer than the table, is an error wrapping ErrNoKubernetesImages:
// the images of another version would not be the ones its nodes pull.
func KubernetesImages(v Version) ([]string, error) {
	if v.IsZero() {
		return nil, fmt.Errorf("%w: no Talos version", ErrNoKubernetesImages)
	}

	key := v.WithoutBuild()

	i, found := slices.BinarySearchFunc(kubernetesTable, key, func(r kubernetesRow, v Version) int {
		return r.Version.Compare(v)
	})
	if found {
		return slices.Clone(kubernetesTable[i].Images), nil
	}

	oldest, newest := kubernetesTable[0].Version, kubernetesTable[len(kubernetesTable)-1].Version

	const todo = "list its cluster images explicitly (what `talosctl images default` of that version prints, e.g. with --images)"

	switch {
	case i == len(kubernetesTable):
		return nil, fmt.Errorf("%w for Talos %s: it is newer than this kiln knows (newest %s); %s, or use a kiln built after its release",
			ErrNoKubernetesImages, key, newest, todo)
	case i == 0:
		return nil, fmt.Errorf("%w for Talos %s: kiln knows them from %s on; %s", ErrNoKubernetesImages, key, oldest, todo)
	default:
		return nil, fmt.Errorf("%w for Talos %s: the module proxy did not serve its machinery when kiln's table (%s to %s) was generated; %s",
			ErrNoKubernetesImages, key, oldest, newest, todo)
	}
}
