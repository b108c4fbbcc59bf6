package meta_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"

	"github.com/siderolabs/go-adv/adv/talos"
	talosmeta "github.com/siderolabs/talos/pkg/machinery/meta"

	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func golden(t *testing.T, name, got string) {
	t.Helper()
	testfixture.Golden(t, name, got, *update)
}

var sample = []meta.Value{
	{Key: talosmeta.UserReserved2, Value: "second"},
	{Key: talosmeta.MetalNetworkPlatformConfig, Value: "addresses:\n  - address: 10.5.0.2/24\n    linkName: eth0\n"},
	{Key: talosmeta.UserReserved1, Value: "first"},
}

func TestEnvValue(t *testing.T) {
	long := []meta.Value{{Key: 0x0c, Value: strings.Repeat("kiln-", 80)}}

	for _, tc := range []struct {
		name    string
		values  []meta.Value
		version string
	}{
		{"env-small", sample, "v1.13.0"},
		{"env-empty", nil, "v1.13.0"},
		{"env-long-gzip", long, "v1.13.0"},
		{"env-long-nogzip", long, "v1.6.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := meta.EnvValue(tc.values, release.MustParseVersion(tc.version))
			if err != nil {
				t.Fatal(err)
			}

			golden(t, tc.name, got)

			if got == "" {
				return
			}

			// Talos's own decoder gets the values back, in order.
			dec, err := talosmeta.DecodeValues(got)
			if err != nil {
				t.Fatalf("DecodeValues(%q) = %v", got, err)
			}

			if len(dec) != len(tc.values) {
				t.Fatalf("DecodeValues = %d values, want %d", len(dec), len(tc.values))
			}

			for i, v := range tc.values {
				if dec[i].Key != v.Key || dec[i].Value != v.Value {
					t.Errorf("value %d = %#x=%q, want %#x=%q", i, dec[i].Key, dec[i].Value, v.Key, v.Value)
				}
			}
		})
	}
}

func TestEnvValueGzipQuirk(t *testing.T) {
	long := []meta.Value{{Key: 0x0c, Value: strings.Repeat("x", 300)}}

	gz, _ := meta.EnvValue(long, release.MustParseVersion("1.6.3"))
	plain, _ := meta.EnvValue(long, release.MustParseVersion("1.6.2"))

	if !strings.HasPrefix(gz, "H4sI") { // base64 of the gzip magic
		t.Errorf("EnvValue(1.6.3) = %q..., want gzip", gz[:8])
	}

	if strings.HasPrefix(plain, "H4sI") {
		t.Errorf("EnvValue(1.6.2) is gzip, want plain")
	}
}

func TestInvalid(t *testing.T) {
	for name, values := range map[string][]meta.Value{
		"key0":      {{Key: 0, Value: "x"}},
		"duplicate": {{Key: 0x0c, Value: "a"}, {Key: 0x0c, Value: "b"}},
		"semicolon": {{Key: 0x0c, Value: "a;b"}},
		"too big":   {{Key: 0x0c, Value: strings.Repeat("x", meta.ADVLength)}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := meta.Partition(values); !errors.Is(err, meta.ErrInvalid) {
				t.Errorf("Partition = %v, want ErrInvalid", err)
			}

			if name == "too big" {
				return
			}

			if _, err := meta.EnvValue(values, release.MustParseVersion("1.13.0")); !errors.Is(err, meta.ErrInvalid) {
				t.Errorf("EnvValue = %v, want ErrInvalid", err)
			}
		})
	}

	if _, err := meta.EnvValue(sample, release.Version{}); err == nil {
		t.Error("EnvValue(no version) = nil error")
	}
}

func TestPartitionEmpty(t *testing.T) {
	img, err := meta.Partition(nil)
	if err != nil {
		t.Fatal(err)
	}

	if len(img) != meta.PartitionSize || !bytes.Equal(img, make([]byte, meta.PartitionSize)) {
		t.Errorf("Partition(nil) is not %d zero bytes", meta.PartitionSize)
	}
}

func TestPartition(t *testing.T) {
	img, err := meta.Partition(sample)
	if err != nil {
		t.Fatal(err)
	}

	if len(img) != meta.PartitionSize {
		t.Fatalf("len = %d, want %d", len(img), meta.PartitionSize)
	}

	sum := sha256.Sum256(img)
	golden(t, "partition.sha256", hex.EncodeToString(sum[:])+"\n")

	// Deterministic: input order does not matter.
	rev := slices.Clone(sample)
	slices.Reverse(rev)

	img2, err := meta.Partition(rev)
	if err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(img, img2) {
		t.Error("Partition depends on input order")
	}

	// Both copies identical, everything after them zero.
	if !bytes.Equal(img[:meta.ADVLength], img[meta.ADVLength:2*meta.ADVLength]) {
		t.Error("second ADV copy differs from the first")
	}

	if !bytes.Equal(img[2*meta.ADVLength:], make([]byte, meta.PartitionSize-2*meta.ADVLength)) {
		t.Error("bytes after the two ADV copies are not zero")
	}

	// Talos's own ADV reader gets the values back, from either copy.
	for name, r := range map[string]*bytes.Reader{
		"first copy":  bytes.NewReader(img),
		"second copy": bytes.NewReader(corruptFirst(img)),
	} {
		adv, err := talos.NewADV(r)
		if err != nil {
			t.Fatalf("%s: talos.NewADV = %v", name, err)
		}

		if got := len(adv.ListTags()); got != len(sample) {
			t.Errorf("%s: %d tags, want %d", name, got, len(sample))
		}

		for _, v := range sample {
			got, ok := adv.ReadTag(v.Key)
			if !ok || got != v.Value {
				t.Errorf("%s: ReadTag(%#x) = %q, %v; want %q", name, v.Key, got, ok, v.Value)
			}
		}
	}
}

// corruptFirst returns a copy of img whose first ADV copy has a bad checksum.
func corruptFirst(img []byte) []byte {
	c := slices.Clone(img)
	c[100] ^= 0xff

	return c
}
