package builder

// Builds is how many assemblies ran.
func (b *Builder) Builds() int64 { return b.builds.Load() }
