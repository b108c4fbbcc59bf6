package machineconfig

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v4"
)

// ErrInvalid is wrapped by every error about the options of a patch (a
// client's mistake, HTTP 400).
var ErrInvalid = errors.New("invalid machine-config patch request")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Form is how a patch spells registry mirrors and the image cache switch.
type Form string

// The forms: the legacy v1alpha1 keys (machine.registries,
// machine.features.imageCache), or the typed documents where the version has
// them.
const (
	FormLegacy    Form = "legacy"
	FormDocuments Form = "documents"
)

// ParseForm reads a form by name; "" is the version's default (zero Form).
func ParseForm(s string) (Form, error) {
	switch Form(s) {
	case "", FormLegacy, FormDocuments:
		return Form(s), nil
	}

	return "", invalidf("form %q: want %s or %s", s, FormLegacy, FormDocuments)
}

// DefaultHosts are the upstream registries a patch always mirrors, whether
// or not the mirror holds anything of them yet: in an air gap a pull from
// them can only succeed through kiln, and failing there is quicker than
// timing out on the internet.
var DefaultHosts = []string{"docker.io", "gcr.io", "ghcr.io", "quay.io", "registry.k8s.io", FactoryHost}

// FactoryHost is the public Image Factory, whose installers
// (factory.talos.dev/<image>/<schematic>:<version>) kiln serves itself.
const FactoryHost = "factory.talos.dev"

// ghcrHost is the registry whose repositories a mirror keeps without the
// host (package release).
const ghcrHost = "ghcr.io"

// Registry is a registry nodes pull from.
type Registry struct {
	// URL is scheme://host[:port], http or https.
	URL string
	// CA is a PEM bundle the registry's certificate chains to (https).
	CA []byte
	// InsecureSkipVerify accepts any certificate (https).
	InsecureSkipVerify bool
}

// Options describe a patch.
type Options struct {
	// Version is the node's Talos version.
	Version Version
	// Schematic is the ID of the schematic the node runs.
	Schematic string
	// Kiln is kiln as nodes reach it: the host of its installer images.
	Kiln Registry
	// Mirror is where the mirrored images are; the zero value is Kiln.
	Mirror Registry
	// Namespace is the path prefix of the mirrored repositories in Mirror
	// ("kiln-demo", a Harbor project).
	Namespace string
	// Held are the upstream hosts the mirror holds repositories of (see
	// Hosts); each is mirrored, as is every one of DefaultHosts.
	Held []string
	// Platform names the installer image, <platform>-installer; default
	// "metal".
	Platform string
	// Form is the form to write; zero is Version.DefaultForm().
	Form Form
	// InstallDisk is the disk the node installs to, as talosctl gen config
	// --install-disk names it. Empty leaves machine.install.disk alone and,
	// from 1.14, means talosctl's default /dev/sda: there the patch carries
	// the whole UnattendedInstallConfig, as Talos's strategic merge drops a
	// disk selector the patch leaves out (cel.Expression.Merge takes the
	// patch's empty expression).
	InstallDisk string
	// ImageCache turns the node's image cache on: the schematic embeds one.
	ImageCache bool
	// CacheVolume, with ImageCache, sizes the IMAGECACHE volume an ISO's
	// cache is copied to on the system disk ("2GiB"); "" leaves the
	// VolumeConfig out (disk images carry their own IMAGECACHE partition).
	CacheVolume string
	// SigningKey is kiln's cosign public key (PEM): with it, versions that
	// verify image signatures check kiln's installers with it.
	SigningKey []byte
	// AuthReads says kiln's registry wants a credential for pulls too
	// (kiln serve --auth-reads): the patch carries no credential, so it
	// warns that nodes need one.
	AuthReads bool
}

// Mirror is one registry mirror of a patch.
type Mirror struct {
	// Host is the upstream registry ("docker.io", "kiln.lan:8080").
	Host string `json:"host"`
	// Endpoints are tried in order; no fallback to Host itself.
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one mirror endpoint.
type Endpoint struct {
	URL          string `json:"url"`
	OverridePath bool   `json:"overridePath,omitempty"`
}

// Patch is a generated machine-config patch.
type Patch struct {
	// YAML is the patch, for --config-patch.
	YAML []byte
	// Form is the form it is written in.
	Form Form
	// InstallImage is the installer the node installs and upgrades from.
	InstallImage string
	// Mirrors are the registry mirrors, in the order written.
	Mirrors []Mirror
	// Warnings say what makes the patch less safe than it could be; each is
	// also a comment at the top of YAML.
	Warnings []string
}

// InstallerImage is kiln's installer for a schematic and version, as the
// public factory names its own: <kiln host>/<platform>-installer/<id>:<version>.
func InstallerImage(kilnHost, platform, schematic string, version Version) string {
	return kilnHost + "/" + platform + "-installer/" + schematic + ":" + version.String()
}

var (
	schematicID  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	platformName = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	hostName     = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?(:[0-9]{1,5})?$`)
	// namespacePath is a repository path prefix as the distribution spec
	// allows path components.
	namespacePath = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	// volumeSize is the size grammar accepted for CacheVolume: what Talos's
	// ByteSize parses, restricted to whole binary or decimal units.
	volumeSize = regexp.MustCompile(`^[1-9][0-9]{0,5}(MiB|GiB|TiB|MB|GB|TB)$`)
	// devicePath is a disk as talosctl's --install-disk takes it.
	devicePath = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9/_.:-]{0,200}$`)
)

// DefaultInstallDisk is talosctl gen config's --install-disk default.
const DefaultInstallDisk = "/dev/sda"

// IsHost reports whether s can be a registry host in an image reference
// (and so a mirror's name): a DNS name or IP with an optional port.
func IsHost(s string) bool {
	return len(s) <= 255 && hostName.MatchString(s)
}

// Hosts returns the upstream hosts a mirror holds, from its repository
// paths (a registry catalog) below namespace: the first path element of a
// repository kept under its host ("registry.k8s.io/etcd",
// "docker.io/library/nginx"), and ghcr.io for one kept without
// ("siderolabs/imager"). Sorted, without duplicates.
func Hosts(repositories []string, namespace string) []string {
	prefix := ""
	if ns := strings.Trim(namespace, "/"); ns != "" {
		prefix = ns + "/"
	}

	seen := map[string]bool{}

	for _, repo := range repositories {
		path, ok := strings.CutPrefix(repo, prefix)
		if !ok || path == "" {
			continue
		}

		first, rest, nested := strings.Cut(path, "/")
		if !nested || !(strings.ContainsAny(first, ".:") || first == "localhost") {
			// Without a host: kept from ghcr.io (package release).
			seen[ghcrHost] = true

			continue
		}

		if rest != "" && IsHost(first) {
			seen[first] = true
		}
	}

	hosts := make([]string, 0, len(seen))
	for h := range seen {
		hosts = append(hosts, h)
	}

	slices.Sort(hosts)

	return hosts
}

// registryBase checks a registry and returns its URL without a trailing
// slash and its host.
func registryBase(what string, r Registry) (*url.URL, error) {
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, invalidf("%s URL %q: want http(s)://host[:port]", what, r.URL)
	}

	u.Path = ""

	if !IsHost(strings.ToLower(u.Host)) || u.Host != strings.ToLower(u.Host) {
		return nil, invalidf("%s URL %q: %q is not a registry host (lower-case name or IPv4 address, optional port)", what, r.URL, u.Host)
	}

	if u.Scheme == "http" && (len(r.CA) > 0 || r.InsecureSkipVerify) {
		return nil, invalidf("%s URL %q is plain HTTP: a CA or insecureSkipVerify applies to https only (Talos refuses TLS settings for an http endpoint)", what, r.URL)
	}

	if len(r.CA) > 0 && r.InsecureSkipVerify {
		return nil, invalidf("%s: a CA and insecureSkipVerify together: one or the other", what)
	}

	if len(r.CA) > 0 {
		if err := checkPEMCertificates(r.CA); err != nil {
			return nil, invalidf("%s CA: %v", what, err)
		}
	}

	return u, nil
}

// checkPEMCertificates wants one or more PEM certificates and nothing else,
// as Talos's RegistryTLSConfig validation reads them.
func checkPEMCertificates(b []byte) error {
	rest := b
	n := 0

	for {
		var block *pem.Block

		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}

		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a certificate", block.Type)
		}

		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}

		n++
	}

	if n == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("want PEM certificates only")
	}

	return nil
}

// Generate writes the patch opts describe.
func Generate(opts Options) (*Patch, error) {
	if opts.Version.v.IsZero() {
		return nil, invalidf("no Talos version")
	}

	if !schematicID.MatchString(opts.Schematic) {
		return nil, invalidf("schematic ID %q: want 64 lower-case hex digits", opts.Schematic)
	}

	platform := opts.Platform
	if platform == "" {
		platform = "metal"
	}

	if !platformName.MatchString(platform) || len(platform) > 64 {
		return nil, invalidf("platform %q: want a Talos platform name such as metal or nocloud", opts.Platform)
	}

	form := opts.Form
	if form == "" {
		form = opts.Version.DefaultForm()
	}

	if form == FormDocuments && !opts.Version.Has(RegistryDocuments) {
		return nil, invalidf("Talos %s has no registry documents (from v%s): use form=%s", opts.Version, since[RegistryDocuments], FormLegacy)
	}

	if form != FormDocuments && form != FormLegacy {
		return nil, invalidf("form %q: want %s or %s", form, FormLegacy, FormDocuments)
	}

	kiln, err := registryBase("kiln", opts.Kiln)
	if err != nil {
		return nil, err
	}

	mirrorReg := opts.Mirror
	if mirrorReg.URL == "" {
		mirrorReg = opts.Kiln
	}

	mirror, err := registryBase("mirror", mirrorReg)
	if err != nil {
		return nil, err
	}

	ns := strings.Trim(opts.Namespace, "/")
	if ns != "" && (len(ns) > 255 || !namespacePath.MatchString(ns)) {
		return nil, invalidf("namespace %q: want a repository path such as kiln-demo", opts.Namespace)
	}

	if opts.ImageCache && opts.CacheVolume != "" && !volumeSize.MatchString(opts.CacheVolume) {
		return nil, invalidf("cache volume size %q: want a whole number of MiB, GiB, TiB, MB, GB or TB, e.g. 2GiB", opts.CacheVolume)
	}

	if opts.InstallDisk != "" && (!devicePath.MatchString(opts.InstallDisk) || strings.Contains(opts.InstallDisk, "..")) {
		return nil, invalidf("install disk %q: want a device path such as /dev/sda or /dev/disk/by-id/...", opts.InstallDisk)
	}

	for _, h := range opts.Held {
		if !IsHost(h) {
			return nil, invalidf("held host %q is not a registry host", h)
		}
	}

	p := &Patch{
		Form:         form,
		InstallImage: InstallerImage(kiln.Host, platform, opts.Schematic, opts.Version),
	}

	p.Mirrors = mirrors(kiln, mirror, ns, opts.Held)
	p.Warnings = warnings(kiln, mirror, opts)

	var verifyKey []byte

	if len(opts.SigningKey) > 0 {
		if err := checkPublicKey(opts.SigningKey); err != nil {
			return nil, invalidf("signing key: %v", err)
		}

		if opts.Version.Has(ImageVerification) {
			verifyKey = opts.SigningKey
		}
	}

	tls := tlsHosts(map[string]Registry{kiln.Host: opts.Kiln, mirror.Host: mirrorReg})

	docs, err := documents(opts, form, p, tls, verifyKey, kiln.Host)
	if err != nil {
		return nil, err
	}

	p.YAML, err = render(opts, p, docs)
	if err != nil {
		return nil, err
	}

	return p, nil
}

// checkPublicKey wants one PEM public key, as Talos's publicKey verifier
// reads it (sigstore's cryptoutils.UnmarshalPEMToPublicKey).
func checkPublicKey(b []byte) error {
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("want one PEM \"PUBLIC KEY\" block (a cosign.pub)")
	}

	if _, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil {
		return err
	}

	return nil
}

// mirrors are the patch's registry mirrors: every default and held host on
// the mirror registry, and kiln's own host when it is plain HTTP (Talos
// pulls a reference without a mirror over https).
func mirrors(kiln, mirror *url.URL, ns string, held []string) []Mirror {
	hosts := slices.Clone(DefaultHosts)
	hosts = append(hosts, held...)
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)

	base := mirror.Scheme + "://" + mirror.Host

	// endpoint is the mirror endpoint for repositories kept under prefix.
	endpoint := func(prefix string) Endpoint {
		if prefix == "" {
			return Endpoint{URL: base}
		}

		return Endpoint{URL: base + "/v2/" + prefix, OverridePath: true}
	}

	join := func(parts ...string) string {
		return strings.Join(slices.DeleteFunc(parts, func(s string) bool { return s == "" }), "/")
	}

	var out []Mirror

	for _, h := range hosts {
		var eps []Endpoint

		switch h {
		case ghcrHost:
			eps = []Endpoint{endpoint(ns)}
		case FactoryHost:
			// kiln's own frontend first; then what was mirrored from the
			// factory, if anything was.
			eps = []Endpoint{{URL: kiln.Scheme + "://" + kiln.Host}}
			if slices.Contains(held, FactoryHost) {
				eps = append(eps, endpoint(join(ns, FactoryHost)))
			}
		default:
			eps = []Endpoint{endpoint(join(ns, h))}
		}

		out = append(out, Mirror{Host: h, Endpoints: sameOverride(eps)})
	}

	if kiln.Scheme == "http" && !slices.Contains(hosts, kiln.Host) {
		out = append(out, Mirror{Host: kiln.Host, Endpoints: []Endpoint{{URL: "http://" + kiln.Host}}})
	}

	return out
}

// sameOverride spells every endpoint with overridePath when one needs it:
// machine.registries has one overridePath per mirror, and the registry's
// root with it is its /v2.
func sameOverride(eps []Endpoint) []Endpoint {
	if !slices.ContainsFunc(eps, func(e Endpoint) bool { return e.OverridePath }) {
		return eps
	}

	for i := range eps {
		if !eps[i].OverridePath {
			eps[i] = Endpoint{URL: eps[i].URL + "/v2", OverridePath: true}
		}
	}

	return eps
}

// tlsHost is a registry host's TLS settings.
type tlsHost struct {
	Host     string
	CA       []byte
	Insecure bool
}

// tlsHosts are the TLS settings to write, by host, sorted.
func tlsHosts(regs map[string]Registry) []tlsHost {
	var out []tlsHost

	for host, r := range regs {
		if len(r.CA) > 0 || r.InsecureSkipVerify {
			out = append(out, tlsHost{Host: host, CA: r.CA, Insecure: r.InsecureSkipVerify})
		}
	}

	slices.SortFunc(out, func(a, b tlsHost) int { return strings.Compare(a.Host, b.Host) })

	return out
}

func warnings(kiln, mirror *url.URL, opts Options) []string {
	type named struct {
		what string
		u    *url.URL
		reg  Registry
	}

	regs := []named{{"kiln", kiln, opts.Kiln}}
	if opts.Mirror.URL != "" {
		regs = append(regs, named{"the mirror", mirror, opts.Mirror})
	}

	var w []string

	for _, r := range regs {
		switch {
		case r.u.Scheme == "http":
			w = append(w, fmt.Sprintf("%s (%s) is plain HTTP: nodes pull their installer and every image unauthenticated and unencrypted; serve TLS (kiln serve --tls-cert) on any network you do not trust", r.what, r.u.Host))
		case r.reg.InsecureSkipVerify:
			w = append(w, fmt.Sprintf("%s (%s) is trusted with insecureSkipVerify: nodes accept any certificate for it", r.what, r.u.Host))
		}

		ip := net.ParseIP(r.u.Hostname())

		switch {
		case r.u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback()):
			w = append(w, fmt.Sprintf("%s's address %s is a loopback address: nodes cannot reach it (kiln serve --external-url)", r.what, r.u.Host))
		case ip != nil && ip.IsUnspecified():
			w = append(w, fmt.Sprintf("%s's address %s is the unspecified address: nodes cannot reach it (kiln serve --external-url)", r.what, r.u.Host))
		}
	}

	if opts.AuthReads {
		w = append(w, fmt.Sprintf("kiln (%s) requires credentials for reads (--auth-reads): this patch carries none, add a read credential for %s to the node's registry auth, or nodes cannot pull", kiln.Host, kiln.Host))
	}

	if len(opts.SigningKey) == 0 && opts.Version.Has(ImageVerification) {
		w = append(w, "no signing key: kiln's installers are not verified by the node (no ImageVerificationConfig)")
	}

	return w
}

// render writes the documents as one YAML stream under a comment header.
func render(opts Options, p *Patch, docs []any) ([]byte, error) {
	var b bytes.Buffer

	fmt.Fprintf(&b, "# Machine-config patch from kiln for Talos %s, schematic %s (%s form).\n", opts.Version, opts.Schematic, p.Form)
	fmt.Fprintf(&b, "# talosctl gen config <cluster> <endpoint> --config-patch @airgap.yaml\n")

	if opts.Version.Has(UnattendedInstall) {
		fmt.Fprintf(&b, "# Installs to %s: from Talos 1.14 the patch replaces the UnattendedInstallConfig of gen config whole.\n",
			cmp.Or(opts.InstallDisk, DefaultInstallDisk))
	}

	for _, w := range p.Warnings {
		fmt.Fprintf(&b, "# WARNING: %s\n", w)
	}

	for i, d := range docs {
		if i > 0 {
			b.WriteString("---\n")
		}

		out, err := yaml.Dump(d, yaml.WithIndent(2))
		if err != nil {
			return nil, fmt.Errorf("encoding the patch: %w", err)
		}

		b.Write(out)
	}

	return b.Bytes(), nil
}

// base64CA is a CA as v1alpha1's Base64Bytes holds it.
func base64CA(ca []byte) string { return base64.StdEncoding.EncodeToString(ca) }
