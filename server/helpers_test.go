package server

import (
	"fmt"
	"log/slog"
)

func fmtErr(format string, a ...any) error { return fmt.Errorf(format, a...) }

func withDefaults(c Config) Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}

	return c
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func fmtInt(n int) string { return fmt.Sprint(n) }
