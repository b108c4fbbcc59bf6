package cmdline

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/siderolabs/go-procfs/procfs"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/machinery/kernel"

	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/release"
)

// MetaValue is one META key/value pair carried on the command line.
type MetaValue = meta.Value

// Options describe the output whose command line is built.
type Options struct {
	// Platform is the Talos platform name, e.g. "metal".
	Platform string
	// Arch is "amd64" or "arm64" (callers map aliases such as x86_64).
	Arch string
	// TalosVersion is the target Talos version.
	TalosVersion release.Version
	// ISO adds talos.halt_if_installed=1 (Talos >= 1.8).
	ISO bool
	// SecureBoot adds the SecureBoot kernel arguments.
	SecureBoot bool
	// PlatformArgs replaces the platform's console arguments. Required for
	// every platform except metal, whose arguments are built in.
	PlatformArgs []string
	// OverlayArgs are the kernel arguments of the SBC overlay, if any.
	OverlayArgs []string
	// ExtraArgs are the schematic's extraKernelArgs.
	ExtraArgs []string
	// Meta are the schematic's META values.
	Meta []MetaValue
	// IncludeMeta puts Meta on the command line as
	// talos.environment=INSTALLER_META_BASE64=...; set it for outputs without
	// a META partition (everything but disk images).
	IncludeMeta bool
}

// ErrUnsupported reports a platform or architecture Build cannot handle.
var ErrUnsupported = errors.New("unsupported")

// defaultArgsDropped114 are kernel.DefaultArgs entries Talos 1.14 dropped.
var defaultArgsDropped114 = []string{"init_on_alloc", "nvme_core.io_timeout"}

// Build returns the kernel command line for o.
func Build(o Options) (string, error) {
	if o.TalosVersion.IsZero() {
		return "", errors.New("no Talos version")
	}

	if o.Platform == "" {
		return "", fmt.Errorf("%w: empty platform", ErrUnsupported)
	}

	q := quirks.New(o.TalosVersion.String())

	platformArgs := o.PlatformArgs
	if platformArgs == nil {
		var err error

		if platformArgs, err = builtinPlatformArgs(o.Platform, o.Arch, q); err != nil {
			return "", err
		}
	}

	c := procfs.NewCmdline("")
	c.Append(constants.KernelParamPlatform, o.Platform)
	c.SetAll(platformArgs)

	if o.ISO && q.SupportsHaltIfInstalled() {
		c.Append(constants.KernelParamHaltIfInstalled, "1")
	}

	if len(o.OverlayArgs) > 0 {
		c.SetAll(o.OverlayArgs)
	}

	if err := c.AppendAll(defaultArgs(o.TalosVersion, q)); err != nil {
		return "", err
	}

	if o.SecureBoot {
		if err := c.AppendAll(secureBootArgs(o.TalosVersion, q)); err != nil {
			return "", err
		}
	}

	if o.IncludeMeta && len(o.Meta) > 0 {
		env, err := meta.EnvValue(o.Meta, o.TalosVersion)
		if err != nil {
			return "", err
		}

		c.Append(constants.KernelParamEnvironment, constants.MetaValuesEnvVar+"="+env)
	}

	if err := c.AppendAll(o.ExtraArgs,
		procfs.WithOverwriteArgs("console"),
		procfs.WithOverwriteArgs(constants.KernelParamPlatform),
		procfs.WithDeleteNegatedArgs(),
	); err != nil {
		return "", err
	}

	return c.String(), nil
}

// builtinPlatformArgs returns the console arguments of the metal platform
// (Talos internal/app/machined/pkg/runtime/v1alpha1/platform/metal).
func builtinPlatformArgs(platform, arch string, q quirks.Quirks) ([]string, error) {
	if platform != "metal" {
		return nil, fmt.Errorf("%w: platform %q has no built-in kernel arguments, pass PlatformArgs", ErrUnsupported, platform)
	}

	switch arch {
	case "amd64":
		if q.SupportsMetalPlatformConsoleTTYS0() {
			return []string{"console=ttyS0", "console=tty0"}, nil
		}

		return []string{"console=tty0"}, nil
	case "arm64":
		return []string{"console=ttyAMA0", "console=tty0"}, nil
	default:
		return nil, fmt.Errorf("%w: architecture %q", ErrUnsupported, arch)
	}
}

// defaultArgs is kernel.DefaultArgs with the Talos 1.14 removals applied.
func defaultArgs(v release.Version, q quirks.Quirks) []string {
	args := kernel.DefaultArgs(q)
	if v.Before(1, 14) {
		return args
	}

	return slices.DeleteFunc(args, func(arg string) bool {
		key, _, _ := strings.Cut(arg, "=")

		return slices.Contains(defaultArgsDropped114, key)
	})
}

// secureBootArgs is kernel.SecureBootArgs; Talos 1.14 dropped
// lockdown=confidentiality.
func secureBootArgs(v release.Version, q quirks.Quirks) []string {
	if v.AtLeast(1, 14) {
		return nil
	}

	return kernel.SecureBootArgs(q)
}
