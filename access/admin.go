package access

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/bcrypt"

	"github.com/kiln-dev/kiln/internal/iox"
)

// AdminUser is the user of the credential kiln creates on first start.
const AdminUser = "admin"

// adminCost is the bcrypt cost of the generated admin entry. distribution's
// htpasswd controller hashes on every request, and a mirror run is
// thousands of requests: at cost 10 that is 0.1 s of CPU each. The
// generated password is 32 random bytes (256 bits), which no cost factor is
// needed to protect against guessing; 5 is htpasswd -B's default. Users an
// operator adds keep whatever cost they were made with.
const adminCost = 5

// Files names the credential files under a directory (<data-dir>/auth).
type Files struct{ Dir string }

// HTPasswd is the users allowed to write: distribution's htpasswd format,
// bcrypt entries only ("htpasswd -B" adds more).
func (f Files) HTPasswd() string { return filepath.Join(f.Dir, "htpasswd") }

// Password holds the generated admin password, readable by the owner only.
func (f Files) Password() string { return filepath.Join(f.Dir, "admin-password") }

// EnsureAdmin creates the admin credential unless the htpasswd file exists:
// a random password in Password() and its bcrypt hash for AdminUser in
// HTPasswd(), both 0600 in a 0700 directory. created reports whether it
// made them now. An existing htpasswd file is never changed, so an operator
// who replaced the password or added users keeps them.
func (f Files) EnsureAdmin() (created bool, err error) {
	if _, err := os.Stat(f.HTPasswd()); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("admin credential: %w", err)
	}

	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return false, fmt.Errorf("admin credential: %w", err)
	}

	var b [32]byte

	_, _ = rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails

	password := base64.RawURLEncoding.EncodeToString(b[:])

	hash, err := bcrypt.GenerateFromPassword([]byte(password), adminCost)
	if err != nil {
		return false, fmt.Errorf("admin credential: %w", err)
	}

	// The password first: a crash between the two leaves no htpasswd, so
	// the next start makes both again rather than keep a hash whose
	// password was never written down.
	if err := iox.WriteFile(f.Password(), []byte(password+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("admin credential: %w", err)
	}

	if err := iox.WriteFile(f.HTPasswd(), []byte(AdminUser+":"+string(hash)+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("admin credential: %w", err)
	}

	return true, nil
}

// ReadPassword reads a password file as EnsureAdmin writes it (one line).
func ReadPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}

	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}

	if len(b) == 0 {
		return "", fmt.Errorf("%s is empty", path)
	}

	return string(b), nil
}

// readable stats path, naming it in the error.
func readable(path string) (fs.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}

	if fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}

	return fi, nil
}
