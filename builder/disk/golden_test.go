package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// TestGPTGolden pins the partition-table bytes (protective MBR, primary and
// backup GPT) of the default sd-boot layout, so any change to them is
// deliberate. The layout itself is checked by sgdisk/fdisk in TestWrite.
func TestGPTGolden(t *testing.T) {
	for sector, want := range map[int]string{
		512:  "f937894fdbe383720c4ad3f5e5bfe4eff17b17e1eb303cdaba9acff2b9fd8330",
		4096: "ec49890e24120f8095ea30cd3277dacc7f245d5ce4e8fb3c629d9cb67aaad08e",
	} {
		tb, err := Layout(Params{SectorSize: sector})
		if err != nil {
			t.Fatal(err)
		}
		primary, backup, off := tb.primaryAndBackup()
		h := sha256.New()
		h.Write(primary)
		h.Write(backup)
		got := hex.EncodeToString(h.Sum(nil))
		if got != want {
			t.Errorf("sector %d: sha256 = %s, want %s", sector, got, want)
		}
		if wantOff := int64(SDBootDiskSize) - int64(len(backup)); off != wantOff {
			t.Errorf("sector %d: backup at %d, want %d", sector, off, wantOff)
		}
	}
}
