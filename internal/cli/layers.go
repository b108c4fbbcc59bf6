// Package cli layers command-line flags, KILN_* environment variables and an
// optional YAML config file onto one flag set, so every setting has one name
// in all three places: --data-dir, KILN_DATA_DIR and `data-dir:`.
package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v4"
)

// ConfigFlag is the flag (and KILN_CONFIG variable) naming the config file.
const ConfigFlag = "config"

// EnvName is the environment variable of a flag: KILN_ and the name in upper
// case with dashes as underscores.
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs and fills every flag not given on the command line
// from the environment, else from the config file, else leaves its default.
// getenv is os.Getenv outside tests.
func Parse(fs *flag.FlagSet, args []string, prefix string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}

	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	// The environment goes on before the file is read, so KILN_CONFIG works.
	var envErr error

	fs.VisitAll(func(f *flag.Flag) {
		if explicit[f.Name] {
			return
		}

		if v := getenv(EnvName(prefix, f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = errors.Join(envErr, fmt.Errorf("%s: %w", EnvName(prefix, f.Name), err))
			}

			explicit[f.Name] = true
		}
	})

	if envErr != nil {
		return envErr
	}

	cfg := fs.Lookup(ConfigFlag)
	if cfg == nil || cfg.Value.String() == "" {
		return nil
	}

	return applyFile(fs, cfg.Value.String(), explicit)
}

func applyFile(fs *flag.FlagSet, path string, explicit map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}

	var settings map[string]any

	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&settings); err != nil && !errors.Is(err, io.EOF) { // an empty file has no settings
		return fmt.Errorf("config file %s: %w", path, err)
	}

	for name, v := range settings {
		f := fs.Lookup(name)
		if f == nil || name == ConfigFlag {
			return fmt.Errorf("config file %s: unknown setting %q", path, name)
		}

		if explicit[name] {
			continue
		}

		var text string

		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}

			text = strings.Join(parts, ",")
		case map[string]any:
			return fmt.Errorf("config file %s: setting %q takes a value, not a mapping", path, name)
		default:
			text = fmt.Sprint(v)
		}

		if err := fs.Set(name, text); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, name, err)
		}
	}

	return nil
}
