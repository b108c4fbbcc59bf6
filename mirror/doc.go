// Package mirror copies Talos releases, with their signatures, between
// registries, OCI image layouts and single-file archives: the library under
// `kiln mirror`.
//
// The flow is Plan then Copy:
//
//	src := mirror.Upstream()                       // or Registry{...}, Layout{...}, Archive{...}
//	plan, err := mirror.NewPlan(ctx, src, mirror.Selection{Versions: []string{"v1.13.0"}, ...})
//	plan.WriteText(os.Stdout)                      // --dry-run
//	stats, err := mirror.Copy(ctx, plan, dst, mirror.Options{Verifier: v, Progress: r.Event})
//
// Plan resolves every tag to a digest once and records the manifest bytes;
// Copy verifies every image digest with the Verifier before writing anything,
// then copies blobs (in parallel, skipping those the destination has),
// manifests after their blobs and children, and tags last, so an interrupted
// run never leaves a tag pointing at missing content and a re-run copies only
// what is missing. See README.md for the layout and archive conventions.
package mirror
