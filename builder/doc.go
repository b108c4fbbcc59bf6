// Package builder turns (schematic, Talos version, output path) into a boot
// asset: it resolves a build plan naming every input by verified digest,
// looks the plan's key up in the asset cache, and on a miss assembles the
// asset from the release's artifacts with the format packages below it
// (cpio, initramfs, cmdline, meta, uki, esp, iso, disk, compress), then
// publishes it to the cache atomically.
//
// Identical concurrent requests share one build; a semaphore caps how many
// builds run at once; a build outlives the request that started it (it runs
// detached, bounded by a timeout and the server's lifetime) so that a client
// that hangs up does not waste the work for the next one.
package builder
