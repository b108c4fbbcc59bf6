package builder

import (
	"context"
	"fmt"
	"os"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/storage"
)

// write assembles the asset of p into w.
func (b *Builder) write(ctx context.Context, p *Plan, w storage.AssetWriter, emit func(Event)) error {
	dir, err := b.imagerFiles(ctx, p, emit)
	if err != nil {
		return err
	}

	arch := p.Output.Arch

	switch p.Output.Kind {
	case KindKernel:
		emit(Event{Phase: "assemble", Message: "kernel"})

		return copyFile(ctx, w, assetPath(dir, arch, release.KernelAsset))
	default:
		return &UnsupportedError{What: string(p.Output.Kind) + " assets"}
	}
}

func copyFile(ctx context.Context, w storage.AssetWriter, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("release asset: %w", err)
	}
	defer f.Close()

	_, err = copyBuffer(ctx, w, f)

	return err
}
