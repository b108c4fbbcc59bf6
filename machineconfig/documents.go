package machineconfig

import (
	"cmp"
	"slices"
	"strconv"
)

// The documents of a patch, as Talos's machinery decodes them (strictly:
// every key here is one its types have). Field order is the order written.

// v1alpha1Patch is the partial v1alpha1 document (it has no apiVersion).
type v1alpha1Patch struct {
	Machine machinePatch `yaml:"machine"`
}

type machinePatch struct {
	Install    *installPatch    `yaml:"install,omitempty"`
	Registries *registriesPatch `yaml:"registries,omitempty"`
	Features   *featuresPatch   `yaml:"features,omitempty"`
}

type installPatch struct {
	Disk  string `yaml:"disk,omitempty"`
	Image string `yaml:"image"`
}

// registriesPatch is machine.registries; Go maps are written sorted.
type registriesPatch struct {
	Mirrors map[string]legacyMirror         `yaml:"mirrors,omitempty"`
	Config  map[string]legacyRegistryConfig `yaml:"config,omitempty"`
}

// legacyMirror has one overridePath for all its endpoints.
type legacyMirror struct {
	Endpoints    []string `yaml:"endpoints"`
	OverridePath bool     `yaml:"overridePath,omitempty"`
	SkipFallback bool     `yaml:"skipFallback"`
}

type legacyRegistryConfig struct {
	TLS legacyTLS `yaml:"tls"`
}

// legacyTLS's ca is v1alpha1's Base64Bytes: the PEM bundle in base64.
type legacyTLS struct {
	CA                 string `yaml:"ca,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify,omitempty"`
}

type featuresPatch struct {
	ImageCache imageCacheFeature `yaml:"imageCache"`
}

type imageCacheFeature struct {
	LocalEnabled bool `yaml:"localEnabled"`
}

// Meta heads every typed document.
type Meta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
}

func meta(kind string) Meta { return Meta{APIVersion: "v1alpha1", Kind: kind} }

type registryMirrorConfig struct {
	Meta         `yaml:",inline"`
	Name         string        `yaml:"name"`
	Endpoints    []endpointDoc `yaml:"endpoints"`
	SkipFallback bool          `yaml:"skipFallback"`
}

type endpointDoc struct {
	URL          string `yaml:"url"`
	OverridePath bool   `yaml:"overridePath,omitempty"`
}

type registryTLSConfig struct {
	Meta               `yaml:",inline"`
	Name               string `yaml:"name"`
	CA                 string `yaml:"ca,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify,omitempty"`
}

type imageCacheConfig struct {
	Meta  `yaml:",inline"`
	Local struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"local"`
}

// unattendedInstallConfig replaces the one `talosctl gen config` writes
// from 1.14: whole, as a merge would drop the disk selector.
type unattendedInstallConfig struct {
	Meta      `yaml:",inline"`
	Installer struct {
		Image string `yaml:"image"`
	} `yaml:"installer"`
	Provisioning struct {
		DiskSelector struct {
			Match string `yaml:"match"`
		} `yaml:"diskSelector"`
	} `yaml:"provisioning"`
}

type volumeConfig struct {
	Meta         `yaml:",inline"`
	Name         string `yaml:"name"`
	Provisioning struct {
		DiskSelector struct {
			Match string `yaml:"match"`
		} `yaml:"diskSelector"`
		MinSize string `yaml:"minSize"`
		MaxSize string `yaml:"maxSize"`
	} `yaml:"provisioning"`
}

type imageVerificationConfig struct {
	Meta  `yaml:",inline"`
	Rules []verificationRule `yaml:"rules"`
}

type verificationRule struct {
	Image     string `yaml:"image"`
	PublicKey struct {
		Certificate string `yaml:"certificate"`
	} `yaml:"publicKey"`
}

// ImageCacheVolume is the volume Talos copies an ISO's image cache to.
const ImageCacheVolume = "IMAGECACHE"

// documents lays out the patch in form.
func documents(opts Options, form Form, p *Patch, tls []tlsHost, verifyKey []byte, kilnHost string) ([]any, error) {
	v := opts.Version
	machine := machinePatch{}

	var docs []any

	if v.Has(UnattendedInstall) {
		d := unattendedInstallConfig{Meta: meta("UnattendedInstallConfig")}
		d.Installer.Image = p.InstallImage
		d.Provisioning.DiskSelector.Match = diskSelector(cmp.Or(opts.InstallDisk, DefaultInstallDisk))
		docs = append(docs, d)
	} else {
		machine.Install = &installPatch{Disk: opts.InstallDisk, Image: p.InstallImage}
	}

	legacyTLS := func() {
		if len(tls) == 0 {
			return
		}

		if machine.Registries == nil {
			machine.Registries = &registriesPatch{}
		}

		machine.Registries.Config = map[string]legacyRegistryConfig{}

		for _, t := range tls {
			c := legacyRegistryConfig{TLS: legacyTLS{InsecureSkipVerify: t.Insecure}}
			if len(t.CA) > 0 {
				c.TLS.CA = base64CA(t.CA)
			}

			machine.Registries.Config[t.Host] = c
		}
	}

	var registryDocs []any

	switch form {
	case FormLegacy:
		machine.Registries = &registriesPatch{Mirrors: map[string]legacyMirror{}}

		for _, m := range p.Mirrors {
			lm := legacyMirror{SkipFallback: true}
			for _, e := range m.Endpoints {
				lm.Endpoints = append(lm.Endpoints, e.URL)
				lm.OverridePath = e.OverridePath // the same for all (sameOverride)
			}

			machine.Registries.Mirrors[m.Host] = lm
		}

		legacyTLS()
	case FormDocuments:
		for _, m := range p.Mirrors {
			d := registryMirrorConfig{Meta: meta("RegistryMirrorConfig"), Name: m.Host, SkipFallback: true}
			for _, e := range m.Endpoints {
				d.Endpoints = append(d.Endpoints, endpointDoc(e))
			}

			registryDocs = append(registryDocs, d)
		}

		if v.Has(RegistryTLSDocumentWithoutClient) {
			for _, t := range tls {
				registryDocs = append(registryDocs, registryTLSConfig{
					Meta: meta("RegistryTLSConfig"), Name: t.Host, CA: string(t.CA), InsecureSkipVerify: t.Insecure,
				})
			}
		} else {
			legacyTLS()
		}
	}

	if opts.ImageCache {
		if form == FormDocuments && v.Has(ImageCacheDocument) {
			d := imageCacheConfig{Meta: meta("ImageCacheConfig")}
			d.Local.Enabled = true
			docs = append(docs, d)
		} else {
			machine.Features = &featuresPatch{ImageCache: imageCacheFeature{LocalEnabled: true}}
		}

		if opts.CacheVolume != "" {
			d := volumeConfig{Meta: meta("VolumeConfig"), Name: ImageCacheVolume}
			d.Provisioning.DiskSelector.Match = "system_disk"
			d.Provisioning.MinSize = opts.CacheVolume
			d.Provisioning.MaxSize = opts.CacheVolume
			docs = append(docs, d)
		}
	}

	if verifyKey != nil {
		docs = append(docs, verification(kilnHost, verifyKey, !slices.Contains(opts.Held, FactoryHost)))
	}

	var out []any
	if machine != (machinePatch{}) {
		out = append(out, v1alpha1Patch{Machine: machine})
	}

	out = append(out, registryDocs...)
	out = append(out, docs...)

	return out, nil
}

// verification checks kiln's installers with its key: those named with
// kiln's host, and, when factory.talos.dev reaches nothing but kiln, those
// named with the factory's (an installer mirrored from the factory carries
// the factory's signature, not kiln's).
func verification(kilnHost string, key []byte, factory bool) imageVerificationConfig {
	d := imageVerificationConfig{Meta: meta("ImageVerificationConfig")}

	hosts := []string{kilnHost}
	if factory {
		hosts = append(hosts, FactoryHost)
	}

	for _, h := range hosts {
		for _, pattern := range []string{h + "/installer/*", h + "/*-installer/*"} {
			r := verificationRule{Image: pattern}
			r.PublicKey.Certificate = string(key)
			d.Rules = append(d.Rules, r)
		}
	}

	return d
}

// diskSelector is the CEL selector `talosctl gen config --install-disk`
// writes for a disk.
func diskSelector(disk string) string {
	return "disk.dev_path == " + strconv.Quote(disk)
}
