package server

import (
	"log/slog"
)

func withDefaults(c Config) Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}

	return c
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }
