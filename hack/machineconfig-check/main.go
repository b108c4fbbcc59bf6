// Command machineconfig-check reads kiln's machine-config patches as a Talos
// node of one version reads its config, with that version's own machinery
// (github.com/siderolabs/talos/pkg/machinery at the version go.mod names):
// for each patch and machine type it generates the config `talosctl gen
// config --talos-version V --install-disk /dev/sda` writes, applies the patch
// as talosctl does (strategic merge, the patch decoded strictly), loads the
// result strictly, validates it in strict mode for metal, and prints what the
// node's controllers read from it (registry mirrors, TLS, install image,
// image cache, its volume, image verification rules) as one JSON line.
//
// It is built once per machinery version (make check-machineconfig: a copy of
// this module with `go get .../machinery@V`), so it calls the config
// accessors by name through reflection: their Go types differ between
// versions (machine.registries before 1.12, the documents after), the method
// names a node's code calls do not.
//
//	machineconfig-check -talos v1.12.7 patch.yaml...
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime/debug"
	"sort"

	coreconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/validation"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// result is one line of output.
type result struct {
	Patch     string   `json:"patch"`
	Type      string   `json:"type"`
	Machinery string   `json:"machinery"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	Summary   *summary `json:"summary,omitempty"`
}

type summary struct {
	InstallImage string                   `json:"installImage"`
	InstallDisk  string                   `json:"installDisk"`
	Mirrors      map[string]summaryMirror `json:"mirrors"`
	TLS          map[string]summaryTLS    `json:"tls,omitempty"`
	ImageCache   bool                     `json:"imageCache"`
	CacheVolume  *summaryVolume           `json:"cacheVolume,omitempty"`
	Verification []summaryRule            `json:"verification,omitempty"`
}

type summaryMirror struct {
	Endpoints    []endpoint `json:"endpoints"`
	SkipFallback bool       `json:"skipFallback"`
}

type endpoint struct {
	URL          string `json:"url"`
	OverridePath bool   `json:"overridePath,omitempty"`
}

type summaryTLS struct {
	CA             string `json:"ca,omitempty"`
	Insecure       bool   `json:"insecureSkipVerify,omitempty"`
	ClientIdentity bool   `json:"clientIdentity,omitempty"`
}

type summaryVolume struct {
	Match   string `json:"match"`
	MinSize uint64 `json:"minSize"`
	MaxSize uint64 `json:"maxSize"`
}

type summaryRule struct {
	Image     string `json:"image"`
	PublicKey string `json:"publicKey"`
}

// metal is the runtime mode of a bare-metal node.
type metal struct{}

func (metal) String() string        { return "metal" }
func (metal) RequiresInstall() bool { return true }
func (metal) InContainer() bool     { return false }

func main() {
	talos := flag.String("talos", "", "Talos version the config is generated for (its version contract)")
	flag.Parse()

	if *talos == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: machineconfig-check -talos vX.Y.Z PATCH...")
		os.Exit(2)
	}

	if err := run(*talos, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "machineconfig-check:", err)
		os.Exit(1)
	}
}

func machineryVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/siderolabs/talos/pkg/machinery" {
				return d.Version
			}
		}
	}

	return "unknown"
}

func run(talos string, patches []string) error {
	contract, err := coreconfig.ParseContractFromVersion(talos)
	if err != nil {
		return err
	}

	enc := json.NewEncoder(os.Stdout)
	mv := machineryVersion()

	for _, typ := range []machine.Type{machine.TypeControlPlane, machine.TypeWorker} {
		in, err := generate.NewInput("kiln", "https://10.5.0.1:6443", constants.DefaultKubernetesVersion,
			generate.WithVersionContract(contract),
			generate.WithInstallDisk("/dev/sda"),
			generate.WithInstallImage("ghcr.io/siderolabs/installer:"+talos),
		)
		if err != nil {
			return err
		}

		base, err := in.Config(typ)
		if err != nil {
			return err
		}

		for _, path := range patches {
			r := result{Patch: path, Type: typ.String(), Machinery: mv}

			s, warnings, err := check(base, path)
			if err != nil {
				r.Error = err.Error()
			}

			r.Warnings, r.Summary = warnings, s

			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	}

	return nil
}

func check(base coreconfig.Provider, path string) (*summary, []string, error) {
	patch, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}

	pc, err := configloader.NewFromBytes(patch, configloader.WithAllowPatchDelete())
	if err != nil {
		return nil, nil, fmt.Errorf("loading the patch: %w", err)
	}

	out, err := configpatcher.Apply(configpatcher.WithConfig(base), []configpatcher.Patch{configpatcher.NewStrategicMergePatch(pc)})
	if err != nil {
		return nil, nil, fmt.Errorf("applying the patch: %w", err)
	}

	b, err := out.Bytes()
	if err != nil {
		return nil, nil, err
	}

	cfg, err := configloader.NewFromBytes(b)
	if err != nil {
		return nil, nil, fmt.Errorf("loading the patched config: %w", err)
	}

	warnings, err := cfg.Validate(metal{}, validation.WithStrict())
	if err != nil {
		return nil, warnings, fmt.Errorf("validating the patched config: %w", err)
	}

	s, err := summarize(cfg)

	return s, warnings, err
}

// call calls a method by name; ok is false when the value has no such
// method. A panic in the method is an error: the node's controller calling
// it would crash the same way.
func call(v reflect.Value, method string, args ...reflect.Value) (out []reflect.Value, ok bool, err error) {
	if !v.IsValid() || ((v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer) && v.IsNil()) {
		return nil, false, fmt.Errorf("calling %s on nil", method)
	}

	m := v.MethodByName(method)
	if !m.IsValid() {
		return nil, false, nil
	}

	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s panicked: %v", method, r)
		}
	}()

	return m.Call(args), true, nil
}

// must calls a method that every version has, returning its first result.
func must(v reflect.Value, method string) (reflect.Value, error) {
	out, ok, err := call(v, method)
	if err != nil {
		return reflect.Value{}, err
	}

	if !ok {
		return reflect.Value{}, fmt.Errorf("%s has no method %s", v.Type(), method)
	}

	return out[0], nil
}

// chain calls methods one after the other.
func chain(v reflect.Value, methods ...string) (reflect.Value, error) {
	var err error

	for _, m := range methods {
		if v, err = must(v, m); err != nil {
			return v, err
		}
	}

	return v, nil
}

func isNil(v reflect.Value) bool {
	return !v.IsValid() || ((v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer || v.Kind() == reflect.Map) && v.IsNil())
}

// top returns cfg.<method>() if the config has the method (the documents'
// accessors), else the legacy accessor chain.
func top(cfg reflect.Value, method string, legacy ...string) (reflect.Value, error) {
	out, ok, err := call(cfg, method)
	if err != nil {
		return reflect.Value{}, err
	}

	if ok {
		return out[0], nil
	}

	return chain(cfg, legacy...)
}

//nolint:gocyclo
func summarize(provider coreconfig.Provider) (*summary, error) {
	cfg := reflect.ValueOf(provider)
	s := &summary{Mirrors: map[string]summaryMirror{}}

	// Install image and disk: UnattendedInstallConfig when the version has
	// it and the config holds one, else machine.install.
	if out, ok, err := call(cfg, "UnattendedInstallConfig"); err != nil {
		return nil, err
	} else if ok && !isNil(out[0]) {
		img, err := must(out[0], "InstallerImage")
		if err != nil {
			return nil, err
		}

		sel, err := chain(out[0], "VolumeSelector", "String")
		if err != nil {
			return nil, err
		}

		s.InstallImage, s.InstallDisk = img.String(), sel.String()
	} else {
		img, err := chain(cfg, "Machine", "Install", "Image")
		if err != nil {
			return nil, err
		}

		install, err := chain(cfg, "Machine", "Install")
		if err != nil {
			return nil, err
		}

		disk, ok, err := call(install, "Disk")
		if err != nil || !ok {
			return nil, fmt.Errorf("machine.install.disk: %v", err)
		}

		s.InstallImage, s.InstallDisk = img.String(), disk[0].String()
	}

	mirrors, err := top(cfg, "RegistryMirrorConfigs", "Machine", "Registries", "Mirrors")
	if err != nil {
		return nil, err
	}

	for it := mirrors.MapRange(); it.Next(); {
		m := it.Value()

		sf, err := must(m, "SkipFallback")
		if err != nil {
			return nil, err
		}

		sm := summaryMirror{SkipFallback: sf.Bool()}

		eps, err := must(m, "Endpoints")
		if err != nil {
			return nil, err
		}

		for i := range eps.Len() {
			u, err := must(eps.Index(i), "Endpoint")
			if err != nil {
				return nil, err
			}

			op, err := must(eps.Index(i), "OverridePath")
			if err != nil {
				return nil, err
			}

			sm.Endpoints = append(sm.Endpoints, endpoint{URL: u.String(), OverridePath: op.Bool()})
		}

		s.Mirrors[it.Key().String()] = sm
	}

	// TLS as the node's RegistriesConfigController maps it: ClientIdentity,
	// CA and InsecureSkipVerify of every entry.
	tlsOf := map[string]reflect.Value{}

	if out, ok, err := call(cfg, "RegistryTLSConfigs"); err != nil {
		return nil, err
	} else if ok {
		for it := out[0].MapRange(); it.Next(); {
			tlsOf[it.Key().String()] = it.Value()
		}
	} else {
		regs, err := chain(cfg, "Machine", "Registries", "Config")
		if err != nil {
			return nil, err
		}

		for it := regs.MapRange(); it.Next(); {
			t, err := must(it.Value(), "TLS")
			if err != nil {
				return nil, err
			}

			if !isNil(t) {
				tlsOf[it.Key().String()] = t
			}
		}
	}

	keys := make([]string, 0, len(tlsOf))
	for k := range tlsOf {
		keys = append(keys, k)
	}

	sort.Strings(keys)

	for _, host := range keys {
		t := tlsOf[host]

		ci, err := must(t, "ClientIdentity")
		if err != nil {
			return nil, fmt.Errorf("TLS config of %s: %w", host, err)
		}

		ca, err := must(t, "CA")
		if err != nil {
			return nil, err
		}

		insecure, err := must(t, "InsecureSkipVerify")
		if err != nil {
			return nil, err
		}

		if s.TLS == nil {
			s.TLS = map[string]summaryTLS{}
		}

		s.TLS[host] = summaryTLS{CA: string(ca.Bytes()), Insecure: insecure.Bool(), ClientIdentity: !isNil(ci)}
	}

	// The image cache switch: the ImageCacheConfig accessor where the
	// version has one (it falls back to machine.features), else the feature.
	var ic reflect.Value
	if out, ok, err := call(cfg, "ImageCacheConfig"); err != nil {
		return nil, err
	} else if ok {
		ic = out[0]
	} else if ic, err = chain(cfg, "Machine", "Features", "ImageCache"); err != nil {
		return nil, err
	}

	if !isNil(ic) {
		on, err := must(ic, "LocalEnabled")
		if err != nil {
			return nil, err
		}

		s.ImageCache = on.Bool()
	}

	vols, err := must(cfg, "Volumes")
	if err != nil {
		return nil, err
	}

	if out, _, err := call(vols, "ByName", reflect.ValueOf("IMAGECACHE")); err != nil {
		return nil, err
	} else if out[1].Bool() {
		prov, err := must(out[0], "Provisioning")
		if err != nil {
			return nil, err
		}

		vol := &summaryVolume{}

		if sel, err := optional(prov, "DiskSelector"); err != nil {
			return nil, err
		} else if sel.IsValid() {
			str, err := must(sel, "String")
			if err != nil {
				return nil, err
			}

			vol.Match = str.String()
		}

		for name, dst := range map[string]*uint64{"MinSize": &vol.MinSize, "MaxSize": &vol.MaxSize} {
			if v, err := optional(prov, name); err != nil {
				return nil, err
			} else if v.IsValid() {
				*dst = v.Uint()
			}
		}

		s.CacheVolume = vol
	}

	if out, ok, err := call(cfg, "ImageVerificationConfig"); err != nil {
		return nil, err
	} else if ok && !isNil(out[0]) {
		rules, err := must(out[0], "Rules")
		if err != nil {
			return nil, err
		}

		for i := range rules.Len() {
			r := rules.Index(i)

			pattern, err := must(r, "ImagePattern")
			if err != nil {
				return nil, err
			}

			sr := summaryRule{Image: pattern.String()}

			pk, err := must(r, "VerifierPublicKey")
			if err != nil {
				return nil, err
			}

			if !isNil(pk) {
				cert, err := must(pk, "Certificate")
				if err != nil {
					return nil, err
				}

				sr.PublicKey = cert.String()
			}

			s.Verification = append(s.Verification, sr)
		}
	}

	return s, nil
}

// optional returns the value of an optional.Optional[T] a method returns,
// or the invalid Value when it is empty.
func optional(v reflect.Value, method string) (reflect.Value, error) {
	o, err := must(v, method)
	if err != nil {
		return reflect.Value{}, err
	}

	out, ok, err := call(o, "Get")
	if err != nil {
		return reflect.Value{}, err
	}

	if !ok {
		return reflect.Value{}, errors.New(method + ": not an optional value")
	}

	if !out[1].Bool() {
		return reflect.Value{}, nil
	}

	return out[0], nil
}
