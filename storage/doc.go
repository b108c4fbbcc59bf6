// Package storage keeps what kiln must not lose: stored schematics today,
// built assets later. Each kind of content has its own small interface so a
// registry-backed implementation (several replicas sharing one registry) can
// replace the filesystem one without touching its users; storagetest holds
// the conformance suite every implementation runs.
package storage
