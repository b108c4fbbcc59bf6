package echo_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/internal/echo"
)

func TestClip(t *testing.T) {
	id := strings.Repeat("a", 64)
	if got := echo.Clip(id); got != id {
		t.Errorf("a schematic ID was clipped: %q", got)
	}

	long := strings.Repeat("é", 30_000)
	got := echo.Clip(long)

	if len(got) > echo.MaxLen+20 || !utf8.ValidString(got) || !strings.HasSuffix(got, "...(60000 bytes)") {
		t.Errorf("Clip of 60000 bytes = %q", got)
	}
}
