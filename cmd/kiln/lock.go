package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
)

// destinationAuth is the basic credential --to-username, --to-password and
// --to-password-file give, or nil when they give none.
func destinationAuth(user, password, passwordFile string) (authn.Authenticator, error) {
	if password != "" && passwordFile != "" {
		return nil, errors.New("give --to-password or --to-password-file, not both")
	}

	if passwordFile != "" {
		p, err := access.ReadPassword(passwordFile)
		if err != nil {
			return nil, fmt.Errorf("--to-password-file: %w", err)
		}

		password = p
	}

	if password == "" {
		if user != "" {
			return nil, errors.New("--to-username needs --to-password or --to-password-file")
		}

		return nil, nil
	}

	if user == "" {
		user = access.AdminUser
	}

	return &authn.Basic{Username: user, Password: password}, nil
}

// hostKeychain gives one registry host its credential.
type hostKeychain struct {
	host string
	auth authn.Authenticator
}

func (k hostKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.host {
		return k.auth, nil
	}

	return authn.Anonymous, nil
}

// kilnServer is how a kiln names itself in the Server header.
const kilnServer = "Image Factory (kiln "

// lockReleases asks the kiln at dst to record the release lock of each
// version copied (kiln.v1.ReleaseService/LockRelease through the REST
// gateway), naming the digests copied, so that the kiln refuses any later
// re-tag. A registry that is not a kiln is told nothing: kiln serve over it
// (--registry) records a lock at the version's first use.
func lockReleases(ctx context.Context, dst mirror.Registry, keychain authn.Keychain, releases map[string]map[string]string, stdout, stderr io.Writer) error {
	if len(releases) == 0 {
		return nil
	}

	auth, err := authn.Resolve(ctx, keychain, dst.Registry)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", dst.Registry, err)
	}

	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", dst.Registry, err)
	}

	client := &http.Client{Timeout: 10 * time.Minute}
	versions := make([]string, 0, len(releases))

	for v := range releases {
		versions = append(versions, v)
	}

	slices.Sort(versions)

	for _, v := range versions {
		body, err := json.Marshal(map[string]any{"namespace": strings.Trim(dst.Namespace, "/"), "images": releases[v]})
		if err != nil {
			return err
		}

		u := dst.Registry.Scheme() + "://" + dst.Registry.RegistryStr() + "/v1/versions/" + url.PathEscape(v) + "/lock"

		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return err
		}

		req.Header.Set("Content-Type", "application/json")

		switch {
		case cfg.Username != "" || cfg.Password != "":
			req.SetBasicAuth(cfg.Username, cfg.Password)
		case cfg.Auth != "":
			req.Header.Set("Authorization", "Basic "+cfg.Auth)
		}

		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("recording the release lock of %s on %s: %w", v, dst, err)
		}

		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) //nolint:errcheck // a short read shows in the message
		resp.Body.Close()

		if !strings.HasPrefix(resp.Header.Get("Server"), kilnServer) {
			fmt.Fprintf(stderr, "note: %s is not a kiln: no release lock recorded (kiln serve --registry records one at a version's first use)\n", dst)

			return nil
		}

		if resp.StatusCode != http.StatusOK {
			var st struct {
				Message string `json:"message"`
			}

			_ = json.Unmarshal(data, &st) //nolint:errcheck // the raw body is shown otherwise

			msg := st.Message
			if msg == "" {
				msg = strings.TrimSpace(string(data))
			}

			if resp.StatusCode == http.StatusUnauthorized {
				msg += " (give kiln's admin credential: --to-password-file <kiln data-dir>/auth/admin-password)"
			}

			return fmt.Errorf("the kiln at %s refused the release lock of %s: %d %s", dst, v, resp.StatusCode, msg)
		}

		var out struct {
			Lock     struct{ Images map[string]string } `json:"lock"`
			Previous *struct {
				Images     map[string]string
				RecordedBy string `json:"recordedBy"`
			} `json:"previous"`
		}

		if err := json.Unmarshal(data, &out); err != nil {
			return fmt.Errorf("the kiln at %s answered the release lock of %s with %q: %w", dst, v, data, err)
		}

		fmt.Fprintf(stdout, "release lock of %s recorded on %s: imager %s\n", v, dst, out.Lock.Images[release.ImagerRepo])

		if p := out.Previous; p != nil {
			for _, path := range slices.Sorted(maps.Keys(out.Lock.Images)) {
				if old := p.Images[path]; old != "" && old != out.Lock.Images[path] {
					fmt.Fprintf(stdout, "  %s changed: %s (recorded by %s) -> %s\n", path, old, p.RecordedBy, out.Lock.Images[path])
				}
			}
		}
	}

	return nil
}
