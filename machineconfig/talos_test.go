package machineconfig

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/validation"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// The patches of every version up to the pinned machinery's minor, checked
// with kiln's own machinery (v1.13.9, go.mod) as a node reads them. Versions
// past it (1.14) and each version's own machinery are checked by
// TestMachineryVersions with hack/machineconfig-check.
var pinnedVersions = []string{"v1.10.0", "v1.10.9", "v1.11.6", "v1.12.0", "v1.12.7", "v1.13.0", "v1.13.9"}

// metal is the runtime mode of a bare-metal node (`talosctl validate --mode
// metal`).
type metal struct{}

func (metal) String() string        { return "metal" }
func (metal) RequiresInstall() bool { return true }
func (metal) InContainer() bool     { return false }

// baseConfigs caches what `talosctl gen config --talos-version V` writes, by
// version and machine type: secrets are slow to make.
var baseConfigs sync.Map

// genConfig is `talosctl gen config kiln https://10.5.0.1:6443
// --talos-version <v> --install-disk /dev/sda` for one machine type.
func genConfig(t *testing.T, version string, typ machine.Type) config.Provider {
	t.Helper()

	key := version + "/" + typ.String()
	if c, ok := baseConfigs.Load(key); ok {
		return c.(config.Provider)
	}

	contract, err := config.ParseContractFromVersion(version)
	if err != nil {
		t.Fatal(err)
	}

	in, err := generate.NewInput("kiln", "https://10.5.0.1:6443", constants.DefaultKubernetesVersion,
		generate.WithVersionContract(contract),
		generate.WithInstallDisk("/dev/sda"),
		generate.WithInstallImage("ghcr.io/siderolabs/installer:"+version),
	)
	if err != nil {
		t.Fatal(err)
	}

	c, err := in.Config(typ)
	if err != nil {
		t.Fatal(err)
	}

	baseConfigs.Store(key, c)

	return c
}

// applyPatch patches a generated config as talosctl does, and reads the
// result back as a node reads its config: strictly, validated in strict mode.
func applyPatch(base config.Provider, patch []byte) (config.Provider, error) {
	// Strict decoding of the patch itself: configpatcher.LoadPatch would
	// fall back to reading a broken strategic patch as a JSON patch.
	pc, err := configloader.NewFromBytes(patch, configloader.WithAllowPatchDelete())
	if err != nil {
		return nil, fmt.Errorf("loading the patch: %w", err)
	}

	out, err := configpatcher.Apply(configpatcher.WithConfig(base), []configpatcher.Patch{configpatcher.NewStrategicMergePatch(pc)})
	if err != nil {
		return nil, fmt.Errorf("applying the patch: %w", err)
	}

	b, err := out.Bytes()
	if err != nil {
		return nil, err
	}

	cfg, err := configloader.NewFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("loading the patched config: %w", err)
	}

	warnings, err := cfg.Validate(metal{}, validationStrict()...)
	if err != nil {
		return nil, fmt.Errorf("validating the patched config: %w", err)
	}

	if len(warnings) > 0 {
		return nil, fmt.Errorf("validating the patched config: warnings %q", warnings)
	}

	return cfg, nil
}

// summarize reads what the node's controllers read: the registries as
// cri.RegistriesConfigController maps them (ClientIdentity included), the
// install image, the image cache switch and volume, the verification rules.
func summarize(cfg config.Provider) (s summary, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading the config panicked (as the node's controller would): %v", r)
		}
	}()

	s.InstallImage = cfg.Machine().Install().Image()
	s.InstallDisk = cfg.Machine().Install().Disk()
	s.Mirrors = map[string]summaryMirror{}

	for host, m := range cfg.RegistryMirrorConfigs() {
		sm := summaryMirror{SkipFallback: m.SkipFallback()}
		for _, e := range m.Endpoints() {
			sm.Endpoints = append(sm.Endpoints, Endpoint{URL: e.Endpoint(), OverridePath: e.OverridePath()})
		}

		s.Mirrors[host] = sm
	}

	for host, c := range cfg.RegistryTLSConfigs() {
		if s.TLS == nil {
			s.TLS = map[string]summaryTLS{}
		}

		s.TLS[host] = summaryTLS{CA: string(c.CA()), Insecure: c.InsecureSkipVerify(), ClientIdentity: c.ClientIdentity() != nil}
	}

	s.ImageCache = cfg.Machine().Features().ImageCache().LocalEnabled()

	if v, ok := cfg.Volumes().ByName(ImageCacheVolume); ok {
		p := v.Provisioning()
		sel, _ := p.DiskSelector().Get()
		s.CacheVolume = &summaryVolume{Match: sel.String(), MinSize: p.MinSize().ValueOrZero(), MaxSize: p.MaxSize().ValueOrZero()}
	}

	if iv := cfg.ImageVerificationConfig(); iv != nil {
		for _, r := range iv.Rules() {
			sr := summaryRule{Image: r.ImagePattern()}
			if k := r.VerifierPublicKey(); k != nil {
				sr.PublicKey = k.Certificate()
			}

			s.Verification = append(s.Verification, sr)
		}
	}

	return s, nil
}

func TestPinnedMachinery(t *testing.T) {
	t.Parallel()

	for _, version := range pinnedVersions {
		v, err := ParseVersion(version)
		if err != nil {
			t.Fatal(err)
		}

		for _, va := range variants(t, v) {
			p, err := Generate(va.opts)
			if err != nil {
				t.Fatalf("%s: %v", va.name, err)
			}

			want := expected(t, va.opts, p)

			for _, typ := range []machine.Type{machine.TypeControlPlane, machine.TypeWorker} {
				cfg, err := applyPatch(genConfig(t, version, typ), p.YAML)
				if err != nil {
					t.Fatalf("%s %s: %v\n%s", va.name, typ, err, p.YAML)
				}

				got, err := summarize(cfg)
				if err != nil {
					t.Fatalf("%s %s: %v\n%s", va.name, typ, err, p.YAML)
				}

				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s %s: the patched config reads as\n%+v\nwant\n%+v\npatch:\n%s", va.name, typ, got, want, p.YAML)
				}
			}
		}
	}
}

// TestPinnedMachineryRefusesBrokenPatches: the check above would notice a
// patch Talos refuses: unknown keys, a mirror with a bad scheme, TLS for an
// http endpoint, an install image in both places.
func TestPinnedMachineryRefusesBrokenPatches(t *testing.T) {
	t.Parallel()

	base := genConfig(t, "v1.13.9", machine.TypeControlPlane)

	for name, patch := range map[string]string{
		"unknown key":      "machine:\n  registries:\n    mirrors:\n      docker.io:\n        endpoint: [http://x]\n",
		"bad scheme":       "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: docker.io\nendpoints:\n  - url: ftp://x\n",
		"bad CA":           "apiVersion: v1alpha1\nkind: RegistryTLSConfig\nname: x:5000\nca: nope\n",
		"verifier missing": "apiVersion: v1alpha1\nkind: ImageVerificationConfig\nrules:\n  - image: x/*\n",
		"volume min > max": "apiVersion: v1alpha1\nkind: VolumeConfig\nname: IMAGECACHE\nprovisioning:\n  minSize: 2GiB\n  maxSize: 1GiB\n",
	} {
		if _, err := applyPatch(base, []byte(patch)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "patch") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func validationStrict() []validation.Option { return []validation.Option{validation.WithStrict()} }
