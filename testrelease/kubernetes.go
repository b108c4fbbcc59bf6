package testrelease

import (
	"fmt"
	"strconv"
	"strings"
)

// bundle is the Kubernetes image set of one Talos minor release, as printed
// by `talosctl images default` for its .0 release.
type bundle struct {
	kubernetes string // without the leading "v"
	etcd       string
	coredns    string
	flannel    string
	pause      string
	// networkPolicies is empty for releases that do not ship
	// kube-network-policies.
	networkPolicies string
	// v1.13 reordered the list and moved pause up; keep each release's order
	// so the output matches `talosctl images default` line for line.
	pauseAfterFlannelTrio bool
}

// KubernetesImages returns the upstream references of the Kubernetes images
// bundled with a Talos version ("v1.13.0"), in the order
// `talosctl images default` prints them. Only the Talos minor releases kiln
// generates test releases for are known; any other version is an error.
func KubernetesImages(talosVersion string) ([]string, error) {
	b, err := bundleFor(talosVersion)
	if err != nil {
		return nil, err
	}

	flannel := "ghcr.io/siderolabs/flannel:" + b.flannel
	coredns := "registry.k8s.io/coredns/coredns:" + b.coredns
	etcd := "registry.k8s.io/etcd:" + b.etcd
	pause := "registry.k8s.io/pause:" + b.pause
	control := []string{
		"registry.k8s.io/kube-apiserver:v" + b.kubernetes,
		"registry.k8s.io/kube-controller-manager:v" + b.kubernetes,
		"registry.k8s.io/kube-scheduler:v" + b.kubernetes,
		"registry.k8s.io/kube-proxy:v" + b.kubernetes,
		"ghcr.io/siderolabs/kubelet:v" + b.kubernetes,
	}

	refs := []string{flannel, coredns, etcd}
	if b.pauseAfterFlannelTrio {
		refs = append(refs, pause)
		refs = append(refs, control...)
	} else {
		refs = append(refs, control...)
		refs = append(refs, pause)
	}

	if b.networkPolicies != "" {
		refs = append(refs, "registry.k8s.io/networking/kube-network-policies:"+b.networkPolicies)
	}

	return refs, nil
}

// bundleFor finds the Kubernetes image set for a Talos version of the form
// vMAJOR.MINOR.PATCH[-pre][+build]. The sets are keyed by minor release:
// patch releases bump these versions upstream, but a synthetic release does
// not need to track that, and one set per minor keeps the mirror and this
// package in agreement.
func bundleFor(talosVersion string) (bundle, error) {
	minor, err := majorMinor(talosVersion)
	if err != nil {
		return bundle{}, err
	}

	switch minor {
	case "v1.12":
		return bundle{
			kubernetes: "1.35.0",
			etcd:       "v3.6.7",
			coredns:    "v1.13.2",
			flannel:    "v0.27.4",
			pause:      "3.10",
		}, nil
	case "v1.13":
		return bundle{
			kubernetes:            "1.36.0",
			etcd:                  "v3.6.9",
			coredns:               "v1.14.2",
			flannel:               "v0.28.4",
			pause:                 "3.10.1",
			networkPolicies:       "v1.0.0",
			pauseAfterFlannelTrio: true,
		}, nil
	default:
		return bundle{}, fmt.Errorf("talos version %s: no Kubernetes image set known for %s", talosVersion, minor)
	}
}

// majorMinor returns "vX.Y" of a "vX.Y.Z[-pre][+build]" version.
func majorMinor(version string) (string, error) {
	core, ok := strings.CutPrefix(version, "v")
	if !ok {
		return "", fmt.Errorf("talos version %q: must start with \"v\"", version)
	}

	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}

	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return "", fmt.Errorf("talos version %q: want vMAJOR.MINOR.PATCH", version)
	}

	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return "", fmt.Errorf("talos version %q: %q is not a number", version, p)
		}
	}

	return "v" + parts[0] + "." + parts[1], nil
}
