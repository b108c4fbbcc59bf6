package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sync/semaphore"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// schematics is the schematic domain service: parse, canonicalise, store,
// look up. Both the gRPC service and the public routes call it.
type schematics struct {
	store  storage.Schematics
	limits SchematicLimits
	// parses bounds schematics parsed and canonicalised at once; bodies the
	// bytes of POST /schematics bodies held in memory at once.
	parses parseSlots
	bodies *semaphore.Weighted
}

func newSchematics(store storage.Schematics, limits SchematicLimits) *schematics {
	limits = limits.orDefaults()

	return &schematics{
		store: store, limits: limits,
		parses: make(parseSlots, limits.Parallel),
		bodies: semaphore.NewWeighted(bodyBudgetFactor * limits.MaxBytes),
	}
}

// created is the outcome of storing a schematic.
type created struct {
	id        string
	canonical []byte
	parsed    *schematic.Schematic
	isNew     bool
}

// create stores a typed schematic under its ID.
func (s *schematics) create(ctx context.Context, sc *schematic.Schematic) (created, error) {
	if err := s.parses.acquire(ctx); err != nil {
		return created{}, err
	}
	defer s.parses.release()

	return s.store1(ctx, sc)
}

// store1 checks, canonicalises and stores a schematic; a parse slot is held.
func (s *schematics) store1(ctx context.Context, sc *schematic.Schematic) (created, error) {
	if err := checkSchematic(sc); err != nil {
		return created{}, err
	}

	if err := sc.Validate(); err != nil {
		return created{}, err
	}

	canonical, err := sc.Marshal()
	if err != nil {
		return created{}, err
	}

	// The canonical form indents an embedded configuration's lines: it may
	// be somewhat larger than what was sent, not without bound.
	if int64(len(canonical)) > 2*s.limits.MaxBytes {
		return created{}, overLimit("schematic's canonical form is larger than %s (twice the limit, --max-schematic-size)", sizeText(2*s.limits.MaxBytes))
	}

	id := schematic.IDOf(canonical)

	isNew, err := s.store.Put(ctx, id, canonical)
	if err != nil {
		return created{}, fmt.Errorf("store schematic %s: %w", id, err)
	}

	return created{id: id, canonical: canonical, parsed: sc, isNew: isNew}, nil
}

// createRaw parses YAML or JSON and stores it, within the limits: the
// text is measured before the decoder sees it (see checkSchematicText).
func (s *schematics) createRaw(ctx context.Context, raw []byte) (created, error) {
	if err := s.parses.acquire(ctx); err != nil {
		return created{}, err
	}
	defer s.parses.release()

	if err := checkSchematicText(raw, s.limits); err != nil {
		return created{}, err
	}

	sc, err := schematic.Parse(raw)
	if err != nil {
		return created{}, err
	}

	return s.store1(ctx, sc)
}

// get returns a stored schematic's canonical form. A malformed ID cannot be
// stored, so it is simply not found.
func (s *schematics) get(ctx context.Context, id string) ([]byte, *schematic.Schematic, error) {
	if !schematic.ValidID(id) {
		return nil, nil, errSchematicNotFound
	}

	canonical, err := s.store.Get(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, errSchematicNotFound
	}

	if err != nil {
		return nil, nil, err
	}

	sc, err := schematic.Parse(canonical)
	if err != nil {
		return nil, nil, fmt.Errorf("stored schematic %s does not parse: %w", id, err)
	}

	return canonical, sc, nil
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// list returns one page of IDs. The page token is the last ID of the previous
// page: IDs are listed in order, so it is all the state a page needs.
func (s *schematics) list(ctx context.Context, pageSize int32, token string) ([]string, string, error) {
	if pageSize < 0 {
		return nil, "", &invalidArgumentError{"page_size " + strconv.Itoa(int(pageSize)) + " is negative"}
	}

	if token != "" && !schematic.ValidID(token) {
		return nil, "", &invalidArgumentError{fmt.Sprintf("page_token %q is not one this server returned", echo.Clip(token))}
	}

	size := int(pageSize)
	if size == 0 {
		size = defaultPageSize
	}

	size = min(size, maxPageSize)

	// One extra tells whether a next page exists without another call.
	ids, err := s.store.List(ctx, token, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list schematics: %w", err)
	}

	next := ""
	if len(ids) > size {
		ids = ids[:size]
		next = ids[size-1]
	}

	return ids, next, nil
}

// schematicService is the gRPC adapter of schematics.
type schematicService struct {
	kilnv1.UnsafeSchematicServiceServer

	domain *schematics
}

var _ kilnv1.SchematicServiceServer = (*schematicService)(nil)

func (s *schematicService) CreateSchematic(ctx context.Context, req *kilnv1.CreateSchematicRequest) (*kilnv1.CreateSchematicResponse, error) {
	var (
		c   created
		err error
	)

	switch src := req.GetSource().(type) {
	case *kilnv1.CreateSchematicRequest_Yaml:
		c, err = s.domain.createRaw(ctx, []byte(src.Yaml))
	case *kilnv1.CreateSchematicRequest_Schematic:
		var sc *schematic.Schematic

		sc, err = fromProto(src.Schematic)
		if err == nil {
			c, err = s.domain.create(ctx, sc)
		}
	default:
		err = &invalidArgumentError{"a schematic is required: set yaml or schematic"}
	}

	if err != nil {
		return nil, err
	}

	return &kilnv1.CreateSchematicResponse{
		Id:        c.id,
		Yaml:      string(c.canonical),
		Schematic: toProto(c.parsed),
		Created:   c.isNew,
	}, nil
}

func (s *schematicService) GetSchematic(ctx context.Context, req *kilnv1.GetSchematicRequest) (*kilnv1.GetSchematicResponse, error) {
	canonical, sc, err := s.domain.get(ctx, req.GetId())
	if err != nil {
		return nil, err
	}

	return &kilnv1.GetSchematicResponse{Id: req.GetId(), Yaml: string(canonical), Schematic: toProto(sc)}, nil
}

func (s *schematicService) ListSchematics(ctx context.Context, req *kilnv1.ListSchematicsRequest) (*kilnv1.ListSchematicsResponse, error) {
	ids, next, err := s.domain.list(ctx, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}

	return &kilnv1.ListSchematicsResponse{Ids: ids, NextPageToken: next}, nil
}
