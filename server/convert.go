package server

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/types/known/structpb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/schematic"
)

// fromProto converts typed fields into a schematic. Overlay options arrive as
// JSON values, where every number is a float64; integral ones become int so
// that `{"a": 1}` gets the same canonical YAML (and ID) as `a: 1` in YAML.
func fromProto(p *kilnv1.Schematic) (*schematic.Schematic, error) {
	var sc schematic.Schematic

	if o := p.GetOverlay(); o != nil {
		sc.Overlay = schematic.Overlay{Image: o.GetImage(), Name: o.GetName()}

		if opts := o.GetOptions(); opts != nil && len(opts.GetFields()) > 0 {
			m, ok := jsonToYAML(opts.AsMap()).(map[string]any)
			if !ok {
				return nil, &invalidArgumentError{"overlay.options must be an object"}
			}

			sc.Overlay.Options = m
		}
	}

	c := p.GetCustomization()
	sc.Customization = schematic.Customization{
		EmbeddedMachineConfiguration: c.GetEmbeddedMachineConfiguration(),
		ExtraKernelArgs:              c.GetExtraKernelArgs(),
		SystemExtensions:             schematic.SystemExtensions{OfficialExtensions: c.GetSystemExtensions()},
		SecureBoot: schematic.SecureBootCustomization{
			EnrollKeys:                   c.GetSecureboot().GetEnrollKeys(),
			IncludeWellKnownCertificates: c.GetSecureboot().GetIncludeWellKnownCertificates(),
		},
		DiskImage: schematic.DiskImageCustomization{SectorSize: uint(c.GetDiskImage().GetSectorSize())},
		ImageCache: schematic.ImageCache{
			Kubernetes: c.GetImageCache().GetKubernetes(),
			Images:     c.GetImageCache().GetImages(),
			Platforms:  c.GetImageCache().GetPlatforms(),
		},
	}

	for i, m := range c.GetMeta() {
		if m.GetKey() > math.MaxUint8 {
			return nil, &invalidArgumentError{fmt.Sprintf("customization.meta[%d].key %d is out of range 0-255", i, m.GetKey())}
		}

		sc.Customization.Meta = append(sc.Customization.Meta, schematic.MetaValue{Key: uint8(m.GetKey()), Value: m.GetValue()})
	}

	switch c.GetBootloader() {
	case kilnv1.Bootloader_BOOTLOADER_UNSPECIFIED:
		sc.Customization.Bootloader = schematic.BootloaderNone
	case kilnv1.Bootloader_BOOTLOADER_DUAL_BOOT:
		sc.Customization.Bootloader = schematic.BootloaderDualBoot
	case kilnv1.Bootloader_BOOTLOADER_SD_BOOT:
		sc.Customization.Bootloader = schematic.BootloaderSDBoot
	case kilnv1.Bootloader_BOOTLOADER_GRUB:
		sc.Customization.Bootloader = schematic.BootloaderGrub
	default:
		return nil, &invalidArgumentError{fmt.Sprintf("customization.bootloader %d is not a known boot loader", c.GetBootloader())}
	}

	return &sc, nil
}

func jsonToYAML(v any) any {
	switch v := v.(type) {
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int(v)
		}

		return v
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = jsonToYAML(e)
		}

		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = jsonToYAML(e)
		}

		return out
	default:
		return v
	}
}

// toProto converts a schematic to typed fields. Overlay options that do not
// fit JSON (YAML allows non-string keys) are left out; the YAML field of the
// response always carries the whole schematic.
func toProto(sc *schematic.Schematic) *kilnv1.Schematic {
	c := sc.Customization
	p := &kilnv1.Schematic{
		Customization: &kilnv1.Customization{
			EmbeddedMachineConfiguration: c.EmbeddedMachineConfiguration,
			ExtraKernelArgs:              c.ExtraKernelArgs,
			SystemExtensions:             c.SystemExtensions.OfficialExtensions,
			Bootloader:                   kilnv1.Bootloader(c.Bootloader),
		},
	}

	for _, m := range c.Meta {
		p.Customization.Meta = append(p.Customization.Meta, &kilnv1.MetaValue{Key: uint32(m.Key), Value: m.Value})
	}

	if c.SecureBoot != (schematic.SecureBootCustomization{}) {
		p.Customization.Secureboot = &kilnv1.SecureBoot{
			EnrollKeys:                   c.SecureBoot.EnrollKeys,
			IncludeWellKnownCertificates: c.SecureBoot.IncludeWellKnownCertificates,
		}
	}

	if c.DiskImage.SectorSize != 0 {
		p.Customization.DiskImage = &kilnv1.DiskImage{SectorSize: uint32(c.DiskImage.SectorSize)}
	}

	if ic := c.ImageCache; ic.Kubernetes || len(ic.Images) > 0 || len(ic.Platforms) > 0 {
		p.Customization.ImageCache = &kilnv1.ImageCache{Kubernetes: ic.Kubernetes, Images: ic.Images, Platforms: ic.Platforms}
	}

	if sc.Overlay.Image != "" || sc.Overlay.Name != "" || len(sc.Overlay.Options) > 0 {
		p.Overlay = &kilnv1.Overlay{Image: sc.Overlay.Image, Name: sc.Overlay.Name}

		if opts, err := structpb.NewStruct(sc.Overlay.Options); err == nil && len(sc.Overlay.Options) > 0 {
			p.Overlay.Options = opts
		}
	}

	return p
}
