package storage

import (
	"bytes"
	"context"
	"fmt"
	"slices"
)

// Memory stores content in memory; for tests and throwaway servers.
type Memory struct {
	mu      chan struct{}
	entries map[string][]byte
}

var _ Schematics = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{mu: make(chan struct{}, 1), entries: map[string][]byte{}}
}

func (m *Memory) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	select {
	case m.mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Memory) unlock() { <-m.mu }

// Put implements Schematics.
func (m *Memory) Put(ctx context.Context, id string, content []byte) (bool, error) {
	if err := m.lock(ctx); err != nil {
		return false, err
	}
	defer m.unlock()

	if _, ok := m.entries[id]; ok {
		return false, nil
	}

	m.entries[id] = bytes.Clone(content)

	return true, nil
}

// Get implements Schematics.
func (m *Memory) Get(ctx context.Context, id string) ([]byte, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.unlock()

	data, ok := m.entries[id]
	if !ok {
		return nil, fmt.Errorf("schematic %s: %w", id, ErrNotFound)
	}

	return bytes.Clone(data), nil
}

// List implements Schematics.
func (m *Memory) List(ctx context.Context, after string, limit int) ([]string, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.unlock()

	var ids []string

	for id := range m.entries {
		if id > after {
			ids = append(ids, id)
		}
	}

	slices.Sort(ids)

	if len(ids) > limit {
		ids = ids[:limit]
	}

	return ids, nil
}
