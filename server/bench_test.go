package server

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/storage"
)

// BenchmarkCreate measures parse + canonicalise + durable store of a new
// schematic each iteration (the fsync dominates).
func BenchmarkCreate(b *testing.B) {
	store, err := storage.NewFS(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	svc := &schematicService{domain: &schematics{store: store}}
	ctx := context.Background()

	for i := 0; b.Loop(); i++ {
		req := &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{
			Yaml: fmt.Sprintf("customization:\n  extraKernelArgs: [console=ttyS%d]\n  systemExtensions: {officialExtensions: [siderolabs/gvisor, siderolabs/iscsi-tools]}\n", i),
		}}
		if _, err := svc.CreateSchematic(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateExisting is the common case of clients re-posting a known
// schematic: no write happens.
func BenchmarkCreateExisting(b *testing.B) {
	store, err := storage.NewFS(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	svc := &schematicService{domain: &schematics{store: store}}
	ctx := context.Background()
	req := &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "customization: {extraKernelArgs: [a]}"}}

	for b.Loop() {
		if _, err := svc.CreateSchematic(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet reads, verifies and re-parses a stored schematic.
func BenchmarkGet(b *testing.B) {
	store, err := storage.NewFS(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	svc := &schematicService{domain: &schematics{store: store}}
	ctx := context.Background()

	created, err := svc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "customization: {extraKernelArgs: [a]}"}})
	if err != nil {
		b.Fatal(err)
	}

	req := &kilnv1.GetSchematicRequest{Id: created.GetId()}

	for b.Loop() {
		if _, err := svc.GetSchematic(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
