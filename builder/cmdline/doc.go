// Package cmdline builds the Talos kernel command line of an output and the
// iPXE script the public Image Factory serves for PXE boots.
//
// Build follows the Talos imager (pkg/imager buildCmdline) step by step and
// merges arguments with github.com/siderolabs/go-procfs, the library Talos
// itself uses, so the procfs rules apply exactly:
//
//   - parameters are grouped by key at the position of their first
//     occurrence; appending a value to an existing key adds it to that group
//     (selinux=1 followed by selinux=0 prints "selinux=1 selinux=0");
//   - platform and overlay arguments are set (SetAll), replacing a whole group;
//   - user extra arguments replace the whole group for console and
//     talos.platform, "-key" deletes every value of key, "-key=val" deletes
//     that value, and anything else is appended;
//   - a value "key=" prints as a bare "key".
//
// Version-dependent defaults come from github.com/siderolabs/talos/pkg/machinery
// (kernel.DefaultArgs with imager/quirks). The machinery module pinned here
// (v1.13.9) does not know the Talos 1.14 changes, which are applied on top:
// from 1.14, init_on_alloc=1 and nvme_core.io_timeout are no longer defaults
// and SecureBoot adds no lockdown argument. The metal platform arguments are
// internal to Talos and hard-coded here; other platforms must pass their
// arguments in Options.PlatformArgs.
package cmdline
