package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/machineconfig"
)

const configUsage = `Usage: kiln config airgap --kiln URL --schematic ID --talos-version V [flags]

Prints the Talos machine-config patch that points a node at kiln: registry
mirrors for every upstream registry the mirror holds, kiln's CA, kiln's
installer for the schematic, the image cache switch and the signature rule
(see "Machine-config patches" in the README). It is what
GET <kiln>/config/<schematic>/<version>/airgap.yaml answers, byte for byte:
kiln writes it from its own settings (--external-url, --tls-cert), so
--kiln is only how this command reaches kiln.

  kiln config airgap --kiln https://kiln.lan:8080 --ca-file kiln-ca.pem \
      --schematic 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba \
      --talos-version v1.13.0 > airgap.yaml
  talosctl gen config mycluster https://10.0.0.10:6443 --config-patch @airgap.yaml

Flags:
`

// configEnvPrefix keeps this command's environment apart from serve's
// KILN_CONFIG (its settings file).
const configEnvPrefix = "KILN_CONFIG_AIRGAP_"

// maxPatch bounds the answer read: a patch is a few KiB, a CA bundle and
// hundreds of mirrored hosts included.
const maxPatch = 4 << 20

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func configCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, configUsage)

		return nil
	}

	if len(args) == 0 || args[0] != "airgap" {
		fmt.Fprint(stderr, configUsage)

		return errors.New("usage: kiln config airgap --kiln URL --schematic ID --talos-version V")
	}

	fs := flag.NewFlagSet("kiln config airgap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), configUsage); fs.PrintDefaults() }

	fs.String(cli.ConfigFlag, "", "YAML file of settings, keyed by flag name")
	kiln := fs.String("kiln", "", "kiln's URL, http(s)://host[:port] (required)")
	schematicID := fs.String("schematic", "", "schematic ID the nodes run (required)")
	talosVersion := fs.String("talos-version", "", "Talos version of the nodes, e.g. v1.13.0 (required)")
	caFile := fs.String("ca-file", "", "PEM CA bundle to trust kiln's TLS certificate with (default: the system's)")
	insecure := fs.Bool("insecure", false, "accept any TLS certificate from kiln (never on a network you do not trust)")
	form := fs.String("form", "", "legacy (machine.registries) or documents (RegistryMirrorConfig, from Talos 1.12); default: documents where the version has them")
	platform := fs.String("platform", "", "installer platform, <platform>-installer (default: metal)")
	installDisk := fs.String("install-disk", "", "disk the node installs to, as talosctl gen config --install-disk (from Talos 1.14 the patch carries it; default /dev/sda)")
	cacheVolume := fs.String("cache-volume", "", "size of the IMAGECACHE volume for a schematic that embeds an image cache, or none (default: kiln's, 2GiB)")
	userFlag := fs.String("username", "", "user for a kiln serving with --auth-reads (default with a password: admin)")
	passwordFlag := fs.String("password", "", "password for --username (prefer KILN_CONFIG_AIRGAP_PASSWORD or --password-file to the command line)")
	passwordFile := fs.String("password-file", "", "file holding the password, e.g. kiln's <data-dir>/auth/admin-password")

	if err := cli.Parse(fs, args[1:], configEnvPrefix, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}

	if *kiln == "" || *schematicID == "" || *talosVersion == "" {
		return errors.New("--kiln, --schematic and --talos-version are required")
	}

	base, err := url.Parse(strings.TrimSuffix(*kiln, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" || base.RawQuery != "" || base.Fragment != "" {
		return fmt.Errorf("--kiln %q: want http(s)://host[:port]", *kiln)
	}

	if !hexID.MatchString(*schematicID) {
		return fmt.Errorf("--schematic %q: want a schematic ID, 64 lower-case hex digits (kiln schematic id prints one)", *schematicID)
	}

	v, err := machineconfig.ParseVersion(*talosVersion)
	if err != nil {
		return fmt.Errorf("--talos-version: %w", err)
	}

	if _, err := machineconfig.ParseForm(*form); err != nil {
		return fmt.Errorf("--form: %w", err)
	}

	if *caFile != "" && *insecure {
		return errors.New("give --ca-file or --insecure, not both")
	}

	if base.Scheme == "http" && (*caFile != "" || *insecure) {
		return fmt.Errorf("--kiln %s is plain HTTP: --ca-file and --insecure are for https", *kiln)
	}

	user, password, err := basicCredential(*userFlag, *passwordFlag, *passwordFile)
	if err != nil {
		return err
	}

	client, err := kilnClient(*caFile, *insecure)
	if err != nil {
		return err
	}

	if *insecure {
		fmt.Fprintf(stderr, "warning: --insecure: kiln's certificate is not verified\n")
	}

	q := url.Values{}
	for k, val := range map[string]string{"form": *form, "platform": *platform, "install-disk": *installDisk, "cache-volume": *cacheVolume} {
		if val != "" {
			q.Set(k, val)
		}
	}

	u := base.JoinPath("config", *schematicID, v.String(), "airgap.yaml")
	u.RawQuery = q.Encode()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}

	if user != "" {
		req.SetBasicAuth(user, password)
	}

	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("asking kiln for the patch: %w", err)
	}
	defer resp.Body.Close()

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPatch+1))
	if err != nil {
		return fmt.Errorf("reading the patch from %s: %w", u.Redacted(), err)
	}

	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 1024 {
			msg = msg[:1024] + "..."
		}

		if resp.StatusCode == http.StatusUnauthorized && user == "" {
			msg += " (give a credential: --password-file <kiln data-dir>/auth/admin-password)"
		}

		return fmt.Errorf("GET %s: %s: %s", u.Redacted(), resp.Status, msg)
	}

	if len(body) > maxPatch {
		return fmt.Errorf("GET %s: the answer is over %d bytes: not a patch", u.Redacted(), maxPatch)
	}

	if ct := resp.Header.Get("Content-Type"); ct != "application/yaml" {
		return fmt.Errorf("GET %s: answered %q, not a patch (application/yaml): is %s a kiln?", u.Redacted(), ct, base.Redacted())
	}

	// The warnings are comments at the top of the patch; repeated on
	// stderr, where someone redirecting stdout sees them.
	for _, line := range strings.Split(string(body), "\n") {
		if w, ok := strings.CutPrefix(line, "# WARNING: "); ok {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}

	_, err = stdout.Write(body)

	return err
}

// basicCredential is the user and password the flags give, or "" when
// they give none.
func basicCredential(user, password, passwordFile string) (string, string, error) {
	if password != "" && passwordFile != "" {
		return "", "", errors.New("give --password or --password-file, not both")
	}

	if passwordFile != "" {
		p, err := access.ReadPassword(passwordFile)
		if err != nil {
			return "", "", fmt.Errorf("--password-file: %w", err)
		}

		password = p
	}

	if password == "" {
		if user != "" {
			return "", "", errors.New("--username needs --password or --password-file")
		}

		return "", "", nil
	}

	if user == "" {
		user = access.AdminUser
	}

	return user, password, nil
}

// kilnClient trusts caFile (or the system's CAs), or nothing with
// insecure.
func kilnClient(caFile string, insecure bool) (*http.Client, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()

	switch {
	case caFile != "":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}

		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate", caFile)
		}

		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	case insecure:
		transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // --insecure, warned about
	}

	return &http.Client{Transport: transport, Timeout: 2 * time.Minute}, nil
}
