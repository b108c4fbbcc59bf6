// Package storage keeps what kiln stores: schematics, and the asset cache
// (built assets and the boot files extracted from releases, under one size
// bound). Each kind of content has its own small interface so a
// registry-backed implementation (several replicas sharing one registry) can
// replace the filesystem one without touching its users; storagetest holds
// the conformance suite every implementation runs.
package storage
